"""How a Qwen-Omni thinker checkpoint is loaded, per weight format: plain, AWQ (gptqmodel) or compressed-tensors.

Facts from reading transformers 5.23 that shape this module:

- Loading the thinker class from a full checkpoint takes only the `thinker_config` sub-dict
  (PreTrainedConfig.from_pretrained picks the dict whose model_type matches). The `quantization_config`
  that AutoAWQ and llm-compressor write at the top level is therefore dropped, and the quantized weights
  would load as random dense ones with only a load-report warning. So the quantization config is read from
  the top level and put on the thinker config explicitly.
- transformers renames the released `thinker.visual.*` / `thinker.audio_tower.*` modules to
  `model.visual.*` / `model.audio_tower.*`, and its module matcher anchors names at the start (or matches
  whole suffixes). The official AWQ checkpoint's `modules_to_not_convert: ["visual"]` then matches nothing,
  and neither tower would be kept dense, although AutoAWQ quantized only the text decoder: both towers
  would become AWQ layers with missing weights (NaN audio features). We name them in transformers' terms.
- AWQ goes through gptqmodel (autoawq is archived). On CUDA, gptqmodel picks its fastest kernel for fp16;
  elsewhere its pure-torch kernel (`torch_awq`, dequantize then matmul) needs no compiled extension.
- compressed-tensors MoE experts are dequantized to dense at load time whatever the flags say (the fused
  3-D expert tensors have no packed form in transformers), so `dequantize=True` is used for every layer:
  it works from the tensors in the checkpoint rather than from the ignore list, whose full-model names
  (`thinker.audio_tower...`) do not match transformers' module names. A 30B-A3B model then takes its
  bf16 size (about 63 GB), not its on-disk size.
"""

from __future__ import annotations

import logging
from typing import Any

from app.settings import Settings

log = logging.getLogger(__name__)

# Modules AutoAWQ leaves in fp16 in Qwen2.5-Omni checkpoints, in transformers 5 module names.
AWQ_DENSE_MODULES = ["model.visual", "model.audio_tower", "lm_head"]


def quantization_config(config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's quantization config, wherever the writer put it (top level or thinker_config)."""
    found = config_dict.get("quantization_config") or config_dict.get("thinker_config", {}).get("quantization_config")
    return dict(found) if found else None


def thinker_loading(
    thinker_class: Any, checkpoint: str, *, local_files_only: bool, device: str
) -> tuple[Any, dict[str, Any], str]:
    """The thinker config and extra from_pretrained kwargs for this checkpoint, and its weight format."""
    from transformers import PretrainedConfig

    top, _ = PretrainedConfig.get_config_dict(checkpoint, local_files_only=local_files_only)
    config = thinker_class.config_class.from_pretrained(checkpoint, local_files_only=local_files_only)
    quant = quantization_config(top)
    if quant is None:
        return config, {}, "none"
    method = quant.get("quant_method")
    if method == "awq":
        quant["modules_to_not_convert"] = AWQ_DENSE_MODULES
        # gptqmodel's compiled kernels are CUDA ones; its torch kernel runs anywhere without compiling.
        quant["backend"] = "auto" if device == "cuda" else "torch_awq"
        config.quantization_config = quant
        return config, {}, "awq"
    if method == "compressed-tensors":
        _check_symmetric(quant)
        from transformers import CompressedTensorsConfig

        config.quantization_config = quant
        return config, {"quantization_config": CompressedTensorsConfig(dequantize=True)}, "compressed-tensors"
    raise ValueError(f"unsupported quantization method {method!r} in {checkpoint}; expected awq or compressed-tensors")


def load_dtype(device: str) -> Any:
    """The dtype to load weights in: on CUDA the checkpoint's own (bf16 for full weights, fp16 for AWQ), fp16
    on MPS, fp32 on CPU (whose kernels want it)."""
    import torch

    return {"cuda": "auto", "mps": torch.float16}.get(device, torch.float32)


def vision_dtype(device: str, model_dtype: Any) -> Any:
    """The vision tower's dtype: never float16, whose range the Qwen-VL vision blocks overflow (garbage answers
    on images), but bfloat16 where the device has it, else float32. Other dtypes are kept as they are.

    A float16 model (AWQ on CUDA, anything on MPS) gets its tower in bfloat16: the tower casts the pixels to its
    own dtype, and the thinker casts the image embeddings to its own before merging them.
    """
    import torch

    if model_dtype != torch.float16:
        return model_dtype
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "mps" and _mps_has_bfloat16():
        return torch.bfloat16
    return torch.float32


def _mps_has_bfloat16() -> bool:
    """Whether MPS computes in bfloat16 (macOS 14 and later; older ones raise)."""
    import torch

    try:
        return bool((torch.ones(2, dtype=torch.bfloat16, device="mps") * 2).sum().item() == 4)
    except (RuntimeError, TypeError):
        return False


def attention(settings: Settings, device: str) -> str:
    """flash_attention_2 when asked for and available on CUDA, else sdpa (with a warning if it was asked for)."""
    from transformers.utils.import_utils import is_flash_attn_2_available

    if not settings.flash_attn2:
        return "sdpa"
    if device == "cuda" and is_flash_attn_2_available():
        return "flash_attention_2"
    log.warning("flash_attention_2 is not available here; using sdpa")
    return "sdpa"


def complete(loaded: Any, checkpoint: str) -> Any:
    """The model from from_pretrained(..., output_loading_info=True), refused if any weight was not in the
    checkpoint: transformers fills those with random values and only warns (a renamed module, an untied head)."""
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        shown = ", ".join((missing + mismatched)[:8]) + (" ..." if len(missing) + len(mismatched) > 8 else "")
        raise ValueError(
            f"{checkpoint} lacks {len(missing)} weight(s) the model needs and has {len(mismatched)} of the wrong "
            f"shape ({shown}): it is not a checkpoint of this model, or of this transformers version's layout"
        )
    return model


def _check_symmetric(quant: dict[str, Any]) -> None:
    """transformers' MoE expert dequantizer ignores zero points, so asymmetric weights would load wrong."""
    for name, group in quant.get("config_groups", {}).items():
        weights = group.get("weights") or {}
        if weights and not weights.get("symmetric", True):
            raise ValueError(
                f"compressed-tensors group {name!r} is asymmetric; transformers dequantizes MoE experts "
                "without zero points, so this checkpoint would load with wrong weights"
            )
