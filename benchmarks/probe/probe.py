#!/usr/bin/env python
"""A hostile user's probe of densemtl: odd predict inputs, corrupted datasets of every layout, broken
run metadata, failing plugins, hostile flag and environment values (benchmarks/probe/README.md).

Each case builds its files in a fresh folder, runs ``python -m densemtl ...`` there (the densemtl
of ``--src``), and is classified: clean, traceback, accepted-should-refuse, refused-should-accept,
multi-line-error, wrong-exit, leftover-files, hang (timeout) or skipped.

    python benchmarks/probe/probe.py [--src SRC] [--only CLASS[,CLASS]] [--case SUBSTR] [--list]
                                     [--jobs N] [--timeout S] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases_data  # noqa: E402
import cases_flags  # noqa: E402
import cases_inputs  # noqa: E402
import cases_meta  # noqa: E402
import cases_plugin  # noqa: E402
from _util import Case, fixture  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("predict-input", "dataset-mtan", "dataset-nyud", "dataset-pascal", "metadata", "plugin", "flags", "env")
TRACEBACK = "Traceback (most recent call last)"
IGNORED = ("__pycache__",)  # Python's own byte-code caches of plugin modules in the cwd


def all_cases() -> list[Case]:
    found = [
        *cases_inputs.cases(),
        *cases_data.cases(),
        *cases_meta.cases(),
        *cases_plugin.cases(),
        *cases_flags.cases(),
    ]
    names = Counter(f"{c.cls}/{c.name}" for c in found)
    dups = [n for n, k in names.items() if k > 1]
    if dups:
        raise SystemExit(f"probe: duplicate case names {dups}")
    return found


def interleave(cases: list[Case]) -> list[Case]:
    """Round-robin over the classes, so that a partial run covers every class."""
    by_cls = [[c for c in cases if c.cls == k] for k in CLASSES]
    out = [group[i] for i in range(max(map(len, by_cls), default=0)) for group in by_cls if i < len(group)]
    return out


def base_env(src: Path, scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENSEMTL_")}
    env.update(
        PYTHONPATH=str(src),
        HOME=str(scratch / "home"),
        MPLCONFIGDIR=str(scratch / "mpl"),
        DENSEMTL_CACHE=str(scratch / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def densemtl(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str, str, float]:
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "densemtl", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, time.monotonic() - start
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def build_fixtures(where: Path, src: Path, timeout: float) -> None:
    """The shared fixtures, built once with the densemtl under test: DATA (MTAN), NYUD, PASCAL, a
    tiny trained RUN (epochs 0) and its EXPORT (model.safetensors)."""
    env = base_env(src, where / "_scratch")
    steps = [
        ["data", "synth", "--out", "DATA", "--n-train", "4", "--n-val", "2", "--size", "32x40"],
        ["data", "synth", "--layout", "nyud", "--out", "NYUD", "--n-train", "4", "--n-val", "2", "--size", "32x40"],
        [
            "data",
            "synth",
            "--layout",
            "pascal_context",
            "--out",
            "PASCAL",
            "--n-train",
            "4",
            "--n-val",
            "2",
            "--size",
            "32x40",
        ],
        [
            "train",
            "--dataset",
            "nyuv2",
            "--data-root",
            "DATA",
            "--epochs",
            "0",
            "--batch-size",
            "2",
            "--arch-arg",
            "width=0.125",
            "--arch-arg",
            "depth_stages=3",
            "--out",
            "RUN",
            "--quiet",
        ],
        ["export", "--checkpoint", "RUN", "--out", "model.safetensors"],
    ]
    for argv in steps:
        rc, _, err, _ = densemtl(argv, where, env, timeout)
        if rc != 0:
            raise SystemExit(f"probe: building the fixtures failed: densemtl {' '.join(argv)}\n{err}")


FIXTURE_FILES = {"EXPORT": "model.safetensors"}


def snapshot(root: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED]
        rel = Path(dirpath).relative_to(root)
        for name in (*dirnames, *filenames):
            out.add(str(rel / name))
    return out


def error_lines(stderr: str) -> list[str]:
    """stderr's lines that are not blank and not ``densemtl: warning:`` lines (nor progress bars)."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    return [x for x in lines if not x.startswith("densemtl: warning:") and "\r" not in x]


def classify(case: Case, rc: int | None, stderr: str, new: list[str]) -> str:
    if rc is None:
        return "hang"
    if TRACEBACK in stderr:
        return "traceback"
    if case.expect == "accept":
        return "clean" if rc == 0 else "refused-should-accept"
    if rc == 0:
        return "accepted-should-refuse"
    lines = error_lines(stderr)
    if not lines or not lines[-1].startswith("densemtl: error:") or len(lines) > 1:
        return (
            "multi-line-error"
            if rc in (1, 2) and any(x.startswith("densemtl: error:") for x in lines)
            else ("wrong-exit" if rc not in (1, 2) else "multi-line-error")
        )
    if rc not in (1, 2):
        return "wrong-exit"
    if new:
        return "leftover-files"
    return "clean"


