#!/usr/bin/env python3
"""Write a tiny random-weight Qwen-Omni checkpoint (under a megabyte) laid out like the official ones.

config.json is a full `qwen2_5_omni` or `qwen3_omni_moe` config with a tiny thinker, the weights carry
the official `thinker.` prefix and layout (per-expert MoE weights for Qwen3-Omni), and the processor files
(tokenizer with the family's special tokens and a chat template, Whisper feature extractor, image and video
processors) sit beside them. The service loads it through exactly the code that loads the released
checkpoints. Its transcripts are gibberish.

--family qwen3-asr / qwen3-aligner write the transformers-native `qwen3_asr` layout of the "-hf" releases
instead: a Qwen3ASRForConditionalGeneration (ASR) or Qwen3ASRForTokenClassification (forced aligner) with
flat `model.`-prefixed weights, and a Qwen3ASRProcessor (tokenizer with <asr_text> / <timestamp>, the
Qwen3-ASR feature extractor, each model's chat template).

--layout released writes a Qwen-Omni checkpoint with the files the released Qwen2.5-Omni and Qwen3-Omni
repositories ship, older than what this transformers version saves: one flat preprocessor_config.json (feature
extractor and image processor keys side by side, min_pixels/max_pixels), chat_template.json, vocab.json and
merges.txt beside tokenizer.json, and the weights in shards with a model.safetensors.index.json. config.json
and tokenizer_config.json keep this version's keys (the released ones spell some older, e.g. rope_scaling).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    """What differs between the two Qwen-Omni generations at the checkpoint level."""

    # Processor attribute -> token text, as each family's tokenizer_config names them.
    named_tokens: dict[str, str]
    processor_class: str
    thinker_config_class: str
    thinker_class: str
    config_class: str
    # The vision tower's patch side in pixels (merged 2 x 2 into one token): the processors must cut the same.
    vision_patch: int


FAMILIES = {
    "qwen2.5-omni": Family(
        named_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
        processor_class="Qwen2_5OmniProcessor",
        thinker_config_class="Qwen2_5OmniThinkerConfig",
        thinker_class="Qwen2_5OmniThinkerForConditionalGeneration",
        config_class="Qwen2_5OmniConfig",
        vision_patch=14,
    ),
    "qwen3-omni": Family(
        named_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        processor_class="Qwen3OmniMoeProcessor",
        thinker_config_class="Qwen3OmniMoeThinkerConfig",
        thinker_class="Qwen3OmniMoeThinkerForConditionalGeneration",
        config_class="Qwen3OmniMoeConfig",
        vision_patch=16,
    ),
}

# The official templates' shape: content parts of type audio/image/video become their placeholder tokens.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}<|im_end|>
{% else -%}
{%- for content in message['content'] -%}
{%- if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content -%}
AUDIO_BOS AUDIO AUDIO_EOS
{%- elif content['type'] == 'image' or 'image' in content or 'image_url' in content -%}
VISION_BOS IMAGE VISION_EOS
{%- elif content['type'] == 'video' or 'video' in content -%}
VISION_BOS VIDEO VISION_EOS
{%- elif 'text' in content -%}
{{ content['text'] }}
{%- endif -%}
{%- endfor -%}
<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

# Words the byte-level BPE learns merges from, so decoded output looks vaguely like text.
CORPUS = [
    "You are a speech recognition model. Transcribe the audio into text.",
    "And so my fellow Americans, ask not what your country can do for you.",
    "It was the first great sorrow of his life. 广州市房地产中介协会分析",
]


def chat_template(family: Family) -> str:
    """The template with this family's placeholder tokens."""
    t = family.named_tokens
    return (
        CHAT_TEMPLATE.replace(
            "AUDIO_BOS AUDIO AUDIO_EOS", t["audio_bos_token"] + t["audio_token"] + t["audio_eos_token"]
        )
        .replace("VISION_BOS IMAGE VISION_EOS", t["vision_bos_token"] + t["image_token"] + t["vision_eos_token"])
        .replace("VISION_BOS VIDEO VISION_EOS", t["vision_bos_token"] + t["video_token"] + t["vision_eos_token"])
    )


