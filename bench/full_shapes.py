"""The released models' shapes, as sub-config fields for serve/make_tiny_checkpoint.py's configs."""

from __future__ import annotations

from typing import Any

# The full shapes, from the released config.json files (Qwen/Qwen2.5-Omni-7B's thinker_config, Qwen3-ASR-1.7B's
# and Qwen3-ForcedAligner-0.6B's); token ids and the vocabulary stay the tiny tokenizer's, the embedding has the
# released vocabulary size.
OMNI_7B: dict[str, dict[str, Any]] = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "audio_config": {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "output_dim": 3584,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
QWEN3_TEXT = {
    "head_dim": 128,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "num_hidden_layers": 28,
    "max_position_embeddings": 65536,
}
AUDIO_1024 = {"d_model": 1024, "encoder_layers": 24, "encoder_attention_heads": 16, "encoder_ffn_dim": 4096}
ASR_1_7B: dict[str, dict[str, Any]] = {
    "text_config": {**QWEN3_TEXT, "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144},
    "audio_config": {**AUDIO_1024, "output_dim": 2048, "downsample_hidden_size": 480, "n_window_infer": 800},
}
ALIGNER_0_6B: dict[str, dict[str, Any]] = {
    "text_config": {**QWEN3_TEXT, "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072},
    "audio_config": {**AUDIO_1024, "output_dim": 1024, "downsample_hidden_size": 480, "n_window_infer": 800},
    # 80 ms classes up to 400 s, as released.
    "model": {"num_labels": 5000},
}
