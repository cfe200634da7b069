"""Tiny Qwen3-ASR and Qwen3-ForcedAligner checkpoints load and run through transformers' own qwen3_asr code.

Both are built by serve/make_tiny_checkpoint.py (--family qwen3-asr / qwen3-aligner) and loaded exactly as the
released "-hf" checkpoints are: AutoProcessor -> Qwen3ASRProcessor, Qwen3ASRForConditionalGeneration /
Qwen3ASRForTokenClassification.from_pretrained. The weights are random, so the transcripts are gibberish and the
aligner's time bins arbitrary; what is checked is everything around them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoProcessor,
    Qwen3ASRConfig,
    Qwen3ASREncoderConfig,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRForTokenClassification,
    Qwen3ASRProcessor,
    Qwen3Config,
)

from tests.support import build_tiny

SR = 16000
AUDIO_PLACEHOLDER = "<|audio_start|><|audio_pad|><|audio_end|>"


# Built with the project's tool like conftest's tiny checkpoints, but not through `tiny_checkpoints`, which would
# first build the two Qwen-Omni checkpoints this module does not need.
@pytest.fixture(scope="session")
def asr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-ASR checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen3-asr"), "qwen3-asr")


@pytest.fixture(scope="session")
def aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-ForcedAligner checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen3-aligner"), "qwen3-aligner")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """A 1.3 s sine and a 2.7 s noise clip at 16 kHz: different lengths, so the batch needs padding."""
    t = np.arange(int(1.3 * SR)) / SR
    sine = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, int(2.7 * SR)).astype(np.float32)
    return [sine, noise]


def load_clean(cls: Any, path: Path) -> Any:
    """from_pretrained, asserting that no weight is missing, unexpected or mismatched."""
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def audio_tokens(seconds: float) -> int:
    """Placeholder tokens per clip: 13 per whole second (100 mel frames), then three stride-2 convs on the rest."""
    frames = int(seconds * SR) // 160
    rest = frames % 100
    tail = 0 if rest == 0 else (((rest - 1) // 2 + 1 - 1) // 2 + 1 - 1) // 2 + 1
    return 13 * (frames // 100) + tail


@pytest.fixture(scope="module")
def asr(asr_dir: Path) -> tuple[Qwen3ASRProcessor, Qwen3ASRForConditionalGeneration]:
    processor = AutoProcessor.from_pretrained(asr_dir)
    return processor, load_clean(Qwen3ASRForConditionalGeneration, asr_dir)


@pytest.fixture(scope="module")
def aligner(aligner_dir: Path) -> tuple[Qwen3ASRProcessor, Qwen3ASRForTokenClassification]:
    processor = AutoProcessor.from_pretrained(aligner_dir)
    return processor, load_clean(Qwen3ASRForTokenClassification, aligner_dir)


def test_asr_checkpoint_has_the_real_types_and_tokens(asr: tuple[Any, Any]) -> None:
    processor, model = asr
    assert type(processor) is Qwen3ASRProcessor
    assert type(model.config) is Qwen3ASRConfig
    assert type(model.config.audio_config) is Qwen3ASREncoderConfig and type(model.config.text_config) is Qwen3Config
    assert model.config.audio_config.n_window == 50  # the processor and encoder hard-code 1 s conv chunks
    assert model.config.audio_config.n_window_infer % (2 * model.config.audio_config.n_window) == 0
    # The LM head is tied to the embeddings, as released (so it is not stored, and nothing is missing).
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    tok = processor.tokenizer
    assert processor.audio_token_id == model.config.audio_token_id == tok.convert_tokens_to_ids("<|audio_pad|>")
    assert tok.convert_tokens_to_ids(tok.eos_token) in model.generation_config.eos_token_id
    assert model.generation_config.do_sample is False
    # <asr_text> is one token that survives skip_special_tokens; <|im_end|> does not.
    ids = tok.encode("language English<asr_text>hi<|im_end|>")
    assert tok.convert_tokens_to_ids("<asr_text>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "language English<asr_text>hi"


@pytest.mark.parametrize("language", [None, "en"])
def test_asr_batch_generates_and_parses(asr: tuple[Any, Any], clips: list[np.ndarray], language: str | None) -> None:
    processor, model = asr
    prompts = processor.apply_transcription_request(audio=clips, language=language, prompt="Quilter", tokenize=False)
    forced = "" if language is None else "language English<asr_text>"
    assert prompts[0] == (
        f"<|im_start|>system\nQuilter<|im_end|>\n<|im_start|>user\n{AUDIO_PLACEHOLDER}<|im_end|>\n"
        f"<|im_start|>assistant\n{forced}"
    )

    inputs = processor.apply_transcription_request(audio=clips, language=language, prompt=["Quilter", None])
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0], "the shorter prompt must be padded on the left"
    placeholders = (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert placeholders == [audio_tokens(len(c) / SR) for c in clips]

    out = model.generate(**inputs, max_new_tokens=8)
    generated = out[:, inputs["input_ids"].shape[1] :]
    assert generated.shape[0] == 2 and 1 <= generated.shape[1] <= 8
    parsed = processor.decode(generated, return_format="parsed")
    assert len(parsed) == 2
    for item in parsed:
        assert set(item) == {"language", "transcription"}
        assert isinstance(item["transcription"], str)
        assert item["language"] is None or isinstance(item["language"], str)

    # Left padding is invisible to the model: the padded row generates what it generates alone.
    alone = processor.apply_transcription_request(audio=clips[:1], language=language, prompt="Quilter")
    single = model.generate(**alone, max_new_tokens=8)[:, alone["input_ids"].shape[1] :]
    assert torch.equal(generated[0, : single.shape[1]], single[0])


def test_parsed_output_format(asr: tuple[Any, Any]) -> None:
    """The model's "language X<asr_text>text" format, and "language None" for silence."""
    processor, _ = asr
    assert processor.parse_output(["language English<asr_text>Hello.", "language None<asr_text>"]) == [
        {"language": "English", "transcription": "Hello."},
        {"language": None, "transcription": ""},
    ]


