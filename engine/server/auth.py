"""API keys: `Authorization: Bearer KEY` checked in constant time against every configured key.

Every key is compared (no early exit), each with hmac.compare_digest, so the answer's timing tells
an attacker neither which key nor how much of one matched. /health and /metrics stay open, as in
vLLM, so load balancers and Prometheus need no secret.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterable

from .protocol import APIError


def parse_api_keys(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Keys from repeated and/or comma-separated values; blanks dropped, order kept, duplicates removed."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    keys: list[str] = []
    for value in values:
        for key in str(value).split(","):
            key = key.strip()
            if key and key not in keys:
                keys.append(key)
    return tuple(keys)


class APIKeyChecker:
    def __init__(self, keys: Iterable[str] | str | None):
        self._keys = tuple(k.encode("utf-8") for k in parse_api_keys(keys))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def is_valid(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        candidate = token.strip().encode("utf-8", "surrogateescape") if scheme.lower() == "bearer" else b""
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(candidate, key)
        return ok and bool(candidate)

    def require(self, authorization: str | None) -> None:
        if not self.is_valid(authorization):
            message = ("missing API key: send the header 'Authorization: Bearer YOUR_KEY'" if not authorization
                       else "incorrect API key provided")
            raise APIError(401, message, code="invalid_api_key")
