"""KV-cache block bookkeeping: the block pool, per-request block tables, prefix-cache hashing, LRU eviction.

This file owns which block holds which tokens; the tensors themselves live in the model runner.
With prefix caching, every full block gets a key, the SHA-256 of its parent block's key and its
token ids, chained from a root that covers the request's cache_salt, so a block's key identifies
the whole prefix up to it (and the salt). Blocks whose last user finished stay in the cache until a
new allocation needs them; the least recently freed go first.

`check_invariants` states what must hold between any two operations (free XOR referenced, ref
counts equal to the live block tables holding each block, cache map and block keys agreeing); the
engine runs it after every step when EngineConfig.debug_invariants is on, and so do the tests.
"""
from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .request import PLACEHOLDER, Request

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


class KVCacheInvariantError(AssertionError):
    """The block pool's bookkeeping is inconsistent: a bug, never a user error.

    An AssertionError so pytest reports it as a failed check; it lists every violation found.
    """


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

    def undo_match(self, request: Request) -> None:
        """Give back the prefix hits of a request whose allocation failed, so it waits holding nothing.

        Its computed tokens all came from the cache; the lookup is not counted in the stats, as the
        retry will be. The blocks go back to the free list as the most recently used.
        """
        if self.enable_prefix_caching:
            self.stats.queries -= request.num_prompt_tokens
            self.stats.hits -= min(request.num_computed_tokens, request.num_prompt_tokens)
        self.free(request)
        request.num_computed_tokens = 0

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

    # -- consistency -----------------------------------------------------------------------------
    def check_invariants(self, requests: Iterable[Request] | None = None) -> None:
        """Raise KVCacheInvariantError listing every broken rule of the pool (debugging and tests).

        With `requests` (every live request: running and waiting), each block's ref count must equal
        the number of those requests whose block table holds it, so a block on the free list that a
        live request still uses, or a reference nobody holds (a leak), is caught. Costs O(blocks +
        table lengths) plus one SHA-256 per hashed block: for debug runs, not production.
        """
        problems: list[str] = []
        n = self.num_blocks
        if len(self.ref_counts) != n or len(self.block_key) != n:
            problems.append(f"{len(self.ref_counts)} ref counts and {len(self.block_key)} keys for {n} blocks")
            raise KVCacheInvariantError(_describe(problems))
        for block in self.free_blocks:
            if not 0 <= block < n:
                problems.append(f"free list holds block {block}, outside 0..{n - 1}")
        num_referenced = 0
        for block, count in enumerate(self.ref_counts):
            free = block in self.free_blocks
            if count < 0:
                problems.append(f"block {block} has ref count {count}")
            elif count > 0:
                num_referenced += 1
                if free:
                    problems.append(f"block {block} is on the free list with ref count {count}")
            elif not free:
                problems.append(f"block {block} has ref count 0 but is not on the free list (leaked)")
        if len(self.free_blocks) + num_referenced != n:
            problems.append(f"{len(self.free_blocks)} free + {num_referenced} referenced blocks != {n} blocks")

        for key, block in self.cached.items():
            if not 0 <= block < n:
                problems.append(f"cache maps a key to block {block}, outside 0..{n - 1}")
            elif self.block_key[block] != key:
                problems.append(f"cache maps key {key.hex()[:12]} to block {block}, whose key is "
                                f"{_short(self.block_key[block])}")
        for block, key in enumerate(self.block_key):
            if key is not None and self.cached.get(key) != block:
                problems.append(f"block {block} has key {key.hex()[:12]} but the cache maps it to "
                                f"{self.cached.get(key)}")
        if not self.enable_prefix_caching and self.cached:
            problems.append(f"prefix caching is off but {len(self.cached)} blocks are cached")

        if requests is not None:
            holders = [0] * n
            for request in requests:
                self._check_request(request, holders, problems)
            for block, (count, held) in enumerate(zip(self.ref_counts, holders)):
                if count != held:
                    problems.append(f"block {block} has ref count {count} but {held} live request(s) hold it")
        if problems:
            raise KVCacheInvariantError(_describe(problems))

    def _check_request(self, request: Request, holders: list[int], problems: list[str]) -> None:
        rid = request.request_id
        table = request.block_ids
        if request.is_finished and table:
            problems.append(f"finished request {rid!r} still holds blocks {table}")
        if len(set(table)) != len(table):
            problems.append(f"request {rid!r} holds a block twice: {table}")
        for block in set(table):
            if 0 <= block < self.num_blocks:
                holders[block] += 1
            else:
                problems.append(f"request {rid!r} holds block {block}, outside 0..{self.num_blocks - 1}")
        if request.num_computed_tokens > len(table) * self.block_size:
            problems.append(f"request {rid!r} has {request.num_computed_tokens} computed tokens but "
                            f"{len(table)} blocks of {self.block_size}")
        hashed = request.num_hashed_blocks
        if hashed != len(request.block_hashes) or hashed > len(table):
            problems.append(f"request {rid!r}: {hashed} hashed blocks, {len(request.block_hashes)} hashes, "
                            f"{len(table)} blocks")
            return
        # A registered block's key is the key of the tokens it holds at the same position in every
        # table that holds it; a block past a table's hashed part was allocated by that request and
        # is registered by nobody yet. A key that does not match the tokens would serve wrong KV.
        parent = root_key(request.cache_salt)
        for i, block in enumerate(table):
            if not 0 <= block < self.num_blocks:
                continue
            key = self.block_key[block]
            if i >= hashed:
                if key is not None:
                    problems.append(f"request {rid!r}: block {block} at position {i} is past its {hashed} hashed "
                                    f"blocks but is registered in the cache")
                continue
            tokens = request.token_ids[i * self.block_size:(i + 1) * self.block_size]
            expected = block_key(parent, tokens)
            if PLACEHOLDER in tokens or request.block_hashes[i] != expected:
                problems.append(f"request {rid!r}: hash of block {i} does not match its tokens")
            elif key is not None and key != expected:
                problems.append(f"request {rid!r}: block {block} at position {i} is registered under another "
                                f"prefix's key")
            parent = request.block_hashes[i]

    def reset_prefix_cache(self) -> None:
        for block in self.cached.values():
            self.block_key[block] = None
        self.cached.clear()


def _short(key: bytes | None) -> str:
    return "none" if key is None else key.hex()[:12]


def _describe(problems: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"KV-cache invariant violated ({len(problems)} problem(s)):\n  {shown}{more}"
