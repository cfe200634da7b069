"""Qwen3-ASR's output format: the language tag it writes before the text, and the transcript's language."""

from __future__ import annotations

import pytest

from app.backends.qwen3_asr import language_names, split_output
from app.pipeline import identified
from app.protocol.native import LANGUAGES
from app.transcript import TranscriptSegment
from app.variants import VARIANTS


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("language English<asr_text>And so, my fellow Americans.", ("And so, my fellow Americans.", "en")),
        ("language Chinese<asr_text>你好", ("你好", "zh")),
        ("language cantonese<asr_text> 早晨 ", ("早晨", "yue")),
        ("language None<asr_text>", ("", None)),  # no speech
        ("Hello there.", ("Hello there.", None)),  # forced language: the prefill held the tag
        ("language Klingon<asr_text>Qapla'", ("Qapla'", None)),  # a name outside its table
        ("Japanese<asr_text>こんにちは", ("こんにちは", "ja")),  # the bare form the original parser accepts
    ],
)
def test_the_language_tag_is_split_off(output: str, expected: tuple[str, str | None]) -> None:
    assert split_output(output) == expected


def test_every_language_it_names_is_one_the_service_knows() -> None:
    """Identified codes reach verbose_json as English names: each must be in the service's own table."""
    assert set(language_names()) <= set(LANGUAGES)
    assert all(LANGUAGES[code] == name for code, name in language_names().items())


def test_the_transcripts_language_is_the_one_heard_longest() -> None:
    segments = [
        TranscriptSegment(0, 0.0, 5.0, "a", language="en"),
        TranscriptSegment(1, 5.0, 7.0, "b", language="de"),
        TranscriptSegment(2, 7.0, 9.0, "c", language="de"),
        TranscriptSegment(3, 9.0, 10.0, "d"),
    ]
    assert identified(segments) == "en"
    assert identified(segments[1:]) == "de"
    assert identified(segments[3:]) is None and identified([]) is None


def test_only_the_omni_variants_chat() -> None:
    assert {name for name, v in VARIANTS.items() if not v.chats} == {"asr", "asr-0.6b"}
    assert all(v.vad for v in VARIANTS.values() if v.family == "qwen3-asr")


def test_a_segments_language_is_shown_only_when_the_model_named_one() -> None:
    from app.protocol.native import Segment, TranscriptResult
    from app.transcript import Transcript

    named = Segment.of(TranscriptSegment(0, 0.0, 1.0, "hallo", language="de")).body()
    assert named["language"] == "de"
    assert "language" not in Segment.of(TranscriptSegment(0, 0.0, 1.0, "hi")).body()
    # A job keeps it: the transcript rebuilt from its stored JSON has it again.
    stored = TranscriptResult.of(Transcript([TranscriptSegment(0, 0.0, 1.0, "hallo", language="de")], 1.0, "de", 0.1))
    assert stored.transcript().segments[0].language == "de"
