"""KV-cache block bookkeeping: the block pool, per-request block tables, prefix-cache hashing, LRU eviction.

This file owns which block holds which tokens; the tensors themselves live in the model runner.
With prefix caching, every full block gets a key, the SHA-256 of its parent block's key and its
token ids, chained from a root that covers the request's cache_salt, so a block's key identifies
the whole prefix up to it (and the salt). Blocks whose last user finished stay in the cache until a
new allocation needs them; the least recently freed go first.
"""
from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .request import Request

# Keys are a cryptographic digest, not Python's hash() of (parent, tokens): hash() of ints is
# deterministic and not collision-resistant, so a crafted prompt could collide with another user's
# prefix and be served its KV (vLLM's advisory GHSA-rm76-4mrf-v9r8; vLLM keys with SHA-256 since
# v0.10.2). Cost measured on this project's 2-core AMD EPYC CI box, 1,024 blocks of 64 tokens:
# 2.7-3.4 ms with SHA-256 against 0.6-0.8 ms with hash() of tuples, i.e. ~3 us a block, ~0.05 us a
# token, noise next to a forward pass. A key is 32 bytes instead of a tuple of block_size ints.
# Only what changes a block's KV goes in: the model, dtype and block size are fixed per manager.
_KEY_VERSION = b"engine.kv_cache.prefix-key.v1"


def root_key(cache_salt: str | None) -> bytes:
    """The parent key of a request's first block: requests share blocks only under the same salt."""
    salt = b"\x00" if cache_salt is None else b"\x01" + cache_salt.encode("utf-8")
    return hashlib.sha256(_KEY_VERSION + salt).digest()


def block_key(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """SHA-256 of the parent key (32 bytes) and the block's token ids as int64 little-endian."""
    tokens = array("q", token_ids)
    if sys.byteorder != "little":   # the same tokens give the same key on every host
        tokens.byteswap()
    return hashlib.sha256(parent + tokens.tobytes()).digest()


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # prompt tokens found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager:
    """Allocates fixed-size blocks to requests; with prefix caching, shares and evicts full blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Free blocks in eviction order (front = evicted first). Cached free blocks keep their key.
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.block_key: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # key -> block id
        self.stats = PrefixCacheStats()

    # -- queries ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        total = request.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(request.block_ids))

    # -- prefix cache ----------------------------------------------------------------------------
    def match_prefix(self, request: Request) -> None:
        """Give a newly admitted request the cached blocks of its longest cached prefix.

        At least one token is always left to compute: its logits produce the first output token.
        """
        if not self.enable_prefix_caching or request.num_computed_tokens:
            return
        tokens = request.token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        parent = root_key(request.cache_salt)
        hits: list[int] = []
        hashes: list[bytes] = []
        for i in range(max_blocks):
            key = block_key(parent, tokens[i * self.block_size:(i + 1) * self.block_size])
            block = self.cached.get(key)
            if block is None:
                break
            hits.append(block)
            hashes.append(key)
            parent = key
        self.stats.queries += request.num_prompt_tokens
        if not hits:
            return
        for block in hits:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
        request.block_ids = hits
        request.block_hashes = hashes
        request.num_hashed_blocks = len(hits)
        request.num_computed_tokens = request.num_cached_tokens = len(hits) * self.block_size
        self.stats.hits += min(request.num_cached_tokens, request.num_prompt_tokens)

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register the request's blocks that are full within its first num_tokens tokens.

        The scheduler calls this when it schedules a chunk, before the forward computes it: a
        request admitted later in the same step may then share these blocks, because every
        attention layer writes all of the step's K/V before any request attends.
        """
        if not self.enable_prefix_caching:
            return
        # Only blocks of known tokens: a placeholder's token is still on the device.
        num_full = min(num_tokens, request.num_known_tokens) // self.block_size
        tokens = request.token_ids
        if request.num_hashed_blocks >= num_full:
            return
        parent = request.block_hashes[-1] if request.block_hashes else root_key(request.cache_salt)
        for i in range(request.num_hashed_blocks, num_full):
            key = block_key(parent, tokens[i * self.block_size:(i + 1) * self.block_size])
            block = request.block_ids[i]
            if key not in self.cached and self.block_key[block] is None:
                self.cached[key] = block
                self.block_key[block] = key
            request.block_hashes.append(key)
            parent = key
        request.num_hashed_blocks = max(request.num_hashed_blocks, num_full)

    # -- allocation ------------------------------------------------------------------------------
    def allocate(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the request's block table to hold num_new_tokens more tokens; False if blocks run out."""
        needed = self.blocks_needed(request, num_new_tokens)
        if needed > len(self.free_blocks):
            return False
        for _ in range(needed):
            block, _ = self.free_blocks.popitem(last=False)
            key = self.block_key[block]
            if key is not None:  # evict the cached prefix this block held
                del self.cached[key]
                self.block_key[block] = None
            self.ref_counts[block] = 1
            request.block_ids.append(block)
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks. Tail blocks are queued for eviction before head blocks:
        a prefix's first blocks are the most likely to be shared again."""
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        request.block_ids = []
        request.block_hashes = []
        request.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> None:
        for block in self.cached.values():
            self.block_key[block] = None
        self.cached.clear()
