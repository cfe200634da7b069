#!/usr/bin/env bash
# Install everything the tests need on a fresh machine (ffmpeg, a virtualenv with the pinned
# requirements), then run the linters, the type checker and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "== installing ffmpeg"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    elif command -v brew >/dev/null; then
        brew install ffmpeg
    else
        echo "error: install ffmpeg (with ffprobe) with your system's package manager" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "== installing Python requirements"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
