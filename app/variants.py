"""The model variants the service can serve: one registry, one entry per deployment profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["qwen2.5-omni", "qwen3-omni", "qwen3-asr"]
Task = Literal["transcribe", "caption"]
Quantization = Literal["none", "awq", "compressed-tensors"]

# The model class of each family: for Omni its thinker, text out only, so the talker (speech output) is never
# loaded; Qwen3-ASR is an audio encoder and a text decoder and nothing else.
THINKER_CLASSES: dict[Family, str] = {
    "qwen2.5-omni": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen3-omni": "Qwen3OmniMoeThinkerForConditionalGeneration",
    "qwen3-asr": "Qwen3ASRForConditionalGeneration",
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
    def paced(self) -> bool:
        """Whether the output's length follows the audio's, so that the runaway guard applies: a caption
        describes the sounds, however long or short they are (272 tokens for 30 s would cut it)."""
        return self.task != "caption"

    @property
    def chats(self) -> bool:
        """Whether /v1/chat/completions is served: Qwen3-ASR was trained to transcribe, not to converse."""
        return self.family != "qwen3-asr"

    @property
    def sees(self) -> bool:
        """Whether images and video are served (chat, /ocr, /describe): the Omni thinkers have a vision tower;
        the Captioner was tuned to describe audio alone, and Qwen3-ASR has no vision tower at all."""
        return self.family != "qwen3-asr" and self.task != "caption"

    @property
    def vision_factor(self) -> int:
        """Pixels per side of the block one vision token stands for: 14-pixel patches (Qwen2.5-Omni) or 16-pixel
        ones (Qwen3-Omni), merged 2 x 2."""
        return 32 if self.family == "qwen3-omni" else 28

    @property
    def why_blind(self) -> str:
        """Why images and video are refused, in a client's words; empty when they are served."""
        if self.task == "caption":
            return "the Captioner describes audio and takes no images or video"
        if self.family == "qwen3-asr":
            return "Qwen3-ASR has no vision tower; an Omni variant (awq, full, 3b, instruct-awq) sees images and video"
        return ""

    @property
    def identifies(self) -> bool:
        """Whether the language spoken can be asked for (/detect-language): not of the Captioner, which takes
        no question."""
        return self.task != "caption"

    @property
    def translates(self) -> bool:
        """Whether task=translate is served: the Omni thinkers follow a translation instruction; Qwen3-ASR only
        transcribes, and the Captioner takes no instruction at all."""
        return self.family != "qwen3-asr" and self.task != "caption"

    @property
    def why_not_translate(self) -> str:
        """Why translate is refused, in a client's words; empty when it is served."""
        if self.task == "caption":
            return "it describes the audio and takes no instruction"
        if self.family == "qwen3-asr":
            return "Qwen3-ASR only transcribes; an Omni variant (awq, full, 3b, instruct-awq) translates"
        return ""

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
        # Purpose-built ASR with language identification (30 languages, 22 Chinese dialects), a quarter of the
        # Omni 7B's size. Its feature extractor pads to the longest clip and truncates nothing, and Qwen's own
        # recipe takes up to 1200 s at once but 180 s when words are timed (the aligner's limit): 120 s keeps
        # every segment alignable, with context to spare, and progress steps of two minutes.
        Variant(
            "asr",
            "qwen3-asr",
            "transcribe",
            "Qwen/Qwen3-ASR-1.7B-hf",
            "none",
            120.0,
            description="Qwen3-ASR 1.7B in bf16, with language identification",
        ),
        Variant(
            "asr-0.6b",
            "qwen3-asr",
            "transcribe",
            "Qwen/Qwen3-ASR-0.6B-hf",
            "none",
            120.0,
            description="Qwen3-ASR 0.6B in bf16, the smallest and fastest",
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
