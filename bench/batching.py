#!/usr/bin/env python3
"""Batched against sequential inference throughput, in-process, through the service's own engine and backend.

Makes --minutes of audio from jfk.flac with ffmpeg, decodes it with app.audio.decode, cuts it with
app.audio.split into --segment second segments, and submits them all at once to app.engine.Engine
(wired by app.services.build_services, so any engine setting the service passes is passed here too):
first with batch size 1 (one segment per generate call, the old way), then with --batch-size. Every
segment is forced to generate exactly round(--tokens-per-second x --segment) tokens
(min_new_tokens = max_new_tokens, no repetition penalty), so random weights cost what real speech costs.
Decoding samples at --temperature 1.0 by default (the backend skips its loop stop when an output length
is forced, so greedy works too; each run records the steps every generate call really ran and is marked
invalid when they fall short). The wall time runs from submit to the last result; the model load and a
warm-up generate are excluded.

Without --checkpoint it builds the tiny random-weight checkpoint (runs anywhere, measures overheads only).
--full-size builds a random-weight thinker with the shapes of Qwen2.5-Omni-7B in bf16 on a CUDA GPU (about
18 GB; no download): the numbers the issue's targets (>= 8x speedup, RTF <= 0.01 on an H200) are about.

Results: <out>/batching-<device>-<checkpoint>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
JFK = ROOT.parent / "shared" / "audio" / "jfk.flac"

from bench.common import (  # noqa: E402
    CpuShare,
    base_machine,
    build_tiny,
    busy_note,
    commit_label,
    git_state,
    load_average,
    write_report,
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, the accelerator included."""
    import torch

    info = base_machine()
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
        info["cuda"] = torch.version.cuda
    return info


