"""Language identification (what /detect-language answers) on the recordings in ../shared/audio.

Each recording's first 30 s of speech goes through the service's own pipeline (VAD, the engine, the backend's
constrained answer), for the Omni family (asked which language it hears, its answer held to the language
names it transcribes) and Qwen3-ASR (its own `language <Name>` identification). The report gives, per model
and recording, the language named against the recording's reference language (MANIFEST.md), the confidence,
and the time the identification took with the model loaded.

    python3 bench/language_id.py [--omni PATH_OR_ID] [--asr PATH_OR_ID] [--device cpu|cuda] [--out bench/results]

Without checkpoints it builds the tiny random-weight ones, which name a language at random: their figures show
the mechanism and its cost, not accuracy. Accuracy needs the released weights, e.g.
`--omni Qwen/Qwen2.5-Omni-7B-AWQ --asr Qwen/Qwen3-ASR-1.7B-hf --device cuda` on a machine that has them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.protocol.native import LANGUAGES  # noqa: E402
from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.common import base_machine, commit_label, git_state, write_report  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
# The recordings and their languages, as MANIFEST.md lists them.
REFERENCE = {
    "jfk.flac": "en",
    "librispeech_1995-1837-0001.wav": "en",
    "aishell_BAC009S0724W0121.wav": "zh",
}
# Each model identifies every recording this many times with the model loaded (greedy: the answers repeat).
REPEATS = 3


def identify_all(name: str, variant: str, checkpoint: str, device: str, local: bool) -> dict[str, Any]:
    """Load one model through the service's wiring and identify every recording."""
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            variant=variant, checkpoint_path=checkpoint, local_model=local, device=device, data_dir=data, aligner="none"
        )
        services = build_services(settings)
        services.start()
        try:
            started = time.monotonic()
            services.pipeline.identify(AUDIO / "jfk.flac", speech_only=True)  # loads the model
            load_seconds = time.monotonic() - started
            rows = []
            for recording, expected in REFERENCE.items():
                times, guess = [], None
                for _ in range(REPEATS):
                    began = time.monotonic()
                    guess = services.pipeline.identify(AUDIO / recording, speech_only=True)
                    times.append(time.monotonic() - began)
                assert guess is not None
                rows.append(
                    {
                        "recording": recording,
                        "reference": expected,
                        "identified": guess.language,
                        "correct": guess.language == expected,
                        "confidence": round(guess.confidence, 4),
                        "speech_seconds": round(guess.seconds, 2),
                        "seconds_median": round(sorted(times)[len(times) // 2], 3),
                    }
                )
        finally:
            services.stop()
    return {
        "model": name,
        "variant": variant,
        "checkpoint": checkpoint,
        "first_call_seconds": round(load_seconds, 2),
        "recordings": rows,
        "accuracy": round(sum(r["correct"] for r in rows) / len(rows), 3),
        "chance": round(1 / (len(LANGUAGES) if variant != "asr" else 30), 3),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Language identification",
        "",
        f"{commit_label(report['git'])}; {report['machine']['cpu']}, device {report['device']}; "
        f"checkpoints: {report['checkpoints']}.",
        "",
        "| model | recording | reference | identified | confidence | speech heard (s) | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in report["models"]:
        for row in model["recordings"]:
            lines.append(
                f"| {model['model']} | {row['recording']} | {row['reference']} | {row['identified']} | "
                f"{row['confidence']} | {row['speech_seconds']} | {row['seconds_median']} |"
            )
    lines.append("")
    for model in report["models"]:
        lines.append(
            f"- {model['model']}: {model['accuracy']:.0%} correct (chance {model['chance']:.1%}); first call, "
            f"loading the model, {model['first_call_seconds']} s."
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omni", help="an Omni checkpoint (id or dir); default: the tiny one, built now")
    parser.add_argument("--asr", help="a Qwen3-ASR checkpoint (id or dir); default: the tiny one, built now")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    tiny = args.omni is None or args.asr is None
    with tempfile.TemporaryDirectory() as work:

        def built(family: str) -> str:
            out = Path(work) / family
            tool = ROOT / "serve" / "make_tiny_checkpoint.py"
            subprocess.run([sys.executable, str(tool), str(out), "--family", family], check=True, capture_output=True)
            return str(out)

        omni = args.omni or built("qwen2.5-omni")
        asr = args.asr or built("qwen3-asr")
        models = [
            identify_all("Qwen2.5-Omni", "full", omni, args.device, local=args.omni is None),
            identify_all("Qwen3-ASR", "asr", asr, args.device, local=args.asr is None),
        ]
    report = {
        "machine": base_machine(),
        "git": git_state(),
        "device": args.device,
        "checkpoints": "tiny random-weight" if tiny else f"{omni}, {asr}",
        "models": models,
        "note": (
            "The tiny checkpoints' weights are random: the language they name is chance, and their confidence sits "
            "near one over the number of languages. These figures show that every answer is a language the model "
            "may name, with a probability, and what an identification costs; accuracy needs the released weights."
            if tiny
            else "Released weights."
        ),
    }
    stem = "language-id-tiny" if tiny else f"language-id-{args.device}"
    write_report(report, args.out, stem, markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
