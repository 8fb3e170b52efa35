#!/usr/bin/env bash
# Create .venv with the CPU build of torch and the project (extras as arguments: `bash scripts/setup.sh dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0  # first, so nothing pulls a CUDA build
extras=$(IFS=,; echo "$*")
python -m pip install -q -e ".${extras:+[$extras]}"
