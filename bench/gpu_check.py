#!/usr/bin/env python3
"""The GPU proof kit: full-size random-weight checkpoints built on the spot, loaded and timed through the service.

For each check it writes a checkpoint with serve/make_tiny_checkpoint.py's own code at the released models'
shapes (random weights initialised on the GPU in bf16; nothing is downloaded), loads it through the service's
loader (app.services.real_loader, or aligner_loader for the aligner), and records the build and load times,
the size on disk and in GPU memory, and the real-time factor of the service's engine on --minutes of audio,
batched (--batch-size) against sequential (batch 1, on the first --sequential-segments segments: RTF is per
second of audio, so the two compare directly). Every segment generates exactly --tokens-per-second tokens per
second of its audio (min = max new tokens), so random weights cost what speech costs.

Checks (--checks, comma-separated):

- omni-bf16: Qwen2.5-Omni-7B's thinker in bf16 (the `full` variant).
- omni-awq: the same shapes in AutoAWQ's GEMM layout (the default `awq` variant; needs gptqmodel, which needs
  torch >= 2.14.1).
- asr: Qwen3-ASR-1.7B (the `asr` variant, 120 s segments).
- aligner: Qwen3-ForcedAligner-0.6B's shapes, behind the asr check (or the first Omni one when asr is not
  chosen), as the service pairs them: its load time and memory, and its share of the time when every segment
  is transcribed and then timed word by word (the reference transcript of the looped recording, repeated).

--size tiny runs the same code on the tiny checkpoints on the CPU (the test suite does this, so the kit keeps
working); its figures are overheads, not model compute. A full run on one H200 is estimated at about 6
minutes (build and load about a minute per 7B checkpoint, generation seconds per check).

Results: <out>/gpu-check-<device>-<size>.json and .md; exit status 1 if a check failed (the others still run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MANIFEST = ROOT.parent / "shared" / "audio" / "MANIFEST.md"

from bench.batching import GIB, SharedBackend, forced_tokens, machine, make_audio, run_mode  # noqa: E402
from bench.common import commit_label, git_state, write_report  # noqa: E402
from bench.full_shapes import ALIGNER_0_6B, ASR_1_7B, OMNI_7B  # noqa: E402

CHECKS = ("omni-bf16", "omni-awq", "asr", "aligner")
SPEECH_WORDS_PER_SECOND = 2.5


def _tool() -> Any:
    """serve/make_tiny_checkpoint.py as a module (serve/ is scripts, not a package)."""
    if (loaded := sys.modules.get("make_tiny_checkpoint")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", ROOT / "serve" / "make_tiny_checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full", help="released shapes on CUDA, or tiny")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio per check")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the batched run")
    parser.add_argument("--sequential-segments", type=int, default=4, help="segments timed at batch size 1")
    parser.add_argument("--tokens-per-second", type=float, default=3.0, help="forced output tokens per audio second")
    parser.add_argument("--audio", type=Path, help="recording looped to --minutes [../shared/audio/jfk.flac]")
    parser.add_argument("--work", type=Path, help="where checkpoints are written (deleted after each check) [tmp]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args(argv)
    args.checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    if not args.checks or not set(args.checks) <= set(CHECKS):
        parser.error(f"--checks takes {', '.join(CHECKS)}")
    if args.minutes <= 0 or args.batch_size < 1 or args.sequential_segments < 1 or args.tokens_per_second <= 0:
        parser.error("--minutes and --tokens-per-second must be > 0, --batch-size and --sequential-segments >= 1")
    return args


@dataclasses.dataclass
class Workload:
    """The audio every check transcribes and the text the aligner times in it."""

    samples: Any
    seconds: float
    source: str
    # The words spoken per loop of the recording, repeated to fill a segment for the aligner.
    words: list[str]
    tokens_per_second: float

    def text_for(self, seconds: float) -> str:
        """About as many words as `seconds` of this speech holds."""
        count = max(1, round(seconds * SPEECH_WORDS_PER_SECOND))
        return " ".join(self.words[i % len(self.words)] for i in range(count))


def reference_words(audio_name: str) -> list[str] | None:
    """The recording's reference transcript from the shared audio manifest, if it is there."""
    if not MANIFEST.is_file():
        return None
    for line in MANIFEST.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 4 and cells[0] == audio_name:
            return cells[4].split()
    return None


