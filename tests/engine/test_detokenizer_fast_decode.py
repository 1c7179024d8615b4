"""The detokenizer's direct call into the Rust decode gives exactly tokenizer.decode's text."""
from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from engine.detokenizer import _backend_decode
from engine.models.presets import TOKENIZER_DIR


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_fast_decode_matches_tokenizer_decode(skip_special_tokens):
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    fast = _backend_decode(tok)
    assert fast is not None, "the fast path no longer applies to this transformers: check _backend_decode"
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.randrange(0, len(tok)) for _ in range(rng.randint(0, 12))]
        assert fast(ids, skip_special_tokens) == tok.decode(ids, skip_special_tokens=skip_special_tokens), ids


def test_tokenizers_that_clean_up_spaces_keep_the_plain_decode():
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.clean_up_tokenization_spaces = True
    assert _backend_decode(tok) is None
