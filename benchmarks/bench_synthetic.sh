#!/usr/bin/env bash
# The published synthetic bench: see docs/benchmarks/README.md (about an hour on 2 CPU cores).
set -euo pipefail
DENSEMTL=${DENSEMTL:-.venv/bin/densemtl}
OUT=${OUT:-/tmp/bench-synth}
DENSEMTL_CACHE=${DENSEMTL_CACHE:-/tmp/bench-home/cache} "$DENSEMTL" bench --dataset synthetic --size 64x80 \
  --n-train 240 --n-val 96 --archs segnet --arch-arg width=0.25 --arch-arg depth_stages=4 \
  --methods ew,uw,dwa,rlw,famo,gradnorm,mgda,pcgrad,gradvac,imtl,cagrad,nashmtl,alignedmtl,upgrad,acg,mao \
  --seeds 3 --epochs 12 --batch-size 16 --lr 2e-3 --diagnostics-every 0 --jobs 2 --out "$OUT"
