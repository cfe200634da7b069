#!/usr/bin/env python3
"""Audio front-end benchmark: an hour of MP3 to 16 kHz mono float32 segments, three ways, side by side.

    python3 bench/frontend.py [--minutes 60] [--out bench/results] [--repeat 3]

Makes the input at run time with ffmpeg from ../shared/audio/jfk.flac (44.1 kHz stereo 128 kb/s MP3, looped to
--minutes; nothing is committed), then times, each run in a fresh child process:

- floor:     ffmpeg alone decoding the MP3 to a null sink (`-f null -`), the cost of decoding at all;
- floor_16k: ffmpeg alone decoding to 16 kHz mono float32 into /dev/null: the decode plus the resampling
             every front-end feeding the model has to do;
- naive:     pydub AudioSegment.from_file of the whole file, to mono 16 kHz, 60 s slices exported to a
             temporary WAV each and read back with the wave module into float32;
- ours:      app.audio.stream_segments(file, 60), consuming every segment.

Peak RSS is the child's VmHWM (the high-water mark of its own memory map; getrusage's ru_maxrss is not used,
because Linux carries a parent's RSS over exec into its child's maximum). Growth is the peak minus the VmHWM
after imports. The ffmpeg processes a method starts are sampled separately (their VmHWM every 50 ms).
Writes OUT/frontend.json and OUT/frontend.md. Needs requirements-bench.txt (pydub).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = ROOT.parent / "shared" / "audio" / "jfk.flac"
METHODS = ("floor", "floor_16k", "naive", "ours")
SEGMENT_SECONDS = 60
TARGETS = {"ours_vs_floor_max": 1.2, "speedup_vs_naive_min": 2.0, "ours_rss_growth_mib_max": 300.0}
MIB = 2**20


# ------------------------------------------------------------------------------------------- the worker


def vmhwm(pid: int | str = "self") -> int:
    """Peak resident memory of a process, in bytes (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found[1]) * 1024 if found else 0


