#!/usr/bin/env python3
"""Hardening benchmark: /health under slow clients, and recovery from a full disk, on the real server.

Slow clients: for each count of connections (12, 64 and 256), that many sockets send a request head one byte
a second (slowloris) while /health is polled every 50 ms for --seconds; p50, p99 and max latency, the
polls that failed (5 s budget, the compose healthcheck's), and how many slow connections the server had
dropped (408) by the end. Run against this service's worker (`serve/http_worker.py`) and, for comparison,
against gunicorn's stock gthread worker with the same settings (`--worker-class gthread`), both with
--threads 8 and the default 10 s header timeout.

Full disk: the data directory on a 96 MB tmpfs (needs root; skipped otherwise), one long job running and
two queued; the disk is filled, then freed. Measured: /health latency and status while full, the answer to
an upload while full, the time from freeing the space to the first accepted upload, and to every job done.

Results: <out>/hardening.json and hardening.md. The tiny random-weight checkpoint stands in for the model:
the numbers measure the HTTP layer, the job runner and the disk handling, not generation.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
from tests.support import AISHELL, JFK, Server, SlowHeads, make_audio, post  # noqa: E402

COUNTS = (12, 64, 256)
THREADS = 8
HEALTH_BUDGET = 5.0


def poll_health(url: str, seconds: float, interval: float = 0.05) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            ok = requests.get(url + "/health", timeout=HEALTH_BUDGET).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            latencies.append(time.monotonic() - started)
        else:
            errors += 1
        time.sleep(interval)
    return latencies, errors


def slow_clients(tiny: Path, work: Path, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for worker in ("serve.http_worker.Worker", "gthread"):
        for count in COUNTS:
            data = work / f"slow-{worker.rsplit('.', 1)[-1]}-{count}" / "data"
            data.parent.mkdir(parents=True)
            env_backup = os.environ.get("GUNICORN_CMD_ARGS")
            if worker == "gthread":
                os.environ["GUNICORN_CMD_ARGS"] = "--worker-class gthread"
            try:
                server = Server(tiny, data, ["--threads", str(THREADS)]).start()
            finally:
                if env_backup is None:
                    os.environ.pop("GUNICORN_CMD_ARGS", None)
                else:
                    os.environ["GUNICORN_CMD_ARGS"] = env_backup
            try:
                idle, _ = poll_health(server.url, 2)
                loris = SlowHeads(server.port, count, padding=4000)
                time.sleep(2)
                latencies, errors = poll_health(server.url, seconds)
                dropped = loris.dropped
                loris.end()
            finally:
                server.stop()
            rows.append(
                {
                    "worker": worker,
                    "slow_connections": count,
                    "polls": len(latencies) + errors,
                    "failed_polls": errors,
                    "idle_p50_ms": latency_summary(idle)["p50_ms"],
                    **{k: v for k, v in latency_summary(latencies).items() if k != "count"},
                    "dropped_by_server": dropped,
                }
            )
            print(rows[-1], flush=True)
    return rows


def full_disk(tiny: Path, work: Path) -> dict[str, Any]:
    mount = work / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs: {made.stderr.decode().strip()}"}
    server = Server(tiny, mount / "data", ["--min-free-space", "8M", "--job-workers", "1", "--max-new-tokens", "4"])
    server.start()
    try:
        long = make_audio(work, 900, "long.mp3")
        running = post(server, "/transcribe/async", long, segment_duration="1").json()["job_id"]
        while requests.get(f"{server.url}/status/{running}", timeout=5).json()["status"] != "processing":
            time.sleep(0.1)
        queued = [post(server, "/transcribe/async", AISHELL).json()["job_id"] for _ in range(2)]
        filler = mount / "filler"
        with contextlib.suppress(OSError), open(filler, "ab") as out:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        filled = time.monotonic()
        latencies, errors = poll_health(server.url, 5)
        health = requests.get(server.url + "/health", timeout=5).json()
        refused = post(server, "/transcribe/json", JFK)
        time.sleep(3)
        statuses_while_full = {
            job_id: requests.get(f"{server.url}/status/{job_id}", timeout=5).json()["status"]
            for job_id in [running, *queued]
        }
        full_seconds = time.monotonic() - filled
        filler.unlink()
        freed = time.monotonic()
        while post(server, "/transcribe/json", JFK).status_code != 200:
            time.sleep(0.1)
        first_upload = time.monotonic() - freed
        finished: dict[str, str] = {}
        deadline = time.monotonic() + 600
        while len(finished) < 3 and time.monotonic() < deadline:
            for job_id in [running, *queued]:
                status = requests.get(f"{server.url}/status/{job_id}", timeout=5).json()["status"]
                if status in ("completed", "failed", "cancelled"):
                    finished[job_id] = status
            time.sleep(0.2)
        all_done = time.monotonic() - freed
        log = server.log()
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return {
        "disk_mb": 96,
        "reserve_mb": 8,
        "full_for_seconds": round(full_seconds, 1),
        "health_while_full": {
            "polls": len(latencies) + errors,
            "failed_polls": errors,
            **{k: v for k, v in latency_summary(latencies).items() if k != "count"},
            "status": health["status"],
            "problems": health["problems"],
        },
        "upload_while_full": {"status": refused.status_code, "code": refused.json()["error"]["code"]},
        "jobs_while_full": statuses_while_full,
        "seconds_to_first_accepted_upload": round(first_upload, 2),
        "seconds_to_every_job_finished": round(all_done, 1),
        "jobs_at_the_end": finished,
        "runner_thread_died": "Exception in thread" in log,
    }


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# Hardening benchmark (tiny checkpoint)",
        "",
        f"`python3 bench/hardening.py` ({doc['date']}, {commit_label(doc['git'])})",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}, gunicorn {m['gunicorn']}. Client and "
        f"server share the machine; load average {doc['load_average_start']} at the start, "
        f"{doc['load_average_end']} at the end; other processes used {doc['other_processes_cpu']['share']} of "
        "the CPU time.",
        "",
        f"## /health while slow clients trickle their headers (1 byte/s), `--threads {THREADS}`",
        "",
        f"/health polled every 50 ms for {doc['seconds']} s with a {HEALTH_BUDGET:g} s budget. `dropped` is how "
        "many slow connections the server had closed by the end (408 at the 10 s header deadline).",
        "",
        "| worker | slow connections | polls | failed | idle p50 ms | p50 ms | p99 ms | max ms | dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["slow_clients"]:
        name = "this service's (`serve/http_worker.py`)" if r["worker"] != "gthread" else "gunicorn's gthread"
        lines.append(
            f"| {name} | {r['slow_connections']} | {r['polls']} | {r['failed_polls']} | {r['idle_p50_ms']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['dropped_by_server']} |"
        )
    disk = doc["full_disk"]
    lines += ["", "## A full disk and the recovery", ""]
    if "skipped" in disk:
        lines.append(f"Skipped: {disk['skipped']}")
    else:
        h = disk["health_while_full"]
        lines += [
            f"Data directory on a {disk['disk_mb']} MB tmpfs with a {disk['reserve_mb']} MB reserve; one 900 s job "
            "(1 s segments) running and two queued when the disk was filled to the last byte; freed "
            f"{disk['full_for_seconds']} s later.",
            "",
            "| measure | figure |",
            "|---|---|",
            f"| /health while full | {h['polls']} polls, {h['failed_polls']} failed, p50 {h['p50_ms']} ms, "
            f"p99 {h['p99_ms']} ms, status `{h['status']}` |",
            f"| an upload while full | {disk['upload_while_full']['status']} `{disk['upload_while_full']['code']}` |",
            f"| jobs while full | {', '.join(sorted(disk['jobs_while_full'].values()))} |",
            f"| from freeing the space to the first accepted upload | {disk['seconds_to_first_accepted_upload']} s |",
            f"| from freeing the space to every job finished | {disk['seconds_to_every_job_finished']} s |",
            f"| jobs at the end | {', '.join(sorted(disk['jobs_at_the_end'].values()))} |",
            f"| a runner thread died | {'yes' if disk['runner_thread_died'] else 'no'} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--seconds", type=float, default=15.0, help="polling time per slow-client scenario")
    args = parser.parse_args()
    cpu = CpuShare()
    started_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = build_tiny(work / "tiny")
        slow = slow_clients(tiny, work, args.seconds)
        disk = full_disk(tiny, work)
        shutil.rmtree(work / "tiny", ignore_errors=True)
    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": {**base_machine(), "gunicorn": package_version("gunicorn")},
        "load_average_start": started_load,
        "load_average_end": load_average(),
        "other_processes_cpu": cpu.others(),
        "seconds": args.seconds,
        "slow_clients": slow,
        "full_disk": disk,
    }
    json_path, md_path = write_report(doc, args.out, "hardening", markdown)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
