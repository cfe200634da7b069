"""app.options: form parsing and validation of the transcription options."""

from __future__ import annotations

import pytest

from app.errors import InvalidOption
from app.protocol.native import MAX_PROMPT_CHARS, TranscribeOptions, parse_options
from app.variants import VARIANTS

DEFAULTS = TranscribeOptions(
    segment_duration=45.0, max_new_tokens=1024, temperature=0.3, repetition_penalty=1.2, enable_s2t=True
)


def test_absent_fields_use_defaults() -> None:
    """An empty form gives exactly the server defaults."""
    assert parse_options({}, DEFAULTS) == DEFAULTS


def test_empty_and_blank_fields_use_defaults() -> None:
    """Empty or whitespace-only numeric/bool fields fall back to the defaults."""
    form = {
        "segment_duration": "",
        "max_new_tokens": "  ",
        "temperature": "",
        "repetition_penalty": "\t",
        "enable_s2t": "",
    }
    assert parse_options(form, DEFAULTS) == DEFAULTS


def test_all_fields_parsed() -> None:
    """Every field given is parsed to its typed value."""
    form = {
        "segment_duration": " 30 ",
        "max_new_tokens": "256",
        "temperature": "0",
        "repetition_penalty": "1.0",
        "enable_s2t": "false",
        "language": "zh",
        "prompt": "  Transcribe this.  ",
    }
    assert parse_options(form, DEFAULTS) == TranscribeOptions(
        segment_duration=30.0,
        max_new_tokens=256,
        temperature=0.0,
        repetition_penalty=1.0,
        enable_s2t=False,
        language="zh",
        prompt="Transcribe this.",
    )


def rejected(field: str, raw: str) -> InvalidOption:
    """Parse a form with one field and return the InvalidOption it raises."""
    with pytest.raises(InvalidOption) as info:
        parse_options({field: raw}, DEFAULTS)
    error = info.value
    assert error.status == 400
    assert error.code == "invalid_option"
    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    return error


@pytest.mark.parametrize("raw", ["1", "300", "1.0", "299.5", "60"])
def test_segment_duration_accepted(raw: str) -> None:
    """1 and 300 are the inclusive bounds."""
    assert parse_options({"segment_duration": raw}, DEFAULTS).segment_duration == float(raw)


@pytest.mark.parametrize("raw", ["0", "301", "-5", "0.999", "300.001"])
def test_segment_duration_out_of_range(raw: str) -> None:
    """Out-of-range durations are rejected with the range in the message."""
    assert "[1, 300]" in rejected("segment_duration", raw).message


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "abc", "1e999", "60s"])
def test_segment_duration_not_a_finite_number(raw: str) -> None:
    """Non-numbers and non-finite numbers are rejected, naming the field and echoing the value."""
    assert repr(raw) in rejected("segment_duration", raw).message


@pytest.mark.parametrize("raw", ["nan", "abc"])
def test_segment_duration_bad_number_message_names_range(raw: str) -> None:
    """InvalidOption's contract: the message names the field and the allowed range, for every bad value."""
    assert "[1, 300]" in rejected("segment_duration", raw).message


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("32768", 32768), ("64.0", 64), (" 512 ", 512), ("1e3", 1000)])
def test_max_new_tokens_accepted(raw: str, value: int) -> None:
    """Integers, and floats with no fractional part, are accepted as ints."""
    parsed = parse_options({"max_new_tokens": raw}, DEFAULTS).max_new_tokens
    assert parsed == value
    assert type(parsed) is int


@pytest.mark.parametrize("raw", ["12.5", "0.5"])
def test_max_new_tokens_fraction_rejected(raw: str) -> None:
    """A fractional token count is not an integer."""
    assert "integer" in rejected("max_new_tokens", raw).message


@pytest.mark.parametrize("raw", ["0", "-1", "32769", "100000"])
def test_max_new_tokens_out_of_range(raw: str) -> None:
    """Token counts outside 1..32768 are rejected with the range."""
    assert "[1, 32768]" in rejected("max_new_tokens", raw).message


@pytest.mark.parametrize("raw", ["abc", "nan", "inf"])
def test_max_new_tokens_not_a_number(raw: str) -> None:
    """Non-numbers are rejected."""
    rejected("max_new_tokens", raw)


@pytest.mark.parametrize("raw", ["0", "2", "0.7", "1.99"])
def test_temperature_accepted(raw: str) -> None:
    """0 (greedy) and 2 are the inclusive bounds."""
    assert parse_options({"temperature": raw}, DEFAULTS).temperature == float(raw)


@pytest.mark.parametrize("raw", ["-0.1", "2.01", "5"])
def test_temperature_out_of_range(raw: str) -> None:
    """Temperatures outside 0..2 are rejected with the range."""
    assert "[0, 2]" in rejected("temperature", raw).message


@pytest.mark.parametrize("raw", ["0.5", "3", "1"])
def test_repetition_penalty_accepted(raw: str) -> None:
    """0.5 and 3 are the inclusive bounds."""
    assert parse_options({"repetition_penalty": raw}, DEFAULTS).repetition_penalty == float(raw)


@pytest.mark.parametrize("raw", ["0.49", "3.01", "0", "-1"])
def test_repetition_penalty_out_of_range(raw: str) -> None:
    """Penalties outside 0.5..3 are rejected with the range."""
    assert "[0.5, 3]" in rejected("repetition_penalty", raw).message


