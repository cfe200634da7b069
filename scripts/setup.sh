#!/usr/bin/env bash
# Prepare a fresh machine for the tests and the smoke test: ffmpeg (and ffprobe), chromium and redis-server from
# the system's package manager, then a virtualenv ($VENV, default .venv) with the pinned requirements. Safe to run
# again: what is there already is kept. The first run downloads about 6 GB (torch's CUDA build) and takes 10 to 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# ffmpeg and ffprobe decode every upload; chromium runs the web page's browser tests (driven by Playwright through
# its executable_path, so no browser is downloaded from anywhere but the system's package manager).
missing=()
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then missing+=(ffmpeg); fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CHROMIUM:-}" ]; then
    missing+=(chromium)
fi
# redis-server: the cluster tests start their own on a loopback port (the broker and the job store).
if ! command -v redis-server >/dev/null; then missing+=(redis-server); fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v brew >/dev/null; then
        for package in "${missing[@]}"; do
            case "$package" in
                chromium) brew install --cask chromium ;;
                redis-server) brew install redis ;;
                *) brew install "$package" ;;
            esac
        done
    else
        echo "error: install ${missing[*]} with your system's package manager (or set CHROMIUM to a Chromium binary)" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "== installing Python requirements into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
