#!/usr/bin/env python3
"""Service-level benchmark: the real server, started through its CLI on a loopback port, driven over HTTP.

Builds the tiny random-weight checkpoint, starts `serve/qwen2_5_omni_awq.py` on a free 127.0.0.1 port with a
temporary data directory, and measures:

- throughput of POST /transcribe/json on a 10 s clip cut from jfk.flac, at concurrency 1, 4 and 16 (one
  thread and one requests.Session per client, a fixed number of requests per level, max_new_tokens=32 so
  random weights stop), with p50/p95 latency and the errors per level; a warm-up request loads the model
  first, so the load is not measured;
- /health latency (p50, p99, max) while a long transcription (10 minutes cut into 5 s segments) runs in a
  background request, polled every 20 ms, against an idle baseline.

The server is stopped at the end, also on errors and Ctrl-C. Results: <out>/service.json and service.md.
With the tiny checkpoint the numbers measure the service (HTTP, decoding, batching, threads), not a model.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    CpuShare,
    base_machine,
    build_tiny,
    busy_note,
    commit_label,
    git_state,
    latency_summary,
    load_average,
    ms,
    package_version,
    percentile,
    write_report,
)
from tests.support import JFK, Server  # noqa: E402


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the server runs on the same machine and interpreter)."""
    return {**base_machine(), "gunicorn": package_version("gunicorn")}


def write(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """<out>/service.json and service.md."""
    return write_report(doc, out, "service", markdown)


REQUEST_TIMEOUT = 300.0
LONG_TIMEOUT = 1800.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16", help="concurrency levels, comma-separated")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="length of the throughput clip")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="form field max_new_tokens")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of the long transcription")
    parser.add_argument("--long-segment", type=float, default=5.0, help="segment_duration of the long one")
    parser.add_argument("--health-interval", type=float, default=0.02, help="seconds between /health polls")
    parser.add_argument("--idle-polls", type=int, default=100, help="/health polls for the idle baseline")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra server flag, repeatable, e.g. --server-arg=--batch-size=4",
    )
    parser.add_argument("--audio", type=Path, default=JFK, help="source recording")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < 1 or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--requests and every --concurrency level must be >= 1")
    return args


# Statistics ---------------------------------------------------------------------------------------------


# Machine, build, server settings ------------------------------------------------------------------------