class ChildSampler:
    """Records the highest VmHWM of every process descended from this one, every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for child in self._me.children(recursive=True):
                self._peaks[child.pid] = max(self._peaks.get(child.pid, 0), vmhwm(child.pid))

    @property
    def peak(self) -> int:
        return max(self._peaks.values(), default=0)


def run_floor(path: str, to_16k: bool) -> dict[str, Any]:
    """ffmpeg alone: to a null sink, or to 16 kHz mono float32 in /dev/null."""
    output = (
        ["-map", "0:a:0", "-ac", "1", "-ar", "16000", "-f", "f32le", "-acodec", "pcm_f32le", "-y", "/dev/null"]
        if to_16k
        else ["-f", "null", "-"]
    )
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path, *output], check=True)
    return {}


def run_naive(path: str) -> dict[str, Any]:
    """pydub: load it all, downmix and resample, export 60 s slices to WAV and read each back."""
    import numpy as np
    from pydub import AudioSegment

    audio = AudioSegment.from_file(path)
    audio = audio.set_channels(1).set_frame_rate(16000)
    samples = pieces = 0
    piece_ms = SEGMENT_SECONDS * 1000
    with tempfile.TemporaryDirectory(prefix="naive-") as tmp:
        for at in range(0, len(audio), piece_ms):
            wav = Path(tmp) / f"piece{pieces}.wav"
            audio[at : at + piece_ms].export(wav, format="wav")
            with wave.open(str(wav), "rb") as f:
                data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768
            wav.unlink()
            samples += len(data)
            pieces += 1
    return {"samples": samples, "segments": pieces}


def run_ours(path: str) -> dict[str, Any]:
    """app.audio.stream_segments, every segment consumed."""
    from app.audio import stream_segments

    samples = segments = 0
    for segment in stream_segments(path, SEGMENT_SECONDS):
        samples += len(segment.samples)
        segments += 1
    return {"samples": samples, "segments": segments}


def worker(method: str, path: str) -> dict[str, Any]:
    """One timed run of one method in this (fresh) process."""
    # Imports first, so the baseline holds them and growth is what the method itself needs.
    import numpy  # noqa: F401
    import psutil  # noqa: F401

    if method == "naive":
        import pydub  # noqa: F401
    if method == "ours":
        import app.audio  # noqa: F401
    baseline = vmhwm()
    with ChildSampler() as children:
        started = time.perf_counter()
        if method in ("floor", "floor_16k"):
            extra = run_floor(path, to_16k=method == "floor_16k")
        elif method == "naive":
            extra = run_naive(path)
        else:
            extra = run_ours(path)
        wall = time.perf_counter() - started
    peak = vmhwm()
    return {
        "wall_s": wall,
        "peak_rss_mib": peak / MIB,
        "baseline_rss_mib": baseline / MIB,
        "rss_growth_mib": (peak - baseline) / MIB,
        "ffmpeg_peak_rss_mib": children.peak / MIB,
        **extra,
    }


# ------------------------------------------------------------------------------------------- the runner


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy

    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        pydub_version = version("pydub")
    except Exception:  # noqa: BLE001 - the report says so instead
        pydub_version = "not installed"
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pydub": pydub_version,
        "ffmpeg": sh("ffmpeg", "-version").split(" Copyright")[0],
    }


def make_input(directory: Path, minutes: float) -> tuple[Path, float]:
    """minutes of 44.1 kHz stereo 128 kb/s MP3 looped from jfk.flac; (path, seconds it took)."""
    out = directory / f"input-{minutes:g}min.mp3"
    started = time.perf_counter()
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-stream_loop", "-1", "-i", str(SOURCE), "-t", str(minutes * 60),
            "-ar", "44100", "-ac", "2", "-b:a", "128k", str(out),
        ],
        check=True,
    )  # fmt: skip
    return out, time.perf_counter() - started


def run_child(method: str, path: Path) -> dict[str, Any]:
    """One method in a fresh Python process; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{method} failed ({result.returncode}):\n{result.stderr}")
    return dict(json.loads(result.stdout.splitlines()[-1]))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall time; the highest memory figures of the runs."""
    summary: dict[str, Any] = {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
        "rss_growth_mib": round(max(r["rss_growth_mib"] for r in runs), 1),
        "baseline_rss_mib": round(max(r["baseline_rss_mib"] for r in runs), 1),
        "ffmpeg_peak_rss_mib": round(max(r["ffmpeg_peak_rss_mib"] for r in runs), 1),
    }
    for key in ("samples", "segments"):
        if key in runs[0]:
            summary[key] = runs[0][key]
    return summary


LABELS = {
    "floor": "floor: `ffmpeg -i in.mp3 -f null -`",
    "floor_16k": "floor, 16 kHz: ffmpeg to 16 kHz mono f32 in /dev/null",
    "naive": "naive: pydub load, 60 s slices via temp WAVs",
    "ours": "ours: `stream_segments(in.mp3, 60)`",
}


def markdown(report: dict[str, Any]) -> str:
    """The short table for bench/results/frontend.md."""
    m, inp, res, tg = report["machine"], report["input"], report["methods"], report["targets"]
    floor = res["floor"]["wall_s"]
    rows = [
        "# Audio front-end benchmark",
        "",
        f"{inp['minutes']:.0f} min of 44.1 kHz stereo 128 kb/s MP3 ({inp['bytes'] / MIB:.0f} MiB) "
        f"to 16 kHz mono float32 in {SEGMENT_SECONDS} s segments. "
        f"Median of {report['repeat']} runs, each in a fresh process; "
        "peak RSS is the Python process's own (VmHWM), growth is over its baseline after imports; "
        "ffmpeg's own peak is a separate column.",
        "",
        "| method | wall (s) | × floor | peak RSS (MiB) | RSS growth (MiB) | ffmpeg peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in METHODS:
        r = res[name]
        rows.append(
            f"| {LABELS[name]} | {r['wall_s']:.2f} | {r['wall_s'] / floor:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['rss_growth_mib']:.0f} | {r['ffmpeg_peak_rss_mib']:.0f} |"
        )
    rows += [
        "",
        "| target | value | met |",
        "|---|---:|:---:|",
        f"| ours ≤ {TARGETS['ours_vs_floor_max']}× the floor (null sink) | {tg['ours_vs_floor']:.2f}× | "
        f"{'yes' if tg['ours_vs_floor_met'] else '**no**'} |",
        f"| ours ≤ {TARGETS['ours_vs_floor_max']}× the 16 kHz floor | {tg['ours_vs_floor_16k']:.2f}× | "
        f"{'yes' if tg['ours_vs_floor_16k_met'] else '**no**'} |",
        f"| ours ≥ {TARGETS['speedup_vs_naive_min']:g}× faster than naive | {tg['speedup_vs_naive']:.1f}× | "
        f"{'yes' if tg['speedup_vs_naive_met'] else '**no**'} |",
        f"| ours RSS growth ≤ {TARGETS['ours_rss_growth_mib_max']:g} MiB | {tg['ours_rss_growth_mib']:.0f} MiB | "
        f"{'yes' if tg['ours_rss_growth_met'] else '**no**'} |",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable (load average at start "
        f"{', '.join(map(str, m['load_average_at_start']))}), Python {m['python']}, {m['ffmpeg']}, "
        f"pydub {m['pydub']}. Measured {report['date']}.",
        "",
    ]
    if not tg["ours_vs_floor_met"]:
        rows += [
            f"The null-sink floor does not resample: the 44.1 → 16 kHz resampling that ours (and the model) needs "
            f"costs ffmpeg {res['floor_16k']['wall_s'] - floor:.2f} s of the "
            f"{res['floor_16k']['wall_s']:.2f} s of the 16 kHz floor, on its one decoding thread. Against that "
            f"floor, ours is {tg['ours_vs_floor_16k']:.2f}×.",
            "",
        ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the generated MP3 [60]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median wall time is kept [3]")
    parser.add_argument("--input", type=Path, help="use this audio file instead of generating one")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    report: dict[str, Any] = {
        "benchmark": "frontend",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "repeat": args.repeat,
        "segment_seconds": SEGMENT_SECONDS,
    }
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as tmp:
        if args.input:
            path, made_in = args.input, 0.0
        else:
            print(f"making {args.minutes:g} min of MP3 from {SOURCE.name} ...", file=sys.stderr)
            path, made_in = make_input(Path(tmp), args.minutes)
        seconds = float(
            sh("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)).strip()
        )
        report["input"] = {
            "source": str(args.input) if args.input else f"{SOURCE.name} looped, 44.1 kHz stereo 128 kb/s MP3",
            "minutes": round(seconds / 60, 3),
            "bytes": path.stat().st_size,
            "generated_in_s": round(made_in, 1),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in METHODS}
        for n in range(args.repeat):
            # Rotate the order so drift on a shared machine does not always favour the same method.
            for name in METHODS[n % len(METHODS) :] + METHODS[: n % len(METHODS)]:
                result = run_child(name, path)
                print(
                    f"run {n + 1} {name:10s} {result['wall_s']:7.2f} s  {result['peak_rss_mib']:7.0f} MiB",
                    file=sys.stderr,
                )
                runs[name].append(result)
    methods = {name: summarize(r) for name, r in runs.items()}
    report["methods"] = methods
    ours, floor, floor_16k, naive = (methods[k]["wall_s"] for k in ("ours", "floor", "floor_16k", "naive"))
    report["targets"] = {
        **TARGETS,
        "ours_vs_floor": round(ours / floor, 3),
        "ours_vs_floor_met": ours / floor <= TARGETS["ours_vs_floor_max"],
        "ours_vs_floor_16k": round(ours / floor_16k, 3),
        "ours_vs_floor_16k_met": ours / floor_16k <= TARGETS["ours_vs_floor_max"],
        "speedup_vs_naive": round(naive / ours, 2),
        "speedup_vs_naive_met": naive / ours >= TARGETS["speedup_vs_naive_min"],
        "ours_rss_growth_mib": methods["ours"]["rss_growth_mib"],
        "ours_rss_growth_met": methods["ours"]["rss_growth_mib"] <= TARGETS["ours_rss_growth_mib_max"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontend.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "frontend.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
