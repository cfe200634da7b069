#!/usr/bin/env python3
"""Cluster benchmark: audio seconds per second with one and with two GPU workers, and the broker's added latency.

Everything real on this machine: a redis-server on a loopback port, an HTTP node started with --broker, and
workers (serve/worker.py) on the tiny random-weight checkpoint on the CPU, each given one core's worth of
threads (OMP_NUM_THREADS=1) so that two workers can use the two cores a small machine has. It measures:

- throughput: `--requests` POST /transcribe/json of a `--clip-seconds` clip (fixed segments, VAD off,
  max_new_tokens fixed so random weights stop at the same length), `--concurrency` at a time, with one
  worker and then with two; audio seconds per second of wall time, the segments each worker ran and its
  segments per generate call (its batching). A second GPU pays when the first is saturated: its batches
  full and segments waiting. On the CPU the tiny model's step costs about the same at any batch size, so a
  worker with large batches takes the whole load alone; `--batch-size 2` (the default here) with 8 requests
  in flight puts the workers in the saturated regime a GPU reaches at its own batch size;
- the broker's added latency per segment: one-segment requests sent one after another to the cluster and
  to a single-process server with the same flags and threads; the difference of their medians is what the
  queue adds (Redis round trips, the Celery task, the worker's batch gathering, the reply), less what the
  cluster gains by running the model in a process of its own (no GIL shared with the HTTP side).

With the tiny checkpoint the numbers measure the cluster's machinery, not a model: the ratio of the two
throughputs is what matters. On a machine with fewer cores than workers plus the HTTP node, the workers
share cores and the ratio says so. Results: <out>/cluster-cpu-tiny.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
    commit_label,
    git_state,
    latency_summary,
    load_average,
    package_version,
    write_report,
)
from bench.service import ffmpeg_cut, throughput, transcribe  # noqa: E402
from tests.support import JFK, RedisServer, Server, Worker, wait_for  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--clip-seconds", type=float, default=60.0, help="length of the throughput clip")
    parser.add_argument("--segment", type=float, default=10.0, help="segment_duration (fixed cuts, VAD off)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="form field max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=2, help="each worker's --batch-size")
    parser.add_argument("--latency-requests", type=int, default=30, help="one-segment requests per server")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    return parser.parse_args(argv)


def live(server: Server) -> dict[int, dict[str, Any]]:
    """The workers /health lists, by pid."""
    workers = requests.get(server.url + "/health", timeout=30).json()["cluster"]["workers"]
    return {w["pid"]: w for w in workers}


def run_throughput(
    server: Server, clip: Path, workers: list[Worker], args: argparse.Namespace, fields: dict[str, str]
) -> dict[str, Any]:
    """One throughput run, with each worker's share and batching from /health (heartbeats settle first)."""
    time.sleep(3)  # two heartbeats (every 2 s): the counts include everything before this run
    before = live(server)
    row = throughput(server.url, clip, args.requests, args.concurrency, fields)
    row["audio_seconds_per_second"] = round(row["requests_per_second"] * args.clip_seconds, 1)
    del row["timeline"]
    time.sleep(3)  # two heartbeats: the counts include the last batch
    after = live(server)
    row["workers"] = [
        {
            "pid": w.pid,
            "segments": after[w.pid]["segments_done"] - before[w.pid]["segments_done"],
            "generate_calls": after[w.pid]["generate_calls"] - before[w.pid]["generate_calls"],
            "segments_generated": after[w.pid]["segments_generated"] - before[w.pid]["segments_generated"],
        }
        for w in workers
    ]
    for worker in row["workers"]:
        calls = worker["generate_calls"]
        worker["segments_per_call"] = round(worker["segments_generated"] / calls, 2) if calls else None
    return row


