#!/usr/bin/env bash
# The smoke test in one command, from a fresh clone: set up the test virtualenv if needed (scripts/setup.sh),
# build the tiny random-weight checkpoint, start the service on it on a loopback port, run test_awq_service.sh
# against it, and stop the service. Nothing is downloaded but the pinned packages; nothing is left behind.
# Run from a terminal, it then keeps the service up so that its web page (http://127.0.0.1:5055/) can be tried
# in a browser, until Ctrl-C.
#
# Usage: scripts/smoke.sh [AUDIO_FILE]   (default: ../shared/audio/jfk.flac, else a generated tone)
# Environment: VENV (default .venv), PORT (default 5055, else a free one when 5055 is taken),
#              SMOKE_SERVE (1: keep serving after the checks, 0: stop; default: 1 when run from a terminal).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if ! "$VENV/bin/python" -c "import flask, gunicorn, transformers, torch" 2>/dev/null; then
    ./scripts/setup.sh
fi
PY="$VENV/bin/python"

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

AUDIO=${1:-../shared/audio/jfk.flac}
if [ ! -f "$AUDIO" ]; then
    AUDIO="$WORK/tone.wav"
    ffmpeg -nostdin -v error -f lavfi -i "sine=f=440:d=5" "$AUDIO"
fi
if [ -z "${PORT:-}" ]; then
    # 5055, the port the README names, unless something already listens there.
    PORT=$("$PY" -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 5055))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
SERVE=${SMOKE_SERVE:-}
if [ -z "$SERVE" ]; then
    if [ -t 0 ] && [ -t 1 ]; then SERVE=1; else SERVE=0; fi
fi

echo "== building the tiny checkpoint"
# Its log (library warnings about the random weights' config) is shown only if the build fails.
if ! "$PY" serve/make_tiny_checkpoint.py "$WORK/tiny" >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    exit 1
fi
echo "== starting the service on 127.0.0.1:$PORT (log: $WORK/server.log, kept until the end)"
"$PY" serve/qwen2_5_omni_awq.py --checkpoint-path "$WORK/tiny" --local-model --port "$PORT" \
    --data-dir "$WORK/data" --idle-timeout 5 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log" >&2; echo "error: the service exited" >&2; exit 1; fi
    sleep 0.5
done
echo "== running test_awq_service.sh"
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-32} ./test_awq_service.sh "http://127.0.0.1:$PORT" "$AUDIO"
if [ "$SERVE" = 1 ]; then
    echo
    echo "== the service keeps running: open http://127.0.0.1:$PORT/ in a browser to transcribe a file"
    echo "   (tiny random weights: the text is gibberish, every step is real). Ctrl-C stops it."
    trap 'exit 0' INT TERM
    wait "$SERVER_PID"
fi
