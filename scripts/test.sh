#!/usr/bin/env bash
# Set up .venv from the lock (the dev extras are in it) and run the whole test suite (the labeling app's test drives
# Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "the browser test needs Chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
  fi
fi
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