def write(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """<out>/<stem>.json and .md."""
    return write_report(doc, out, doc["stem"], markdown)


# The issue's targets, for the full-size 7B thinker on an H200.
TARGET_SPEEDUP = 8.0
TARGET_RTF = 0.01
GIB = 1024**3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="checkpoint dir or HF id (must be local/cached); default: tiny")
    source.add_argument(
        "--full-size",
        action="store_true",
        help="random-weight Qwen2.5-Omni-7B-shaped thinker in bf16 on CUDA (needs a GPU with ~20 GB free)",
    )
    parser.add_argument("--variant", help="service variant for --checkpoint (default: full, i.e. Qwen2.5-Omni bf16)")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio")
    parser.add_argument("--segment", type=float, default=60.0, help="segment seconds")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the batched run")
    parser.add_argument("--token-budget", type=int, help="engine token budget per generate call [service default]")
    parser.add_argument("--tokens-per-second", type=float, default=3.0, help="forced output tokens per audio second")
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature; 0 = greedy",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="device")
    parser.add_argument("--modes", default="sequential,batched", help="which runs, comma-separated")
    parser.add_argument("--audio", type=Path, default=JFK, help="recording looped to --minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.segment <= 0 or args.batch_size < 1 or args.tokens_per_second <= 0:
        parser.error("--minutes, --segment, --tokens-per-second must be > 0 and --batch-size >= 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= {"sequential", "batched"} or not args.modes:
        parser.error("--modes takes sequential and/or batched")
    return args


def forced_tokens(tokens_per_second: float, segment_seconds: float) -> int:
    """New tokens forced per segment: about what real speech of that length produces."""
    return max(1, round(tokens_per_second * segment_seconds))


def result_stem(device: str, checkpoint_tag: str) -> str:
    """batching-<device>-<checkpoint>, so each device and checkpoint keeps its own results file."""
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", checkpoint_tag).strip("-").lower() or "checkpoint"
    return f"batching-{device}-{tag}"


# Machine and build facts ------------------------------------------------------------------------------


# Inputs -------------------------------------------------------------------------------------------------


def make_audio(source: Path, seconds: float, out: Path) -> Path:
    """`seconds` of `source` looped, as 16 kHz mono WAV, made with ffmpeg."""
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source),
        "-t", f"{seconds:.3f}", "-ac", "1", "-ar", "16000", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


# The full-size random-weight thinker --------------------------------------------------------------------


def full_size_config(tiny_thinker: Any) -> Any:
    """Qwen2.5-Omni-7B thinker shapes (bench/full_shapes.py) with the tiny checkpoint's token ids (so its
    processor drives it): 28 decoder layers of 3584, GQA 28/4 heads, MLP 18944, vocabulary 152064, the 32-layer
    1280-wide audio encoder, the 1280-wide vision tower and an untied head, as in the released config.json."""
    from transformers import Qwen2_5OmniThinkerConfig

    from bench.full_shapes import OMNI_7B

    # Every special-token id the thinker reads (audio, image and video placeholders, their start/end
    # markers, which get_rope_index needs even for audio-only input, and the user turn).
    source = tiny_thinker.to_dict() if hasattr(tiny_thinker, "to_dict") else vars(tiny_thinker)
    tokens = {k: v for k, v in source.items() if k.endswith(("_token_id", "_token_index")) and v is not None}
    text = tiny_thinker.text_config
    return Qwen2_5OmniThinkerConfig(
        text_config={**OMNI_7B["text_config"], "eos_token_id": text.eos_token_id, "pad_token_id": text.pad_token_id},
        audio_config=OMNI_7B["audio_config"],
        vision_config=OMNI_7B["vision_config"],
        **tokens,
    )


def require_cuda() -> None:
    """--full-size needs a CUDA GPU: 7B random weights in bf16 are ~18 GB and hopeless on CPU."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "error: --full-size needs a CUDA GPU (a random-weight Qwen2.5-Omni-7B thinker in bf16 takes about "
            "18 GB and would take hours per run on CPU); run it on the GPU machine, or drop --full-size to use "
            "the tiny checkpoint"
        )


def full_size_backend(tiny_dir: Path, device: str = "cuda") -> Any:
    """A QwenOmniBackend around a freshly initialised 7B-shaped thinker (bf16, sdpa), built on `device`.

    No weights are written or read: the model is built in memory (random init happens on the GPU, seconds),
    and the tiny checkpoint supplies the processor (tokenizer, chat template, Whisper features). Decoding
    random ids beyond the tiny vocabulary yields empty strings, which is fine for timing.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from app.backends.qwen_omni import QwenOmniBackend

    tiny = AutoConfig.from_pretrained(tiny_dir).thinker_config
    config = full_size_config(tiny)
    processor = AutoProcessor.from_pretrained(tiny_dir)  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    model.eval()
    return QwenOmniBackend(model, processor, device, "transcribe")


# The measured runs ------------------------------------------------------------------------------------


class SharedBackend:
    """The one loaded backend, handed to each engine in turn; records every generate call.

    close() is a no-op (each engine unloads when stopped; the model must survive for the next run), and
    model.generate is wrapped to count the new tokens each call really produced.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.device = inner.device
        self.calls: list[dict[str, Any]] = []
        self._steps: list[int] = []
        model = getattr(inner, "model", None)
        if model is not None:
            original = model.generate

            def counted(*args: Any, **kwargs: Any) -> Any:
                output = original(*args, **kwargs)
                prompt = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else 0
                self._steps.append(int(output.shape[1] - prompt))
                return output

            model.generate = counted

    def generate(self, batch: Sequence[Any]) -> Any:
        started = time.perf_counter()
        self._steps.clear()
        results = self.inner.generate(batch)
        self._sync()
        self.calls.append(
            {
                "segments": len(batch),
                "seconds": round(time.perf_counter() - started, 4),
                "new_tokens": self._steps[-1] if self._steps else None,
            }
        )
        return results

    def close(self) -> None:
        pass

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def _text_and_reason(result: Any) -> tuple[str, str | None, int | None]:
    """Engine results are GenerationResult(text, stop_reason, tokens) now, plain str in older engines."""
    if isinstance(result, str):
        return result, None, None
    return str(result.text), getattr(result, "stop_reason", None), getattr(result, "tokens", None)


def run_mode(
    name: str,
    backend: SharedBackend,
    settings: Any,
    segments: Sequence[Any],
    params: Any,
    audio_seconds: float,
) -> dict[str, Any]:
    """Submit every segment at once to a fresh engine with these settings; time submit to last result."""
    import torch

    from app.backends import GenerationRequest
    from app.services import build_services

    services = build_services(settings, loader=lambda: backend)
    engine = services.engine
    try:
        # Warm-up (also the engine's "load", which is instant: the backend is already in memory).
        for future in engine.submit([GenerationRequest(segments[0].samples, params)]):
            future.result()
        backend.calls.clear()
        cuda = backend.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        print(f"[{name}] {len(segments)} segments, batch size {settings.batch_size} ...", flush=True)
        started = time.perf_counter()
        futures = engine.submit([GenerationRequest(s.samples, params) for s in segments])
        results = [f.result() for f in futures]
        wall = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
    finally:
        engine.stop(timeout=120)
    unpacked = [_text_and_reason(r) for r in results]
    reasons = Counter(str(reason) for _, reason, _ in unpacked)
    kept = [tokens for _, _, tokens in unpacked if tokens is not None]
    steps = [c["new_tokens"] for c in backend.calls if c["new_tokens"] is not None]
    row = {
        "batch_size": settings.batch_size,
        "token_budget": getattr(settings, "token_budget", None),
        "segments": len(segments),
        "wall_seconds": round(wall, 3),
        "rtf": round(wall / audio_seconds, 5),
        "segments_per_second": round(len(segments) / wall, 3),
        "audio_seconds_per_second": round(audio_seconds / wall, 1),
        "generate_calls": len(backend.calls),
        "batch_sizes": [c["segments"] for c in backend.calls],
        "generate_seconds": [c["seconds"] for c in backend.calls],
        "new_tokens_per_call": steps,
        "stop_reasons": dict(reasons),
        "tokens_kept_per_segment": {"min": min(kept), "max": max(kept), "total": sum(kept)} if kept else None,
        "empty_texts": sum(1 for text, _, _ in unpacked if not text),
        "peak_memory_gib": None if peak is None else round(peak, 2),
    }
    # Did every call run the forced number of steps? (A stopping criterion can end rows early.)
    row["forced_length_met"] = (
        bool(steps)
        and all(s == params.max_new_tokens for s in steps)
        and all(tokens == params.max_new_tokens for tokens in kept)
    )
    print(
        f"[{name}] {row['wall_seconds']} s, RTF {row['rtf']}, {row['segments_per_second']} segments/s, "
        f"calls {row['batch_sizes']}, new tokens per call {sorted(set(steps))}, stop reasons {row['stop_reasons']}",
        flush=True,
    )
    return row


def _settings(**values: Any) -> Any:
    """app.settings.Settings with the fields it has (the engine's settings change while it is developed)."""
    from app.settings import Settings

    known = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known and v is not None})


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Load once, then time each mode; returns the results document."""
    import torch

    load_at_start = load_average()
    cpu_share = CpuShare()
    from app import audio
    from app.backends import GenerationParams
    from app.checkpoints import DownloadProgress
    from app.services import real_loader

    if args.full_size:
        require_cuda()
        if args.device not in ("auto", "cuda"):
            raise SystemExit("error: --full-size runs on cuda only")
    tiny_dir = None if args.checkpoint else build_tiny(work / "tiny")
    checkpoint = args.checkpoint or str(tiny_dir)
    tag = "full-size" if args.full_size else ("tiny" if tiny_dir else Path(args.checkpoint.rstrip("/")).name)
    base = _settings(
        variant=args.variant or ("full" if tiny_dir else None),
        checkpoint_path=checkpoint,
        local_model=True,
        device=args.device,
        idle_timeout=0.0,
        data_dir=str(work / "data"),
        batch_size=args.batch_size,
        token_budget=args.token_budget,
    )

    seconds = args.minutes * 60
    wav = make_audio(args.audio, seconds, work / "audio.wav")
    samples = audio.decode(wav)
    segments = audio.split(samples, args.segment)
    audio_seconds = len(samples) / audio.SAMPLE_RATE
    k = forced_tokens(args.tokens_per_second, args.segment)
    params = GenerationParams(max_new_tokens=k, min_new_tokens=k, temperature=args.temperature, repetition_penalty=1.0)
    print(f"{audio_seconds:.0f} s of audio in {len(segments)} segments of <= {args.segment} s; {k} tokens each")

    print(f"loading {tag} ({checkpoint if not args.full_size else 'random 7B-shaped thinker'}) ...", flush=True)
    started = time.perf_counter()
    if args.full_size:
        assert tiny_dir is not None
        inner = full_size_backend(tiny_dir, "cuda")
    else:
        inner = real_loader(base, DownloadProgress())()
    load_seconds = time.perf_counter() - started
    model = inner.model
    device = inner.device
    weights_gib = torch.cuda.memory_allocated() / GIB if device == "cuda" else None
    parameters = sum(p.numel() for p in model.parameters())
    print(f"loaded in {load_seconds:.1f} s on {device} ({parameters / 1e6:.1f} M parameters)", flush=True)

    backend = SharedBackend(inner)
    modes: dict[str, Any] = {}
    for name in args.modes:
        batch = 1 if name == "sequential" else args.batch_size
        settings = dataclasses.replace(base, batch_size=batch, data_dir=str(work / f"data-{name}"))
        modes[name] = run_mode(name, backend, settings, segments, params, audio_seconds)

    speedup = None
    if "sequential" in modes and "batched" in modes:
        speedup = round(modes["sequential"]["wall_seconds"] / modes["batched"]["wall_seconds"], 2)
    gpu_run = device == "cuda" and tag != "tiny"
    batched = modes.get("batched")
    targets: dict[str, Any] = {
        "speedup_min": TARGET_SPEEDUP,
        "batched_rtf_max": TARGET_RTF,
        "applies_to": "the full-size Qwen2.5-Omni-7B thinker on an H200 GPU",
        "measured_here": gpu_run,
    }
    if gpu_run:
        targets["speedup_met"] = speedup is not None and speedup >= TARGET_SPEEDUP
        targets["rtf_met"] = batched is not None and batched["rtf"] <= TARGET_RTF
    else:
        targets["note"] = (
            f"not measured here: this run used the {tag} checkpoint on {device}; its numbers measure the "
            "service's batching overheads, not model compute, and say nothing about the GPU targets"
        )
    return {
        "benchmark": "batching",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "bench/batching.py", *sys.argv[1:]]),
        "machine": {
            **machine(),
            "load_average_1m": {"start": load_at_start, "end": load_average()},
            "other_processes_cpu": cpu_share.others(),
        },
        "git": git_state(),
        "model": {
            "checkpoint": tag if tiny_dir else args.checkpoint,
            "variant": base.variant,
            "device": device,
            "requested_device": args.device,
            "dtype": str(model.dtype).removeprefix("torch."),
            "parameters": parameters,
            "load_seconds": round(load_seconds, 1),
            "weights_memory_gib": None if weights_gib is None else round(weights_gib, 2),
        },
        "workload": {
            "audio": args.audio.name,
            "audio_seconds": round(audio_seconds, 1),
            "segment_seconds": args.segment,
            "segments": len(segments),
            "segment_lengths_s": [round(s.end - s.start, 2) for s in (segments[0], segments[-1])],
            "forced_new_tokens_per_segment": k,
            "tokens_per_audio_second": args.tokens_per_second,
            "params": dataclasses.asdict(params),
        },
        "engine_settings": {
            "batch_size_batched": args.batch_size,
            "token_budget": getattr(base, "token_budget", None),
            "idle_timeout": base.idle_timeout,
        },
        "modes": modes,
        "speedup_batched_vs_sequential": speedup,
        "targets": targets,
        "stem": result_stem(device, tag),
    }


# Output -------------------------------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the results document."""
    m, w, model = doc["machine"], doc["workload"], doc["model"]
    lines = [
        f"# Batching benchmark: {model['checkpoint']} on {model['device']}",
        "",
        f"`{doc['command']}` ({doc['created']}, {commit_label(doc['git'])})",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs"
        + (f", {m['gpu']} ({m['gpu_memory_gib']} GiB)" if m.get("gpu") else ", no GPU")
        + f"; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; 1-minute load average "
        f"{m['load_average_1m']['start']} at the start, {m['load_average_1m']['end']} at the end.",
        "",
        f"Model: {model['checkpoint']} ({model['parameters'] / 1e6:.1f} M parameters, {model['dtype']}, "
        f"loaded in {model['load_seconds']} s, excluded). Workload: {w['audio_seconds']:.0f} s of {w['audio']} "
        f"looped, {w['segments']} segments of {w['segment_seconds']:g} s, {w['forced_new_tokens_per_segment']} "
        f"new tokens forced per segment ({w['tokens_per_audio_second']:g}/s of audio), "
        + ("greedy." if not w["params"]["temperature"] else f"sampled at temperature {w['params']['temperature']:g}."),
        "",
        "| mode | batch size | wall s | RTF | segments/s | generate calls | new tokens per call | peak GPU GiB |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, row in doc["modes"].items():
        tokens = sorted(set(row["new_tokens_per_call"]))
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"| {name} | {row['batch_size']} | {row['wall_seconds']:.2f} | {row['rtf']:.4f} | "
            f"{row['segments_per_second']:.2f} | {row['generate_calls']} | {', '.join(map(str, tokens))} | {peak} |"
        )
    lines.append("")
    if doc["speedup_batched_vs_sequential"] is not None:
        lines.append(f"Speedup batched vs sequential: **{doc['speedup_batched_vs_sequential']}x**.")
        lines.append("")
    t = doc["targets"]
    if t["measured_here"]:
        lines.append(
            f"Targets ({t['applies_to']}): speedup >= {t['speedup_min']:g}x: "
            f"{'met' if t['speedup_met'] else 'NOT met'}; batched RTF <= {t['batched_rtf_max']}: "
            f"{'met' if t['rtf_met'] else 'NOT met'}."
        )
    else:
        lines.append(
            f"Targets (speedup >= {t['speedup_min']:g}x, batched RTF <= {t['batched_rtf_max']}) apply to "
            f"{t['applies_to']}; {t['note']}."
        )
    if note := busy_note(m):
        lines += ["", f"**Caution**: {note}"]
    for name, row in doc["modes"].items():
        if not row["forced_length_met"]:
            lines += [
                "",
                f"**Invalid ({name})**: generate calls ran {sorted(set(row['new_tokens_per_call']))} steps, not the "
                f"forced {w['forced_new_tokens_per_segment']} (stop reasons {row['stop_reasons']}), so this run "
                "did less work than real speech would.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, report: Callable[[str], None] = print) -> None:
    """Run the benchmark and write its results."""
    args = parse_args(argv)
    if not args.audio.is_file():
        raise SystemExit(f"error: recording not found: {args.audio}")
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        doc = benchmark(args, Path(tmp))
    for path in write(doc, args.out):
        report(f"wrote {path}")
    report(markdown(doc))


if __name__ == "__main__":
    main()
