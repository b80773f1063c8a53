#!/usr/bin/env bash
# The prepared GPU check of issue 19 (≤ 8 minutes on one H100/H200-class GPU):
#  1. the ratio-is-one invariant in bf16 on FLUX.1-dev's real transformer shapes (random weights);
#  2. `alignbench bench` of all five algorithms on flux-dev-random at the paper's settings (512²,
#     6 rollout steps, 27 images per prompt, LoRA r 64, gradient checkpointing), one prompt per
#     iteration, one warm-up + 1 measured iteration each, with the bf16 matmul peak and rollout MFU.
# Writes under ${OUT:-results/bench}. Usage: OUT=/tmp/out bash scripts/gpu_check.sh
set -euo pipefail
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 150 python scripts/gpu_check.py --device cuda --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
timeout 330 alignbench bench --model flux-dev-random --device cuda --iterations 1 \
  --algo flow_grpo,tmpo,treegrpo,mixgrpo,gardo --set protocol.prompts_per_iteration=1 \
  --out "$OUT" 2>&1 | tee "$OUT/bench.log"
