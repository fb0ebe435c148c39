"""Behaviour fingerprint of a source tree: short CLI trainings whose final metrics must not move.

Run it on two trees (e.g. `git worktree add /tmp/base REV`) and compare the JSON files: a
refactoring that is meant to preserve behaviour must give identical numbers, bit for bit.

    python benchmarks/fingerprint.py /tmp/base/src base.json
    python benchmarks/fingerprint.py src new.json
    python benchmarks/fingerprint.py --compare base.json new.json

Each configuration trains 2 epochs on 16 synthetic 32x40 scenes with one CPU thread (about 5
minutes for all 19 on 2 cores). Issue 10's refactoring was checked this way: identical on all
19 once the two numeric corrections (MTAN's head, the safe normal loss) were reverted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

BASE = ["--size", "32x40", "--n-train", "16", "--n-val", "8", "--batch-size", "4", "--epochs", "2", "--quiet"]
MTAN = ["--arch", "mtan", "--arch-arg", "width=0.125"]
HPS = ["--arch", "hps", "--arch-arg", "backbone=resnet18", "--arch-arg", "head_channels=8"]
MTAN_METHODS = [
    "ew",
    "uw",
    "dwa",
    "gradnorm",
    "pcgrad",
    "upgrad",
    "mao",
    "cagrad",
    "nashmtl",
    "rlw",
    "graddrop",
    "dbmtl",
]
CONFIGS: dict[str, list[str]] = {
    **{f"mtan-{m}": [*MTAN, "--method", m] for m in MTAN_METHODS},
    "hps-mgda": [*HPS, "--method", "mgda"],
    "hps-imtl-gramian": [*HPS, "--method", "imtl", "--grad-mode", "gramian"],
    "hps-gradvac": [*HPS, "--method", "gradvac"],
    "hps-acg": [*HPS, "--method", "acg"],
    "padnet-ew": ["--arch", "padnet", "--method", "ew"],
    "crossstitch-mgda": ["--arch", "crossstitch", "--method", "mgda"],
    "mtan-mdml": [*MTAN, "--peer-arch", "mtan", "--peer-arg", "width=0.125"],
}
ENTRY = "import sys; from densemtl.cli.main import main; sys.exit(main(sys.argv[1:]))"


def fingerprint(src: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    results: dict[str, object] = {}
    for name, extra in CONFIGS.items():
        out = os.path.join(tempfile.mkdtemp(), "run")
        run = subprocess.run(
            [sys.executable, "-c", ENTRY, "train", *BASE, *extra, "--out", out], capture_output=True, text=True, env=env
        )
        if run.returncode:
            results[name] = "error: " + (run.stderr.strip().splitlines() or ["?"])[-1]
        else:
            with open(os.path.join(out, "summary.json")) as f:
                summary = json.load(f)
            results[name] = {"metrics": summary["metrics"], "peer": summary.get("peer_metrics")}
        print(name, "done", flush=True)
    return results


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as fa, open(b_path) as fb:
        a, b = json.load(fa), json.load(fb)
    differ = [k for k in a if a[k] != b.get(k)]
    for k in a:
        print("differs" if k in differ else "same   ", k)
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    with open(sys.argv[2], "w") as f:
        json.dump(fingerprint(sys.argv[1]), f, indent=1, sort_keys=True)
