"""Qwen-Omni (2.5 and 3) through transformers: the thinker alone (text out), fed by the upstream processor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.backends import BackendOutOfMemory, GenerationRequest, GenerationResult, StopReason
from app.backends.loading import thinker_loading
from app.backends.stopping import RepetitionLoop, RowTokenLimits, trim_repetition
from app.devices import resolve_device
from app.options import LANGUAGES
from app.settings import Settings
from app.variants import Task

log = logging.getLogger(__name__)

# The ASR prompt from Qwen's cookbook.
SYSTEM_PROMPT = "You are a speech recognition model."
DEFAULT_INSTRUCTION = "Transcribe the audio into text."
# Shorter audio yields no audio tokens after the encoder's two stride-2 convolutions; pad with silence.
MIN_SAMPLES = 16000


def instruction_for(language: str | None, prompt: str | None) -> str:
    """The user instruction: the client's prompt, else the cookbook's, naming the language when given."""
    if prompt:
        return prompt
    if language:
        return f"Transcribe the {LANGUAGES.get(language, language)} audio into text."
    return DEFAULT_INSTRUCTION


def conversation(task: Task, language: str | None, prompt: str | None) -> list[dict[str, Any]]:
    """The chat messages for one segment; the audio itself goes to the processor separately."""
    if task == "caption":
        # The Captioner takes no text at all: the audio alone is the whole user turn.
        return [{"role": "user", "content": [{"type": "audio"}]}]
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [{"type": "audio"}, {"type": "text", "text": instruction_for(language, prompt)}],
        },
    ]


class QwenOmniBackend:
    """A loaded Qwen-Omni thinker and its processor."""

    def __init__(self, model: Any, processor: Any, device: str, task: Task = "transcribe") -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.task = task
        tokenizer = processor.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        self._eos = [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos[-1]

    @classmethod
    def load(cls, settings: Settings) -> QwenOmniBackend:
        """Load processor and thinker weights onto the configured device."""
        import torch
        import transformers
        from transformers import AutoProcessor
        from transformers.utils.import_utils import is_flash_attn_2_available

        variant = settings.model_variant
        thinker_class = getattr(transformers, variant.thinker_class)

        device = resolve_device(settings.device)
        attn = "sdpa"
        if settings.flash_attn2:
            if device == "cuda" and is_flash_attn_2_available():
                attn = "flash_attention_2"
            else:
                log.warning("flash_attention_2 is not available here; using sdpa")
        # On CUDA keep the checkpoint's own dtype (bf16 for full weights, fp16 for AWQ); CPU kernels want fp32.
        dtype: Any = {"cuda": "auto", "mps": torch.float16}.get(device, torch.float32)
        local = settings.local_model
        processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            settings.checkpoint_path, local_files_only=local
        )
        config, quant_kwargs, weights = thinker_loading(
            thinker_class, settings.checkpoint_path, local_files_only=local, device=device
        )
        if weights != variant.quantization:
            log.warning(
                "variant %s expects %s weights; the checkpoint has %s", variant.name, variant.quantization, weights
            )
        # Full Qwen-Omni checkpoints store the thinker under "thinker."; transformers' conversion mapping
        # strips that prefix, and the thinker config leaves the talker out, so it is never loaded.
        model = thinker_class.from_pretrained(
            settings.checkpoint_path,
            config=config,
            dtype=dtype,
            attn_implementation=attn,
            # Several GPUs share the layers (CUDA_VISIBLE_DEVICES picks them); quantized loaders need a map.
            device_map="auto" if device == "cuda" else device,
            local_files_only=local,
            **quant_kwargs,
        )
        if device == "cuda" and settings.low_vram and getattr(model.model, "visual", None) is not None:
            # Audio never reaches the vision tower: keep its weights in CPU memory, not VRAM.
            model.model.visual.to("cpu")
            torch.cuda.empty_cache()
        model.eval()
        log.info("loaded %s (%s, %s weights) on %s, %s", settings.checkpoint_path, variant.name, weights, device, attn)
        return cls(model, processor, device, variant.task)

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Transcribe a batch of segments in one generate call (left padding), each with its own token limit."""
        import torch
        from transformers import StoppingCriteriaList

        params = batch[0].params
        texts = [
            self.processor.apply_chat_template(
                conversation(self.task, r.language, r.prompt), add_generation_prompt=True, tokenize=False
            )
            for r in batch
        ]
        audio = [_at_least(r.samples, MIN_SAMPLES) for r in batch]
        # Pad features to the longest segment in this batch, not to the extractor's 300 s default.
        longest = max(len(a) for a in audio)
        inputs = self.processor(
            text=texts, audio=audio, return_tensors="pt", padding=True, audio_kwargs={"max_length": longest}
        )
        inputs = inputs.to(self.model.device)
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        limits = [r.token_limit for r in batch]
        sampling: dict[str, Any] = {"do_sample": params.temperature > 0}
        if params.temperature > 0:
            sampling["temperature"] = params.temperature
        if params.min_new_tokens:
            sampling["min_new_tokens"] = params.min_new_tokens
        loops = RepetitionLoop(prompt_length, len(batch), self._eos)
        criteria: list[Any] = [RowTokenLimits(prompt_length, limits)]
        # A forced output length (benchmarks) is the one case where a loop must run on.
        if not params.min_new_tokens:
            criteria.append(loops)
        stopping = StoppingCriteriaList(criteria)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max(limits),
                    repetition_penalty=params.repetition_penalty,
                    eos_token_id=self._eos,
                    pad_token_id=self._pad,
                    stopping_criteria=stopping,
                    **sampling,
                )
        except torch.OutOfMemoryError as exc:
            del inputs
            torch.cuda.empty_cache()
            raise BackendOutOfMemory(str(exc)) from None
        rows = output[:, prompt_length:].tolist()
        return [
            self._result(row, limit, bool(looped))
            for row, limit, looped in zip(rows, limits, loops.detected.tolist(), strict=True)
        ]

    def _result(self, ids: list[int], limit: int, looped: bool) -> GenerationResult:
        """Decode one row: up to where it ended, with a looping tail trimmed to one copy of its pattern."""
        # Rows that stop early are padded with the pad token, which is also an end token: only an end
        # token inside the row's own limit, in a row that did not loop, is the model ending its turn.
        end = next((i for i, token in enumerate(ids) if token in self._eos), len(ids))
        ids = ids[: min(end, limit)]
        reason: StopReason = "eos" if end < limit and not looped else "max_tokens"
        if looped and (trimmed := trim_repetition(ids)) is not None:
            ids, reason = trimmed, "repetition"
        text = self.processor.decode(ids, skip_special_tokens=True)
        return GenerationResult(text.strip(), reason, len(ids))

    def close(self) -> None:
        """Drop the model and processor."""
        self.model = None
        self.processor = None


def _at_least(samples: np.ndarray, length: int) -> np.ndarray:
    if len(samples) >= length:
        return samples
    return np.pad(samples, (0, length - len(samples)))
