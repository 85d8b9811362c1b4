#!/usr/bin/env bash
# The one prepared check for a lent GPU (at most 8 minutes on one H100); writes ONE JSON file.
#
#     bench/gpu_check.sh [OUT.json] [--steps 30] [--peak-tflops 989] [--set KEY=VALUE ...]
#
# Default output: $OUT/gpu_check.json when $OUT is set, else runs/gpu_check.json. Without a CUDA GPU it
# writes {"skipped": "no CUDA GPU"} and exits 0. What it runs and reports: bench/gpu_check.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
cd "$ROOT"
exec "$PYTHON" bench/gpu_check.py "$@"