def build_tokenizer(
    family: Family | AsrFamily, plain_tokens: tuple[str, ...] = (), corpus: tuple[str, ...] = ()
) -> Any:
    """A byte-level BPE tokenizer with the family's special tokens.

    plain_tokens are added as single tokens that are not special: decoding with skip_special_tokens keeps them
    (Qwen3-ASR's `<asr_text>` separates the language tag from the transcript in the decoded text).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *family.named_tokens.values()],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((CORPUS + list(corpus)) * 4, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_tokens])
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=family.named_tokens,
    )


def thinker_config(name: str, ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
    """A tiny thinker config: 2 text layers of width 32 (4 experts for the MoE), 2 audio layers, 1 vision block."""
    head_dim = 8
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 4 * head_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # mrope_section splits head_dim / 2 rotary frequencies over (time, height, width).
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }
    audio: dict[str, Any] = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "output_dim": 4 * head_dim,
    }
    vision: dict[str, Any] = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "out_hidden_size": 32,
    }
    tokens = {
        "audio_token_index" if name == "qwen2.5-omni" else "audio_token_id": ids["audio_token"],
        "image_token_index" if name == "qwen2.5-omni" else "image_token_id": ids["image_token"],
        "video_token_index" if name == "qwen2.5-omni" else "video_token_id": ids["video_token"],
        "audio_start_token_id": ids["audio_bos_token"],
        "audio_end_token_id": ids["audio_eos_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"],
        "user_token_id": ids["user"],
    }
    if name == "qwen2.5-omni":
        text["tie_word_embeddings"] = False
        vision["fullatt_block_indexes"] = [0]
    else:
        text.update(head_dim=head_dim, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
        text["rope_parameters"]["mrope_interleaved"] = True
        audio["downsample_hidden_size"] = 16
        vision.update(deepstack_visual_indexes=[0], num_position_embeddings=64)
    return {"text_config": text, "audio_config": audio, "vision_config": vision, **tokens}


# Sub-config fields to override, per sub-config ("text_config", "audio_config", "vision_config", and "model" for the
# top level): bench/gpu_check.py writes checkpoints of the released models' full shapes with the same code.
Shapes = dict[str, dict[str, Any]]


def _reshaped(config: dict[str, Any], shapes: Shapes | None) -> dict[str, Any]:
    """The config dict with the given sub-config fields replaced."""
    out = dict(config)
    for part, fields in (shapes or {}).items():
        if part == "model":
            out.update(fields)
        else:
            out[part] = {**out[part], **fields}
    return out


def build(
    out_dir: Path,
    family_name: str = "qwen2.5-omni",
    seed: int = 0,
    quantization: str = "none",
    shapes: Shapes | None = None,
    device: str = "cpu",
    dtype: Any = None,
) -> None:
    """Write the checkpoint into out_dir (random weights initialised on `device`, in `dtype`, fp32 by default)."""
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    family = FAMILIES[family_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    ids = {attr: tokenizer.convert_tokens_to_ids(token) for attr, token in family.named_tokens.items()}
    ids.update(
        eos=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        user=tokenizer.convert_tokens_to_ids("<|im_start|>"),
    )
    # The official feature extractor: 128 mel bins, 30 000 frames (300 s) of padding and truncation.
    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400, return_attention_mask=True
    )
    # The released processors' bounds, in blocks of the merged patches: images of 4 to 16384 blocks, video
    # frames of 128 to 768 (the sizes app/media.py sizes for).
    block = (2 * family.vision_patch) ** 2
    processor = getattr(transformers, family.processor_class)(
        image_processor=Qwen2VLImageProcessor(
            patch_size=family.vision_patch, size={"shortest_edge": 4 * block, "longest_edge": 16384 * block}
        ),
        video_processor=Qwen2VLVideoProcessor(
            patch_size=family.vision_patch, size={"shortest_edge": 128 * block, "longest_edge": 768 * block}
        ),
        feature_extractor=features,
        tokenizer=tokenizer,
        chat_template=chat_template(family),
    )
    processor.save_pretrained(out_dir)

    thinker_fields = _reshaped(thinker_config(family_name, ids, len(tokenizer)), shapes)
    thinker = getattr(transformers, family.thinker_config_class)(**thinker_fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, family.thinker_class)._from_config(thinker, dtype=dtype or torch.float32)
    # The config records the dtype the weights are stored in: none for the tiny fp32 ones (as before), fp16 for
    # AWQ (AutoAWQ's), else the build's.
    thinker.dtype = None if dtype is None else (torch.float16 if quantization == "awq" else dtype)
    config = getattr(transformers, family.config_class)(
        thinker_config=thinker.to_dict(), talker_config=talker_config(family_name, ids), enable_audio_output=False
    )
    config.save_pretrained(out_dir)
    # save_pretrained writes the released layout (transformers reverses its own load-time renames, and
    # unfuses MoE experts); the released checkpoints then put the thinker under "thinker.".
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        # Shards of 4 GB keep a 7B's state to one copy in memory at a time while it is written.
        model.save_pretrained(tmp, max_shard_size="4GB")
        del model
        state: dict[str, Any] = {}
        for shard in sorted(Path(tmp).glob("*.safetensors")):
            state.update(load_file(str(shard)))
    prefixed = {f"thinker.{k}": v for k, v in state.items()}
    if quantization != "none":
        prefixed, quant = QUANTIZERS[quantization](prefixed, device)
        # Both AutoAWQ and llm-compressor write the quantization config on the full model's config.
        data = json.loads((out_dir / "config.json").read_text())
        data["quantization_config"] = quant
        (out_dir / "config.json").write_text(json.dumps(data, indent=2))
    save_weights(prefixed, out_dir)


# The released repositories keep shards under 5 GB (4 GB for the Omni ones).
SHARD_BYTES = 4 * 1024**3


def save_weights(state: dict[str, Any], out_dir: Path, shards: int | None = None) -> None:
    """One model.safetensors, or `shards` files (enough for about SHARD_BYTES each) with an index."""
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in state.values())
    count = shards or -(-total // SHARD_BYTES)
    if count <= 1:
        save_file(state, str(out_dir / "model.safetensors"), metadata=metadata)
        return
    names = sorted(state)
    weight_map: dict[str, str] = {}
    for i in range(count):
        shard = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        part = {n: state[n] for n in names[i::count]}
        save_file(part, str(out_dir / shard), metadata=metadata)
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


LAYOUTS = ("native", "released")


def to_released_layout(out_dir: Path, shards: int = 2) -> None:
    """Rewrite a Qwen-Omni checkpoint written by build() into the released repositories' older file layout."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    processor = json.loads((out_dir / "processor_config.json").read_text())
    image = dict(processor["image_processor"])
    size = image.pop("size")
    # The released files predate `size`: they name the pixel bounds the image and video processors still accept.
    flat = {**processor["feature_extractor"], **image, "min_pixels": size["shortest_edge"]}
    flat.update(max_pixels=size["longest_edge"], processor_class=processor["processor_class"])
    (out_dir / "preprocessor_config.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    (out_dir / "processor_config.json").unlink()
    template = out_dir / "chat_template.jinja"
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}, indent=2))
    template.unlink()
    AutoTokenizer.from_pretrained(out_dir).backend_tokenizer.model.save(str(out_dir))

    state = load_file(str(out_dir / "model.safetensors"))
    (out_dir / "model.safetensors").unlink()
    save_weights(state, out_dir, shards)


