#!/usr/bin/env bash
# Black-box test of a running Qwen2.5-Omni transcription service against its HTTP contract.
#
# Usage: test_awq_service.sh [BASE_URL] [AUDIO_FILE]
#   BASE_URL    default http://localhost:5000
#   AUDIO_FILE  default ../shared/audio/jfk.flac next to this script (the bundled recording)
#
# Environment:
#   MAX_NEW_TOKENS   when set, sent as the form field max_new_tokens on every transcribe request (for speed)
#   REQUEST_TIMEOUT  seconds allowed for one synchronous transcribe request (default 600; the first one may load the model)
#   ASYNC_TIMEOUT    seconds to wait for the async job to finish (default 300)
#   POLL_INTERVAL    seconds between async status polls (default 1)
#
# Prints one "PASS: ..." or "FAIL: ..." line per check and "N passed, M failed" at the end.
# Exit status: 0 all checks passed, 1 some check failed, 2 usage error, 3 server unreachable.
# Needs only bash, curl and python3 (standard library).

set -uo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
BUNDLED_AUDIO="$(cd -- "$SCRIPT_DIR/.." && pwd)/shared/audio/jfk.flac"

usage() {
    cat <<EOF
Usage: ${0##*/} [BASE_URL] [AUDIO_FILE]

Checks a running transcription service against its HTTP contract.
  BASE_URL    the service's base URL (default http://localhost:5000)
  AUDIO_FILE  a speech recording to upload (default: the bundled recording
              $BUNDLED_AUDIO)

Environment: MAX_NEW_TOKENS (added as max_new_tokens to every transcribe request),
REQUEST_TIMEOUT (default 600 s), ASYNC_TIMEOUT (default 300 s), POLL_INTERVAL (default 1 s).
Exit status: 0 all passed, 1 a check failed, 2 usage error, 3 server unreachable.
EOF
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac
if [ $# -gt 2 ]; then
    usage >&2
    exit 2
fi

BASE_URL=${1:-http://localhost:5000}
while [ "${BASE_URL%/}" != "$BASE_URL" ]; do BASE_URL=${BASE_URL%/}; done

if [ -n "${2:-}" ]; then
    AUDIO_FILE=$2
elif [ -f "$BUNDLED_AUDIO" ]; then
    AUDIO_FILE=$BUNDLED_AUDIO
else
    echo "error: no AUDIO_FILE given and the bundled recording $BUNDLED_AUDIO does not exist;" \
        "please pass a speech recording as the second argument" >&2
    usage >&2
    exit 2
fi
if [ ! -f "$AUDIO_FILE" ] || [ ! -r "$AUDIO_FILE" ]; then
    echo "error: audio file '$AUDIO_FILE' does not exist or is not readable; please pass a speech recording" >&2
    usage >&2
    exit 2
fi

for tool in curl python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is required but not installed" >&2
        exit 2
    fi
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-600}
ASYNC_TIMEOUT=${ASYNC_TIMEOUT:-300}
POLL_INTERVAL=${POLL_INTERVAL:-1}
for var in REQUEST_TIMEOUT ASYNC_TIMEOUT POLL_INTERVAL; do
    if ! is_uint "${!var}" || [ "${!var}" -lt 1 ]; then
        echo "error: $var must be a positive integer, got '${!var}'" >&2
        exit 2
    fi
done
if [ -n "${MAX_NEW_TOKENS:-}" ] && { ! is_uint "$MAX_NEW_TOKENS" || [ "$MAX_NEW_TOKENS" -lt 1 ]; }; then
    echo "error: MAX_NEW_TOKENS must be a positive integer, got '$MAX_NEW_TOKENS'" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/test_awq_service.XXXXXX") || {
    echo "error: cannot create a temporary directory" >&2
    exit 2
}
trap 'rm -rf -- "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------
# The python3 helper: response validation (stdlib only). Each check prints "PASS: label" or "FAIL: label: why".
# ---------------------------------------------------------------------------------------------------------
PY="$WORK/check.py"
cat >"$PY" <<'PYEOF'
import datetime
import email.message
import json
import math
import re
import sys
import urllib.parse
import wave

OUTPUT_FILE_RE = re.compile(r"^\d{14}(_\d+)?\.txt$")
ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)
SRT_TIME_RE = re.compile(r"^(\d{2,}):([0-5]\d):([0-5]\d),(\d{3}) --> (\d{2,}):([0-5]\d):([0-5]\d),(\d{3})$")
JOB_STATES = ("queued", "processing", "completed", "failed")
MODEL_STATES = ("unloaded", "loading", "loaded", "error")
EPS = 0.0011  # times are rounded to milliseconds


def ok(label):
    print("PASS: " + label, flush=True)


def bad(label, why):
    print("FAIL: %s: %s" % (label, why), flush=True)


def verdict(label, problems):
    if problems:
        bad(label, "; ".join(problems))
    else:
        ok(label)


def read_bytes(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def snippet(data, limit=300):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_iso(x):
    if not isinstance(x, str):
        return False
    m = ISO_RE.match(x)
    if not m:
        return False
    parts = [int(p) if p else 0 for p in m.groups()]
    try:
        datetime.datetime(*parts)
    except ValueError:
        return False
    return True


def expect_status(label, code, want, body):
    if code != str(want):
        bad(label, "expected HTTP %s, got %s; body: %s" % (want, code, snippet(body)))
        return False
    return True


def parse_json_object(label, body):
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        bad(label, "body is not JSON (%s): %s" % (exc, snippet(body)))
        return None
    if not isinstance(obj, dict):
        bad(label, "JSON body is not an object: %s" % snippet(body))
        return None
    return obj


def last_headers(path):
    """Headers of the final response in a curl -D dump (skips 100 Continue blocks)."""
    text = read_bytes(path).decode("latin-1")
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    headers = {}
    if blocks:
        for line in blocks[-1].splitlines()[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
    return headers


def attachment_name(value):
    """The file name of an attachment's Content-Disposition; filename* (RFC 6266/5987) wins over filename."""
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    if msg.get_content_disposition() != "attachment":
        return None
    extended = re.search(r"(?:^|;)\s*filename\*\s*=\s*([^';\s]*)'[^']*'([^;\s]*)", value, re.IGNORECASE)
    if extended:
        try:
            return urllib.parse.unquote(extended.group(2), encoding=extended.group(1) or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            return None
    return msg.get_filename()


def upload_stem(path):
    """The upload's name without directories or its last extension (leading dots are not extensions)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    if "." in name.lstrip("."):
        name = name.rsplit(".", 1)[0]
    return name


def check_attachment(label, hdr_path, filename):
    headers = last_headers(hdr_path)
    value = headers.get("content-disposition")
    if value is None:
        bad(label, "no Content-Disposition header")
        return
    got = attachment_name(value)
    if got != filename:
        bad(label, "expected an attachment named %r, got Content-Disposition: %s" % (filename, value))
    else:
        ok(label)


def check_segments(label, segments, duration, max_len=None, contiguous=True):
    """Segments well formed and ordered, at most max_len seconds each; contiguous from 0 to duration,
    or (speech detection on, which skips what has no speech) disjoint and inside 0..duration."""
    problems = []
    if not isinstance(segments, list) or not segments:
        bad(label, "segments is not a non-empty list: %s" % snippet(json.dumps(segments)))
        return None
    shape = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict):
            shape.append("segment %d is not an object" % i)
            continue
        if not is_int(seg.get("index")):
            shape.append("segment %d: index is not an integer (%r)" % (i, seg.get("index")))
        if not is_num(seg.get("start")) or not is_num(seg.get("end")):
            shape.append("segment %d: start/end are not numbers (%r, %r)" % (i, seg.get("start"), seg.get("end")))
        if not isinstance(seg.get("text"), str):
            shape.append("segment %d: text is not a string (%r)" % (i, seg.get("text")))
    if shape:
        bad(label, "; ".join(shape[:5]))
        return None
    first_index = segments[0]["index"]
    if first_index not in (0, 1):
        problems.append("first index is %r, expected 0 or 1" % first_index)
    for i, seg in enumerate(segments):
        if seg["index"] != first_index + i:
            problems.append("segment %d has index %r, expected %r" % (i, seg["index"], first_index + i))
            break
    if contiguous and abs(segments[0]["start"]) > EPS:
        problems.append("first segment starts at %r, expected 0" % segments[0]["start"])
    if segments[0]["start"] < -EPS:
        problems.append("first segment starts at %r, before 0" % segments[0]["start"])
    for i, seg in enumerate(segments):
        if not seg["end"] > seg["start"]:
            problems.append("segment %d ends (%r) at or before its start (%r)" % (i, seg["end"], seg["start"]))
        if max_len is not None and seg["end"] - seg["start"] > max_len + EPS:
            problems.append(
                "segment %d is %.3f s long (%r-%r), more than %g s"
                % (i, seg["end"] - seg["start"], seg["start"], seg["end"], max_len)
            )
        if i and contiguous and abs(seg["start"] - segments[i - 1]["end"]) > EPS:
            problems.append(
                "segment %d starts at %r but segment %d ends at %r (not contiguous)"
                % (i, seg["start"], i - 1, segments[i - 1]["end"])
            )
        if i and not contiguous and seg["start"] < segments[i - 1]["end"] - EPS:
            problems.append(
                "segment %d starts at %r, before segment %d ends at %r (overlap)"
                % (i, seg["start"], i - 1, segments[i - 1]["end"])
            )
    if is_num(duration) and contiguous and abs(segments[-1]["end"] - duration) > 0.01:
        problems.append("last segment ends at %r, but duration is %r" % (segments[-1]["end"], duration))
    if is_num(duration) and segments[-1]["end"] > duration + 0.01:
        problems.append("last segment ends at %r, after the duration %r" % (segments[-1]["end"], duration))
    verdict(label, problems[:5])
    return segments


def expected_duration(path):
    """The recording's length from its header, for WAV (wave) and FLAC (STREAMINFO); None when unknown."""
    lower = path.lower()
    try:
        if lower.endswith(".wav"):
            with wave.open(path, "rb") as w:
                return w.getnframes() / float(w.getframerate())
        if lower.endswith(".flac"):
            with open(path, "rb") as fh:
                head = fh.read(42)
            if head[:4] != b"fLaC" or head[4] & 0x7F != 0:
                return None
            info = head[8:42]
            rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
            total = ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")
            if rate and total:
                return total / float(rate)
    except (OSError, EOFError, wave.Error, IndexError):
        return None
    return None


def validate_srt(text, duration):
    """Problems with a SubRip document: numbered cues from 1, time lines, text, times in order."""
    problems = []
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    i, n, expected, cues, prev_start = 0, len(lines), 1, 0, 0.0
    while i < n:
        if lines[i].strip() == "":
            i += 1
            continue
        if lines[i] != str(expected):
            problems.append("line %d: expected cue number %d, got %r" % (i + 1, expected, lines[i][:80]))
            break
        i += 1
        m = SRT_TIME_RE.match(lines[i]) if i < n else None
        if not m:
            problems.append(
                "line %d: expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm', got %r" % (i + 1, lines[i][:80] if i < n else "")
            )
            break
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000.0
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000.0
        if end < start:
            problems.append("cue %d ends before it starts (%s)" % (expected, lines[i]))
        if start + EPS < prev_start:
            problems.append("cue %d starts before the previous cue (%s)" % (expected, lines[i]))
        if is_num(duration) and end > duration + 0.01:
            problems.append("cue %d ends after the audio's duration %r (%s)" % (expected, duration, lines[i]))
        prev_start = start
        i += 1
        content = 0
        while i < n and lines[i].strip() != "":
            content += 1
            i += 1
        if not content:
            problems.append("cue %d has no text" % expected)
        cues += 1
        expected += 1
    if not cues and not problems:
        problems.append("no cues")
    return cues, problems


def cmd_health(code, body_path):
    label = "GET /health -> 200 JSON with status \"ok\""
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    h = parse_json_object(label, body)
    if h is None:
        return
    if h.get("status") != "ok":
        bad(label, "status is %r" % h.get("status"))
    else:
        ok(label)
    verdict(
        "GET /health: model_loaded and gpu_available are booleans",
        ["%s is %r" % (k, h.get(k)) for k in ("model_loaded", "gpu_available") if not isinstance(h.get(k), bool)],
    )
    verdict(
        "GET /health: gpu_memory_allocated_gb and gpu_memory_reserved_gb are numbers",
        [
            "%s is %r" % (k, h.get(k))
            for k in ("gpu_memory_allocated_gb", "gpu_memory_reserved_gb")
            if not is_num(h.get(k))
        ],
    )
    verdict(
        "GET /health: timestamp is an ISO 8601 string",
        [] if is_iso(h.get("timestamp")) else ["timestamp is %r" % h.get("timestamp")],
    )
    model = h.get("model")
    if not isinstance(model, dict):
        bad("GET /health: model.state is one of %s" % "/".join(MODEL_STATES), "model is %r" % model)
    elif model.get("state") not in MODEL_STATES:
        bad("GET /health: model.state is one of %s" % "/".join(MODEL_STATES), "state is %r" % model.get("state"))
    else:
        ok("GET /health: model.state is one of %s (%s)" % ("/".join(MODEL_STATES), model["state"]))
    jobs = h.get("jobs")
    label = "GET /health: jobs.queued and jobs.running are integers"
    if not isinstance(jobs, dict):
        bad(label, "jobs is %r" % jobs)
    else:
        verdict(label, ["%s is %r" % (k, jobs.get(k)) for k in ("queued", "running") if not is_int(jobs.get(k))])


def cmd_text(code, hdr_path, body_path, audio_path):
    label = "POST /transcribe -> 200 text/plain"
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    ctype = last_headers(hdr_path).get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "text/plain":
        bad(label, "Content-Type is %r" % ctype)
    else:
        ok(label)
    stem = upload_stem(audio_path)
    check_attachment("POST /transcribe: attachment named %s.txt" % stem, hdr_path, stem + ".txt")
    label = "POST /transcribe: non-empty UTF-8 transcript"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad(label, "body is not UTF-8: %s" % exc)
        return
    if not text.strip():
        bad(label, "body is empty (%d bytes)" % len(body))
    else:
        ok("%s (%d characters)" % (label, len(text.strip())))


def cmd_json(code, body_path, audio_path):
    label = "POST /transcribe/json -> 200 JSON with status \"success\""
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    r = parse_json_object(label, body)
    if r is None:
        return
    if r.get("status") != "success":
        bad(label, "status is %r" % r.get("status"))
    else:
        ok(label)
    verdict(
        "POST /transcribe/json: transcription is a string",
        [] if isinstance(r.get("transcription"), str) else ["transcription is %r" % r.get("transcription")],
    )
    out = r.get("output_file")
    verdict(
        "POST /transcribe/json: output_file matches ^\\d{14}(_\\d+)?\\.txt$",
        [] if isinstance(out, str) and OUTPUT_FILE_RE.match(out) else ["output_file is %r" % out],
    )
    verdict(
        "POST /transcribe/json: timestamp is an ISO 8601 string",
        [] if is_iso(r.get("timestamp")) else ["timestamp is %r" % r.get("timestamp")],
    )
    duration = r.get("duration")
    want = expected_duration(audio_path)
    label = "POST /transcribe/json: duration is a positive number of seconds"
    if want is not None:
        label += " (file header says %.3f s)" % want
    if not is_num(duration) or duration <= 0:
        bad(label, "duration is %r" % duration)
    elif want is not None and abs(duration - want) > 0.1:
        bad(label, "duration is %r" % duration)
    else:
        ok("%s: %r" % (label, duration))
    check_segments(
        "POST /transcribe/json: segments have index/start/end/text, ordered, disjoint, inside 0..duration",
        r.get("segments"),
        duration,
        contiguous=False,
    )


def cmd_segdur(code, body_path, seg_duration):
    max_len = float(seg_duration)
    prefix = "POST /transcribe/json segment_duration=%s vad=false" % seg_duration
    label = prefix + " -> 200 JSON"
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    r = parse_json_object(label, body)
    if r is None:
        return
    if r.get("status") != "success":
        bad(label, "status is %r" % r.get("status"))
        return
    ok(label)
    duration = r.get("duration")
    segments = check_segments(
        prefix + ": segments contiguous from 0 to duration, each at most %s s" % seg_duration,
        r.get("segments"),
        duration,
        max_len,
    )
    if segments is None or not is_num(duration):
        return
    if duration > max_len + EPS:
        label = prefix + ": more than one segment for %.3f s of audio" % duration
        verdict(label, [] if len(segments) > 1 else ["got %d segment(s)" % len(segments)])
    else:
        label = prefix + ": exactly one segment for %.3f s of audio" % duration
        verdict(label, [] if len(segments) == 1 else ["got %d segments" % len(segments)])


def cmd_srt(code, hdr_path, body_path, audio_path, duration):
    label = "POST /transcribe/srt -> 200"
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    ok(label)
    stem = upload_stem(audio_path)
    check_attachment("POST /transcribe/srt: attachment named %s.srt" % stem, hdr_path, stem + ".srt")
    label = "POST /transcribe/srt: body is valid SRT"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad(label, "body is not UTF-8: %s" % exc)
        return
    dur = None
    try:
        dur = float(duration) if duration else None
    except ValueError:
        pass
    cues, problems = validate_srt(text, dur)
    if problems:
        bad(label, "; ".join(problems[:5]) + "; body starts: " + snippet(body, 200))
    else:
        ok("%s (%d cue(s))" % (label, cues))


def cmd_options(code, body_path, fields):
    label = "POST /transcribe/json accepts the options %s" % fields
    body = read_bytes(body_path)
    if not expect_status(label, code, 200, body):
        return
    r = parse_json_object(label, body)
    if r is None:
        return
    problems = []
    if r.get("status") != "success":
        problems.append("status is %r" % r.get("status"))
    if not isinstance(r.get("transcription"), str):
        problems.append("transcription is %r" % r.get("transcription"))
    verdict(label, problems)


def cmd_accept(code, body_path):
    label = "POST /transcribe/async -> 202 JSON with job_id and status \"queued\""
    body = read_bytes(body_path)
    if not expect_status(label, code, 202, body):
        return
    r = parse_json_object(label, body)
    if r is None:
        return
    problems = []
    job_id = r.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        problems.append("job_id is %r" % job_id)
    if r.get("status") != "queued":
        problems.append("status is %r" % r.get("status"))
    verdict(label, problems)


def cmd_poll(code, body_path, job_id):
    """Two lines: the job's status (or '?' when unusable) and a problem (or an empty line)."""
    body = read_bytes(body_path)
    if code != "200":
        print("?")
        print("HTTP %s: %s" % (code, snippet(body)))
        return
    try:
        r = json.loads(body.decode("utf-8"))
        if not isinstance(r, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        print("?")
        print("body is not a JSON object (%s): %s" % (exc, snippet(body)))
        return
    status = r.get("status")
    problems = []
    if status not in JOB_STATES:
        problems.append("status is %r" % status)
    if r.get("job_id", job_id) != job_id:
        problems.append("job_id is %r" % r.get("job_id"))
    progress = r.get("progress")
    if not isinstance(progress, dict):
        problems.append("progress is %r" % progress)
    else:
        done, total = progress.get("segments_done"), progress.get("segments_total")
        if not is_int(done) or not is_int(total):
            problems.append("progress is %r" % progress)
        elif not 0 <= done <= max(total, 0):
            problems.append("progress is inconsistent: %r" % progress)
    print(status if status in JOB_STATES else "?")
    print("status %r: %s" % (status, "; ".join(problems)) if problems else "")


def cmd_completed(code, body_path):
    label = "GET /status/<job_id> (completed): transcription, output_file, completed_at present"
    body = read_bytes(body_path)
    r = parse_json_object(label, body)
    if r is None:
        return
    problems = []
    if not isinstance(r.get("transcription"), str):
        problems.append("transcription is %r" % r.get("transcription"))
    out = r.get("output_file")
    if not isinstance(out, str) or not OUTPUT_FILE_RE.match(out):
        problems.append("output_file is %r" % out)
    if not is_iso(r.get("completed_at")):
        problems.append("completed_at is %r" % r.get("completed_at"))
    verdict(label, problems)


def cmd_error(code, body_path, want, label):
    label = "%s -> %s JSON error" % (label, want)
    body = read_bytes(body_path)
    if not expect_status(label, code, want, body):
        return
    r = parse_json_object(label, body)
    if r is None:
        return
    problems = []
    if r.get("status") != "error":
        problems.append("status is %r" % r.get("status"))
    err = r.get("error")
    if not isinstance(err, dict):
        problems.append("error is %r" % err)
    else:
        for key in ("code", "message"):
            if not isinstance(err.get(key), str) or not err.get(key).strip():
                problems.append("error.%s is %r" % (key, err.get(key)))
    if problems:
        bad(label, "; ".join(problems) + "; body: " + snippet(body))
    else:
        ok("%s (%s)" % (label, err["code"]))


def cmd_get(body_path, key):
    """Print a top-level JSON field (empty when absent)."""
    try:
        value = json.loads(read_bytes(body_path).decode("utf-8")).get(key)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return
    if value is None:
        return
    print(value if isinstance(value, str) else json.dumps(value))


def cmd_page(code, hdr_path, body_path):
    """GET /: the web page, with a policy that lets only its own files run."""
    label = "GET / -> 200 the web page (HTML, its script from /static, no inline script allowed)"
    headers = last_headers(hdr_path)
    body = read_bytes(body_path).decode("utf-8", "replace")
    policy = headers.get("content-security-policy", "")
    problems = []
    if code != "200":
        problems.append("status %s" % code)
    if not headers.get("content-type", "").startswith("text/html"):
        problems.append("content type %r" % headers.get("content-type"))
    if "script-src 'self'" not in policy or "unsafe-inline" in policy:
        problems.append("Content-Security-Policy %r" % policy)
    if 'src="/static/app.js"' not in body:
        problems.append("the page does not load /static/app.js")
    verdict(label, problems)


def cmd_quote(value):
    print(urllib.parse.quote(value, safe=""))


COMMANDS = {
    "health": cmd_health,
    "text": cmd_text,
    "json": cmd_json,
    "segdur": cmd_segdur,
    "srt": cmd_srt,
    "options": cmd_options,
    "accept": cmd_accept,
    "poll": cmd_poll,
    "completed": cmd_completed,
    "error": cmd_error,
    "get": cmd_get,
    "quote": cmd_quote,
    "page": cmd_page,
}

if __name__ == "__main__":
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except Exception as exc:  # a checker crash is a failed check, never a silent pass
        bad("checker %s" % sys.argv[1:2], "%s: %s" % (type(exc).__name__, exc))
PYEOF

# ---------------------------------------------------------------------------------------------------------
# Bash side: requests and bookkeeping.
# ---------------------------------------------------------------------------------------------------------
PASSED=0
FAILED=0
pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS: %s\n' "$1"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL: %s\n' "$1"
}

# Run a checker subcommand and count the PASS/FAIL lines it prints.
check() {
    local line seen=0
    while IFS= read -r line; do
        case $line in
            "PASS: "*)
                pass "${line#PASS: }"
                seen=1
                ;;
            "FAIL: "*)
                fail "${line#FAIL: }"
                seen=1
                ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < <(python3 "$PY" "$@" 2>&1)
    if [ "$seen" -eq 0 ]; then
        fail "checker '$1' reported nothing"
    fi
}

# http NAME MAX_TIME CURL_ARGS... URL_PATH
# The body goes to $WORK/NAME.body and the headers to $WORK/NAME.hdr; sets HTTP_CODE and CURL_RC.
http() {
    local name=$1 max_time=$2
    shift 2
    local path=${*: -1}
    local args=("${@:1:$#-1}")
    : >"$WORK/$name.body"
    : >"$WORK/$name.hdr"
    HTTP_CODE=$(curl -sS --max-time "$max_time" --connect-timeout 10 -H 'Expect:' \
        -o "$WORK/$name.body" -D "$WORK/$name.hdr" -w '%{http_code}' \
        ${args[@]+"${args[@]}"} "$BASE_URL$path" 2>"$WORK/$name.err")
    CURL_RC=$?
}

# Fail LABEL when the last request did not get a response; returns non-zero then.
responded() {
    if [ "$CURL_RC" -ne 0 ]; then
        fail "$1: no response (curl exit $CURL_RC: $(tr '\n' ' ' <"$WORK/$2.err"))"
        return 1
    fi
}

# A curl -F argument that uploads PATH as field "file", whatever characters the path holds.
file_field() {
    local p=${1//\\/\\\\}
    p=${p//\"/\\\"}
    printf 'file=@"%s"' "$p"
}

FILE_ARG=$(file_field "$AUDIO_FILE")
# Form fields added to every transcribe request.
EXTRA=()
if [ -n "${MAX_NEW_TOKENS:-}" ]; then
    EXTRA=(--form-string "max_new_tokens=$MAX_NEW_TOKENS")
fi

# transcribe NAME ENDPOINT [CURL_ARGS...]: POST the audio (plus EXTRA and any given fields) to ENDPOINT.
transcribe() {
    local name=$1 endpoint=$2
    shift 2
    http "$name" "$REQUEST_TIMEOUT" -F "$FILE_ARG" ${EXTRA[@]+"${EXTRA[@]}"} "$@" "$endpoint"
}

echo "Testing $BASE_URL with $AUDIO_FILE${MAX_NEW_TOKENS:+ (max_new_tokens=$MAX_NEW_TOKENS)}"

# --- reachability and /health ----------------------------------------------------------------------------
http health 30 /health
if [ "$CURL_RC" -ne 0 ]; then
    fail "server reachable at $BASE_URL: curl exit $CURL_RC: $(tr '\n' ' ' <"$WORK/health.err")"
    echo "error: the service at $BASE_URL is unreachable; is it running? Skipping the remaining checks." >&2
    echo "$PASSED passed, $FAILED failed"
    exit 3
fi
check health "$HTTP_CODE" "$WORK/health.body"

# --- the web page ----------------------------------------------------------------------------------------
http page 30 /
responded "GET /" page && check page "$HTTP_CODE" "$WORK/page.hdr" "$WORK/page.body"

# --- synchronous transcription ---------------------------------------------------------------------------
transcribe text /transcribe
responded "POST /transcribe" text && check text "$HTTP_CODE" "$WORK/text.hdr" "$WORK/text.body" "$AUDIO_FILE"

DURATION=""
transcribe json /transcribe/json
if responded "POST /transcribe/json" json; then
    check json "$HTTP_CODE" "$WORK/json.body" "$AUDIO_FILE"
    DURATION=$(python3 "$PY" get "$WORK/json.body" duration)
fi

transcribe segdur /transcribe/json --form-string segment_duration=3 --form-string vad=false
responded "POST /transcribe/json segment_duration=3 vad=false" segdur && check segdur "$HTTP_CODE" "$WORK/segdur.body" 3

transcribe srt /transcribe/srt
responded "POST /transcribe/srt" srt &&
    check srt "$HTTP_CODE" "$WORK/srt.hdr" "$WORK/srt.body" "$AUDIO_FILE" "$DURATION"

# Every documented option set explicitly to a valid value.
OPTION_FIELDS=(temperature=0 repetition_penalty=1.1 enable_s2t=true language=en "prompt=Transcribe the audio.")
if [ -z "${MAX_NEW_TOKENS:-}" ]; then
    OPTION_FIELDS+=(max_new_tokens=8192)
fi
OPTION_ARGS=()
for field in "${OPTION_FIELDS[@]}"; do
    OPTION_ARGS+=(--form-string "$field")
done
transcribe options /transcribe/json "${OPTION_ARGS[@]}"
responded "POST /transcribe/json with every option" options &&
    check options "$HTTP_CODE" "$WORK/options.body" "${OPTION_FIELDS[*]}${MAX_NEW_TOKENS:+ max_new_tokens=$MAX_NEW_TOKENS}"

# --- asynchronous transcription --------------------------------------------------------------------------
transcribe async /transcribe/async
if responded "POST /transcribe/async" async; then
    check accept "$HTTP_CODE" "$WORK/async.body"
    JOB_ID=$(python3 "$PY" get "$WORK/async.body" job_id)
    if [ "$HTTP_CODE" = 202 ] && [ -n "$JOB_ID" ]; then
        JOB_PATH="/status/$(python3 "$PY" quote "$JOB_ID")"
        deadline=$((SECONDS + ASYNC_TIMEOUT))
        polls=0
        poll_problem=""
        final=""
        seen_states=""
        while :; do
            http poll 30 "$JOB_PATH"
            polls=$((polls + 1))
            if [ "$CURL_RC" -ne 0 ]; then
                poll_problem=${poll_problem:-"poll $polls: no response (curl exit $CURL_RC: $(tr '\n' ' ' <"$WORK/poll.err"))"}
                break
            fi
            state="?"
            problem=""
            { IFS= read -r state && IFS= read -r problem; } < <(python3 "$PY" poll "$HTTP_CODE" "$WORK/poll.body" "$JOB_ID")
            if [ -n "${problem:-}" ] && [ -z "$poll_problem" ]; then
                poll_problem="poll $polls: $problem"
            fi
            case " $seen_states " in
                *" $state "*) ;;
                *) seen_states="${seen_states:+$seen_states }$state" ;;
            esac
            case $state in
                completed | failed)
                    final=$state
                    break
                    ;;
                "?") break ;;
            esac
            if [ "$SECONDS" -ge "$deadline" ]; then
                break
            fi
            sleep "$POLL_INTERVAL"
        done
        label="GET /status/<job_id> while polling: status in queued/processing/completed/failed with progress.segments_done/segments_total"
        if [ -n "$poll_problem" ]; then
            fail "$label: $poll_problem"
        else
            pass "$label ($polls poll(s), states: $seen_states)"
        fi
        label="async job $JOB_ID completes within ${ASYNC_TIMEOUT}s"
        case $final in
            completed)
                pass "$label"
                check completed "$HTTP_CODE" "$WORK/poll.body"
                ;;
            failed)
                fail "$label: the job failed: $(python3 "$PY" get "$WORK/poll.body" error)"
                ;;
            *)
                if [ "$SECONDS" -ge "$deadline" ]; then
                    fail "$label: still '${state:-?}' when the deadline passed"
                else
                    fail "$label: polling stopped (see above)"
                fi
                ;;
        esac
    fi