def server_settings(cli_args: list[str]) -> dict[str, Any]:
    """The Settings the server's own CLI builds from these flags (the server gets no ASR_* variables)."""
    spec = importlib.util.spec_from_file_location("_serve_cli", ROOT / "serve" / "qwen2_5_omni_awq.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return asdict(cli.settings_from(cli.build_parser().parse_args(cli_args), environ={}))


# Inputs -------------------------------------------------------------------------------------------------


def ffmpeg_cut(source: Path, seconds: float, out: Path, *, loop: bool) -> Path:
    """`seconds` of `source` (looped when loop), as 16 kHz mono FLAC."""
    looping = ["-stream_loop", "-1"] if loop else []
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", *looping, "-i", str(source),
        "-t", f"{seconds:.3f}", "-ac", "1", "-ar", "16000", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


# Measurements -------------------------------------------------------------------------------------------


def transcribe(session: requests.Session, url: str, name: str, data: bytes, fields: dict[str, str]) -> dict[str, Any]:
    """One POST /transcribe/json; latency, status and (on failure) the error, never raises."""
    started = time.perf_counter()
    outcome: dict[str, Any] = {"status": None, "error": None}
    try:
        response = session.post(
            url + "/transcribe/json", files={"file": (name, data)}, data=fields, timeout=REQUEST_TIMEOUT
        )
        outcome["status"] = response.status_code
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
        if response.status_code != 200 or body.get("status") != "success":
            outcome["error"] = response.text[:300]
        else:
            outcome["segments"] = len(body.get("segments", []))
            outcome["processing_time"] = body.get("processing_time")
    except (requests.RequestException, ValueError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"[:300]
    outcome["latency"] = time.perf_counter() - started
    return outcome


def throughput(url: str, clip: Path, total: int, concurrency: int, fields: dict[str, str]) -> dict[str, Any]:
    """`total` requests spread over `concurrency` threads, each with its own Session; bounded and timed."""
    data = clip.read_bytes()
    tickets: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(total):
        tickets.put(i)
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def client() -> None:
        with requests.Session() as session:
            while True:
                try:
                    tickets.get_nowait()
                except queue.Empty:
                    return
                sent = time.perf_counter() - started
                outcome = transcribe(session, url, clip.name, data, fields)
                outcome["sent"] = sent
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline = started + REQUEST_TIMEOUT * (total / concurrency + 1)
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - started
    ok = [o["latency"] for o in outcomes if o["error"] is None]
    server_side = [o["processing_time"] for o in outcomes if o.get("processing_time") is not None]
    errors = [o for o in outcomes if o["error"] is not None]
    return {
        "concurrency": concurrency,
        "requests": total,
        "completed": len(outcomes),
        "ok": len(ok),
        "errors": len(errors) + (total - len(outcomes)),
        "error_samples": sorted({f"{o['status']}: {o['error']}" for o in errors})[:5],
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(len(ok) / wall, 3),
        "audio_seconds_per_second": None,
        **{k: v for k, v in latency_summary(ok).items() if k != "count"},
        # The server's own processing_time (decode, split, queue, generate): the rest of a latency is HTTP.
        "server_processing_p50_ms": ms(percentile(server_side, 50)),
        "server_processing_p95_ms": ms(percentile(server_side, 95)),
        # Per request, in the order sent: [sent at s, latency s, server processing_time s, HTTP status].
        "timeline": [
            [round(o["sent"], 3), round(o["latency"], 3), o.get("processing_time"), o["status"]]
            for o in sorted(outcomes, key=lambda o: o["sent"])
        ],
    }


def poll_health(
    session: requests.Session, url: str, interval: float, keep_going: Any, limit: int | None = None
) -> list[dict[str, Any]]:
    """GET /health every `interval` s while keep_going() (at most `limit` times); one record per poll."""
    polls: list[dict[str, Any]] = []
    tick = time.perf_counter()
    while keep_going() and (limit is None or len(polls) < limit):
        started = time.perf_counter()
        record: dict[str, Any] = {"status": None, "pending": None}
        try:
            response = session.get(url + "/health", timeout=10)
            record["status"] = response.status_code
            record["pending"] = response.json().get("model", {}).get("pending_segments")
        except (requests.RequestException, ValueError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:200]
        record["latency"] = time.perf_counter() - started
        polls.append(record)
        tick += interval
        pause = tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            tick = time.perf_counter()  # a slow answer: poll again at once, do not try to catch up
    return polls


def health_summary(polls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles of the polls that answered 200, and how many did not."""
    ok = [p["latency"] for p in polls if p["status"] == 200]
    return {**latency_summary(ok), "errors": len(polls) - len(ok)}


def health_under_load(url: str, long_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Idle /health baseline, then /health polled while one long transcription runs in the background."""
    with requests.Session() as session:
        idle = poll_health(session, url, args.health_interval, lambda: True, limit=args.idle_polls)
        fields = {"segment_duration": f"{args.long_segment:g}", "max_new_tokens": str(args.max_new_tokens)}
        data = long_file.read_bytes()
        result: dict[str, Any] = {}

        def long_request() -> None:
            with requests.Session() as own:
                started = time.perf_counter()
                try:
                    response = own.post(
                        url + "/transcribe/json",
                        files={"file": (long_file.name, data)},
                        data=fields,
                        timeout=LONG_TIMEOUT,
                    )
                    result["status"] = response.status_code
                    body = response.json()
                    result["ok"] = response.status_code == 200 and body.get("status") == "success"
                    result["segments"] = len(body.get("segments", []))
                    result["duration"] = body.get("duration")
                    result["processing_time"] = body.get("processing_time")
                    result["stop_reasons"] = dict(Counter(s.get("stop_reason") for s in body.get("segments", [])))
                    if not result["ok"]:
                        result["error"] = response.text[:300]
                except (requests.RequestException, ValueError) as exc:
                    result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
                result["latency_seconds"] = round(time.perf_counter() - started, 3)

        worker = threading.Thread(target=long_request, name="long-transcription", daemon=True)
        deadline = time.perf_counter() + LONG_TIMEOUT + 30
        worker.start()
        during = poll_health(
            session, url, args.health_interval, lambda: worker.is_alive() and time.perf_counter() < deadline
        )
        worker.join(max(0.0, deadline - time.perf_counter()))
    busy = [p for p in during if p["pending"]]
    return {
        "poll_interval_ms": ms(args.health_interval),
        "idle": health_summary(idle),
        "during_long_transcription": health_summary(during),
        "during_inference": {
            **health_summary(busy),
            "note": "polls whose answer showed segments pending in the engine (inference under way)",
        },
        "max_pending_segments": max((p["pending"] or 0 for p in during), default=0),
        "long_transcription": {
            "audio_minutes": args.long_minutes,
            "segment_duration": args.long_segment,
            "max_new_tokens": args.max_new_tokens,
            **result,
        },
    }


def log_findings(log: str) -> dict[str, Any]:
    """How often the server log shows trouble (tracebacks, errors, worker timeouts), with sample lines."""
    patterns = {
        "tracebacks": r"Traceback \(most recent call last\)",
        "error_lines": r"\bERROR\b|\[ERROR\]|\[CRITICAL\]",
        "worker_timeouts": r"WORKER TIMEOUT",
        "warnings": r"\bWARNING\b|\[WARNING\]",
    }
    found: dict[str, Any] = {name: len(re.findall(pattern, log)) for name, pattern in patterns.items()}
    lines = [line for line in log.splitlines() if re.search("|".join(patterns.values()), line)]
    found["samples"] = list(dict.fromkeys(line.strip()[:200] for line in lines))[:5]
    return found


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start the server, measure, stop it (always); the results document."""
    load_at_start = load_average()
    cpu_share = CpuShare()
    checkpoint = build_tiny(work / "tiny")
    clip = ffmpeg_cut(args.audio, args.clip_seconds, work / f"clip-{args.clip_seconds:g}s.flac", loop=False)
    long_file = ffmpeg_cut(args.audio, args.long_minutes * 60, work / f"long-{args.long_minutes:g}min.flac", loop=True)
    # Keep the model loaded for the whole run; everything else is the server's default.
    server_args = ["--idle-timeout", "0", *args.server_arg]
    data_dir = work / "data"
    server = Server(checkpoint, data_dir, args=server_args)
    cli_args = [
        "--checkpoint-path", str(checkpoint), "--local-model", "--host", "127.0.0.1",
        "--port", str(server.port), "--data-dir", str(data_dir), *server_args,
    ]  # fmt: skip
    settings = server_settings(cli_args)
    fields = {"max_new_tokens": str(args.max_new_tokens)}
    print(f"starting the server on {server.url} ...", flush=True)
    server.start()
    try:
        with requests.Session() as session:
            warm = transcribe(session, server.url, clip.name, clip.read_bytes(), fields)
        if warm["error"] is not None:
            raise RuntimeError(f"warm-up request failed: {warm['status']} {warm['error']}")
        print(f"warm-up (model load) took {warm['latency']:.1f} s", flush=True)
        health = requests.get(server.url + "/health", timeout=10).json()
        levels = []
        for concurrency in args.concurrency:
            row = throughput(server.url, clip, args.requests, concurrency, fields)
            row["audio_seconds_per_second"] = round(row["requests_per_second"] * args.clip_seconds, 1)
            levels.append(row)
            print(
                f"concurrency {concurrency}: {row['requests_per_second']} req/s, p50 {row['p50_ms']} ms, "
                f"p95 {row['p95_ms']} ms, errors {row['errors']}",
                flush=True,
            )
        print(f"/health every {args.health_interval * 1000:g} ms during a {args.long_minutes:g} min file ...")
        health_load = health_under_load(server.url, long_file, args)
        during = health_load["during_long_transcription"]
        print(
            f"/health during: {during['count']} polls, p50 {during['p50_ms']} ms, p99 {during['p99_ms']} ms, "
            f"max {during['max_ms']} ms; transcription ok: {health_load['long_transcription'].get('ok')}",
            flush=True,
        )
        after = requests.get(server.url + "/health", timeout=10).json()
    finally:
        server.stop()
    findings = log_findings(server.log())
    return {
        "benchmark": "service",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "bench/service.py", *sys.argv[1:]]),
        "machine": {
            **machine(),
            "load_average_1m": {"start": load_at_start, "end": load_average()},
            "other_processes_cpu": cpu_share.others(),
        },
        "git": git_state(),
        "server": {
            "checkpoint": "tiny (serve/make_tiny_checkpoint.py)",
            "cli_flags": server_args,
            "settings": {k: v for k, v in settings.items() if k not in ("checkpoint_path", "data_dir", "port")},
            "health_after_warmup": health,
            "health_at_end": {"model": after.get("model"), "jobs": after.get("jobs")},
            "warmup_seconds": round(warm["latency"], 2),
            "log_findings": findings,
        },
        "throughput": {
            "route": "POST /transcribe/json",
            "clip_seconds": args.clip_seconds,
            "form_fields": fields,
            "levels": levels,
        },
        "health": health_load,
    }


# Output -------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the results document."""
    m, s, t, h = doc["machine"], doc["server"], doc["throughput"], doc["health"]
    settings = s["settings"]
    model = s["health_after_warmup"].get("model", {})
    lines = [
        "# Service benchmark (tiny checkpoint)",
        "",
        f"`{doc['command']}` ({doc['created']}, {commit_label(doc['git'])})",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']}, "
        f"gunicorn {m['gunicorn']}. Client and server share the machine; its 1-minute load average was "
        f"{m['load_average_1m']['start']} at the start and {m['load_average_1m']['end']} at the end.",
        "",
        f"Server: `serve/qwen2_5_omni_awq.py {' '.join(s['cli_flags'])}` on 127.0.0.1, tiny random-weight "
        f"checkpoint on {model.get('device')}; variant {settings.get('variant')}, batch size "
        f"{settings.get('batch_size')}, token budget {settings.get('token_budget', '-')}, "
        f"{settings.get('threads')} request threads, {settings.get('job_workers')} job workers. "
        f"Warm-up (model load) {s['warmup_seconds']} s, not measured.",
        "",
        f"## {t['route']}, {t['clip_seconds']:g} s clip, max_new_tokens={t['form_fields']['max_new_tokens']}",
        "",
        "| concurrency | requests | ok | errors | wall s | req/s | audio s/s | p50 ms | p95 ms | max ms "
        "| server p50 ms | server p95 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in t["levels"]:
        cells = [
            row["concurrency"], row["requests"], row["ok"], row["errors"], row["wall_seconds"],
            row["requests_per_second"], row["audio_seconds_per_second"], row["p50_ms"], row["p95_ms"], row["max_ms"],
            row["server_processing_p50_ms"], row["server_processing_p95_ms"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    for row in t["levels"]:
        if row["error_samples"]:
            lines += ["", f"Errors at concurrency {row['concurrency']}: " + "; ".join(row["error_samples"])]
    long = h["long_transcription"]
    lines += [
        "",
        f"## /health every {h['poll_interval_ms']:g} ms",
        "",
        f"Long transcription: {long['audio_minutes']:g} min of audio, segment_duration={long['segment_duration']:g}"
        f", max_new_tokens={long['max_new_tokens']}: {'succeeded' if long.get('ok') else 'FAILED'} "
        f"(HTTP {long.get('status')}, {long.get('segments')} segments, {long.get('latency_seconds')} s; "
        f"at most {h['max_pending_segments']} segments pending in the engine)."
        + (f" Error: {long.get('error')}" if not long.get("ok") else ""),
        "",
        "| while | polls | errors | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("idle", "idle"),
        ("long transcription running", "during_long_transcription"),
        ("of which: segments pending", "during_inference"),
    ):
        row = h[key]
        cells = [label, row["count"], row["errors"], row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    findings = s["log_findings"]
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in findings.items() if k != "samples")
    lines += ["", f"Server log: {counts}."]
    lines += [f"- `{line}`" for line in findings.get("samples", [])]
    if note := busy_note(m):
        lines += ["", f"**Caution**: {note}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    args = parse_args(argv)
    if not args.audio.is_file():
        raise SystemExit(f"error: recording not found: {args.audio}")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        doc = benchmark(args, Path(tmp))
    for path in write(doc, args.out):
        print(f"wrote {path}")
    print(markdown(doc))


if __name__ == "__main__":
    main()
