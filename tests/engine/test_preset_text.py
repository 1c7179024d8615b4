"""Random-weight presets pick only ids their tokenizer can show, so streams carry one event per token."""
from __future__ import annotations

import torch

from engine.models.presets import TOKENIZER_VOCAB, iter_random_weights, preset_config


def _small(name: str, **overrides):
    """A preset's architecture shrunk to test size, with a vocabulary larger than the tokenizer's."""
    config = preset_config(name)
    for key, value in dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=TOKENIZER_VOCAB + 5000,
                           **overrides).items():
        setattr(config, key, value)
    return config


def test_output_rows_beyond_the_tokenizer_are_zero_and_never_win():
    for name, tied in (("qwen2.5-7b", False), ("qwen3-0.6b", True)):
        config = _small(name, tie_word_embeddings=tied)
        weights = dict(iter_random_weights(config, seed=3))
        head = weights["model.embed_tokens.weight"] if tied else weights["lm_head.weight"]
        assert head.shape[0] == TOKENIZER_VOCAB + 5000
        assert not head[TOKENIZER_VOCAB:].any() and head[:TOKENIZER_VOCAB].abs().sum(dim=1).min() > 0
        # Any hidden state of the scale the model produces: the winning id is one the tokenizer has.
        hidden = torch.randn(512, config.hidden_size, generator=torch.Generator().manual_seed(0))
        logits = hidden @ head.T
        assert int(logits.argmax(dim=-1).max()) < TOKENIZER_VOCAB
        # Sampling at temperature 1 too: the zero rows hold ~e^0 of mass against e^(several units).
        probs = logits.softmax(dim=-1)
        assert float(probs[:, TOKENIZER_VOCAB:].sum(dim=-1).max()) < 0.05, name
