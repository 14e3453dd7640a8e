#!/usr/bin/env bash
# Create .venv with everything FuncPipe and its tests need. Idempotent; safe to re-run.
# torch is installed first and pinned to the CPU build so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC (CPU)"
  "$VENV/bin/pip" install -q "$TORCH_SPEC"
fi
echo "== installing funcpipe and its extras"
"$VENV/bin/pip" install -q -e ".[dev]"

# The storage tests start a real Redis server; install it where we can (Debian, as root).
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "note: redis-server not found; install it (e.g. apt-get install redis-server) for the Redis tests" >&2
  fi
fi
touch "$VENV/.installed"