def one_segment_latency(server: Server, clip: Path, count: int) -> dict[str, Any]:
    """`count` one-segment requests, one after another: the latency of a lone segment through the server."""
    fields = {"max_new_tokens": "8", "segment_duration": "30", "vad": "false"}
    latencies = []
    with requests.Session() as session:
        transcribe(session, server.url, clip.name, clip.read_bytes(), fields)  # warm
        for _ in range(count):
            outcome = transcribe(session, server.url, clip.name, clip.read_bytes(), fields)
            if outcome["error"] is not None:
                raise RuntimeError(f"a one-segment request failed: {outcome['error']}")
            latencies.append(outcome["latency"])
    return {"median_ms": round(statistics.median(latencies) * 1000, 1), **latency_summary(latencies)}


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start Redis, the HTTP node and the workers; measure; stop everything (always)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    load_at_start = load_average()
    cpu_share = CpuShare()
    checkpoint = build_tiny(work / "tiny")
    clip = ffmpeg_cut(JFK, args.clip_seconds, work / f"clip-{args.clip_seconds:g}s.flac", loop=True)
    short = ffmpeg_cut(JFK, 2.0, work / "one-segment.flac", loop=False)
    fields = {"max_new_tokens": str(args.max_new_tokens), "segment_duration": f"{args.segment:g}", "vad": "false"}
    worker_args = ["--batch-size", str(args.batch_size), "--aligner", "none", "--idle-timeout", "0"]
    redis_server = RedisServer(work / "redis").start()
    (work / "http").mkdir()
    node_args = ["--broker", redis_server.url, "--aligner", "none", "--job-workers", "2", "--idle-timeout", "0"]
    server = Server(checkpoint, work / "http" / "data", node_args)
    workers: list[Worker] = []
    single: Server | None = None
    results: dict[str, Any] = {}
    try:
        workers.append(Worker(checkpoint, redis_server.url, work / "worker-0.log", worker_args).start())
        server.start()
        wait_for(lambda: workers[0].pid in live(server), 120, "the first worker", interval=0.5)
        with requests.Session() as session:
            transcribe(session, server.url, clip.name, clip.read_bytes(), fields)  # loads the model
        print("one worker ...", flush=True)
        results["one_worker"] = run_throughput(server, clip, workers, args, fields)
        print(f"  {results['one_worker']['audio_seconds_per_second']} audio s/s", flush=True)
        print("latency through the broker ...", flush=True)
        results["latency_cluster"] = one_segment_latency(server, short, args.latency_requests)
        workers.append(Worker(checkpoint, redis_server.url, work / "worker-1.log", worker_args).start())

        def both_loaded() -> bool:
            with requests.Session() as session:
                transcribe(session, server.url, clip.name, clip.read_bytes(), fields)
            found = live(server)
            return all(w.pid in found and found[w.pid]["model_state"] == "loaded" for w in workers)

        wait_for(both_loaded, 180, "the second worker to load", interval=0.5)
        print("two workers ...", flush=True)
        results["two_workers"] = run_throughput(server, clip, workers, args, fields)
        print(f"  {results['two_workers']['audio_seconds_per_second']} audio s/s", flush=True)
        health = requests.get(server.url + "/health", timeout=30).json()
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
        redis_server.stop()
    print("latency in one process ...", flush=True)
    single = Server(checkpoint, work / "single" / "data", ["--aligner", "none", "--idle-timeout", "0"])
    (work / "single").mkdir()
    single.start()
    try:
        results["latency_single"] = one_segment_latency(single, short, args.latency_requests)
    finally:
        single.stop()
    one, two = results["one_worker"], results["two_workers"]
    ratio = two["audio_seconds_per_second"] / one["audio_seconds_per_second"] if one["audio_seconds_per_second"] else 0
    added = results["latency_cluster"]["median_ms"] - results["latency_single"]["median_ms"]
    return {
        "benchmark": "cluster",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "bench/cluster.py", *sys.argv[1:]]),
        "machine": {
            **base_machine(),
            "celery": package_version("celery"),
            "redis_py": package_version("redis"),
            "redis_server": subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "load_average_1m": {"start": load_at_start, "end": load_average()},
            "other_processes_cpu": cpu_share.others(),
        },
        "git": git_state(),
        "setup": {
            "checkpoint": "tiny (serve/make_tiny_checkpoint.py), cpu, OMP_NUM_THREADS=1 per process",
            "worker_flags": worker_args,
            "node_flags": [a for a in node_args if not a.startswith("redis://")],
            "clip_seconds": args.clip_seconds,
            "form_fields": fields,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "cluster_at_end": health.get("cluster", {}).get("workers"),
        },
        "results": results,
        "two_over_one": round(ratio, 2),
        "broker_added_ms_per_segment": round(added, 1),
    }


def markdown(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the results document."""
    m, s, r = doc["machine"], doc["setup"], doc["results"]
    lines = [
        "# Cluster benchmark (tiny checkpoint, CPU)",
        "",
        f"`{doc['command']}` ({doc['created']}, {commit_label(doc['git'])})",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']}, celery "
        f"{m['celery']}, redis-py {m['redis_py']}, {m['redis_server'].split(' sha=')[0]}. Redis, the HTTP node, the "
        f"workers and the client share the machine; its 1-minute load average was "
        f"{m['load_average_1m']['start']} at the start and {m['load_average_1m']['end']} at the end.",
        "",
        f"Workers: `serve/worker.py {' '.join(s['worker_flags'])}` on {s['checkpoint']}. HTTP node: "
        f"`serve/qwen2_5_omni_awq.py --broker ... {' '.join(s['node_flags'][2:])}`. Load: {s['requests']} "
        f"POST /transcribe/json of a {s['clip_seconds']:g} s clip, {s['concurrency']} at a time, with "
        f"{', '.join(f'{k}={v}' for k, v in s['form_fields'].items())}.",
        "",
        "## Throughput",
        "",
        "| workers | ok | errors | wall s | audio s/s | p50 ms | p95 ms | segments per worker "
        "| segments per generate call |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for count, key in ((1, "one_worker"), (2, "two_workers")):
        row = r[key]
        lines.append(
            f"| {count} | {row['ok']} | {row['errors']} | {row['wall_seconds']} | {row['audio_seconds_per_second']} "
            f"| {row['p50_ms']} | {row['p95_ms']} | {', '.join(str(w['segments']) for w in row['workers'])} "
            f"| {', '.join(str(w['segments_per_call']) for w in row['workers'])} |"
        )
    lines += [
        "",
        f"Two workers over one: **{doc['two_over_one']}x**. Each worker is saturated here (its batch of "
        f"{s['worker_flags'][1]} is full and segments wait), the regime in which a second GPU adds throughput; the "
        "HTTP node, Redis and the client share the same two cores with the workers.",
        "",
        "## A lone segment's latency",
        "",
        "| server | requests | median ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, key in (("one process", "latency_single"), ("cluster, through Redis and Celery", "latency_cluster")):
        row = r[key]
        lines.append(f"| {name} | {row['count']} | {row['median_ms']} | {row['p95_ms']} | {row['max_ms']} |")
    lines += [
        "",
        f"Cluster minus one process: **{doc['broker_added_ms_per_segment']} ms** per lone segment (medians). This is "
        "the queue's cost (Redis round trips, the Celery task, the worker's 20 ms wait for a batch to fill, the "
        "reply) net of what the cluster gains by running the model in a process of its own, which shares no "
        "interpreter lock with the HTTP side; with a real model, a segment's generation takes hundreds of "
        "milliseconds, and this difference is small beside it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write its report."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        doc = benchmark(args, Path(tmp))
    json_path, md_path = write_report(doc, args.out, "cluster-cpu-tiny", markdown)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
