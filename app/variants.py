"""The model variants the service can serve: one registry, one entry per deployment profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["qwen2.5-omni", "qwen3-omni"]
Task = Literal["transcribe", "caption"]
Quantization = Literal["none", "awq", "compressed-tensors"]

# The thinker class of each family: text out only, so the talker (speech output) is never loaded.
THINKER_CLASSES: dict[Family, str] = {
    "qwen2.5-omni": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen3-omni": "Qwen3OmniMoeThinkerForConditionalGeneration",
}


@dataclass(frozen=True)
class Variant:
    """A model family, task and checkpoint format, with the defaults that suit them."""

    name: str
    family: Family
    task: Task
    # Hugging Face id loaded when no --checkpoint-path is given.
    checkpoint: str
    # How the checkpoint stores its weights; the loader needs the matching kernels installed.
    quantization: Quantization
    # Default segment length in seconds.
    segment_duration: float
    # Device when --device is auto: the cpu variant never looks for a GPU.
    device: str = "auto"
    description: str = ""

    @property
    def vad(self) -> bool:
        """Whether requests cut at speech pauses by default: a caption describes music and sounds too, so the
        Captioner hears everything."""
        return self.task != "caption"

    @property
    def thinker_class(self) -> str:
        """Name of the transformers class that loads this variant's thinker."""
        return THINKER_CLASSES[self.family]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "awq",
            "qwen2.5-omni",
            "transcribe",
            "Qwen/Qwen2.5-Omni-7B-AWQ",
            "awq",
            60.0,
            description="Qwen2.5-Omni 7B, 4-bit AWQ (the default)",
        ),
        Variant(
            "full",
            "qwen2.5-omni",
            "transcribe",
            "Qwen/Qwen2.5-Omni-7B",
            "none",
            60.0,
            description="Qwen2.5-Omni 7B in bf16",
        ),
        Variant(
            "3b",
            "qwen2.5-omni",
            "transcribe",
            "Qwen/Qwen2.5-Omni-3B",
            "none",
            60.0,
            description="Qwen2.5-Omni 3B in bf16",
        ),
        # The Captioner describes audio rather than transcribing it; its card recommends 30 s or less.
        Variant(
            "captioner",
            "qwen3-omni",
            "caption",
            "Qwen/Qwen3-Omni-30B-A3B-Captioner",
            "none",
            30.0,
            description="Qwen3-Omni 30B-A3B Captioner in bf16",
        ),
        Variant(
            "captioner-awq",
            "qwen3-omni",
            "caption",
            "cyankiwi/Qwen3-Omni-30B-A3B-Captioner-AWQ-8bit",
            "compressed-tensors",
            30.0,
            description="Qwen3-Omni 30B-A3B Captioner, 8-bit compressed-tensors",
        ),
        Variant(
            "instruct-awq",
            "qwen3-omni",
            "transcribe",
            "cyankiwi/Qwen3-Omni-30B-A3B-Instruct-AWQ-4bit",
            "compressed-tensors",
            60.0,
            description="Qwen3-Omni 30B-A3B Instruct, 4-bit AWQ in compressed-tensors, for transcription",
        ),
        Variant(
            "cpu",
            "qwen2.5-omni",
            "transcribe",
            "Qwen/Qwen2.5-Omni-3B",
            "none",
            60.0,
            device="cpu",
            description="Qwen2.5-Omni 3B on CPU, for machines without a GPU",
        ),
    )
}

DEFAULT_VARIANT = "awq"


def get_variant(name: str) -> Variant:
    """The variant called name; ValueError listing the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None
