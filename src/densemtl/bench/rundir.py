"""What a bench trusts in a run directory: a finished run, a resumable one, or neither.

A bench is killed at any moment and started again, and a disk may hand back anything, so no file
of a run is taken on faith:

- **finished** (:func:`finished`): ``summary.json`` parses and holds every key a bench reads
  (its ``bench`` part with the validation and test metrics of every task), ``metrics.jsonl`` holds
  epochs 0..N in order, and ``checkpoints/last.pt`` and ``best.pt`` are whole (intact zip archives).
- **resumable** (:func:`resumable`): ``last.pt`` loads (safely), ``best.pt`` is whole once an
  epoch is trained, and ``metrics.jsonl`` holds every epoch up to the checkpoint's; a torn last
  line is dropped.
- anything else is run again from scratch (:func:`clear`).

A run's ``time_s`` in a bench is its total time over every session: the larger of the summary's
``time_s`` (which the trainer carries over sessions in its checkpoints, partial epochs included)
and the sum of its epochs' ``time_s`` in ``metrics.jsonl`` (what a run written before that counts;
its summary held the last session only, 0 s for a run that was only re-evaluated).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from densemtl.training.checkpoint import atomic_write_text, load_checkpoint

Record = dict[str, Any]


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _count(value: Any) -> bool:
    """An integer >= 0 (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _metrics(value: Any, tasks: list[str]) -> bool:
    """``{task: {name: number or null}}`` for every task of the run."""
    return (
        isinstance(value, dict)
        and all(isinstance(value.get(t), dict) and value[t] for t in tasks)
        and all(isinstance(k, str) and _number(v) for t in tasks for k, v in value[t].items())
    )


def _nan_for_null(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Metrics as floats: ``null`` (a metric with no valid pixel, written so by strict JSON) is NaN."""
    return {t: {k: float("nan") if v is None else float(v) for k, v in ms.items()} for t, ms in metrics.items()}


def read_history(path: Path) -> tuple[list[Record], bool] | None:
    """(records, torn) of ``metrics.jsonl``: ``torn`` when its last line is cut off (then left out);
    None when it is missing or any other line is not an epoch record."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    records: list[Record] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
                break
            return None
        epoch = rec.get("epoch") if isinstance(rec, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or not isinstance(rec.get("val"), dict):
            return None
        records.append(rec)
    return records, torn


def _epochs_upto(records: list[Record], last: int) -> bool:
    return [r["epoch"] for r in records if r["epoch"] <= last] == list(range(last + 1))


def total_time(records: list[Record]) -> float:
    """Seconds a run took over every session: the sum of its epochs' ``time_s``."""
    return round(math.fsum(float(r.get("time_s") or 0.0) for r in records), 2)


def _whole(path: Path) -> bool:
    """A checkpoint file that is an intact zip archive (a truncated one has lost its directory)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def finished(out: Path) -> dict[str, Any] | None:
    """The summary of a finished bench run in ``out``, with metrics as floats and ``time_s`` the
    run's total over every session (see the module's note); None when anything about it is
    missing or corrupt."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(summary, dict):
        return None
    tasks, epochs, bench = summary.get("tasks"), summary.get("epochs"), summary.get("bench")
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
        return None
    if not (_count(epochs) and isinstance(bench, dict)):
        return None
    selected = bench.get("selected_epoch")
    if not (_count(selected) and selected <= epochs and _number(bench.get("selection_score"))):
        return None
    if not (_metrics(bench.get("test_metrics"), tasks) and _metrics(bench.get("val_metrics"), tasks)):
        return None
    history = read_history(out / "metrics.jsonl")
    if history is None or history[1] or not _epochs_upto(history[0], epochs) or len(history[0]) != epochs + 1:
        return None
    if not all(_whole(out / "checkpoints" / name) for name in ("last.pt", "best.pt")):
        return None
    bench = {
        **bench,
        "test_metrics": _nan_for_null(bench["test_metrics"]),
        "val_metrics": _nan_for_null(bench["val_metrics"]),
    }
    session = summary.get("time_s")
    time_s = max(total_time(history[0]), float(session) if _number(session) and session is not None else 0.0)
    return {**summary, "bench": bench, "time_s": time_s}


def resumable(out: Path) -> tuple[bool, str | None]:
    """(whether the run in ``out`` can continue from its ``last.pt``, why not when it has one that
    cannot). A torn last line of ``metrics.jsonl`` is removed on the way."""
    ckpt = out / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        return False, None  # stopped before its first checkpoint: nothing to lose
    try:
        epoch = load_checkpoint(ckpt).get("epoch")
    except Exception as e:  # noqa: BLE001 - whatever the reason, this checkpoint cannot be continued
        return False, f"{ckpt.name} cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if not _count(epoch):
        return False, f"{ckpt.name} holds no epoch"
    if epoch >= 1 and not _whole(out / "checkpoints" / "best.pt"):  # the selected epoch's model is lost
        return False, "best.pt is missing or truncated"
    history = read_history(out / "metrics.jsonl")
    if history is None or not _epochs_upto(history[0], epoch):
        return False, f"metrics.jsonl is corrupt or lacks epochs up to {epoch}, those of {ckpt.name}"
    records, torn = history
    if torn:
        from densemtl.report.jsonio import dumps

        atomic_write_text(out / "metrics.jsonl", "".join(dumps(r) + "\n" for r in records))
    return True, None


def clear(out: Path) -> None:
    """Empty the run directory ``out`` (kept itself: a lock may be held on it)."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            os.unlink(child)


# -- the bench folder itself ----------------------------------------------------------------------
#: What a bench writes beside its runs/ (the lock file named as in :mod:`densemtl.bench.processes`).
BENCH_FILES = ("bench.yaml", ".lock", "results.csv", "results.md", "report.html", "summary.json")


def check_bench_links(out: Path) -> None:
    """No file a bench writes in ``out``, nor ``runs/`` or a run folder in it, is a symbolic link
    (a bench never makes one): a one-line refusal naming the link, before anything is written."""
    from densemtl.paths import check_not_linked

    for name in (*BENCH_FILES, "runs"):
        check_not_linked(out / name, f"--out {out}: ")
    runs = out / "runs"
    if runs.is_dir():
        for child in sorted(runs.iterdir()):
            check_not_linked(child, f"--out {out}: ")


def remove_orphan(out: Path, created: bool) -> None:
    """Undo a fresh bench that refused before any run wrote a file: its bench.yaml, its lock, empty
    run folders, and ``out`` itself when this bench made it. A run folder holding anything is kept."""
    if not out.is_dir():
        return
    runs = out / "runs"
    if runs.is_dir() and not runs.is_symlink():
        for child in runs.iterdir():
            if child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
                child.rmdir()
        if not any(runs.iterdir()):
            runs.rmdir()
    for name in ("bench.yaml", ".lock"):
        if (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()
    if created and not any(out.iterdir()):
        out.rmdir()


def remove_if_empty(run: Path, up_to: Path) -> None:
    """Remove the run folder ``run`` and its parents below ``up_to`` (what existed before the job)
    while they are empty: what a job refused at its start made, and nothing else."""
    folder = run
    while folder != up_to and up_to in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another job's), or already gone: kept as it is
            return
        folder = folder.parent
