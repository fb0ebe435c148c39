#!/usr/bin/env bash
# The GPU tables of docs/speed.md ("On a GPU") and the demo on CUDA, in one run.
#
#   bash benchmarks/gpu.sh                     # on a CUDA machine, from the repository root
#   OUT=/somewhere bash benchmarks/gpu.sh      # results elsewhere
#   DRY_RUN=1 bash benchmarks/gpu.sh           # every command once, on the CPU, tiny (checks the flags)
#
# What it runs (results under $OUT, default benchmarks/results/gpu-<date>/):
#   speed tables of HPS ResNet-50 (dilated, output stride 8, ASPP heads of 256 channels) at 288x384,
#   global batch 8: every registered method in its own mode, then every method that offers it in
#   --grad-mode representation, gramian and parameters (the others are n/a rows), in fp32 and
#   --amp bf16, on 1 GPU and, when more are visible, on all of them (--world-size N: one process
#   per GPU, nccl, batch 8 shared); then the synthetic demo (`densemtl train --device cuda`) on one
#   GPU and with torchrun on all of them. Every table is printed, written as JSON and collected
#   in $OUT/gpu-tables.md.
set -euo pipefail

DENSEMTL=${DENSEMTL:-.venv/bin/densemtl}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y-%m-%d)}
DRY_RUN=${DRY_RUN:-0}

if [[ "$DRY_RUN" == 1 ]]; then
  # the same commands on the CPU with a tiny model: proves that every flag parses and runs
  DEVICE=cpu
  NGPU=2
  MODEL=(--arch hps --arch-arg backbone=resnet18 --arch-arg head_channels=16 --size 16x16 --batch-size 4)
  TIMING=(--warmup 1 --repeats 1 --quiet)
  METHODS=(--methods uw,cagrad)
  PRECISIONS=(off bf16)
  DEMO=(--epochs 1 --n-train 8 --n-val 4 --size 32x40 --batch-size 4 --arch-arg width=0.125
        --arch-arg depth_stages=3 --quiet)
  OUT=${OUT%/}-dry-run
else
  DEVICE=cuda
  if ! NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)'); then
    echo "benchmarks/gpu.sh: cannot import torch with $PY" >&2
    exit 1
  fi
  if [[ "$NGPU" -lt 1 ]]; then
    echo "benchmarks/gpu.sh: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 1
  fi
  MODEL=(--arch hps --arch-arg backbone=resnet50 --size 288x384 --batch-size 8)
  TIMING=(--warmup 3 --repeats 9 --quiet)
  METHODS=()  # every registered method
  PRECISIONS=(off bf16)
  DEMO=()
fi

mkdir -p "$OUT"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  if [[ "$DEVICE" == cuda ]]; then nvidia-smi || true; fi
} > "$OUT/machine.txt"

WORLDS=(1)
if [[ "$NGPU" -gt 1 ]]; then WORLDS+=("$NGPU"); fi

for amp in "${PRECISIONS[@]}"; do
  for world in "${WORLDS[@]}"; do
    for mode in default representation gramian parameters; do
      name="resnet50-${mode}-${amp/off/fp32}-${world}gpu"
      extra=()
      if [[ "$mode" != default ]]; then extra=(--grad-mode "$mode"); fi
      if [[ "$DRY_RUN" == 1 && "$mode" != default ]]; then extra+=(--methods cagrad); fi
      echo "== $name" >&2
      "$DENSEMTL" speed "${MODEL[@]}" "${TIMING[@]}" ${METHODS[@]+"${METHODS[@]}"} "${extra[@]}" \
        --device "$DEVICE" --amp "$amp" --world-size "$world" --json "$OUT/$name.json"
    done
  done
done

# the demo: one GPU, then every visible GPU under torchrun (nccl)
echo "== demo, 1 process" >&2
"$DENSEMTL" train --device "$DEVICE" ${DEMO[@]+"${DEMO[@]}"} --out "$OUT/demo-1gpu" | tee "$OUT/demo-1gpu.log"
if [[ "$NGPU" -gt 1 ]]; then
  echo "== demo, torchrun on $NGPU processes" >&2
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" -m densemtl train --device "$DEVICE" \
    ${DEMO[@]+"${DEMO[@]}"} --out "$OUT/demo-${NGPU}gpu" | tee "$OUT/demo-${NGPU}gpu.log"
fi

"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/gpu-tables.md"
import json
import sys
from pathlib import Path

from densemtl.cli.speed_cmd import format_ddp_table, format_table

out = Path(sys.argv[1])
print(f"# GPU speed tables ({out.name})\n")
print("```")
print((out / "machine.txt").read_text().strip())
print("```\n")
for path in sorted(out.glob("resnet50-*.json")):
    data = json.loads(path.read_text())
    s = data["settings"]
    print(f"## {path.stem}\n")
    print(f"{s['arch']} {s['arch_args']} {s['size'][0]}x{s['size'][1]}, global batch {s['batch_size']}, "
          f"amp {s['amp']}, {s['world_size']} process(es), {s['repeats']} repeats after {s['warmup']} warm-up, "
          f"on {s['device']} ({s['device_name']})\n")
    print("```")
    rows = data["results"]
    print(format_ddp_table(rows) if s["world_size"] > 1 else format_table(rows))
    print("```\n")
for log in sorted(out.glob("demo-*.log")):
    done = [line for line in log.read_text().splitlines() if "done in" in line]
    print(f"{log.stem}: {done[-1] if done else 'no completion line'}")
PYEOF
echo "benchmarks/gpu.sh: results in $OUT" >&2