def workload(args: argparse.Namespace, work: Path) -> Workload:
    """--minutes of the recording (ffmpeg), or of noise when the recording or ffmpeg is not on this machine."""
    import numpy as np

    from app import audio

    source = args.audio or ROOT.parent / "shared" / "audio" / "jfk.flac"
    seconds = args.minutes * 60
    if source.is_file() and shutil.which("ffmpeg"):
        samples = audio.decode(make_audio(source, seconds, work / "audio.wav"))
        name = source.name
    else:
        # The engine's cost does not depend on what is said: the output length is forced.
        rng = np.random.default_rng(0)
        samples = (rng.standard_normal(int(seconds * audio.SAMPLE_RATE)) * 0.1).astype(np.float32)
        name = "noise (no recording or no ffmpeg here)"
    words = reference_words(source.name) or ["and", "so", "my", "fellow", "americans", "ask", "not", "what"]
    return Workload(samples, len(samples) / audio.SAMPLE_RATE, name, words, args.tokens_per_second)


class Gpu:
    """GPU memory figures (None on the CPU) and freeing between checks."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"

    def allocated(self) -> float | None:
        return self.torch.cuda.memory_allocated() / GIB if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _settings(**values: Any) -> Any:
    from app.settings import Settings

    return Settings(**values)


def _disk_gib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / GIB, 3)


def _build(kind: str, out: Path, size: str, device: str) -> dict[str, Any]:
    """Write one checkpoint; its build time and size."""
    import torch

    tool = _tool()
    full = size == "full"
    dtype = torch.bfloat16 if full else None
    started = time.perf_counter()
    if kind in ("omni-bf16", "omni-awq"):
        quantization = "awq" if kind == "omni-awq" else "none"
        tool.build(out, "qwen2.5-omni", 0, quantization, OMNI_7B if full else None, device, dtype)
    elif kind == "asr":
        tool.build_asr(out, "qwen3-asr", 0, ASR_1_7B if full else None, device, dtype)
    else:
        tool.build_asr(out, "qwen3-aligner", 0, ALIGNER_0_6B if full else None, device, dtype)
    return {"build_seconds": round(time.perf_counter() - started, 1), "disk_gib": _disk_gib(out)}


def _load(gpu: Gpu, load: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Load through the service's loader; its time, parameters and GPU memory."""
    before = gpu.allocated()
    started = time.perf_counter()
    loaded = load()
    seconds = time.perf_counter() - started
    after = gpu.allocated()
    model = loaded.model
    return loaded, {
        "load_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": loaded.device,
        "gpu_memory_gib": None if after is None or before is None else round(after - before, 2),
    }


