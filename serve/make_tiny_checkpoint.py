#!/usr/bin/env python3
"""Write a tiny random-weight Qwen2.5-Omni checkpoint (a few hundred KB) laid out like the official one.

config.json is a full `qwen2_5_omni` config with a tiny thinker, the weights carry the official `thinker.`
prefix, and the processor files (tokenizer with the Qwen special tokens and a chat template, Whisper
feature extractor with the official 300 s window, image and video processors) sit beside them. The service
loads it through exactly the code that loads Qwen/Qwen2.5-Omni-7B. Its transcripts are gibberish.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Special tokens the Qwen2.5-Omni tokenizer defines and its processor looks up by attribute.
NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *NAMED_TOKENS.values()]

# The official template's shape: content parts of type audio/image/video become their placeholder tokens.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
{%- if loop.first and message['role'] != 'system' -%}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}<|im_end|>
{% else -%}
{%- for content in message['content'] -%}
{%- if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content -%}
<|audio_bos|><|AUDIO|><|audio_eos|>
{%- elif content['type'] == 'image' or 'image' in content or 'image_url' in content -%}
<|vision_bos|><|IMAGE|><|vision_eos|>
{%- elif content['type'] == 'video' or 'video' in content -%}
<|vision_bos|><|VIDEO|><|vision_eos|>
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


def build_tokenizer():  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer with the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=NAMED_TOKENS,
    )


def build(out_dir: Path, seed: int = 0) -> None:
    """Write the checkpoint into out_dir."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniProcessor,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    # The official feature extractor: 128 mel bins, 30 000 frames (300 s) of padding and truncation.
    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400, return_attention_mask=True
    )
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=features,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)

    head_dim = 8
    thinker = Qwen2_5OmniThinkerConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 4 * head_dim,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            # mrope_section splits head_dim / 2 rotary frequencies over (time, height, width).
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": 4 * head_dim,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 4 * head_dim,
            "fullatt_block_indexes": [0],
        },
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=ids["<|im_start|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(thinker)
    # The talker is never loaded (text output only); its config just points at tokens this vocabulary has.
    talker = {
        key: ids["<|endoftext|>"]
        for key in ("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id")
    }
    talker.update(
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), talker_config=talker, enable_audio_output=False)
    config.save_pretrained(out_dir)
    # The official checkpoint's layout: thinker.model.* (language model), thinker.audio_tower.*,
    # thinker.visual.*, thinker.lm_head.*. Loading it exercises transformers' conversion mapping.
    state = {f"thinker.{_legacy_name(k)}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _legacy_name(name: str) -> str:
    """Map a transformers 5 thinker parameter name to the released checkpoint's name."""
    for new, old in (
        ("model.audio_tower.", "audio_tower."),
        ("model.visual.", "visual."),
        ("model.language_model.", "model."),
    ):
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    args = parser.parse_args()
    build(args.out_dir, args.seed)
    size = sum(p.stat().st_size for p in args.out_dir.iterdir() if p.is_file())
    print(f"wrote a tiny Qwen2.5-Omni checkpoint to {args.out_dir} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
