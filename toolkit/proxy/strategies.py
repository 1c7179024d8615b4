"""Routing strategies: which live server of a model gets the next request.

- least_outstanding (the default): the server with the fewest requests in flight through this
  proxy. Ties rotate, so an idle fleet is used evenly rather than always its first server.
- round_robin: each model's servers in turn, whatever they are doing.
- prefix_affinity: requests whose prompts start alike go to the same server, so its prefix cache
  hits. The key is the first `prefix_length` characters of the prompt (chat: the messages' roles and
  contents in order; a prompt of token ids: the first `prefix_length` ids), hashed; the server is
  chosen by rendezvous hashing (the highest hash of key + server URL), so adding or losing a server
  moves only the keys that server owned. When the chosen server is much busier than the least loaded
  one (outstanding > fallback_factor x (least's outstanding + 1)) the request goes to the least loaded
  instead: a prefix hit saves one prefill, a queue behind a hot server costs every request in it.

Strategies see only the live candidates (the forwarder removes servers it already tried), are
never given an empty list, and keep no per-request state.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Protocol, Sequence

from .registry import Server

STRATEGIES = ("least_outstanding", "round_robin", "prefix_affinity")
DEFAULT_PREFIX_LENGTH = 256  # characters (or token ids): ~64 tokens, one KV block at the default block length
DEFAULT_FALLBACK_FACTOR = 4.0


class Strategy(Protocol):
    name: str

    def choose(self, model: str, candidates: Sequence[Server], body: dict) -> Server: ...


class LeastOutstanding:
    name = "least_outstanding"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, model: str, candidates: Sequence[Server], body: dict) -> Server:
        n = len(candidates)
        start = next(self._turn) % n
        # the first least-busy server counting from a rotating start: ties are spread evenly
        best = min(range(n), key=lambda i: (candidates[(start + i) % n].outstanding, i))
        return candidates[(start + best) % n]


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._turns: dict[str, itertools.count] = defaultdict(itertools.count)

    def choose(self, model: str, candidates: Sequence[Server], body: dict) -> Server:
        return candidates[next(self._turns[model]) % len(candidates)]


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return "".join(p.get("text", "") if isinstance(p, dict) and isinstance(p.get("text"), str) else ""
                       for p in content)
    return ""


def prefix_key(body: dict, length: int) -> bytes | None:
    """The hash of the first `length` characters (or token ids) of a request's prompt; None without one."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        # role and content in order, separated by characters no text holds: "ab"+"c" and "a"+"bc" differ
        text = "".join(f"{m.get('role', '')}\x1f{_content_text(m.get('content'))}\x1e"
                       for m in messages if isinstance(m, dict))
        head: str | list = text[:length]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
            prompt = prompt[0]  # a batch of prompts: the first one decides
        if isinstance(prompt, str):
            head = prompt[:length]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            head = prompt[:length]
        else:
            return None
    if not head:
        return None
    if isinstance(head, str):
        raw = head.encode("utf-8", "surrogatepass")
    else:
        raw = b"ids:" + ",".join(map(str, head)).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


def _score(key: bytes, server: Server) -> bytes:
    return hashlib.blake2b(key + server.url.encode(), digest_size=8).digest()


class PrefixAffinity:
    name = "prefix_affinity"

    def __init__(self, prefix_length: int = DEFAULT_PREFIX_LENGTH,
                 fallback_factor: float = DEFAULT_FALLBACK_FACTOR) -> None:
        if prefix_length < 1:
            raise ValueError(f"--prefix-length must be at least 1 (got {prefix_length})")
        if not fallback_factor >= 1:
            raise ValueError(f"--prefix-fallback-factor must be at least 1 (got {fallback_factor})")
        self.prefix_length = prefix_length
        self.fallback_factor = fallback_factor
        self._least = LeastOutstanding()

    def owner(self, key: bytes, candidates: Sequence[Server]) -> Server:
        """The server a prefix belongs to among these candidates (rendezvous hashing)."""
        return max(candidates, key=lambda s: _score(key, s))

    def choose(self, model: str, candidates: Sequence[Server], body: dict) -> Server:
        least = self._least.choose(model, candidates, body)
        key = prefix_key(body, self.prefix_length)
        if key is None:
            return least
        owner = self.owner(key, candidates)
        if owner.outstanding > self.fallback_factor * (least.outstanding + 1):
            return least
        return owner


def make_strategy(name: str, *, prefix_length: int = DEFAULT_PREFIX_LENGTH,
                  fallback_factor: float = DEFAULT_FALLBACK_FACTOR) -> Strategy:
    """A strategy by name (hyphens accepted: least-outstanding); ValueError naming the choices."""
    key = name.strip().lower().replace("-", "_")
    if key == "least_outstanding":
        return LeastOutstanding()
    if key == "round_robin":
        return RoundRobin()
    if key == "prefix_affinity":
        return PrefixAffinity(prefix_length, fallback_factor)
    raise ValueError(f"--routing-strategy {name!r} is not one of {', '.join(STRATEGIES)}")
