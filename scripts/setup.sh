#!/usr/bin/env bash
# Install cwm and everything its tests need into ./.venv (idempotent).
# torch is installed first, pinned to the CPU build that lies on disk (2.13.0), so that no later
# step can pull a multi-GB CUDA build; on a GPU machine, install the CUDA torch you want first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
