"""Qwen-Omni (2.5 and 3) through transformers: the thinker alone (text out), fed by the upstream processor."""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from app.backends import BackendOutOfMemory, GenerationRequest, GenerationResult, RequestTask, printable
from app.backends.choices import Choice, ChoiceConstraint, chosen
from app.backends.loading import attention, complete, load_dtype, thinker_loading, vision_dtype
from app.backends.stopping import (
    RepetitionLoop,
    RowTokenLimits,
    StreamState,
    TextStream,
    row_output,
    trim_repetition,
)
from app.devices import resolve_device
from app.media import Video
from app.protocol.native import LANGUAGES
from app.settings import Settings
from app.transcript import StopReason
from app.variants import Task

log = logging.getLogger(__name__)

# The ASR prompt from Qwen's cookbook.
SYSTEM_PROMPT = "You are a speech recognition model."
DEFAULT_INSTRUCTION = "Transcribe the audio into text."
# Speech translation as the cookbook (universal audio understanding) asks for it, into English.
TRANSLATION_SYSTEM_PROMPT = "You are a speech translation model."
# Language identification: the answer is held to the names of LANGUAGES (app/backends/choices.py).
IDENTIFY_INSTRUCTION = "Which language is spoken in this audio? Answer with the language's name in English."
# Below this, sampling is greedy decoding in all but name, and logits divided by a temperature near zero
# overflow to inf (NaN probabilities): decode greedily instead.
MIN_SAMPLING_TEMPERATURE = 0.01
# Shorter audio yields no audio tokens after the encoder's two stride-2 convolutions; pad with silence.
MIN_SAMPLES = 16000


def instruction_for(language: str | None, prompt: str | None) -> str:
    """The user instruction: the client's prompt, else the cookbook's, naming the language when given."""
    if prompt:
        return prompt
    if language:
        return f"Transcribe the {LANGUAGES.get(language, language)} audio into text."
    return DEFAULT_INSTRUCTION


def translation_instruction(language: str | None, context: str | None) -> str:
    """The cookbook's translation instruction into English; a client's prompt is context, as Whisper's is."""
    spoken = f"{LANGUAGES.get(language, language)} " if language else ""
    instruction = f"Listen to the provided {spoken}speech and produce a translation in English text."
    return f"{instruction} It may mention: {context}" if context else instruction


