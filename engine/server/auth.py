"""API keys: where they come from, and `Authorization: Bearer KEY` checked in constant time.

Keys on the command line (`--api-keys`, LMDeploy's flag) are visible to every user of the machine in
`ps`; `--api-key-file PATH` (one key per line, `#` comments) and the OPSCTL_API_KEY environment
variable (comma-separated) are not. All sources add up. Every key is compared (no early exit), each
with hmac.compare_digest, so the answer's timing tells an attacker neither which key nor how much of
one matched. The guard (guard.py) asks for a key on every route but /health and /metrics, which stay
open as in vLLM so load balancers and Prometheus need no secret.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

API_KEY_ENV = "OPSCTL_API_KEY"


class APIKeySourceError(ValueError):
    """A key file that cannot be read; the message is one line."""

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


def read_key_file(path: str | os.PathLike) -> list[str]:
    """Keys from a file: one per line (commas also separate), blank lines and `#` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise APIKeySourceError(f"cannot read --api-key-file {path}: {getattr(e, 'strerror', None) or e}") from None
    keys = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [k for k in keys if k]
    if not keys:
        raise APIKeySourceError(f"--api-key-file {path} holds no key (one key per line)")
    return keys


def gather_api_keys(cli_values: Iterable[str] | None = None, key_file: str | os.PathLike | None = None,
                    environ=os.environ) -> tuple[str, ...]:
    """Every configured key: --api-keys, then --api-key-file, then $OPSCTL_API_KEY."""
    values = list(cli_values or ())
    if key_file is not None:
        values += read_key_file(key_file)
    if environ.get(API_KEY_ENV):
        values.append(environ[API_KEY_ENV])
    return parse_api_keys(values)


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

    @staticmethod
    def refusal(authorization: str | None) -> APIError:
        message = ("missing API key: send the header 'Authorization: Bearer YOUR_KEY'" if not authorization
                   else "incorrect API key provided")
        return APIError(401, message, code="invalid_api_key")

    def require(self, authorization: str | None) -> None:
        if not self.is_valid(authorization):
            raise self.refusal(authorization)
