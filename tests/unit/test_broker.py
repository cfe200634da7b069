"""Cluster mode's wire format: a segment, its result and its failure as written into Redis, and back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import broker
from app.backends import AlignmentRequest, ChatPrompt, GenerationParams, GenerationRequest, GenerationResult
from app.errors import BrokerUnavailable, InferenceFailed, MediaTooLarge, ModelUnavailable, OutOfMemory
from app.media import Video

PARAMS = GenerationParams(64, 0.1, 1.1, paced=True)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def roundtrip(request: GenerationRequest | AlignmentRequest) -> GenerationRequest | AlignmentRequest:
    meta, audio = broker.encode_request(request)
    # The metadata crosses as JSON; the audio as bytes beside it.
    return broker.decode_request(json.loads(json.dumps(meta)), audio)


def test_a_segment_crosses_as_16_bit_pcm_with_its_options() -> None:
    samples = tone(2.0)
    back = roundtrip(GenerationRequest(samples, PARAMS, "en", "names: Qwen", task="translate"))
    assert isinstance(back, GenerationRequest)
    assert (back.params, back.language, back.prompt, back.task, back.chat) == (
        PARAMS,
        "en",
        "names: Qwen",
        "translate",
        None,
    )
    assert back.samples.dtype == np.float32 and len(back.samples) == len(samples)
    assert np.max(np.abs(back.samples - samples)) < 1 / 32767 + 1e-6
    meta, audio = broker.encode_request(GenerationRequest(samples, PARAMS))
    assert len(audio) == 2 * len(samples) and meta["stream"] is False


def test_streaming_is_flagged_and_a_chat_keeps_its_messages_and_audios() -> None:
    first, second = tone(1.0), tone(0.5)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "and"}, {"type": "audio"}]}]
    request = GenerationRequest.for_chat(ChatPrompt(messages, [first, second]), PARAMS, on_text=lambda _: None)
    meta, _ = broker.encode_request(request)
    assert meta["stream"] is True
    back = roundtrip(request)
    assert isinstance(back, GenerationRequest) and back.chat is not None and back.on_text is None
    assert back.chat.messages == messages and [len(a) for a in back.chat.audios] == [16000, 8000]


def test_a_chat_with_images_and_video_crosses_losslessly() -> None:
    """Images and video frames travel as PNG beside the audio: every pixel, every frame, the video's rate."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)
    frames = rng.integers(0, 255, (4, 28, 56, 3), dtype=np.uint8)
    content = [{"type": "image"}, {"type": "audio"}, {"type": "video"}, {"type": "text", "text": "what?"}]
    chat = ChatPrompt([{"role": "user", "content": content}], [tone(0.5)], [image], [Video(frames, 1.5)])
    back = roundtrip(GenerationRequest.for_chat(chat, PARAMS))
    assert isinstance(back, GenerationRequest) and back.chat is not None
    assert back.chat.messages == chat.messages and len(back.chat.audios[0]) == 8000
    assert np.array_equal(back.chat.images[0], image)
    assert np.array_equal(back.chat.videos[0].frames, frames) and back.chat.videos[0].fps == 1.5


def test_media_over_the_bound_is_refused_with_413() -> None:
    """Noise does not compress: media over MAX_MEDIA_BYTES as PNG is a clear 413, never sent."""
    frames = np.random.default_rng(1).integers(0, 255, (8, 1400, 2000, 3), dtype=np.uint8)
    chat = ChatPrompt([{"role": "user", "content": [{"type": "video"}]}], [], [], [Video(frames, 2.0)])
    with pytest.raises(MediaTooLarge, match="cluster message"):
        broker.encode_request(GenerationRequest.for_chat(chat, PARAMS))


def test_an_alignment_crosses_with_its_text() -> None:
    back = roundtrip(AlignmentRequest(tone(1.0), "hello world", "en"))
    assert isinstance(back, AlignmentRequest) and (back.text, back.language) == ("hello world", "en")