def conversation(
    task: Task, language: str | None, prompt: str | None, asked: RequestTask = "transcribe"
) -> list[dict[str, Any]]:
    """The chat messages for one segment (asked: what this request wants of it); the audio itself goes to the
    processor separately."""
    if task == "caption":
        # The Captioner takes no text at all: the audio alone is the whole user turn.
        return [{"role": "user", "content": [{"type": "audio"}]}]
    system, instruction = SYSTEM_PROMPT, instruction_for(language, prompt)
    if asked == "translate":
        system, instruction = TRANSLATION_SYSTEM_PROMPT, translation_instruction(language, prompt)
    elif asked == "identify":
        instruction = IDENTIFY_INSTRUCTION
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]},
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
        # Client text must not carry the template's special tokens: a stray audio or image placeholder, or an
        # audio start marker, would fail the processor or the position ids of the whole shared batch.
        special = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len)
        self._special = re.compile("|".join(re.escape(t) for t in reversed(special))) if special else None
        # What each streaming request's callback was given, so a retry of the request resumes after it. The
        # state holds no callback, so nothing in it keeps its request alive.
        self._streams: weakref.WeakKeyDictionary[GenerationRequest, StreamState] = weakref.WeakKeyDictionary()
        # The answers a language identification may give, tokenized once.
        self._choices: list[Choice] | None = None
        # --low-vram on a GPU: the vision tower waits in CPU memory and visits the GPU for batches that see.
        self.vision_parked = False

    @classmethod
    def load(cls, settings: Settings, checkpoint: str) -> QwenOmniBackend:
        """Load processor and thinker weights from a local checkpoint directory onto the configured device."""
        import torch
        import transformers
        from transformers import AutoProcessor

        variant = settings.model_variant
        thinker_class = getattr(transformers, variant.thinker_class)

        device = resolve_device(settings.device)
        attn = attention(settings, device)
        dtype = load_dtype(device)
        # The files are on disk already (app.checkpoints found or downloaded them): nothing here goes online.
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)  # type: ignore[no-untyped-call]
        config, quant_kwargs, weights = thinker_loading(thinker_class, checkpoint, local_files_only=True, device=device)
        if weights != variant.quantization:
            log.warning(
                "variant %s expects %s weights; the checkpoint has %s", variant.name, variant.quantization, weights
            )
        # Full Qwen-Omni checkpoints store the thinker under "thinker."; transformers' conversion mapping
        # strips that prefix, and the thinker config leaves the talker out, so it is never loaded.
        loaded = thinker_class.from_pretrained(
            checkpoint,
            config=config,
            dtype=dtype,
            attn_implementation=attn,
            # Several GPUs share the layers (CUDA_VISIBLE_DEVICES picks them); quantized loaders need a map.
            device_map="auto" if device == "cuda" else device,
            local_files_only=True,
            output_loading_info=True,
            **quant_kwargs,
        )
        model = complete(loaded, checkpoint)
        visual = getattr(model.model, "visual", None)
        if visual is not None:
            visual.to(vision_dtype(device, model.dtype))
        parked = device == "cuda" and settings.low_vram and visual is not None
        if parked:
            # Audio never reaches the vision tower: keep its weights in CPU memory, not VRAM, until a batch
            # holds images or video.
            model.model.visual.to("cpu")
            torch.cuda.empty_cache()
        model.eval()
        log.info("loaded %s (%s, %s weights) on %s, %s", settings.checkpoint_path, variant.name, weights, device, attn)
        backend = cls(model, processor, device, variant.task)
        backend.vision_parked = parked
        return backend

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of segments and chats in one generate call (left padding), each with its own token limit."""
        if batch[0].task == "identify":
            return self._identify(batch)
        if self.vision_parked and any(r.chat is not None and r.chat.sees for r in batch):
            with self._vision_on_device():
                return self._generate(batch)
        return self._generate(batch)

    @contextmanager
    def _vision_on_device(self) -> Iterator[None]:
        """The parked vision tower on the model's device for one batch, back in CPU memory after it."""
        import torch

        visual = self.model.model.visual
        try:
            visual.to(self.model.device)
            yield
        finally:
            visual.to("cpu")
            torch.cuda.empty_cache()

    def _generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """generate() for a batch of segments and chats, the vision tower where it must be."""
        import torch
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteriaList

        params = batch[0].params
        inputs = self._inputs(batch)
        prompt_length = inputs["input_ids"].shape[1]
        # Left padding: a row's own prompt is its unmasked positions.
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        limits = [r.token_limit for r in batch]
        sample = params.temperature >= MIN_SAMPLING_TEMPERATURE
        sampling: dict[str, Any] = {"do_sample": sample}
        if sample:
            sampling["temperature"] = params.temperature
        if params.min_new_tokens:
            sampling["min_new_tokens"] = params.min_new_tokens
        loops = RepetitionLoop(prompt_length, len(batch), self._eos)
        criteria: list[Any] = [RowTokenLimits(prompt_length, limits)]
        # A forced output length (benchmarks) is the one case where a loop must run on.
        if not params.min_new_tokens:
            criteria.append(loops)
        callbacks = {i: r.on_text for i, r in enumerate(batch) if r.on_text is not None}
        states = {i: self._streams.setdefault(batch[i], StreamState()) for i in callbacks}
        stream = TextStream(prompt_length, callbacks, limits, self._eos, self._decode, states) if callbacks else None
        if stream is not None:
            criteria.append(stream)
        stopping = StoppingCriteriaList(criteria)
        # The penalty applies to what the model writes, not to the prompt: penalising the template, the audio
        # placeholders and the client's context would push the answer away from words the prompt names.
        processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            processors.append(
                RepetitionPenaltyLogitsProcessor(params.repetition_penalty, prompt_ignore_length=prompt_length)
            )
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max(limits),
                    # 1.0 keeps generate from adding its own whole-sequence penalty (a checkpoint's
                    # generation_config may set one) beside the one above.
                    repetition_penalty=1.0,
                    logits_processor=processors,
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
        if stream is not None:
            stream.finish(rows)
        return [
            self._result(row, limit, bool(looped), prompt)
            for row, limit, looped, prompt in zip(rows, limits, loops.detected.tolist(), prompt_tokens, strict=True)
        ]

    def _identify(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """The language of each request's audio: the answer held to the names the model may give (one generate
        call, greedy), with its probability among them."""
        import torch
        from transformers import LogitsProcessorList

        choices = self._language_choices()
        inputs = self._inputs(batch)
        prompt_length = inputs["input_ids"].shape[1]
        constraint = ChoiceConstraint(prompt_length, choices, self._pad)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max(len(c.tokens) for c in choices),
                    do_sample=False,
                    repetition_penalty=1.0,
                    logits_processor=LogitsProcessorList([constraint]),
                    eos_token_id=sorted({c.tokens[-1] for c in choices}),
                    pad_token_id=self._pad,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
        except torch.OutOfMemoryError as exc:
            del inputs
            torch.cuda.empty_cache()
            raise BackendOutOfMemory(str(exc)) from None
        lengths = {c.value: len(c.tokens) for c in choices}
        prompts = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        answers = chosen(output.sequences, output.scores, prompt_length, choices)
        for answer, prompt in zip(answers, prompts, strict=True):
            code, confidence = answer if answer is not None else (None, None)
            tokens = lengths[code] if code is not None else 0
            results.append(GenerationResult("", "eos", tokens, prompt, language=code, confidence=confidence))
        return results

    def _language_choices(self) -> list[Choice]:
        """What an identification may answer: each language's English name, then the end of the turn."""
        if self._choices is None:
            tokenizer = self.processor.tokenizer
            self._choices = [
                Choice(code, (*tokenizer.encode(name, add_special_tokens=False), self._eos[0]))
                for code, name in LANGUAGES.items()
            ]
        return self._choices

    def _inputs(self, batch: Sequence[GenerationRequest]) -> Any:
        """The processor's tensors for a batch on the model's device: one prompt per row, left padded."""
        import torch

        texts: list[str] = []
        audio: list[np.ndarray] = []
        images: list[np.ndarray] = []
        videos: list[Video] = []
        for r in batch:
            if r.chat is not None:
                messages, clips = r.chat.messages, r.chat.audios
                images.extend(r.chat.images)
                videos.extend(r.chat.videos)
            else:
                messages, clips = conversation(self.task, r.language, r.prompt, r.task), [r.samples]
            texts.append(
                self.processor.apply_chat_template(self._plain(messages), add_generation_prompt=True, tokenize=False)
            )
            audio.extend(_at_least(a, MIN_SAMPLES) for a in clips)
        # The processor fills the placeholders of all rows, in order, from these flat lists.
        media: dict[str, Any] = {}
        if audio:
            # Pad features to the longest audio in this batch, not to the extractor's 300 s default.
            longest = max(len(a) for a in audio)
            media.update(audio=audio, audio_kwargs={"max_length": longest})
        if images:
            media["images"] = images
        if videos:
            # The frames were sampled and sized already (app.media): the processor takes them as they are.
            # (The per-frame pixel cap is the one app.media already applied: it changes nothing, but says so.)
            media.update(
                videos=[v.frames for v in videos], videos_kwargs={"fps": videos[0].fps, "cap_pixels_per_frame": True}
            )
        # Left padding, said explicitly: a checkpoint's tokenizer_config.json asking for "right" would otherwise
        # win over the processor's default and shift the padded rows' prompts away from their answers.
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, padding_side="left", **media)
        if videos and "video_second_per_grid" in inputs:
            # The processor times every video of a call by one rate; each was sampled at its own.
            temporal = self.processor.video_processor.temporal_patch_size
            inputs["video_second_per_grid"] = torch.tensor([temporal / v.fps for v in videos])
        inputs = inputs.to(self.model.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        # Pixels stay float32: the vision tower casts them to its own dtype (see vision_dtype).
        return inputs

    def _result(self, ids: list[int], limit: int, looped: bool, prompt_tokens: int = 0) -> GenerationResult:
        """Decode one row: up to where it ended, with a looping tail trimmed to one copy of its pattern."""
        ids, ended = row_output(ids, self._eos, limit)
        # A row that looped was stopped by the loop check, not ended by the model.
        reason: StopReason = "eos" if ended and not looped else "max_tokens"
        if looped and (trimmed := trim_repetition(ids)) is not None:
            ids, reason = trimmed, "repetition"
        text, language = self._split(self._decode(ids))
        return GenerationResult(text, reason, len(ids), prompt_tokens, language)

    def _split(self, output: str) -> tuple[str, str | None]:
        """The transcript in a decoded output, and the language the model named in it (the Omni models name none)."""
        return output.strip(), None

    def _decode(self, ids: list[int]) -> str:
        """Text of new token ids, special tokens and control characters left out (results and streamed pieces alike)."""
        return printable(str(self.processor.decode(ids, skip_special_tokens=True)))

    def _plain(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """messages rebuilt from roles, text and media parts alone, the text free of special tokens."""
        # Only what ChatPrompt checked reaches the template: other keys (image_url, name...) could make it
        # render placeholders the batch has no data for.
        strip = self._special.sub if self._special is not None else (lambda _, text: text)

        def part(p: dict[str, Any]) -> dict[str, Any]:
            return {"type": "text", "text": strip("", p["text"])} if p["type"] == "text" else {"type": p["type"]}

        out = []
        for message in messages:
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            out.append({"role": message["role"], "content": [part(p) for p in parts]})
        return out

    def close(self) -> None:
        """Drop the model and processor."""
        self.model = None
        self.processor = None


def _at_least(samples: np.ndarray, length: int) -> np.ndarray:
    if len(samples) >= length:
        return samples
    return np.pad(samples, (0, length - len(samples)))
