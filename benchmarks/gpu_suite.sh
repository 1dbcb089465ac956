#!/usr/bin/env bash
# The GPU suite: one prepared run of at most 10 minutes on a machine with a CUDA GPU.
#
#   benchmarks/gpu_suite.sh            # on the GPU machine, from the repository root
#   benchmarks/gpu_suite.sh --small    # the CPU check of the script itself (a minute or two; numbers meaningless)
#
# Prints, on CIFAR-10-shaped random uint8 data: cnn8 and resnet34 training images/s for fp32,
# bf16 + channels_last and bf16 + compile (peak GPU memory each); the reference-style loop
# (per-sample torchvision transforms, DataLoader workers) for the same models; trial-epochs per
# hour of 1, 2, 4 and 8 packed cnn8 trials at --gpus-per-trial 1, 0.5, 0.25, 0.125, with each
# trial's peak GPU memory. One JSON line per measurement; the log is also written to
# gpu_suite-<date>.log (or $OUT/ when set, as on the lent device machines).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-.}/gpu_suite-$(date -u +%Y%m%dT%H%M%SZ).log"
{
  echo "# gpu_suite $* on $(hostname), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  # Each part under its own limit, so one slow part cannot eat the others' time.
  for part in throughput:${THROUGHPUT_S:-240} reference:${REFERENCE_S:-90} packing:${PACKING_S:-240}; do
    timeout "${part#*:}" "$PY" benchmarks/gpu_suite.py --only "${part%%:*}" "$@" \
      || echo "# part ${part%%:*}: stopped with status $? (124: its ${part#*:} s limit)"
  done
} 2>&1 | tee "$LOG"
echo "log: $LOG"