def _generation(
    kind: str, args: argparse.Namespace, work: Path, load: Workload, device: str, aligner_dir: Path | None
) -> dict[str, Any]:
    """Build, load and time one generating model; with aligner_dir, time the aligner after it too."""
    from app import audio
    from app.backends import GenerationParams
    from app.checkpoints import DownloadProgress
    from app.services import real_loader

    gpu = Gpu(device)
    out = work / kind
    variant = {"omni-bf16": "full", "omni-awq": "awq", "asr": "asr"}[kind]
    settings = _settings(
        variant=variant,
        checkpoint_path=str(out),
        local_model=True,
        device=device,
        idle_timeout=0.0,
        data_dir=str(work / "data"),
        batch_size=args.batch_size,
        aligner=str(aligner_dir) if aligner_dir else "none",
    )
    backend = None
    try:
        row = _build(kind, out, args.size, device)
        backend, loaded = _load(gpu, real_loader(settings, DownloadProgress()))
        row.update(loaded, variant=variant)
        segment = settings.model_variant.segment_duration
        segments = audio.split(load.samples, segment)
        k = forced_tokens(load.tokens_per_second, segment)
        params = GenerationParams(max_new_tokens=k, min_new_tokens=k, temperature=1.0, repetition_penalty=1.0)
        shared = SharedBackend(backend)
        batched = run_mode(kind, shared, settings, segments, params, load.seconds)
        few = segments[: args.sequential_segments]
        few_seconds = sum(s.end - s.start for s in few)
        sequential = run_mode(kind, shared, dataclasses.replace(settings, batch_size=1), few, params, few_seconds)
        # From the unrounded times: RTF is wall seconds per second of audio in both runs.
        ratio = (sequential["wall_seconds"] / few_seconds) / (batched["wall_seconds"] / load.seconds)
        row.update(
            segment_seconds=segment,
            segments=len(segments),
            forced_new_tokens_per_segment=k,
            batched=_summary(batched),
            sequential=_summary(sequential),
            speedup=round(ratio, 2),
        )
        if not (batched["forced_length_met"] and sequential["forced_length_met"]):
            # A run that stopped rows early did less work than speech costs: its RTF would flatter the model.
            row["error"] = f"invalid: the forced {k} new tokens per segment were not all generated"
        if aligner_dir is not None:
            try:
                row["aligner"] = _aligned(shared, settings, segments, params, load, gpu, aligner_dir)
            except Exception as exc:  # noqa: BLE001 - the model's own figures stand; the aligner's error is kept
                traceback.print_exc()
                row["aligner"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if backend is not None:
            backend.close()
        del backend
        gpu.free()
        shutil.rmtree(out, ignore_errors=True)
    return row


def _summary(mode: dict[str, Any]) -> dict[str, Any]:
    keep = ("batch_size", "segments", "wall_seconds", "rtf", "generate_calls", "peak_memory_gib", "forced_length_met")
    return {k: mode[k] for k in keep}


def _aligned(
    backend: SharedBackend,
    settings: Any,
    segments: Sequence[Any],
    params: Any,
    load: Workload,
    gpu: Gpu,
    aligner_dir: Path,
) -> dict[str, Any]:
    """The aligner loaded alone, then transcribe-then-align through one engine: the aligner's share of the time."""
    from app.backends import AlignmentRequest, GenerationRequest
    from app.checkpoints import DownloadProgress
    from app.devices import release_memory
    from app.engine import Engine
    from app.services import aligner_loader

    loader = aligner_loader(settings, DownloadProgress())
    assert loader is not None
    aligner, row = _load(gpu, loader)
    aligner.close()
    del aligner
    gpu.free()
    # The engine as build_services wires it, around the model already in memory and the service's aligner loader.
    engine = Engine(
        lambda: backend,
        idle_timeout=settings.idle_timeout,
        batch_size=settings.batch_size,
        token_budget=settings.token_budget,
        release=release_memory,
        aligner_loader=loader,
    )
    texts = [load.text_for(s.end - s.start) for s in segments]
    try:
        # Warm-up: loads the aligner into the engine (the model is already in memory).
        for future in engine.submit_alignments([AlignmentRequest(segments[0].samples, texts[0], "en")]):
            future.result()
        started = time.perf_counter()
        for future in engine.submit([GenerationRequest(s.samples, params) for s in segments]):
            future.result()
        generated = time.perf_counter() - started
        started = time.perf_counter()
        requests = [AlignmentRequest(s.samples, t, "en") for s, t in zip(segments, texts, strict=True)]
        alignments = [f.result() for f in engine.submit_alignments(requests)]
        aligned = time.perf_counter() - started
    finally:
        engine.stop(timeout=120)
        gpu.free()
    words = sum(len(a) for a in alignments if a)
    aligned_segments = sum(1 for a in alignments if a)
    if aligned_segments < len(segments):
        # A refused segment returns at once: the time would not be the aligner's on the whole audio.
        raise RuntimeError(f"the aligner timed {aligned_segments} of {len(segments)} segments")
    row.update(
        transcribe_seconds=round(generated, 2),
        align_seconds=round(aligned, 2),
        align_rtf=round(aligned / load.seconds, 5),
        share_of_time=round(aligned / (generated + aligned), 3),
        words_timed=words,
        segments_aligned=aligned_segments,
    )
    return row


def run(args: argparse.Namespace, work: Path, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every chosen check, the report saved after each; a failing one is recorded and the others still run."""
    import torch

    if args.size == "full" and not torch.cuda.is_available():
        raise SystemExit(
            "error: --size full needs a CUDA GPU (the 7B checkpoints take about 16 GB in bf16); "
            "use --size tiny to run the same code on the CPU"
        )
    generating = [c for c in args.checks if c != "aligner"]
    if not generating:
        raise SystemExit("error: the aligner is timed behind a generating check: add asr or an omni one")
    device = "cuda" if args.size == "full" else "cpu"
    load = workload(args, work)
    print(f"{load.seconds:.0f} s of {load.source}; checks {', '.join(args.checks)}", flush=True)
    results: dict[str, Any] = {}
    doc = {
        "benchmark": "gpu-check",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "bench/gpu_check.py", *sys.argv[1:]]),
        "machine": machine(),
        "git": git_state(),
        "size": args.size,
        "workload": {
            "audio": load.source,
            "audio_seconds": round(load.seconds, 1),
            "tokens_per_audio_second": load.tokens_per_second,
            "batch_size": args.batch_size,
            "sequential_segments": args.sequential_segments,
        },
        "checks": results,
        "failed": [],
        "stem": f"gpu-check-{device}-{args.size}",
    }
    # The aligner is timed behind the ASR model, which is how the service pairs them by default.
    paired = None if "aligner" not in args.checks else ("asr" if "asr" in generating else generating[0])
    aligner_dir = work / "aligner-checkpoint"
    if paired is not None:
        try:
            results["aligner-build"] = _build("aligner", aligner_dir, args.size, device)
        except Exception as exc:  # noqa: BLE001 - reported, and the other checks still run
            traceback.print_exc()
            results["aligner-build"] = {"error": f"{type(exc).__name__}: {exc}"}
            paired = None
    for kind in generating:
        started = time.perf_counter()
        print(f"[{kind}] building and loading ...", flush=True)
        try:
            results[kind] = _generation(kind, args, work, load, device, aligner_dir if kind == paired else None)
        except Exception as exc:  # noqa: BLE001 - reported, and the other checks still run
            traceback.print_exc()
            results[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        results[kind]["check_seconds"] = round(time.perf_counter() - started, 1)
        print(f"[{kind}] {results[kind]}", flush=True)
        doc["failed"] = _failed(results)
        # Saved after every check: a run stopped part way still leaves the figures it has.
        save(doc)
    shutil.rmtree(aligner_dir, ignore_errors=True)
    return doc


def _failed(results: dict[str, Any]) -> list[str]:
    """The checks (and aligner runs) that ended in an error."""
    failed = [name for name, row in results.items() if "error" in row]
    failed += [f"{name}/aligner" for name, row in results.items() if "error" in row.get("aligner", {})]
    return sorted(failed)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(doc: dict[str, Any]) -> str:
    """The report as a table per check."""
    m, w = doc["machine"], doc["workload"]
    lines = [
        f"# GPU check ({doc['size']} size) on {m.get('gpu') or 'the CPU'}",
        "",
        f"`{doc['command']}` ({doc['created']}, {commit_label(doc['git'])}); torch {m['torch']}, "
        f"transformers {m['transformers']}.",
        "",
        f"Workload: {w['audio_seconds']:.0f} s of {w['audio']}, {w['tokens_per_audio_second']:g} new tokens forced "
        f"per second of audio; batched at batch size {w['batch_size']}, sequential on the first "
        f"{w['sequential_segments']} segments.",
        "",
        "| check | build s | disk GiB | load s | GPU GiB (weights) | batched RTF | sequential RTF | speedup | "
        "peak GPU GiB | check s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    aligners = []
    for name, row in doc["checks"].items():
        if name == "aligner-build":
            continue
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:160]} |||||||||")
            continue
        b, s = row["batched"], row["sequential"]
        lines.append(
            f"| {name} | {row['build_seconds']} | {row['disk_gib']} | {row['load_seconds']} | "
            f"{_cell(row['gpu_memory_gib'])} | {b['rtf']} | {s['rtf']} | {_cell(row['speedup'])} | "
            f"{_cell(b['peak_memory_gib'])} | {row['check_seconds']} |"
        )
        if "aligner" in row:
            aligners.append((name, row["aligner"]))
    for name, a in aligners:
        if "error" in a:
            lines += ["", f"Aligner behind {name}: failed: {a['error'][:300]}"]
            continue
        built = doc["checks"].get("aligner-build", {})
        lines += [
            "",
            f"Aligner (built in {built.get('build_seconds')} s, {built.get('disk_gib')} GiB on disk): loaded in "
            f"{a['load_seconds']} s, {_cell(a['gpu_memory_gib'])} GiB of GPU memory, {a['parameters'] / 1e6:.0f} M "
            f"parameters. Behind {name}: transcribing took {a['transcribe_seconds']} s and aligning "
            f"{a['align_seconds']} s (RTF {a['align_rtf']}), **{a['share_of_time']:.0%} of the time**; "
            f"{a['words_timed']} words timed in {a['segments_aligned']} segments.",
        ]
    if doc["failed"]:
        lines += ["", f"**Failed**: {', '.join(doc['failed'])}."]
    if doc["size"] == "tiny":
        lines += ["", "Tiny checkpoints on the CPU: these figures are the service's overheads, not model compute."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, report: Callable[[str], None] = print) -> int:
    """Run the checks and write the report; 1 if any check failed."""
    args = parse_args(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(doc: dict[str, Any]) -> None:
        written[:] = write_report(doc, args.out, doc["stem"], markdown)

    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work) as tmp:
        doc = run(args, Path(tmp), save)
    for path in written:
        report(f"wrote {path}")
    report(markdown(doc))
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
