#!/usr/bin/env bash
# Install everything the tests need on a fresh machine (scripts/setup.sh: ffmpeg, a virtualenv with the pinned
# requirements), then run the linters, the type checker and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
./scripts/setup.sh

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