@pytest.mark.parametrize("raw", ["nan", "x"])
def test_temperature_and_penalty_not_numbers(raw: str) -> None:
    """Non-numbers are rejected for both float fields."""
    rejected("temperature", raw)
    rejected("repetition_penalty", raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        (" On ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_enable_s2t_values(raw: str, value: bool) -> None:
    """true/false, 1/0, yes/no, on/off in any case."""
    assert parse_options({"enable_s2t": raw}, DEFAULTS).enable_s2t is value


@pytest.mark.parametrize("raw", ["maybe", "2", "t", "y", "enabled"])
def test_enable_s2t_rejected(raw: str) -> None:
    """Anything else is rejected."""
    assert "true or false" in rejected("enable_s2t", raw).message


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("en", "en"),
        ("EN", "en"),
        ("English", "en"),
        ("english", "en"),
        ("zh", "zh"),
        ("Chinese", "zh"),
        ("yue", "yue"),
        ("Japanese", "ja"),
        (" de ", "de"),
        ("auto", None),
        ("AUTO", None),
        ("", None),
    ],
)
def test_language(raw: str, code: str | None) -> None:
    """Codes and English names map to the code; auto/empty mean detect (None)."""
    assert parse_options({"language": raw}, DEFAULTS).language == code


@pytest.mark.parametrize("raw", ["klingon", "eng", "zh-CN", "xx"])
def test_language_unknown(raw: str) -> None:
    """Unknown languages are rejected, listing the known codes."""
    message = rejected("language", raw).message
    assert repr(raw) in message
    assert "en" in message
    assert "zh" in message


def test_prompt_limit() -> None:
    """A prompt of exactly MAX_PROMPT_CHARS is kept; one more character is rejected."""
    assert MAX_PROMPT_CHARS == 4000
    prompt = "x" * 4000
    assert parse_options({"prompt": prompt}, DEFAULTS).prompt == prompt
    assert "4000" in rejected("prompt", "x" * 4001).message


def test_prompt_blank_is_none() -> None:
    """A whitespace-only prompt means no custom prompt."""
    assert parse_options({"prompt": "   "}, DEFAULTS).prompt is None


def test_prompt_keeps_unicode() -> None:
    """A non-ASCII prompt is kept verbatim (after trimming)."""
    assert parse_options({"prompt": " 请转写这段音频。 "}, DEFAULTS).prompt == "请转写这段音频。"


def test_options_round_trip() -> None:
    """to_dict / from_dict reproduce the same options, and to_dict is JSON-ready."""
    options = TranscribeOptions(
        segment_duration=12.5,
        max_new_tokens=77,
        temperature=0.0,
        repetition_penalty=2.5,
        enable_s2t=True,
        vad=False,
        word_timestamps=True,
        language="yue",
        prompt="Say it.",
        task="translate",
    )
    data = options.to_dict()
    assert data == {
        "segment_duration": 12.5,
        "max_new_tokens": 77,
        "temperature": 0.0,
        "repetition_penalty": 2.5,
        "enable_s2t": True,
        "vad": False,
        "word_timestamps": True,
        "language": "yue",
        "prompt": "Say it.",
        "task": "translate",
    }
    assert TranscribeOptions.from_dict(data) == options


def test_from_dict_ignores_unknown_and_defaults_missing() -> None:
    """Keys from other versions are ignored; missing keys take the class defaults."""
    options = TranscribeOptions.from_dict({"max_new_tokens": 10, "removed_field": 1})
    assert options == TranscribeOptions(max_new_tokens=10)


def test_constructor_validates_ranges() -> None:
    """Building options directly applies the same range checks."""
    with pytest.raises(InvalidOption, match="segment_duration"):
        TranscribeOptions(segment_duration=0.5)
    with pytest.raises(InvalidOption, match="temperature"):
        TranscribeOptions(temperature=float("nan"))


@pytest.mark.parametrize(
    ("variant", "served"), [("awq", True), ("instruct-awq", True), ("asr", False), ("captioner", False)]
)
def test_translate_is_refused_by_variants_that_cannot(variant: str, served: bool) -> None:
    """task=translate reaches the Omni transcribers; Qwen3-ASR and the Captioner refuse it naming the field."""
    form = {"task": "translate"}
    if served:
        assert parse_options(form, DEFAULTS, VARIANTS[variant]).task == "translate"
        return
    with pytest.raises(InvalidOption) as caught:
        parse_options(form, DEFAULTS, VARIANTS[variant])
    assert caught.value.field == "task" and "cannot translate" in caught.value.message


def test_task_defaults_to_transcribe_and_refuses_others() -> None:
    assert parse_options({"task": " "}, DEFAULTS).task == "transcribe"
    with pytest.raises(InvalidOption) as caught:
        parse_options({"task": "summarize"}, DEFAULTS)
    assert caught.value.field == "task"


def test_translation_prompt_follows_the_cookbook_and_keeps_context() -> None:
    """Translation is the cookbook's speech-translation turn into English; a prompt is context, not the task."""
    from app.backends.qwen_omni import conversation

    system, user = conversation("transcribe", "de", "Bundestag", "translate")
    assert system["content"][0]["text"] == "You are a speech translation model."
    assert user["content"][0] == {"type": "audio"}
    assert user["content"][1]["text"] == (
        "Listen to the provided German speech and produce a translation in English text. It may mention: Bundestag"
    )
    _, plain = conversation("transcribe", None, None, "translate")
    assert plain["content"][1]["text"] == "Listen to the provided speech and produce a translation in English text."
    # Transcription keeps its instruction (the prompt replaces it), and the Captioner hears audio alone.
    _, transcribe = conversation("transcribe", "de", None)
    assert transcribe["content"][1]["text"] == "Transcribe the German audio into text."
    assert conversation("caption", None, None, "translate") == [{"role": "user", "content": [{"type": "audio"}]}]
