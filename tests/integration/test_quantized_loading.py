"""Quantized checkpoints load through the service's recipe with the right layers quantized and the right weights.

The references are the same tiny checkpoints in full precision (same seed), with the decoder weights put
through the same quantize-dequantize round trip, so a wrong load (random or mis-packed weights, a tower
quantized by mistake) shows up as a large difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from app.backends import GenerationParams, GenerationRequest
from app.backends.loading import quantization_config
from app.backends.qwen_omni import QwenOmniBackend
from app.settings import Settings


def load(variant: str, checkpoint: Path) -> QwenOmniBackend:
    """The service's backend on CPU."""
    settings = Settings(variant=variant, checkpoint_path=str(checkpoint), local_model=True, device="cpu", data_dir="/x")
    return QwenOmniBackend.load(settings, settings.checkpoint_path)


def linear_kinds(model: torch.nn.Module) -> dict[str, set[str]]:
    """Linear-like module class names per top-level area (audio_tower, visual, language_model, lm_head)."""
    kinds: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if "Linear" in type(module).__name__:
            area = name.split(".")[1] if name.startswith("model.") else name
            kinds.setdefault(area, set()).add(type(module).__name__)
    return kinds


def awq_round_trip(weight: torch.Tensor, group: int = 32) -> torch.Tensor:
    """Asymmetric 4-bit per-group quantize-dequantize with fp16 scales, as AutoAWQ stores weights."""
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // group, group)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low).clamp(min=1e-5) / 15).half().float()
    zeros = (-low / scales).round().clamp(0, 15)
    q = (groups / scales[..., None] + zeros[..., None]).round().clamp(0, 15)
    return ((q - zeros[..., None]) * scales[..., None]).reshape(rows, cols)


def test_awq_keeps_towers_dense_and_matches_the_dequantized_reference(
    tiny_checkpoints: Callable[[str, str], Path],
) -> None:
    """Decoder layers become AWQ kernels; audio and vision towers stay dense with the checkpoint's weights."""
    quantized = load("awq", tiny_checkpoints("qwen2.5-omni", "awq"))
    reference = load("full", tiny_checkpoints("qwen2.5-omni", "none"))
    kinds = linear_kinds(quantized.model)
    assert kinds["audio_tower"] == {"Linear"} and kinds["visual"] == {"Linear"} and kinds["lm_head"] == {"Linear"}
    assert len(kinds["language_model"]) == 1 and "Awq" in next(iter(kinds["language_model"]))

    target = re.compile(r"^model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj$")
    with torch.no_grad():
        for name, module in reference.model.named_modules():
            if target.match(name):
                module.weight.copy_(awq_round_trip(module.weight))
        ids = torch.randint(0, 200, (1, 16), generator=torch.Generator().manual_seed(0))
        got, want = quantized.model(input_ids=ids).logits, reference.model(input_ids=ids).logits
        assert torch.allclose(got, want, atol=2e-2 * want.abs().max().item()), (got - want).abs().max()
        features = torch.randn(128, 400, generator=torch.Generator().manual_seed(1))
        lengths = torch.tensor([400])
        got_audio = quantized.model.model.audio_tower(features, feature_lens=lengths).last_hidden_state
        want_audio = reference.model.model.audio_tower(features, feature_lens=lengths).last_hidden_state
        # The AWQ checkpoint stores the towers in fp16: only rounding may differ.
        assert torch.isfinite(got_audio).all() and torch.allclose(got_audio, want_audio, atol=1e-2)


@pytest.mark.parametrize(
    ("quantization", "variant", "bits"),
    [("compressed-tensors", "captioner-awq", 8), ("compressed-tensors-4bit", "instruct-awq", 4)],
)
def test_compressed_tensors_experts_load_dequantized(
    quantization: str, variant: str, bits: int, tiny_checkpoints: Callable[[str, str], Path]
) -> None:
    """MoE experts come back as dense tensors equal to the quantize-dequantize reference; towers exact."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    quantized = load(variant, tiny_checkpoints("qwen3-omni", quantization))
    reference = load("captioner", tiny_checkpoints("qwen3-omni", "none"))
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=16)
    layer = 0
    experts = reference.model.model.language_model.layers[layer].mlp.experts
    got = quantized.model.model.language_model.layers[layer].mlp.experts
    for param in ("gate_up_proj", "down_proj"):
        dense = getattr(experts, param).detach()
        want = torch.stack([_fake(w, args, calculate_qparams, fake_quantize) for w in dense])
        diff = (getattr(got, param).float() - want).abs()
        # Packing in bf16 may round a value sitting on a level boundary to the neighbouring level, and the loaded
        # weights are bf16 (relative precision 2**-8): allow one step plus that anywhere, but on average the
        # weights must agree far more closely than a step.
        largest = dense.abs().max().item()
        step = largest / (2 ** (bits - 1) - 1)
        assert diff.max() <= step + largest * 2**-8, (param, diff.max(), step)
        assert diff.mean() <= step / 4 + largest * 2**-9, (param, diff.mean(), step)
    ref_audio = reference.model.model.audio_tower.layers[0].fc1.weight
    assert torch.equal(quantized.model.model.audio_tower.layers[0].fc1.weight, ref_audio)


def _fake(weight: torch.Tensor, args, calculate_qparams, fake_quantize) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """compressed-tensors' own quantize-dequantize of one [out, in] matrix in bf16, as the builder packs it."""
    groups = weight.float().reshape(weight.shape[0], -1, 16)
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    return fake_quantize(weight.bfloat16().float(), scale.bfloat16().float(), zero_point, args).float()


def test_quantized_models_transcribe(tiny_checkpoints: Callable[[str, str], Path]) -> None:
    """Each quantized format generates text for a batch of two segments."""
    samples = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.1).astype(np.float32)
    params = GenerationParams(max_new_tokens=6, temperature=0.0, repetition_penalty=1.1)
    for variant, family, quantization in [
        ("awq", "qwen2.5-omni", "awq"),
        ("captioner-awq", "qwen3-omni", "compressed-tensors"),
    ]:
        backend = load(variant, tiny_checkpoints(family, quantization))
        texts = backend.generate([GenerationRequest(samples, params), GenerationRequest(samples[:16000], params)])
        assert len(texts) == 2 and all(isinstance(t.text, str) and t.tokens <= 6 for t in texts)


def test_quantization_config_is_found_at_the_top_level_or_in_the_thinker() -> None:
    """AutoAWQ and llm-compressor write it on the full model's config; older tools put it in thinker_config."""
    assert quantization_config({"quantization_config": {"quant_method": "awq"}}) == {"quant_method": "awq"}
    nested = {"thinker_config": {"quantization_config": {"quant_method": "compressed-tensors"}}}
    assert quantization_config(nested) == {"quant_method": "compressed-tensors"}
    assert quantization_config({"thinker_config": {}}) is None
