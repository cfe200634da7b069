"""Every model family and task the registry offers, loaded from a tiny checkpoint and served through the CLI."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import srt
from PIL import Image

from tests.support import JFK, Server, assert_error, make_audio, post

pytestmark = pytest.mark.e2e

FAST = {"max_new_tokens": "24"}


@pytest.mark.parametrize(
    ("variant", "family", "quantization", "task", "segment"),
    [
        ("awq", "qwen2.5-omni", "awq", "transcribe", 60.0),
        ("full", "qwen2.5-omni", "none", "transcribe", 60.0),
        ("captioner", "qwen3-omni", "none", "caption", 30.0),
        ("captioner-awq", "qwen3-omni", "compressed-tensors", "caption", 30.0),
        ("instruct-awq", "qwen3-omni", "compressed-tensors-4bit", "transcribe", 60.0),
    ],
)
def test_variant_serves_end_to_end(
    variant: str,
    family: str,
    quantization: str,
    task: str,
    segment: float,
    tiny_checkpoints: Callable[[str, str], Path],
    tmp_path: Path,
) -> None:
    """The variant's thinker class loads its family's checkpoint in its format; health names variant and task."""
    checkpoint = tiny_checkpoints(family, quantization)
    server = Server(checkpoint, tmp_path / "data", ["--variant", variant, "--device", "cpu"]).start()
    try:
        body = post(server, "/transcribe/json", JFK, **FAST).json()
        assert body["status"] == "success", body
        assert len(body["segments"]) == 1 and body["duration"] == pytest.approx(11.0, abs=0.05)
        health = requests.get(server.url + "/health", timeout=5).json()["model"]
        assert (health["variant"], health["task"], health["state"]) == (variant, task, "loaded")
        assert health["device"] == "cpu" and health["checkpoint"] == str(checkpoint)

        # Segments default to the variant's length: 30 s for the Captioner, so a 40 s file splits in two.
        long = make_audio(tmp_path, 40)
        cues = list(srt.parse(post(server, "/transcribe/srt", long, **FAST).text))
        segments = post(server, "/transcribe/json", long, **FAST).json()["segments"]
        assert max(s["end"] - s["start"] for s in segments) <= segment
        assert len(segments) == (2 if segment == 30.0 else 1) and cues
        for cue in cues:
            start, end = cue.start.total_seconds(), cue.end.total_seconds()
            assert any(s["start"] - 1e-3 <= start < end <= s["end"] + 1e-3 for s in segments), cue

        prompt = post(server, "/transcribe/json", JFK, prompt="List the speakers.", **FAST)
        if task == "caption":
            assert "takes no text prompt" in assert_error(prompt, 400, "invalid_option")
        else:
            assert prompt.status_code == 200

        # Images reach the family's vision tower through its own processor (16-pixel patches on Qwen3-Omni);
        # the Captioner refuses them.
        image = io.BytesIO()
        Image.new("RGB", (300, 200), "white").save(image, "PNG")
        seen = requests.post(server.url + "/describe", files={"file": ("a.png", image.getvalue())}, data=FAST,
                             timeout=120)  # fmt: skip
        if task == "caption":
            assert "describes audio" in assert_error(seen, 400, "invalid_option")
        else:
            assert seen.status_code == 200 and seen.json()["media"]["kind"] == "image", seen.text
    finally:
        server.stop()
