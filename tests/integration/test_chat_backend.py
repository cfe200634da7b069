"""Chat through the backend on the real tiny checkpoints: text and audio turns, mixed batches, text streaming."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.backends import BackendOutOfMemory, ChatPrompt, GenerationParams, GenerationRequest, GenerationResult
from app.backends.qwen_omni import QwenOmniBackend
from app.backends.stopping import StreamState, TextStream
from app.engine import Engine
from app.media import Video
from app.settings import Settings

GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0)
# Random weights often end a turn at once: force an answer of a known length.
FORCED = GenerationParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0, min_new_tokens=16)
# Prompt tokens of one second of audio: Qwen2.5-Omni's encoder emits 25 per second, Qwen3-Omni's 13.
TOKENS_PER_SECOND_OF_AUDIO = {"qwen2.5-omni": 25, "qwen3-omni": 13}
VARIANT = {"qwen2.5-omni": "full", "qwen3-omni": "captioner"}


@pytest.fixture(scope="module", params=["qwen2.5-omni", "qwen3-omni"])
def family(request: pytest.FixtureRequest) -> str:
    """Each model family in turn."""
    return str(request.param)


@pytest.fixture(scope="module")
def settings(family: str, request: pytest.FixtureRequest) -> Settings:
    """CPU settings on the family's tiny checkpoint."""
    fixture = "tiny_checkpoint" if family == "qwen2.5-omni" else "tiny_qwen3_checkpoint"
    checkpoint: Path = request.getfixturevalue(fixture)
    return Settings.from_env(
        {}, variant=VARIANT[family], checkpoint_path=str(checkpoint), local_model=True, device="cpu", data_dir="/x"
    )


@pytest.fixture(scope="module")
def backend(settings: Settings) -> QwenOmniBackend:
    """The service's backend on the tiny checkpoint."""
    return QwenOmniBackend.load(settings, settings.checkpoint_path)


def noise(seconds: float, seed: int = 0, level: float = 0.5) -> np.ndarray:
    """Noise of the given length; different seeds make audibly different clips."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * level).astype(np.float32)


def user(*parts: str | None) -> list[dict[str, Any]]:
    """One user turn: a string is a text part, None an audio part."""
    content = [{"type": "audio"} if p is None else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def chat(
    messages: list[dict[str, Any]],
    audios: Sequence[np.ndarray] = (),
    params: GenerationParams = GREEDY,
    on_text: Callable[[str], None] | None = None,
) -> GenerationRequest:
    """A chat request."""
    return GenerationRequest.for_chat(ChatPrompt(messages, list(audios)), params, on_text)


def template_length(backend: QwenOmniBackend, messages: list[dict[str, Any]]) -> int:
    """Tokens of a text-only conversation's prompt, counted independently of the backend."""
    text = backend.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(backend.processor.tokenizer(text)["input_ids"])


# The request types --------------------------------------------------------------------------------------


