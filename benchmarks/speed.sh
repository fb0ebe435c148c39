#!/usr/bin/env bash
# The exact commands behind the tables in docs/speed.md.
#
# Run from the repository root on an otherwise idle machine: every table times its methods
# interleaved in one process, but a machine shared with other jobs still makes medians noisy.
# The docs' numbers were taken with `nice -n -10 bash benchmarks/speed.sh` on a 2-core machine
# that other jobs shared; a table whose EW median a burst of other work had visibly inflated was
# re-run alone with its command below (docs/speed.md says which).
# JSON results go to $OUT (default benchmarks/results); the markdown tables are printed and
# written to $OUT/speed-tables.md.
set -euo pipefail

DENSEMTL=${DENSEMTL:-.venv/bin/densemtl}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

SMALL=(--arch segnet --arch-arg width=0.25 --size 96x128 --batch-size 8 --warmup 2 --repeats 9)
RESNET=(--arch hps --arch-arg backbone=resnet50 --arch-arg head_channels=64 --size 144x192 --batch-size 8
        --warmup 1 --repeats 3)
RESNET_METHODS=mgda,pcgrad,imtl,upgrad,cagrad,nashmtl,famo,uw
RESNET_GRAMIAN=mgda,imtl,upgrad,cagrad

# (a) small default model, all registered methods
"$DENSEMTL" speed "${SMALL[@]}" --json "$OUT/small-default.json"
"$DENSEMTL" speed "${SMALL[@]}" --grad-mode parameters --json "$OUT/small-parameters.json"
"$DENSEMTL" speed "${SMALL[@]}" --grad-mode representation --json "$OUT/small-representation.json"
"$DENSEMTL" speed "${SMALL[@]}" --grad-mode gramian --json "$OUT/small-gramian.json"
"$DENSEMTL" speed "${SMALL[@]}" --recompute-every 4 --json "$OUT/small-recompute4.json"
# (b) HPS ResNet-50 (dilated, output stride 8), a handful of representative methods
"$DENSEMTL" speed "${RESNET[@]}" --methods "$RESNET_METHODS" --json "$OUT/resnet50-default.json"
"$DENSEMTL" speed "${RESNET[@]}" --methods "$RESNET_GRAMIAN" --grad-mode gramian --json "$OUT/resnet50-gramian.json"

"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/speed-tables.md"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
TABLES = [
    ("small-default", "segnet width 0.25, each method in its own mode"),
    ("small-parameters", "segnet width 0.25, --grad-mode parameters"),
    ("small-representation", "segnet width 0.25, --grad-mode representation"),
    ("small-gramian", "segnet width 0.25, --grad-mode gramian"),
    ("small-recompute4", "segnet width 0.25, --recompute-every 4"),
    ("resnet50-default", "HPS ResNet-50, each method in its own mode"),
    ("resnet50-gramian", "HPS ResNet-50, --grad-mode gramian"),
]


def num(v, spec=".2f"):
    return "–" if v is None else format(v, spec)


for stem, title in TABLES:
    path = out / f"{stem}.json"
    if not path.exists():
        continue
    data = json.loads(path.read_text())
    s = data["settings"]
    print(f"#### {title}\n")
    print(
        f"{s['arch']} {s['arch_args']}, {s['size'][0]}×{s['size'][1]}, batch {s['batch_size']}, "
        f"tasks {','.join(s['tasks'])}, {s['warmup']} warm-up + {s['repeats']} timed steps per method "
        f"(median); {s['device_name']}, {s['cpu_count']} cores, {s['torch_threads']} torch threads, "
        f"torch {s['torch']}; 1-min load average {s['load_avg_1min'][0]} before, {s['load_avg_1min'][1]} after.\n"
    )
    print("| method | mode | step ms | × EW | min × EW | × naive | mem × EW | peak MB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    skipped = []
    for r in data["results"]:
        if r["status"] == "n/a":
            skipped.append(r["method"])
            continue
        if r["status"] != "ok":
            print(f"| {r['method']} | error | {r['error']} | | | | | |")
            continue
        mode = r["mode"] + (f" ÷{r['recompute_every']}" if r.get("recompute_every", 1) > 1 else "")
        print(
            f"| {r['method']} | {mode} | {num(r['step_ms'], '.0f')} | {num(r['ratio_to_ew'])} | "
            f"{num(r.get('ratio_to_ew_min'))} | "
            f"{num(r.get('ratio_to_naive'))} | {num(r['mem_ratio'])} | {num(r.get('peak_mb'), '.0f')} |"
        )
    if skipped:
        print(f"\nNot applicable with these flags: {', '.join(skipped)}.")
    print()
PYEOF
