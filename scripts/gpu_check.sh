#!/usr/bin/env bash
# The GPU paths on one GPU at Qwen3-VL-2B scale, one table (docs/BENCHMARKS.md "GPU check"):
#   scripts/gpu_check.sh [--out DIR] [--keep]     on a machine with CUDA (about 10 minutes)
#   scripts/gpu_check.sh --cpu --tiny             the same code path on a CPU, small model (what the tests run)
# Python: $PYTHON, else .venv/bin/python (scripts/setup.sh); phases and options: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" scripts/gpu_check.py "$@"
