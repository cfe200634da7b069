#!/usr/bin/env bash
# Prepare a fresh machine for the tests and the smoke test: ffmpeg (and ffprobe) from the system's package
# manager, then a virtualenv ($VENV, default .venv) with the pinned requirements. Safe to run again: what is
# there already is kept. The first run downloads about 6 GB (torch's CUDA build) and takes 10 to 15 minutes.
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
echo "== installing Python requirements into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
