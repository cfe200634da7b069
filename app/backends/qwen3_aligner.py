"""Qwen3-ForcedAligner through transformers: word times for a segment's audio and text, batched.

Facts from reading transformers 5.23's qwen3_asr that shape this module:

- The aligner is `Qwen3ASRForTokenClassification` with `Qwen3ASRProcessor`: `prepare_forced_aligner_inputs`
  splits the text into words (every CJK ideograph is a word, other scripts split at spaces, everything but
  letters, digits and apostrophes dropped) and puts two `<timestamp>` tokens after each; the head classifies
  each of them into a time bin of `timestamp_segment_time` ms, and `decode_forced_alignment` turns the bins
  into monotonic (start, end) pairs. The times are not clamped to the audio: that is done here.
- Japanese and Korean are split by nagisa and soynlp when their language is named; neither is a dependency
  here, so the language is never passed to the splitter, which then splits those texts like any other (kana
  runs and Hangul words, each ideograph alone) - the same words app/words.py finds in the text.
- It is a forward pass, not generation: rows are padded on the right, so that every real token keeps the
  position it has alone (a checkpoint's tokenizer_config may say otherwise, so it is passed explicitly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from app.audio import SAMPLE_RATE
from app.backends import MAX_ALIGN_SECONDS, Alignment, AlignmentRequest, BackendOutOfMemory
from app.backends.loading import complete, load_dtype
from app.devices import resolve_device
from app.settings import Settings

log = logging.getLogger(__name__)

# The languages the released aligner was trained on (transformers' FORCED_ALIGNER_LANGUAGES), as codes.
ALIGNER_LANGUAGES = frozenset({"zh", "en", "yue", "fr", "de", "it", "ja", "ko", "pt", "ru", "es"})
# Shorter audio gives the encoder too few frames for one token: padded with silence, as for transcription.
MIN_SAMPLES = 16000


def supports(language: str | None) -> bool:
    """Whether the aligner can time text in this language (unknown languages are tried)."""
    return language is None or language in ALIGNER_LANGUAGES


class Qwen3Aligner:
    """A loaded Qwen3-ForcedAligner and its processor."""

    def __init__(self, model: Any, processor: Any, device: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self._timestamp_id = int(model.config.timestamp_token_id)
        self._bin_ms = float(processor.timestamp_segment_time)

    @classmethod
    def load(cls, settings: Settings, checkpoint: str) -> Qwen3Aligner:
        """Load the aligner from a local checkpoint directory onto the configured device."""
        from transformers import AutoProcessor, Qwen3ASRForTokenClassification

        device = resolve_device(settings.device)
        dtype = load_dtype(device)
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)  # type: ignore[no-untyped-call]
        loaded = Qwen3ASRForTokenClassification.from_pretrained(
            checkpoint, dtype=dtype, device_map=device, local_files_only=True, output_loading_info=True
        )
        model: Any = complete(loaded, checkpoint)
        model.eval()
        log.info("loaded the aligner %s on %s", settings.aligner, device)
        return cls(model, processor, device)

    def align(self, batch: Sequence[AlignmentRequest]) -> list[Alignment]:
        """Word times for each request that can be aligned (None for the rest), in one forward pass."""
        import torch

        out: list[Alignment] = [None] * len(batch)
        rows = [
            k
            for k, r in enumerate(batch)
            if r.text.strip() and supports(r.language) and len(r.samples) <= MAX_ALIGN_SECONDS * SAMPLE_RATE
        ]
        if not rows:
            return out
        audio = [_at_least(batch[k].samples, MIN_SAMPLES) for k in rows]
        inputs, words = self.processor.prepare_forced_aligner_inputs(
            audio=audio,
            transcript=[batch[k].text for k in rows],
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        inputs = inputs.to(self.model.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        try:
            with torch.inference_mode():
                logits = self.model(**inputs).logits
        except torch.OutOfMemoryError as exc:
            raise BackendOutOfMemory(str(exc)) from exc
        decoded = self.processor.decode_forced_alignment(
            logits,
            inputs["input_ids"],
            words,
            timestamp_token_id=self._timestamp_id,
            timestamp_segment_time=self._bin_ms,
        )
        for k, items in zip(rows, decoded, strict=True):
            # Bins past the audio (a head is not bound to the clip) are clamped to its end.
            seconds = len(batch[k].samples) / SAMPLE_RATE
            out[k] = [
                (item["text"], min(item["start_time"], seconds), min(item["end_time"], seconds)) for item in items
            ]
        return out

    def close(self) -> None:
        """Drop the model and processor."""
        self.model = None
        self.processor = None


def _at_least(samples: Any, length: int) -> Any:
    import numpy as np

    if len(samples) >= length:
        return samples
    return np.pad(samples, (0, length - len(samples)))