def test_a_message_over_the_bound_is_refused_before_it_is_sent() -> None:
    with pytest.raises(ValueError, match="over the"):
        broker.encode_request(GenerationRequest(np.zeros(broker.MAX_SEGMENT_BYTES // 2 + 1, np.float32), PARAMS))
    # The longest segment a request may ask for (300 s) fits.
    broker.encode_request(GenerationRequest(np.zeros(300 * 16000, np.float32), PARAMS))


def test_results_and_failures_come_back_as_they_were() -> None:
    result = GenerationResult("hi", "eos", tokens=2, prompt_tokens=40, language="en", confidence=0.9)
    assert broker.decode_result(broker.encode_result(result)) == result
    assert broker.decode_result(broker.encode_result([("hi", 0.0, 0.5)])) == [("hi", 0.0, 0.5)]
    assert broker.decode_result(broker.encode_result(None)) is None
    for error in (ModelUnavailable("no", retry_after=4), OutOfMemory("oom"), BrokerUnavailable("gone")):
        with pytest.raises(type(error)) as raised:
            broker.decode_result(broker.encode_error(error))
        assert raised.value.message == error.message and raised.value.retry_after == error.retry_after
    # Anything else (a bug) is an inference failure with its type named.
    with pytest.raises(InferenceFailed, match="KeyError"):
        broker.decode_result(broker.encode_error(KeyError("x")))


def test_the_broker_url_is_shown_without_its_password() -> None:
    assert broker.redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert broker.redacted("redis://user:pw@host/1") == "redis://user:***@host/1"
    assert broker.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_celery_settings_are_those_for_long_tasks() -> None:
    conf = broker.celery_app("redis://127.0.0.1:1/0", 1800, "awq").conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 1800
    assert conf.task_ignore_result and conf.accept_content == ["json"]


def test_a_segment_sent_again_streams_only_what_its_first_run_had_not() -> None:
    from concurrent.futures import Future

    from app.remote_engine import _Pending

    pending = _Pending(Future(), lambda _: None)
    shown = [pending.fresh(p, "w1:a") for p in ("The ", "quick")]
    # The first run's worker died; a second run streams from the start: its repeat is dropped, then only new text.
    shown += [pending.fresh(p, "w2:b") for p in ("The q", "uick", " brown", " fox")]
    assert "".join(shown) == "The quick brown fox" and shown[2:4] == ["", ""]
    # The first run was only silent, not dead: its pieces, behind the second's, show nothing twice.
    assert pending.fresh(" brown", "w1:a") == "" and pending.fresh(" fox", "w1:a") == ""
    assert pending.fresh(" jumps", "w1:a") == " jumps" and pending.streaming
    # A run that says something else (sampling) ends the stream; the result still stands.
    diverged = _Pending(Future(), lambda _: None)
    diverged.fresh("abc", "w1:a")
    assert diverged.fresh("abd", "w2:b") == "" and not diverged.streaming


def test_workers_of_another_variant_or_checkpoint_are_named_and_serve_nothing() -> None:
    from app.remote_engine import RemoteEngine

    engine = RemoteEngine(
        "redis://127.0.0.1:1/0", 3600, variant="awq", checkpoint="Qwen/Qwen2.5-Omni-7B-AWQ",
        batch_size=16, token_budget=65536, idle_timeout=300,
    )  # fmt: skip
    workers = [
        {"id": "a:1:x", "variant": "awq", "checkpoint": "Qwen/Qwen2.5-Omni-7B-AWQ"},
        {"id": "b:2:y", "variant": "asr", "checkpoint": "Qwen/Qwen3-ASR-1.7B-hf"},
        {"id": "c:3:z", "variant": "awq", "checkpoint": "/models/other"},
    ]
    assert [w["id"] for w in engine._serving(workers)] == ["a:1:x", "c:3:z"]
    problems = engine.mismatches(workers)
    assert len(problems) == 2
    assert "b:2:y serves the asr variant" in problems[0] and "takes none of this node's segments" in problems[0]
    assert "c:3:z runs /models/other" in problems[1]
    # Each variant has a queue of its own: a worker of another variant never takes this node's segments.
    assert broker.queue("awq") != broker.queue("asr")
