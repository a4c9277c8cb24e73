"""A tiny random Qwen3 in HF format with untied embeddings (tests and the benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB = 600


def build_tiny_qwen3(
    directory: Path, seed: int = 0, vocab: int = TINY_VOCAB, hidden: int = 64, layers: int = 2, mlp: int = 128
) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        intermediate_size=mlp,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory
