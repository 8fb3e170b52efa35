#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the exact versions and sha256 hashes that scripts/setup.sh installs: everything
# pyproject.toml declares (its dependencies and every extra) resolved for this Python (3.11, Linux x86_64), with
# torch held to its CPU build. pip-tools runs from a throwaway venv; pip's own configuration (indexes, find-links)
# applies, so torch's CPU wheel is found where `pip install torch==2.13.0` finds it.
#   bash scripts/lock.sh                    keep every locked version, re-resolve after an edit to pyproject.toml
#   bash scripts/lock.sh --upgrade          the newest release of everything (torch stays at requirements/torch-cpu.txt)
#   bash scripts/lock.sh -P numpy==2.4.6    move one package (pip-compile's --upgrade-package)
# Other arguments go to pip-compile as they are (e.g. `-c FILE` to hold versions to a `pip freeze`). A new lock
# changes what the pipeline computes: re-run `dvc repro`, then commit the lock with dvc.lock and the outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_TOOLS=${PIP_TOOLS:-pip-tools==7.7.0}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools/venv"
# (pip warns about each package that the machine's local indexes lack: noise here)
"$tools/venv/bin/python" -m pip install -q "$PIP_TOOLS" 2> >(grep -v 'is ignored: it is neither a file' >&2)
mkdir -p requirements
# --allow-unsafe: torch requires setuptools at run time, so it belongs in the lock.
# --strip-extras: the lock names plain packages (pip forbids extras in a constraints file, and --require-hashes
# installs need none). No index or find-links lines: each machine's pip configuration says where files come from.
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tools/venv/bin/pip-compile" -q \
  --generate-hashes --allow-unsafe --strip-extras --all-extras --no-emit-index-url --no-emit-find-links \
  --resolver=backtracking -c requirements/torch-cpu.txt -o requirements/lock.txt "$@" pyproject.toml
if grep -Eiq '^(nvidia-|triton==)' requirements/lock.txt; then
  echo "requirements/lock.txt pulls CUDA packages: is requirements/torch-cpu.txt a CPU build?" >&2
  exit 1
fi
echo "wrote requirements/lock.txt ($(grep -c '^[a-z0-9]' requirements/lock.txt) packages)"
