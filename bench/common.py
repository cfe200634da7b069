"""What the benchmarks share: the machine they ran on, the commit, the tiny checkpoint, the report files."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuShare:
    """CPU time other processes took from this machine during the run (it may be shared with other work).

    /proc/stat's busy time over all CPUs, minus this process's and its waited-for descendants' (the server,
    ffmpeg) CPU time; Linux only, None elsewhere.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy, self.own = self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others(self) -> dict[str, Any]:
        """CPU seconds others used, and their share of the machine's capacity over the run."""
        busy = self._busy()
        if busy is None or self.busy is None:
            return {"cpu_seconds": None, "share": None}
        others = max(0.0, (busy - self.busy) - (self._own() - self.own))
        capacity = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        return {"cpu_seconds": round(others, 1), "share": round(others / capacity, 3)}


def busy_note(m: dict[str, Any]) -> str | None:
    """A warning when other processes took a noticeable share of the CPUs during the run."""
    share = m["other_processes_cpu"]["share"]
    if share is None or share < 0.1:
        return None
    return (
        f"Other processes used {share:.0%} of this machine's CPU time during the run. torch's intra-op "
        "(OpenMP) threads, one per CPU, stall when another process holds a CPU, so CPU generation (batched "
        "most of all) can be several times slower than on an idle machine."
    )


def load_average() -> float | None:
    """The 1-minute load average: the machine may be shared, and the numbers mean little when it is busy."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def git_state() -> dict[str, Any]:
    """The commit measured, and which files under app/ and serve/ differed from it."""

    def run(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout

    changed = [line[3:] for line in run("status", "--porcelain", "--", "app", "serve").splitlines() if line]
    return {"commit": run("rev-parse", "HEAD").strip() or None, "uncommitted_changes": changed}


def commit_label(git: dict[str, Any]) -> str:
    text = f"commit {str(git['commit'])[:10]}"
    if git["uncommitted_changes"]:
        text += " plus uncommitted changes in " + ", ".join(git["uncommitted_changes"])
    return text


def base_machine() -> dict[str, Any]:
    """The processor, interpreter and library versions every report records."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
    }


def build_tiny(out: Path) -> Path:
    """The project's tiny random-weight Qwen2.5-Omni checkpoint (serve/make_tiny_checkpoint.py)."""
    tool = ROOT / "serve" / "make_tiny_checkpoint.py"
    subprocess.run([sys.executable, str(tool), str(out)], check=True, capture_output=True)
    return out


def write_report(
    doc: dict[str, Any], out: Path, stem: str, markdown: Callable[[dict[str, Any]], str]
) -> tuple[Path, Path]:
    """<out>/<stem>.json and <stem>.md."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(markdown(doc))
    return json_path, md_path


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded for the results file."""
    return None if seconds is None else round(seconds * 1000, 1)


def latency_summary(latencies: Sequence[float]) -> dict[str, Any]:
    """Count and p50/p95/p99/max of latencies in seconds, as milliseconds."""
    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies)) if latencies else None,
    }
