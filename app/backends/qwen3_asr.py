"""Qwen3-ASR through transformers: Qwen3ASRForConditionalGeneration fed by Qwen3ASRProcessor's transcription request.

Facts from reading transformers 5.23's qwen3_asr that shape this module:

- `apply_transcription_request` builds the whole prompt: an optional system turn holding the context (our
  `prompt`: names, terms, hotwords, not an instruction), the audio, and an assistant turn prefilled with
  `language <Name><asr_text>` when a language is forced. It accepts only the languages of its own table;
  any other would raise, so those are detected instead.
- Without a forced language the model writes `language <Name><asr_text>` itself before the text (`language
  None` for audio without speech). `<asr_text>` is not a special token: it survives skip_special_tokens.
  The split is done here rather than by `parse_output`, which also rewrites repeated characters: loops are
  handled, and reported as a stop reason, like the Omni models'.
- The processor pads on the left, but a checkpoint's tokenizer_config.json may say "right", which beats the
  processor's default: left is passed explicitly, as batched generation needs it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from app.backends import GenerationRequest
from app.backends.choices import Choice
from app.backends.loading import attention, complete, load_dtype
from app.backends.qwen_omni import MIN_SAMPLES, QwenOmniBackend, _at_least
from app.devices import resolve_device
from app.settings import Settings

log = logging.getLogger(__name__)

MARKER = "<asr_text>"


@functools.cache
def language_names() -> dict[str, str]:
    """The model's languages: each code and the name it was trained with (transformers' own table)."""
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    return dict(LANGUAGE_CODE_TO_NAME)


def split_output(output: str) -> tuple[str, str | None]:
    """The transcript in a decoded output, and the language the model named before it (a code; None when the
    language was forced, when it says `language None`, or names one outside its table)."""
    if MARKER not in output:
        return output.strip(), None
    head, text = output.split(MARKER, 1)
    head = head.strip()
    name = head[len("language ") :] if head.lower().startswith("language ") else head
    codes = {known.lower(): code for code, known in language_names().items()}
    return text.strip(), codes.get(name.strip().lower())


class Qwen3AsrBackend(QwenOmniBackend):
    """A loaded Qwen3-ASR model: generation, token limits and loop handling as for the Omni thinkers."""

    def __init__(self, model: Any, processor: Any, device: str) -> None:
        super().__init__(model, processor, device, "transcribe")
        self._names = language_names()

    @classmethod
    def load(cls, settings: Settings, checkpoint: str) -> Qwen3AsrBackend:
        """Load processor and model from a local checkpoint directory onto the configured device."""
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

        device = resolve_device(settings.device)
        attn = attention(settings, device)
        dtype = load_dtype(device)
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)  # type: ignore[no-untyped-call]
        loaded = Qwen3ASRForConditionalGeneration.from_pretrained(
            checkpoint,
            dtype=dtype,
            attn_implementation=attn,
            device_map="auto" if device == "cuda" else device,
            local_files_only=True,
            output_loading_info=True,
        )
        model: Any = complete(loaded, checkpoint)
        model.eval()
        log.info("loaded %s (%s) on %s, %s", settings.checkpoint_path, settings.model_variant.name, device, attn)
        return cls(model, processor, device)

    def _inputs(self, batch: Sequence[GenerationRequest]) -> Any:
        """The transcription requests of a batch as one left-padded tensor batch on the model's device."""
        if any(r.chat is not None for r in batch):
            raise ValueError("Qwen3-ASR transcribes; it does not answer conversations")
        inputs = self.processor.apply_transcription_request(
            audio=[_at_least(r.samples, MIN_SAMPLES) for r in batch],
            # A language outside the model's table is left to its own identification, as is every language
            # when identifying is the request.
            language=[r.language if r.language in self._names and r.task != "identify" else None for r in batch],
            # Client context loses the template's special tokens, as Omni prompts do: an audio placeholder in it
            # would take another row's audio and fail the whole batch.
            prompt=[self._context(r.prompt) if r.task != "identify" else None for r in batch],
            processor_kwargs={"padding_side": "left"},
        )
        inputs = inputs.to(self.model.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        return inputs

    def _language_choices(self) -> list[Choice]:
        """The model's own identification: `language <Name>` as it writes it, ended by <asr_text>."""
        if self._choices is None:
            tokenizer = self.processor.tokenizer
            end = tokenizer.convert_tokens_to_ids(MARKER)
            self._choices = [
                Choice(code, (*tokenizer.encode(f"language {name}", add_special_tokens=False), end))
                for code, name in self._names.items()
            ]
        return self._choices

    def _context(self, prompt: str | None) -> str | None:
        text = self._special.sub("", prompt) if prompt and self._special is not None else prompt
        return text or None

    def _split(self, output: str) -> tuple[str, str | None]:
        """The text after the model's language tag, and that language as a code."""
        return split_output(output)
