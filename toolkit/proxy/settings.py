"""What `opsctl proxy` runs with: ProxySettings (validated on creation), the servers file, the secrets.

The servers file (YAML) lists servers the proxy knows from the start, besides those that register:

    servers:
      - url: http://10.0.0.5:23333
        models: [qwen2.5-7b]         # optional: asked from the server's /v1/models when left out
      - url: http://10.0.0.6:23333

Secrets never come from the command line alone (a flag is visible to every user in `ps`): the
registration token is $OPSCTL_PROXY_TOKEN or --token-file; the API keys clients must send are the
server's own sources (--api-keys, --api-key-file, $OPSCTL_API_KEY); the key the proxy sends to
servers that want one is $OPSCTL_UPSTREAM_API_KEY.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .registry import normalize_url
from .strategies import DEFAULT_FALLBACK_FACTOR, DEFAULT_PREFIX_LENGTH, make_strategy

TOKEN_ENV = "OPSCTL_PROXY_TOKEN"
UPSTREAM_KEY_ENV = "OPSCTL_UPSTREAM_API_KEY"
DEFAULT_PORT = 8000  # LMDeploy's `serve proxy` default


class ProxyConfigError(ValueError):
    """A bad setting or servers file; the message is one line saying what to fix."""


@dataclass(frozen=True)
class ServerSpec:
    url: str
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    strategy: str = "least_outstanding"
    prefix_length: int = DEFAULT_PREFIX_LENGTH
    prefix_fallback_factor: float = DEFAULT_FALLBACK_FACTOR
    servers: tuple[ServerSpec, ...] = ()
    api_keys: tuple[str, ...] = ()
    token: str | None = None
    upstream_api_key: str | None = None
    health_interval_s: float = 5.0
    health_timeout_s: float = 3.0
    # two failed checks in a row drop a server: one lost probe on a busy host is not a dead server
    # (a refused connection while forwarding drops it at once)
    health_failures: int = 2
    forget_after_s: float = 600.0  # a registered server down this long is removed (pods come back on new IPs)
    connect_timeout_s: float = 5.0
    log_level: str = "info"

    def __post_init__(self):
        try:
            make_strategy(self.strategy, prefix_length=self.prefix_length,
                          fallback_factor=self.prefix_fallback_factor)
        except ValueError as e:
            raise ProxyConfigError(str(e)) from None
        for name, value in (("--health-interval", self.health_interval_s), ("--health-timeout", self.health_timeout_s),
                            ("--connect-timeout", self.connect_timeout_s), ("--forget-after", self.forget_after_s)):
            if not value > 0:
                raise ProxyConfigError(f"{name} must be a positive number of seconds (got {value})")
        if self.health_failures < 1:
            raise ProxyConfigError(f"--health-failures must be at least 1 (got {self.health_failures})")
        if not 0 <= self.port <= 65535:
            raise ProxyConfigError(f"--server-port {self.port} is not a port number (0-65535)")
        if self.token is not None and len(self.token) < 16:
            # a short shared secret is guessable by anyone who can reach the registration route
            raise ProxyConfigError("the registration token must be at least 16 characters "
                                   "(e.g. `openssl rand -hex 32`)")


def load_servers_file(path: str | os.PathLike) -> tuple[ServerSpec, ...]:
    """The servers of a YAML servers file (see the module docstring)."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ProxyConfigError(f"cannot read --config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ProxyConfigError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), list):
        raise ProxyConfigError(f"--config {path}: expected a mapping with a `servers:` list "
                               "(each entry `url:` and optional `models:`)")
    specs = []
    for i, entry in enumerate(doc["servers"]):
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict) or "url" not in entry:
            raise ProxyConfigError(f"--config {path}: servers[{i}] needs a `url:`")
        unknown = set(entry) - {"url", "models"}
        if unknown:
            raise ProxyConfigError(f"--config {path}: servers[{i}] has unknown keys {sorted(unknown)} "
                                   "(only url and models)")
        models = entry.get("models") or []
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ProxyConfigError(f"--config {path}: servers[{i}].models must be a list of model names")
        try:
            url = normalize_url(entry["url"])
        except ValueError as e:
            raise ProxyConfigError(f"--config {path}: servers[{i}]: {e}") from None
        specs.append(ServerSpec(url, tuple(models)))
    return tuple(specs)


def read_secret(env_name: str, file: str | os.PathLike | None, what: str, environ=os.environ) -> str | None:
    """A secret from its file (first non-comment line) or, failing that, the environment; None if neither."""
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ProxyConfigError(f"cannot read the {what} file {file}: {getattr(e, 'strerror', None) or e}") from None
        values = [line.split("#", 1)[0].strip() for line in lines]
        values = [v for v in values if v]
        if not values:
            raise ProxyConfigError(f"the {what} file {file} is empty")
        return values[0]
    value = (environ.get(env_name) or "").strip()
    return value or None