# The text decoder's Linear layers, the only ones AutoAWQ quantizes in Qwen2.5-Omni (towers stay fp16).
AWQ_TARGET = re.compile(r"^thinker\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
# AutoAWQ GEMM packs eight 4-bit values per int32 in this interleaved order.
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
# Qwen's AWQ releases quantize in groups of 128 input columns; the tiny decoder (32 and 64 wide) uses 32.
AWQ_GROUPS = (128, 32)


def awq_quantize(state: dict[str, Any], device: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Pack the decoder's Linear weights as AutoAWQ GEMM does (qweight, qzeros, scales); the rest in fp16.

    The arithmetic runs on `device` (a 7B decoder takes seconds on a GPU); the results come back to the CPU.
    """
    widths = {weight.shape[1] for key, weight in state.items() if AWQ_TARGET.match(key)}
    group = next(g for g in AWQ_GROUPS if all(w % g == 0 for w in widths))
    out: dict[str, Any] = {}
    for key, weight in state.items():
        if not AWQ_TARGET.match(key):
            out[key] = weight.half() if weight.is_floating_point() else weight
            continue
        out.update(_awq_linear(key[: -len(".weight")], weight.to(device), group))
    # What AutoAWQ writes for the official checkpoint, "visual"-only exclusion list included.
    quant = {
        "bits": 4, "group_size": group, "modules_to_not_convert": ["visual"],
        "quant_method": "awq", "version": "gemm", "zero_point": True,
    }  # fmt: skip
    return out, quant


def _awq_linear(base: str, weight: Any, group: int) -> dict[str, Any]:
    """One [out, in] matrix as AutoAWQ GEMM's qweight, qzeros and scales, on the CPU."""
    import torch

    rows, cols = weight.shape  # out_features, in_features
    groups = weight.float().reshape(rows, cols // group, group)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low).clamp(min=1e-5) / 15).half()
    zeros = (-low / scales.float()).round().clamp(0, 15)
    q = (groups / scales.float()[..., None] + zeros[..., None]).round().clamp(0, 15).to(torch.int32)
    q = q.reshape(rows, cols).t().contiguous()  # [in, out]
    z = zeros.to(torch.int32).t().contiguous()  # [in / group, out]
    packed = {f"{base}.qweight": _awq_pack(q), f"{base}.qzeros": _awq_pack(z), f"{base}.scales": scales.t()}
    return {k: v.contiguous().cpu() for k, v in packed.items()}


def _awq_pack(values: Any) -> Any:
    """Eight 4-bit columns per int32, in AutoAWQ's interleaved order."""
    import torch

    lanes = values.reshape(values.shape[0], -1, 8)[..., AWQ_ORDER]
    shifts = torch.arange(8, dtype=torch.int32, device=values.device) * 4
    return (lanes << shifts).sum(-1, dtype=torch.int32)


# The MoE decoder's attention and expert projections, the layers llm-compressor quantizes in Qwen3-Omni.
CT_TARGET = re.compile(r"^thinker\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.experts\.\d+\.\w+_proj)\.weight$")
CT_GROUP = 16


def compressed_tensors_quantize(state: dict[str, Any], bits: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pack the decoder's Linear weights as llm-compressor does (pack-quantized, symmetric int, per group)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=CT_GROUP)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format="pack-quantized")
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    out: dict[str, Any] = {}
    ignore = []
    for key, weight in state.items():
        if not CT_TARGET.match(key):
            out[key] = weight
            if key.endswith(".weight") and weight.dim() == 2 and "embed_tokens" not in key:
                ignore.append(key[: -len(".weight")])  # named as llm-compressor names them: full-model paths
            continue
        groups = weight.float().reshape(weight.shape[0], -1, CT_GROUP)
        scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
        packed = compressor.compress(
            {"weight": weight.bfloat16(), "weight_scale": scale.bfloat16(), "weight_zero_point": zero_point}, scheme
        )
        base = key[: -len(".weight")]
        out.update({f"{base}.{name}": tensor for name, tensor in packed.items()})
    group = {"targets": ["Linear"], "weights": args.model_dump(), "input_activations": None, "output_activations": None}
    quant = {
        "config_groups": {"group_0": {**group, "format": "pack-quantized"}},
        "format": "pack-quantized",
        "ignore": sorted(ignore),
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "kv_cache_scheme": None,
    }
    return out, quant


QUANTIZERS = {
    "awq": awq_quantize,
    # llm-compressor's packing runs on the CPU, whatever the device.
    "compressed-tensors": lambda state, device="cpu": compressed_tensors_quantize(state, 8),
    "compressed-tensors-4bit": lambda state, device="cpu": compressed_tensors_quantize(state, 4),
}


def talker_config(family_name: str, ids: dict[str, int]) -> dict[str, Any]:
    """The talker is never loaded (text output only); its config just points at tokens this vocabulary has."""
    if family_name != "qwen2.5-omni":
        return {}
    talker = dict.fromkeys(("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id"), ids["pad"])
    talker.update(
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
    )
    return talker


# --- Qwen3-ASR and Qwen3-ForcedAligner (transformers-native `qwen3_asr`, as the "-hf" checkpoints are laid out) ---


@dataclass(frozen=True)
class AsrFamily:
    """A checkpoint of the `qwen3_asr` model type: Qwen3-ASR (generation) or Qwen3-ForcedAligner (token classes)."""

    named_tokens: dict[str, str]
    model_class: str
    chat_template: str
    # Timestamp classes of the aligner's head (None for the ASR model, whose head is the LM head).
    num_labels: int | None = None


# What Qwen3ASRProcessor reads off the tokenizer (tokenizer.audio_token, .audio_bos_token, .audio_eos_token).
ASR_NAMED_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
# Added but not special, as in the released tokenizer (ids 151704, 151705 there): `processor.decode(...,
# return_format="parsed")` decodes with skip_special_tokens=True and still has to find "<asr_text>".
ASR_PLAIN_TOKENS = ("<asr_text>", "<timestamp>")
ASR_CORPUS = (
    "language English<asr_text>language Chinese<asr_text>language None<asr_text>",
    "Mr Quilter is the apostle of the middle classes and we are glad to welcome his gospel",
)

# The ASR template of the released -hf checkpoints, reworded: one system turn holding the concatenated system
# text (context / hotwords; empty if none), one user turn holding an audio placeholder per audio part (user text
# parts are dropped), then each assistant turn verbatim. The processor's apply_transcription_request appends an
# assistant turn "language <NAME><asr_text>" (or "") and renders with continue_final_message=True.
ASR_CHAT_TEMPLATE = """\
{%- set ns = namespace(system='', audio='') -%}
{%- for message in messages -%}
{%- if message['content'] is string -%}
{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] -%}{%- endif -%}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}
{%- set ns.audio = ns.audio + '<|audio_start|><|audio_pad|><|audio_end|>' -%}
{%- elif message['role'] == 'system' and part['type'] == 'text' and part['text'] is defined -%}
{%- set ns.system = ns.system + part['text'] -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endfor -%}
{{- '<|im_start|>system\n' + ns.system + '<|im_end|>\n' -}}
{{- '<|im_start|>user\n' + ns.audio + '<|im_end|>\n' -}}
{%- for message in messages if message['role'] == 'assistant' -%}
{%- set reply = namespace(text='') -%}
{%- if message['content'] is string -%}
{%- set reply.text = message['content'] -%}
{%- else -%}
{%- for part in message['content'] if part['type'] == 'text' and part['text'] is defined -%}
{%- set reply.text = reply.text + part['text'] -%}
{%- endfor -%}
{%- endif -%}
{{- '<|im_start|>assistant\n' -}}
{% generation %}{{- reply.text + '<|im_end|>\n' -}}{% endgeneration %}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

# The forced aligner's input is no chat at all: the audio placeholder, then every word followed by two
# <timestamp> markers (its start and end), which the head classifies into 80 ms time bins.
# prepare_forced_aligner_inputs passes one user turn: an audio part and one text part per word.
ALIGNER_CHAT_TEMPLATE = """\
{%- set ns = namespace(audio='', words=[]) -%}
{%- for message in messages if message['content'] is not string -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}
{%- set ns.audio = ns.audio + '<|audio_start|><|audio_pad|><|audio_end|>' -%}
{%- endif -%}
{%- if part['type'] == 'text' and part['text'] is defined -%}
{%- set ns.words = ns.words + [part['text']] -%}
{%- endif -%}
{%- endfor -%}
{%- endfor -%}
{{- ns.audio + (ns.words | join('<timestamp><timestamp>')) + '<timestamp><timestamp>' -}}
"""

# The released aligner has 5000 classes of 80 ms (400 s); 750 of them still cover 60 s.
ALIGNER_SEGMENT_MS = 80
ALIGNER_CLASSES = 750

ASR_FAMILIES = {
    "qwen3-asr": AsrFamily(ASR_NAMED_TOKENS, "Qwen3ASRForConditionalGeneration", ASR_CHAT_TEMPLATE),
    "qwen3-aligner": AsrFamily(
        ASR_NAMED_TOKENS, "Qwen3ASRForTokenClassification", ALIGNER_CHAT_TEMPLATE, num_labels=ALIGNER_CLASSES
    ),
}


def asr_config(family: AsrFamily, ids: dict[str, int], vocab_size: int, shapes: Shapes | None = None) -> Any:
    """A tiny Qwen3ASRConfig: Qwen3 text model of width 32 (2 layers), audio encoder of width 32 (2 layers).

    n_window stays 50 (100 mel frames, 1 s, per conv chunk, 13 audio tokens each): the processor and the
    encoder hard-code that chunk. n_window_infer is 200 (2 s attention windows; the released models use 800)
    so that a clip of a few seconds already spans two windows.
    """
    from transformers import Qwen3ASRConfig

    aligner = family.num_labels is not None
    head_dim = 8
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 4 * head_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": head_dim,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": not aligner,
        "pad_token_id": ids["pad"],
        "eos_token_id": ids["eos"],
    }
    audio = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "output_dim": 4 * head_dim,  # the projector maps audio features into the text model's width
        "downsample_hidden_size": 16,
        "n_window": 50,
        "n_window_infer": 200,
        "max_position_embeddings": 13,
    }
    extra: dict[str, Any] = {"num_labels": family.num_labels} if aligner else {}
    fields = {
        "audio_config": audio,
        "text_config": text,
        "audio_token_id": ids["audio_token"],
        "timestamp_token_id": ids["<timestamp>"],
        # As released: pad = <|im_end|>, eos = (<|endoftext|>, <|im_end|>).
        "pad_token_id": ids["eos"],
        "eos_token_id": [ids["pad"], ids["eos"]],
        "tie_word_embeddings": not aligner,
        **extra,
    }
    return Qwen3ASRConfig(**_reshaped(fields, shapes))


def build_asr(
    out_dir: Path,
    family_name: str,
    seed: int = 0,
    shapes: Shapes | None = None,
    device: str = "cpu",
    dtype: Any = None,
) -> None:
    """Write a tiny (or, with shapes, a full-size) Qwen3-ASR or Qwen3-ForcedAligner checkpoint into out_dir."""
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    family = ASR_FAMILIES[family_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family, plain_tokens=ASR_PLAIN_TOKENS, corpus=ASR_CORPUS)
    ids = {attr: tokenizer.convert_tokens_to_ids(token) for attr, token in family.named_tokens.items()}
    ids.update({token: tokenizer.convert_tokens_to_ids(token) for token in ASR_PLAIN_TOKENS})
    ids.update(eos=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    # The released feature extractor: 128 log-mel bins, 10 ms hop, mel axis padded to whole 1 s chunks.
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=family.chat_template,
        timestamp_segment_time=ALIGNER_SEGMENT_MS,
    )
    processor.save_pretrained(out_dir)

    config = asr_config(family, ids, len(tokenizer), shapes)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, family.model_class)._from_config(config, dtype=dtype or torch.float32)
    if family.num_labels is None:
        # The released generation config: greedy, both eos ids, 512 new tokens (the qwen_asr package default).
        model.generation_config = GenerationConfig(
            eos_token_id=[ids["pad"], ids["eos"]], pad_token_id=ids["eos"], do_sample=False, max_new_tokens=512
        )
    model.save_pretrained(out_dir)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument(
        "--family",
        choices=sorted([*FAMILIES, *ASR_FAMILIES]),
        default="qwen2.5-omni",
        help="model family: a Qwen-Omni thinker, Qwen3-ASR (qwen3-asr) or Qwen3-ForcedAligner (qwen3-aligner)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    parser.add_argument(
        "--quantization",
        choices=["none", *QUANTIZERS],
        default="none",
        help="weight format: AWQ as AutoAWQ writes it (Qwen2.5-Omni), or compressed-tensors as llm-compressor does",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="native",
        help="native: the files this transformers version saves; released: the older files the Qwen-Omni repos ship",
    )
    args = parser.parse_args()
    if args.family in ASR_FAMILIES:
        if args.quantization != "none":
            parser.error(f"--family {args.family} has no quantized layout (use --quantization none)")
        if args.layout != "native":
            # The "-hf" Qwen3-ASR and aligner repositories were published in this transformers layout.
            parser.error(f"--family {args.family} is released in the native layout only")
        build_asr(args.out_dir, args.family, args.seed)
    else:
        build(args.out_dir, args.family, args.seed, args.quantization)
        if args.layout == "released":
            to_released_layout(args.out_dir)
    size = sum(p.stat().st_size for p in args.out_dir.iterdir() if p.is_file())
    kind = f"{args.family} ({args.quantization}, {args.layout} layout)"
    print(f"wrote a tiny {kind} checkpoint to {args.out_dir} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
