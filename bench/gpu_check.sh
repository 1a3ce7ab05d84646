#!/usr/bin/env bash
# The GPU path next to the CPU path in one run (bench/gpu_check.py): encoder sentences/s at 16/64/128
# tokens as a share of the GPU's measured bf16 matmul rate, one training epoch, top-50 scoring of
# 1M users x 100k items at dim 64. Under 5 minutes on a GPU machine; without a GPU it says so, exits 0.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# PYTHON, else the repository's .venv, else python3 on PATH
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" "$here/gpu_check.py" "$@"