def test_tokenizer_config_padding_side_overrides_the_processor(asr_dir: Path, tmp_path: Path) -> None:
    """A tokenizer_config.json "padding_side": "right" beats Qwen3ASRProcessor's left default."""
    right = tmp_path / "right"
    shutil.copytree(asr_dir, right)
    config = json.loads((right / "tokenizer_config.json").read_text())
    (right / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "right"}))
    processor = AutoProcessor.from_pretrained(right)
    audio = [np.zeros(SR, np.float32), np.zeros(2 * SR, np.float32)]
    assert processor.apply_transcription_request(audio=audio)["attention_mask"][0, -1] == 0  # right-padded
    fixed = processor.apply_transcription_request(audio=audio, processor_kwargs={"padding_side": "left"})
    assert fixed["attention_mask"][:, -1].all()


def test_aligner_checkpoint_loads_with_its_head(aligner_dir: Path, aligner: tuple[Any, Any]) -> None:
    processor, model = aligner
    assert type(processor) is Qwen3ASRProcessor
    assert type(AutoModelForTokenClassification.from_pretrained(aligner_dir)) is Qwen3ASRForTokenClassification
    assert model.config.timestamp_token_id == processor.tokenizer.convert_tokens_to_ids("<timestamp>")
    assert model.score.out_features == model.config.num_labels
    # Enough 80 ms classes for a minute of audio (the released head has 5000: 400 s).
    assert processor.timestamp_segment_time == 80
    assert model.config.num_labels * processor.timestamp_segment_time >= 60_000


def test_aligner_batch_gives_one_monotonic_timestamp_per_word(
    aligner: tuple[Any, Any], clips: list[np.ndarray]
) -> None:
    processor, model = aligner
    transcripts = ["Mr. Quilter is the apostle!", "你好, world: it's 3 o'clock"]
    inputs, words = processor.prepare_forced_aligner_inputs(
        audio=clips, transcript=transcripts, language=["English", "zh"]
    )
    assert words == [["Mr", "Quilter", "is", "the", "apostle"], ["你", "好", "world", "it's", "3", "o'clock"]]
    text = processor.tokenizer.decode(inputs["input_ids"][0][inputs["attention_mask"][0].bool()])
    assert text.endswith("Mr<timestamp><timestamp>Quilter<timestamp><timestamp>is<timestamp><timestamp>"
                         "the<timestamp><timestamp>apostle<timestamp><timestamp>")  # fmt: skip
    markers = (inputs["input_ids"] == model.config.timestamp_token_id).sum(-1).tolist()
    assert markers == [2 * len(w) for w in words]

    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.num_labels)
    ts_id = model.config.timestamp_token_id
    result = processor.decode_forced_alignment(logits, inputs["input_ids"], words, timestamp_token_id=ts_id)
    limit = model.config.num_labels * processor.timestamp_segment_time / 1000
    for items, word_list in zip(result, words, strict=True):
        assert [item["text"] for item in items] == word_list
        times = [t for item in items for t in (item["start_time"], item["end_time"])]
        assert times == sorted(times) and times[0] >= 0 and times[-1] < limit

    # A head that only predicts bins inside each clip (as a trained one should) gives times inside the clip,
    # class k at k * 80 ms, with out-of-order bins repaired to a monotonic sequence.
    crafted = torch.full_like(logits, -1e4)
    for row, clip in enumerate(clips):
        positions = (inputs["input_ids"][row] == ts_id).nonzero().flatten()
        top = int(len(clip) / SR * 1000 // processor.timestamp_segment_time)
        bins = np.linspace(0, top, len(positions)).astype(int)
        bins[1], bins[2] = bins[2], bins[1]  # one inversion
        crafted[row, positions, torch.tensor(bins)] = 0.0
    result = processor.decode_forced_alignment(crafted, inputs["input_ids"], words, timestamp_token_id=ts_id)
    for items, clip in zip(result, clips, strict=True):
        times = [t for item in items for t in (item["start_time"], item["end_time"])]
        assert times == sorted(times) and times[0] == 0 and times[-1] <= len(clip) / SR
        assert all(round(t / 0.08, 6) == round(t / 0.08) for t in times)
