#!/usr/bin/env bash
# Step time of every architecture at the demo size (64x80, batch 16, NYUv2 tasks), EW,
# measured with `densemtl speed --methods ew`; the table in docs/architectures/README.md.
set -euo pipefail
DENSEMTL=${DENSEMTL:-.venv/bin/densemtl}
OUT=${OUT:-benchmarks/results/arch}
mkdir -p "$OUT"
COMMON=(--methods ew --size 64x80 --batch-size 16 --warmup 1 --repeats 3)
run() { name=$1; shift; "$DENSEMTL" speed --arch "$@" "${COMMON[@]}" --json "$OUT/$name.json" >/dev/null; }
run segnet segnet --arch-arg width=0.25 --arch-arg depth_stages=4
run mtan mtan --arch-arg width=0.25 --arch-arg depth_stages=4
run crossstitch crossstitch --arch-arg width=0.25 --arch-arg depth_stages=4
run vmsanet vmsanet --arch-arg width=0.25 --arch-arg depth_stages=4 --arch-arg 'scales=[2,4]'
run hps hps --arch-arg backbone=resnet18 --arch-arg head_channels=32
run padnet padnet --arch-arg backbone=resnet18 --arch-arg channels=32
run mtinet mtinet --arch-arg backbone=resnet18 --arch-arg channels=32
run hirmtl hirmtl --arch-arg backbone=resnet18 --arch-arg channels=32
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| `--arch` | knobs | EW step (ms) | peak MB |")
print("| --- | --- | ---: | ---: |")
for f in sorted(out.glob("*.json")):
    d = json.load(open(f))
    s = d["settings"]
    ew = next(r for r in d["results"] if r["method"] == "ew")
    knobs = ", ".join(f"{k}={v}" for k, v in (s.get("arch_args") or {}).items())
    peak = ew.get("peak_mb")
    print(f"| `{s['arch']}` | {knobs} | {ew['step_ms']:.0f} | {peak if peak is None else round(peak)} |")
PY