def test_chat_prompt_rejects_malformed_conversations() -> None:
    """Audio parts and audios must match one to one, with known roles and part types, before any batch."""
    with pytest.raises(ValueError, match="2 audio parts but 1 audios"):
        ChatPrompt(user(None, "compare", None), [noise(1.0)])
    with pytest.raises(ValueError, match="role"):
        ChatPrompt([{"role": "tool", "content": "x"}], [])
    with pytest.raises(ValueError, match="1 image parts but 0 images"):
        ChatPrompt([{"role": "user", "content": [{"type": "image"}]}], [])
    with pytest.raises(ValueError, match="content part"):
        ChatPrompt([{"role": "user", "content": [{"type": "file"}]}], [])
    with pytest.raises(ValueError, match="1-D"):
        ChatPrompt(user(None), [np.zeros((2, 16000), dtype=np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        ChatPrompt([], [])


def test_chat_limits_and_cost() -> None:
    """A chat gets max_new_tokens whatever its audio; its cost counts every audio, its text and its limit."""
    params = GenerationParams(max_new_tokens=500, temperature=0.0, repetition_penalty=1.0)
    short = chat(user(None, "hi"), [noise(1.0)], params)
    assert short.token_limit == 500  # a 1 s segment to transcribe would get 15 + 32
    assert GenerationRequest(noise(1.0), params).token_limit == 47
    two = chat(user(None, "hi", None), [noise(1.0), noise(10.0)], params)
    assert two.cost - short.cost >= 250  # ten more seconds at 25 tokens a second
    text = chat(user("x" * 3000), (), params)
    assert text.cost >= 1000 + 500
    assert chat(user("hi"), (), params).cost < text.cost


# Generation ---------------------------------------------------------------------------------------------


def test_text_only_chat(backend: QwenOmniBackend) -> None:
    """A conversation without audio is answered; its prompt length is the template's."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        *user("Say hello."),
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        *user("Again."),
    ]
    [result] = backend.generate([chat(messages, params=FORCED)])
    assert result.tokens == FORCED.max_new_tokens and result.stop_reason == "max_tokens"
    assert result.text
    assert result.prompt_tokens == template_length(backend, messages)


def test_chat_with_one_and_two_audios(backend: QwenOmniBackend, family: str) -> None:
    """Each audio part adds its audio's tokens and two markers to the prompt."""
    per_second = TOKENS_PER_SECOND_OF_AUDIO[family]
    none, one, two = backend.generate(
        [
            chat(user("What is this?")),
            chat(user(None, "What is this?"), [noise(1.0)]),
            chat(user(None, "What is this?", None), [noise(1.0), noise(3.0, 1)]),
        ]
    )
    assert none.prompt_tokens == template_length(backend, user("What is this?"))
    assert one.prompt_tokens == none.prompt_tokens + per_second + 2
    assert two.prompt_tokens == one.prompt_tokens + 3 * per_second + 2
    assert all(r.stop_reason in ("eos", "max_tokens") for r in (none, one, two))


def test_short_audio_in_a_chat_is_padded_to_a_second(backend: QwenOmniBackend, family: str) -> None:
    """A 0.2 s clip would give the encoder nothing; padded, it counts as a second."""
    [short] = backend.generate([chat(user(None, "?"), [noise(0.2)])])
    [second] = backend.generate([chat(user(None, "?"), [noise(1.0)])])
    assert short.prompt_tokens == second.prompt_tokens


def test_each_row_gets_its_own_audio_in_order(backend: QwenOmniBackend) -> None:
    """Across rows and within a row, audio parts hear the audios in message order (checked on the logits)."""
    a, b, c = noise(1.0, 1), noise(2.0, 2), noise(1.5, 3)
    model, processor = backend.model, backend.processor

    def last_logits(batch: list[GenerationRequest]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**backend._inputs(batch)).logits[:, -1].float()

    def reference(messages: list[dict[str, Any]], audios: list[np.ndarray], longest: int) -> torch.Tensor:
        """One conversation put through the processor by hand, its audio given in message order."""
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=audios, return_tensors="pt", audio_kwargs={"max_length": longest})
        with torch.inference_mode():
            return model(**inputs).logits[0, -1].float()

    two = user(None, None, "?")
    ab, ba = reference(two, [a, b], len(b)), reference(two, [b, a], len(b))
    mixed = last_logits([GenerationRequest(c, GREEDY), chat(two, [a, b]), chat(user("?")), chat(user(None), [b])])
    tolerance = 1e-4
    # The model hears the order: a swap is far above the batching tolerance, so a mix-up could not pass.
    assert (ab - ba).abs().max() > 10 * tolerance
    assert torch.allclose(mixed[1], ab, atol=tolerance)
    assert torch.allclose(mixed[3], reference(user(None), [b], len(b)), atol=tolerance)


def test_mixed_batch_of_chat_text_chat_and_transcription(backend: QwenOmniBackend) -> None:
    """One generate call serves all three kinds, each row as it would be served alone, in order."""
    requests = [
        chat(user(None, "Describe the sound."), [noise(2.0, 4)], FORCED),
        chat(user("Tell me a story."), (), FORCED),
        GenerationRequest(noise(1.5, 5), FORCED),
    ]
    results = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert results == alone
    prompts = [r.prompt_tokens for r in results]
    assert all(p > 0 for p in prompts) and len(set(prompts)) == 3
    assert all(r.tokens == FORCED.max_new_tokens and r.text for r in results)


def test_images_and_videos_reach_their_rows_in_order(backend: QwenOmniBackend) -> None:
    """Images and videos, among audio and transcription rows, each reach their own row in order (checked on the
    logits against each row alone), and each video is timed by its own frame rate."""
    rng = np.random.default_rng(7)
    image_a, image_b = (rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2))
    fast = Video(rng.integers(0, 255, (4, 224, 224, 3), dtype=np.uint8), 2.0)
    slow = Video(rng.integers(0, 255, (6, 224, 224, 3), dtype=np.uint8), 0.5)

    def seeing(parts: list[str], images: list[np.ndarray], videos: list[Video]) -> GenerationRequest:
        content = [{"type": p} if p in ("image", "video") else {"type": "text", "text": p} for p in parts]
        return GenerationRequest.for_chat(
            ChatPrompt([{"role": "user", "content": content}], [], images, videos), GREEDY
        )

    rows = [
        seeing(["image", "What is it?"], [image_a], []),
        GenerationRequest(noise(1.0, 8), GREEDY),
        seeing(["video", "image", "Compare."], [image_b], [slow]),
        seeing(["video", "?"], [], [fast]),
    ]
    inputs = backend._inputs(rows)
    temporal = backend.processor.video_processor.temporal_patch_size
    assert inputs["video_second_per_grid"].tolist() == [temporal / 0.5, temporal / 2.0]

    def last_logits(batch: list[GenerationRequest]) -> torch.Tensor:
        with torch.inference_mode():
            return backend.model(**backend._inputs(batch)).logits[:, -1].float()

    mixed = last_logits(rows)
    for n, row in enumerate(rows):
        assert torch.allclose(mixed[n], last_logits([row])[0], atol=1e-4), n
    swapped = last_logits([seeing(["image", "What is it?"], [image_b], [])])[0]
    assert (swapped - mixed[0]).abs().max() > 1e-3  # the model sees which image it was given


def test_special_tokens_in_chat_text_do_not_break_the_batch(backend: QwenOmniBackend) -> None:
    """Special tokens typed by a client are dropped, not taken for audio or images to look for."""
    processor = backend.processor
    sneaky = f"look {processor.audio_token} {processor.image_token} {processor.audio_bos_token} <|im_end|>"
    results = backend.generate([chat(user(sneaky)), GenerationRequest(noise(1.0), GREEDY)])
    clean = backend.generate([chat(user("look    ")), GenerationRequest(noise(1.0), GREEDY)])
    assert results == clean
    # Keys beyond role, type and text never reach the template (this one would render an image placeholder).
    extra = [{"role": "user", "name": "eve", "content": [{"type": "text", "text": "look    ", "image_url": "x"}]}]
    assert backend.generate([chat(extra), GenerationRequest(noise(1.0), GREEDY)]) == clean


def test_chat_through_the_engine(settings: Settings, backend: QwenOmniBackend) -> None:
    """Chats and transcriptions with equal params share one batch of the one worker."""
    gate = threading.Event()
    batches: list[int] = []

    class Gated:
        """The real backend, holding its first batch until the rest are queued."""

        def __init__(self, inner: QwenOmniBackend) -> None:
            self.inner = inner
            self.device = inner.device
            self.entered = threading.Event()

        def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
            self.entered.set()
            gate.wait(30)
            batches.append(len(batch))
            return self.inner.generate(batch)

        def close(self) -> None:
            self.inner.close()

    gated = Gated(QwenOmniBackend.load(settings, settings.checkpoint_path))
    engine = Engine(lambda: gated, idle_timeout=0, batch_size=4)
    streamed: list[str] = []
    try:
        blocker = engine.submit([GenerationRequest(noise(1.0), GREEDY)])
        assert gated.entered.wait(30)
        requests = [
            chat(user(None, "Who speaks?"), [noise(1.0, 6)], GREEDY, streamed.append),
            GenerationRequest(noise(2.0, 7), GREEDY),
            chat(user("Hi."), (), GREEDY),
        ]
        futures = engine.submit(requests)
        gate.set()
        blocker[0].result(timeout=60)
        results = [f.result(timeout=60) for f in futures]
    finally:
        engine.stop(timeout=30)
    assert batches == [1, 3]
    plain = [replace(r, on_text=None) for r in requests]
    # The engine unloaded its copy on stop: compare with the module's backend on the same checkpoint.
    assert results == backend.generate(plain[:1]) + backend.generate(plain[1:])
    assert "".join(streamed).strip() == results[0].text


# Streaming ----------------------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_result(backend: QwenOmniBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each streaming row's pieces arrive during generation and join to its text; other rows stream nothing."""
    pieces: dict[int, list[str]] = {0: [], 2: []}
    during: dict[int, int] = {}
    generate = backend.model.generate

    def spy(**kwargs: Any) -> Any:
        output = generate(**kwargs)
        during.update({row: len(got) for row, got in pieces.items()})
        return output

    requests = [
        chat(user(None, "Describe."), [noise(2.0, 8)], FORCED, pieces[0].append),
        chat(user("No callback."), (), FORCED),
        GenerationRequest(noise(1.0, 9), FORCED, on_text=pieces[2].append),
    ]
    monkeypatch.setattr(backend.model, "generate", spy)
    results = backend.generate(requests)
    monkeypatch.undo()
    assert results == [backend.generate([replace(r, on_text=None)])[0] for r in requests]
    for row, got in pieces.items():
        assert all(got), "empty pieces"
        assert "".join(got).strip() == results[row].text
    assert sum(during.values()) > 0, "nothing was streamed before generate returned"


def test_a_raising_callback_does_not_break_generation(
    backend: QwenOmniBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The callback's exception is logged and its streaming stops; the batch's results are unchanged."""
    calls: list[str] = []

    def broken(piece: str) -> None:
        calls.append(piece)
        raise RuntimeError("client went away")

    requests = [chat(user("Talk."), (), FORCED, broken), GenerationRequest(noise(1.0), FORCED)]
    results = backend.generate(requests)
    assert len(calls) == 1
    assert "client went away" in caplog.text
    plain = [chat(user("Talk."), (), FORCED), GenerationRequest(noise(1.0), FORCED)]
    assert results == backend.generate(plain)


def test_a_retry_after_running_out_of_memory_streams_only_new_text(
    backend: QwenOmniBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation that fails midway, then is retried, streams each piece of text once; its state dies with it."""
    from transformers import StoppingCriteria

    class OutOfMemoryAt(StoppingCriteria):
        """Fails like CUDA running out of memory once a few tokens are out."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if input_ids.shape[1] - prompt_length >= 6:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    generate = backend.model.generate
    attempts: list[int] = []

    def failing_once(**kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            kwargs["stopping_criteria"].append(OutOfMemoryAt())
        return generate(**kwargs)

    pieces: list[str] = []
    request = chat(user(None, "Describe."), [noise(2.0, 8)], FORCED, pieces.append)
    prompt_length = backend._inputs([request])["input_ids"].shape[1]
    monkeypatch.setattr(backend.model, "generate", failing_once)
    with pytest.raises(BackendOutOfMemory):
        backend.generate([request])
    assert pieces, "nothing was streamed before the failure"
    [result] = backend.generate([request])
    monkeypatch.undo()
    assert "".join(pieces).strip() == result.text
    assert result == backend.generate([replace(request, on_text=None)])[0]
    streams = len(backend._streams)
    del request
    gc.collect()
    assert len(backend._streams) == streams - 1


def test_streaming_with_a_loop_stop(backend: QwenOmniBackend) -> None:
    """A looping row's result is trimmed; what was streamed runs on to the detection, the result its prefix."""
    params = GenerationParams(max_new_tokens=80, temperature=0.0, repetition_penalty=1.0)
    pieces: list[list[str]] = [[], []]
    # Prompts on which the random weights loop in one family or the other.
    requests = [
        chat(user(None, "Go on."), [noise(1.0, 10)], params, pieces[0].append),
        chat(user("What?"), (), params, pieces[1].append),
    ]
    results = backend.generate(requests)
    assert "repetition" in {r.stop_reason for r in results}
    for result, got in zip(results, pieces, strict=True):
        streamed = "".join(got)
        if result.stop_reason == "repetition":
            assert streamed.strip().startswith(result.text) and len(streamed.strip()) > len(result.text)
        else:
            assert streamed.strip() == result.text


# TextStream on its own, with the real byte-level tokenizer ----------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Any:
    """The tiny Qwen2.5-Omni tokenizer (byte-level BPE, like the real one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint))


def byte_ids(tokenizer: Any, text: str) -> list[int]:
    """One token per UTF-8 byte, so multi-byte characters are split across tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(table[b]) for b in text.encode()]


def feed(stream: TextStream, prompt: list[int], rows: list[list[int]], pad: int) -> list[list[int]]:
    """Run the stream as generate would: one call per step with the whole input_ids; returns the new ids."""
    steps = max(len(r) for r in rows)
    padded = [r + [pad] * (steps - len(r)) for r in rows]
    for step in range(1, steps + 1):
        ids = torch.tensor([prompt + r[:step] for r in padded])
        assert not stream(ids, None).any()
    return padded


def test_text_stream_holds_split_characters_and_stops_at_the_end(tokenizer: Any) -> None:
    """A character split over tokens is sent whole; nothing after the end token or the limit is sent."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    text = "Hi 中文 ok"
    ids = byte_ids(tokenizer, text)
    got: list[list[str]] = [[], [], []]
    callbacks = {i: got[i].append for i in range(3)}
    rows = [[*ids, end, *byte_ids(tokenizer, "after")], ids, ids]
    stream = TextStream(prompt_length=2, callbacks=callbacks, limits=[100, 100, 5], end_ids=[end, pad], decode=decode)
    final = feed(stream, [7, 7], rows, pad)
    assert got[0] == got[1]
    assert "".join(got[0]) == text and "中" in got[0] and "文" in got[0]
    assert all("\ufffd" not in piece for piece in got[0])
    # The limit cuts the third row inside "中": its last piece is sent as the end of the row, as decoded.
    assert "".join(got[2]) == decode(ids[:5])
    before = [list(g) for g in got]
    stream.finish(final)
    assert got == before, "finish resent text already streamed"


def test_text_stream_finish_sends_what_is_held(tokenizer: Any) -> None:
    """A row cut by the end of generate gets its held-back bytes from finish."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    ids = byte_ids(tokenizer, "ab中")[:-1]  # ends inside the character
    got: list[str] = []
    stream = TextStream(0, {0: got.append}, [100], [0], decode)
    feed(stream, [], [ids], 0)
    assert "".join(got) == "ab"
    stream.finish([ids])
    assert "".join(got) == decode(ids) and got[-1].endswith("\ufffd")


def test_text_stream_retry_resumes_after_what_was_sent(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A retried request sends only new text; a retry that diverges stops streaming instead of contradicting."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    got: list[str] = []
    state = StreamState()
    first = TextStream(0, {0: got.append}, [100], [0], decode, {0: state})
    feed(first, [], [byte_ids(tokenizer, "hello")], 0)  # then generate failed: no finish
    assert "".join(got) == "hello"
    retry = TextStream(0, {0: got.append}, [100], [0], decode, {0: state})
    whole = byte_ids(tokenizer, "hello world")
    feed(retry, [], [whole], 0)
    retry.finish([whole])
    assert "".join(got) == "hello world"

    diverged: list[str] = []
    state = StreamState()
    feed(TextStream(0, {0: diverged.append}, [100], [0], decode, {0: state}), [], [byte_ids(tokenizer, "hello")], 0)
    again = TextStream(0, {0: diverged.append}, [100], [0], decode, {0: state})
    other = byte_ids(tokenizer, "help me")
    feed(again, [], [other], 0)
    again.finish([other])
    assert "".join(diverged) == "hello" and state.closed
    assert "diverged" in caplog.text