fi

# --- errors ----------------------------------------------------------------------------------------------
http nofile 60 ${EXTRA[@]+"${EXTRA[@]}"} --form-string language=en /transcribe/json
responded "POST /transcribe/json without a file" nofile &&
    check error "$HTTP_CODE" "$WORK/nofile.body" 400 "POST /transcribe/json without a file"

http nobody 60 --data-binary '' /transcribe/json
responded "POST /transcribe/json with an empty body" nobody &&
    check error "$HTTP_CODE" "$WORK/nobody.body" 400 "POST /transcribe/json with an empty body"

for field in segment_duration=0 segment_duration=301 temperature=abc; do
    name="bad_${field//[^a-z0-9]/_}"
    transcribe "$name" /transcribe/json --form-string "$field"
    responded "POST /transcribe/json $field" "$name" &&
        check error "$HTTP_CODE" "$WORK/$name.body" 400 "POST /transcribe/json $field"
done

printf 'hello\n' >"$WORK/x.mp3"
http notaudio 60 -F "$(file_field "$WORK/x.mp3")" ${EXTRA[@]+"${EXTRA[@]}"} /transcribe/json
responded "POST /transcribe/json with a text file named x.mp3" notaudio &&
    check error "$HTTP_CODE" "$WORK/notaudio.body" 415 "POST /transcribe/json with a text file named x.mp3"

http nojob 30 /status/doesnotexist
responded "GET /status/doesnotexist" nojob &&
    check error "$HTTP_CODE" "$WORK/nojob.body" 404 "GET /status/doesnotexist"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
