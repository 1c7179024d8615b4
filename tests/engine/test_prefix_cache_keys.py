"""Prefix-cache keys: SHA-256 chained over token bytes from a salted root; cache_salt isolates requests."""
from __future__ import annotations

import hashlib
import struct

import pytest

from engine import EngineConfig, GenerationConfig, InvalidRequestError
from engine.engine import LLMEngine
from engine.kv_cache import KVCacheManager, root_key
from engine.request import Request

from .helpers import assert_all_blocks_free, greedy

BLOCK = 4


def _request(tokens, rid="r", salt=None):
    return Request(rid, tokens, GenerationConfig(cache_salt=salt), frozenset(), max_tokens=len(tokens) + 8, seed=0)


def _computed(kv, tokens, rid, salt=None):
    """A request whose whole prompt is allocated and registered, as after its prefill was scheduled."""
    request = _request(tokens, rid, salt)
    kv.match_prefix(request)
    assert kv.allocate(request, len(tokens) - request.num_computed_tokens)
    kv.cache_full_blocks(request, len(tokens))
    request.num_computed_tokens = len(tokens)
    return request


def _keys(tokens, salt=None):
    kv = KVCacheManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    return _computed(kv, tokens, "k", salt).block_hashes


def test_same_prompt_shares_blocks_only_under_the_same_salt():
    kv = KVCacheManager(num_blocks=32, block_size=BLOCK, enable_prefix_caching=True)
    prompt = list(range(3 * BLOCK + 1))
    plain = _computed(kv, prompt, "plain")
    again = _request(prompt, "again")
    kv.match_prefix(again)
    assert again.block_ids == plain.block_ids[:3] and again.num_computed_tokens == 3 * BLOCK
    # A salted request sees none of the unsalted blocks, nor those of another salt.
    alice = _request(prompt, "alice", salt="tenant-a")
    kv.match_prefix(alice)
    assert alice.block_ids == [] and alice.num_computed_tokens == 0
    alice = _computed(kv, prompt, "alice", salt="tenant-a")
    assert not set(alice.block_ids) & set(plain.block_ids)
    bob = _request(prompt, "bob", salt="tenant-b")
    kv.match_prefix(bob)
    assert bob.num_computed_tokens == 0
    # The same salt shares, with its own blocks.
    alice2 = _request(prompt, "alice2", salt="tenant-a")
    kv.match_prefix(alice2)
    assert alice2.block_ids == alice.block_ids[:3] and alice2.num_computed_tokens == 3 * BLOCK


def test_key_is_sha256_of_parent_key_and_token_bytes():
    prompt = [0, 1, 2**31 + 5, 151_000, 7, 7, 7, 7, 2**40, 3, 2, 1]
    for salt in (None, "tenant-a"):
        keys = _keys(prompt, salt)
        parent = root_key(salt)
        for i, key in enumerate(keys):
            block = prompt[i * BLOCK:(i + 1) * BLOCK]
            assert key == hashlib.sha256(parent + struct.pack(f"<{BLOCK}q", *block)).digest()
            parent = key
        assert len(keys) == 3
    roots = {root_key(None), root_key("tenant-a"), root_key("tenant-b"), root_key("\x00")}
    assert len(roots) == 4 and all(len(r) == 32 for r in roots)


def test_cache_is_keyed_by_digests_only():
    kv = KVCacheManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    request = _computed(kv, list(range(2 * BLOCK)), "r")
    assert set(kv.cached) == set(request.block_hashes)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in kv.cached)


def test_changing_any_token_changes_its_block_key_and_every_later_one():
    prompt = list(range(100, 100 + 4 * BLOCK))
    base = _keys(prompt)
    assert len(set(base)) == len(base)
    for pos in range(len(prompt)):
        changed = _keys(prompt[:pos] + [prompt[pos] + 1] + prompt[pos + 1:])
        first = pos // BLOCK
        assert changed[:first] == base[:first]
        assert all(a != b for a, b in zip(changed[first:], base[first:])), pos
    # Same tokens in a different block position (after a different parent) give a different key.
    assert _keys(prompt[BLOCK:2 * BLOCK] * 2)[1] != _keys(prompt[BLOCK:2 * BLOCK])[0]


@pytest.mark.parametrize("salt", ["", 5, "s" * 257])
def test_bad_cache_salt_is_refused(salt):
    with pytest.raises(InvalidRequestError, match="cache_salt must be a non-empty string") as info:
        GenerationConfig(cache_salt=salt)
    assert info.value.param == "cache_salt"


def test_salted_requests_compute_their_own_kv_and_give_the_same_tokens(default_model_dir):
    engine = LLMEngine(default_model_dir, EngineConfig(device="cpu", cache_max_entry_count=64, cache_block_seq_len=16,
                                                       session_len=512, enable_prefix_caching=True))
    prompt = engine.tokenize_prompt("You are a helpful assistant. Here is a shared system prompt. " * 3 + "Hi!")
    full_blocks = (len(prompt) - 1) // 16
    assert full_blocks >= 2

    def run(salt):
        hits = engine.stats().prefix_cache_hits
        [request] = engine.generate([prompt], greedy(8, cache_salt=salt))
        return request.output_token_ids, engine.stats().prefix_cache_hits - hits

    expected, hits = run(None)
    assert hits == 0
    assert run(None) == (expected, full_blocks * 16)          # same prompt, no salt: shared
    assert run("tenant-a") == (expected, 0)                   # another salt: computed again, same tokens
    assert run("tenant-b") == (expected, 0)
    assert run("tenant-a") == (expected, full_blocks * 16)    # same salt: shared
    assert_all_blocks_free(engine)
