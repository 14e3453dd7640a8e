#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (the layering contract runs in it). The tests
# start the servers they need (Redis, an S3-protocol server) on free local ports and stop them
# afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check funcpipe tests bench
"$VENV/bin/ruff" format --check funcpipe tests bench
"$VENV/bin/mypy" funcpipe
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=25 "$@"
