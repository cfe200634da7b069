"""Transcription options: parsing and validation of the form fields every transcribe endpoint takes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from app.errors import InvalidOption, quoted

# The official feature extractor pads/truncates at 300 s (n_samples 4 800 000): longer segments would be cut.
MAX_SEGMENT_SECONDS = 300.0
MIN_SEGMENT_SECONDS = 1.0
MAX_NEW_TOKENS_LIMIT = 32768
MAX_TEMPERATURE = 2.0
REPETITION_PENALTY_RANGE = (0.5, 3.0)
MAX_PROMPT_CHARS = 4000

# Languages Qwen-Omni transcribes; code -> the English name used in the prompt ("Transcribe the English audio").
LANGUAGES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "yue": "Cantonese",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "ar": "Arabic",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "no": "Norwegian",
    "pl": "Polish",
    "cs": "Czech",
    "tr": "Turkish",
    "el": "Greek",
    "he": "Hebrew",
    "hi": "Hindi",
    "id": "Indonesian",
    "ms": "Malay",
    "th": "Thai",
    "vi": "Vietnamese",
    "uk": "Ukrainian",
    "hu": "Hungarian",
    "ro": "Romanian",
    "fa": "Persian",
    "ur": "Urdu",
}
_LANGUAGE_BY_NAME = {name.lower(): code for code, name in LANGUAGES.items()}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class TranscribeOptions:
    """Validated options for one transcription."""

    segment_duration: float = 60.0
    max_new_tokens: int = 8192
    temperature: float = 0.1
    repetition_penalty: float = 1.1
    enable_s2t: bool = False
    language: str | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        check_segment_duration(self.segment_duration)
        check_max_new_tokens(self.max_new_tokens)
        check_temperature(self.temperature)
        check_repetition_penalty(self.repetition_penalty)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (persisted with async jobs)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscribeOptions:
        """Inverse of to_dict."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# field -> (lowest, highest, whether only integers are allowed); the single source of every range message.
RANGES: dict[str, tuple[float, float, bool]] = {
    "segment_duration": (MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS, False),
    "max_new_tokens": (1, MAX_NEW_TOKENS_LIMIT, True),
    "temperature": (0.0, MAX_TEMPERATURE, False),
    "repetition_penalty": (*REPETITION_PENALTY_RANGE, False),
}


def allowed(field: str) -> str:
    """The allowed values of a numeric field, in words."""
    low, high, integer = RANGES[field]
    return f"{'an integer' if integer else 'a number'} in [{low:g}, {high:g}]"


def _in_range(field: str, value: float) -> None:
    low, high, _ = RANGES[field]
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidOption(field, f"must be {allowed(field)}, got {quoted(value)}")


def check_segment_duration(value: float) -> None:
    """1 to 300 seconds: the model's feature extractor silently truncates longer input."""
    _in_range("segment_duration", value)


def check_max_new_tokens(value: int) -> None:
    """1 to 32768 tokens."""
    _in_range("max_new_tokens", value)


def check_temperature(value: float) -> None:
    """0 (greedy) to 2."""
    _in_range("temperature", value)


def check_repetition_penalty(value: float) -> None:
    """0.5 to 3 (1 means no penalty)."""
    _in_range("repetition_penalty", value)


def _parse_float(field: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise InvalidOption(field, f"must be {allowed(field)}, got {quoted(raw)}") from None
    if not math.isfinite(value):
        raise InvalidOption(field, f"must be {allowed(field)}, got {quoted(raw)}")
    return value


def _parse_int(field: str, raw: str) -> int:
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    # Accept "512.0" but not "512.5": clients built from JSON numbers send the former.
    value = _parse_float(field, text)
    if not value.is_integer():
        raise InvalidOption(field, f"must be {allowed(field)}, got {quoted(raw)}")
    return int(value)


def parse_bool(field: str, raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off."""
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidOption(field, f"must be true or false, got {quoted(raw)}")


def parse_language(raw: str) -> str | None:
    """A language code ("en") or English name ("English"); empty or "auto" means detect."""
    text = raw.strip().lower()
    if text in ("", "auto"):
        return None
    if text in LANGUAGES:
        return text
    if text in _LANGUAGE_BY_NAME:
        return _LANGUAGE_BY_NAME[text]
    raise InvalidOption("language", f"unknown language {quoted(raw)}; use one of: {', '.join(sorted(LANGUAGES))}")


def parse_prompt(raw: str) -> str | None:
    """An instruction replacing the default one; at most MAX_PROMPT_CHARS characters."""
    text = raw.strip()
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidOption("prompt", f"must be at most {MAX_PROMPT_CHARS} characters, got {len(text)}")
    return text or None


def parse_options(
    form: Mapping[str, str], defaults: TranscribeOptions, *, accepts_prompt: bool = True
) -> TranscribeOptions:
    """Build options from form fields, falling back to the server's defaults for absent or empty fields.

    accepts_prompt is False for models that take no text instruction (the Captioner).
    """

    def given(name: str) -> str | None:
        raw = form.get(name)
        return raw if raw is not None and raw.strip() != "" else None

    values: dict[str, Any] = defaults.to_dict()
    for name in ("segment_duration", "temperature", "repetition_penalty"):
        if (raw := given(name)) is not None:
            values[name] = _parse_float(name, raw)
    if (raw := given("max_new_tokens")) is not None:
        values["max_new_tokens"] = _parse_int("max_new_tokens", raw)
    if (raw := given("enable_s2t")) is not None:
        values["enable_s2t"] = parse_bool("enable_s2t", raw)
    if (raw := form.get("language")) is not None:
        values["language"] = parse_language(raw)
    if (raw := form.get("prompt")) is not None:
        values["prompt"] = parse_prompt(raw)
        if values["prompt"] and not accepts_prompt:
            raise InvalidOption("prompt", "this model takes no text prompt (it captions the audio as it is)")
    return TranscribeOptions(**values)