def run_case(case: Case, fixtures: Path, src: Path, timeout: float, work: Path) -> dict:
    row = {"case": case.name, "class": case.cls, "expect": case.expect, "argv": list(case.argv), "note": case.note}
    if case.root_skip and os.geteuid() == 0:
        return {
            **row,
            "outcome": "skipped",
            "rc": None,
            "stderr": "(root: permission bits do not apply)",
            "new_files": [],
            "seconds": 0.0,
        }
    tmp = Path(tempfile.mkdtemp(prefix=f"{case.cls}-", dir=work))
    cwd, scratch = tmp / "cwd", tmp / "scratch"
    cwd.mkdir()
    try:
        for name in case.needs:
            fixture(cwd, FIXTURE_FILES.get(name, name), fixtures)
        if case.setup is not None:
            case.setup(cwd)
    except Exception as e:  # noqa: BLE001 - the probe's own setup failed: report it, go on
        shutil.rmtree(tmp, ignore_errors=True)
        return {
            **row,
            "outcome": "setup-failed",
            "rc": None,
            "stderr": f"{type(e).__name__}: {e}",
            "new_files": [],
            "seconds": 0.0,
        }
    before = snapshot(cwd)
    env = {**base_env(src, scratch), **case.env}
    rc, stdout, stderr, secs = densemtl(list(case.argv), cwd, env, timeout)
    new = sorted(p for p in snapshot(cwd) - before if not any(p == k or p.startswith(k + "/") for k in case.keeps))
    outcome = classify(case, rc, stderr, new)
    for dirpath, dirnames, _ in os.walk(tmp):  # undo chmod 000 so the folder can go
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o755)
    subprocess.run(["chmod", "-R", "u+rwX", str(tmp)], check=False, capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        **row,
        "outcome": outcome,
        "rc": rc,
        "stderr": stderr[-4000:],
        "stdout": stdout[-1000:],
        "new_files": new[:20],
        "seconds": round(secs, 1),
    }


def first_line(row: dict) -> str:
    lines = [x for x in row["stderr"].splitlines() if x.strip()]
    if row["outcome"] == "traceback":
        last = [x for x in lines if x and not x.startswith(" ")]
        return (last[-1] if last else "")[:160]
    return (lines[0] if lines else "(no stderr)")[:160]


def report(rows: list[dict]) -> None:
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'class':<15} {'outcome':<23} stderr (first line; a traceback's last)")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['class']:<15} {r['outcome']:<23} {first_line(r)}")
    print()
    print("outcomes:", dict(Counter(r["outcome"] for r in rows).most_common()))
    for cls in CLASSES:
        sub = [r for r in rows if r["class"] == cls]
        if sub:
            print(f"  {cls:<15} {len(sub):>3}: {dict(Counter(r['outcome'] for r in sub).most_common())}")
    print(f"total {len(rows)} cases, {sum(r['outcome'] == 'clean' for r in rows)} clean")


def write_results(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "class", "expect", "outcome", "rc", "seconds", "first_stderr_line", "argv", "note"])
        for r in rows:
            w.writerow(
                [
                    r["case"],
                    r["class"],
                    r["expect"],
                    r["outcome"],
                    r["rc"],
                    r["seconds"],
                    first_line(r),
                    " ".join(r["argv"]),
                    r["note"],
                ]
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=REPO / "src", help="the densemtl sources to probe (default: repo's src)")
    p.add_argument("--only", help="comma-separated classes: " + ", ".join(CLASSES))
    p.add_argument("--case", help="only cases whose name contains this")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per command (default 120)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "densemtl-probe" / "results.json")
    p.add_argument("--keep-work", action="store_true", help="keep the fixtures folder")
    args = p.parse_args(argv)
    cases = all_cases()
    if args.only:
        wanted = {c.strip() for c in args.only.split(",")}
        unknown = wanted - set(CLASSES)
        if unknown:
            p.error(f"unknown class(es) {sorted(unknown)}; valid: {', '.join(CLASSES)}")
        cases = [c for c in cases if c.cls in wanted]
    if args.case:
        cases = [c for c in cases if args.case in c.name]
    if args.list:
        for c in cases:
            print(f"{c.cls:<15} {c.name:<32} {c.expect:<7} densemtl {' '.join(c.argv)[:90]}")
        print(f"{len(cases)} cases")
        return 0
    cases = interleave(cases)
    src = args.src.resolve()
    work = Path(tempfile.mkdtemp(prefix="densemtl-probe-"))
    fixtures = work / "fixtures"
    fixtures.mkdir()
    try:
        t0 = time.monotonic()
        build_fixtures(fixtures, src, args.timeout)
        print(f"probe: fixtures built in {time.monotonic() - t0:.0f}s; {len(cases)} cases against {src}", flush=True)

        done: list[dict] = []

        def one(case: Case) -> dict:
            row = run_case(case, fixtures, src, args.timeout, work)
            print(
                f"  {row['outcome']:<23} {case.cls}/{case.name} ({row['seconds']}s) {first_line(row)[:100]}", flush=True
            )
            done.append(row)
            if len(done) % 10 == 0:
                write_results(done, args.out.with_name(args.out.stem + ".partial.json"))
            return row

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(one, cases))
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    report(rows)
    write_results(rows, args.out)
    print(f"results: {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
