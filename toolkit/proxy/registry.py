"""The proxy's registry of model servers: who serves which model, who is live, how busy each one is.

A server is known by its base URL (scheme, host, port; a trailing /v1 is dropped) and comes from
the config file or from a registration (`opsctl serve --proxy-url`). Each carries the model names
it serves (with their /v1/models cards), whether it is live, its outstanding requests (dispatched
and not yet finished: what least-outstanding routing reads), and counters for /nodes/status. The
registry only records; the health checker, the routes and the forwarder decide. Everything runs on
the proxy's one event loop, so nothing here needs a lock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CONFIG = "config"
REGISTERED = "registered"


def normalize_url(url: str) -> str:
    """`http://host:port` from what a user or a server sends (trailing / and /v1 dropped); ValueError
    saying what is wrong otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a server URL is required, e.g. http://10.0.0.5:23333")
    text = url.strip().rstrip("/")
    if text.endswith("/v1"):
        text = text[:-3].rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError(f"server URL {url!r} has a bad port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"server URL {url!r} must be scheme://host:port only (no query, fragment or user)")
    return text


def minimal_card(model: str) -> dict:
    """A /v1/models entry for a model whose server has not been asked for its own card yet."""
    return {"id": model, "object": "model", "owned_by": "opsctl"}


@dataclass(eq=False)
class Server:
    url: str
    source: str  # CONFIG or REGISTERED
    models: tuple[str, ...] = ()
    cards: dict[str, dict] = field(default_factory=dict)  # model id -> its card from the server's /v1/models
    cards_fetched: bool = False  # the cards came from the server itself (not only a registration's names)
    live: bool = True
    outstanding: int = 0
    failures_in_a_row: int = 0  # failed health checks since the last good one
    down_since: float | None = None  # time.monotonic() when it was dropped
    last_error: str = ""
    dispatched: int = 0  # requests sent to it, for /nodes/status
    failures: int = 0  # connect / stream / health failures, for /nodes/status

    def status(self) -> dict:
        return {"url": self.url, "source": self.source, "models": list(self.models), "live": self.live,
                "outstanding": self.outstanding, "dispatched": self.dispatched, "failures": self.failures,
                "last_error": self.last_error or None}


class ServerRegistry:
    def __init__(self) -> None:
        self._servers: dict[str, Server] = {}

    def add(self, url: str, models=(), *, source: str = REGISTERED, cards: dict[str, dict] | None = None) -> Server:
        """Add a server or update the one at that URL; a (re-)registration also makes it live: the server
        itself just said it is up. Config entries are never turned into registered ones (they stay when
        a server deregisters)."""
        url = normalize_url(url)
        models = tuple(dict.fromkeys(str(m) for m in models if str(m)))
        server = self._servers.get(url)
        if server is None:
            server = self._servers[url] = Server(url=url, source=source)
        if models:
            self.set_models(server, models, cards)
        self.mark_live(server)
        return server

    def set_models(self, server: Server, models, cards: dict[str, dict] | None = None) -> None:
        server.models = tuple(models)
        if cards is not None:
            server.cards = {m: cards.get(m) or minimal_card(m) for m in server.models}
            server.cards_fetched = True
        else:
            server.cards = {m: server.cards.get(m) or minimal_card(m) for m in server.models}

    def remove(self, url: str) -> bool:
        return self._servers.pop(normalize_url(url), None) is not None

    def get(self, url: str) -> Server | None:
        return self._servers.get(normalize_url(url))

    def all(self) -> list[Server]:
        return sorted(self._servers.values(), key=lambda s: s.url)

    def mark_live(self, server: Server) -> bool:
        """Returns True when this re-admits a server that was down."""
        readmitted = not server.live
        server.live = True
        server.failures_in_a_row = 0
        server.down_since = None
        return readmitted

    def mark_down(self, server: Server, reason: str) -> bool:
        """Returns True when this drops a server that was live."""
        dropped = server.live
        server.live = False
        server.last_error = reason
        if server.down_since is None:
            server.down_since = time.monotonic()
        return dropped

    def candidates(self, model: str) -> list[Server]:
        """Live servers of `model`, in URL order (strategies rely on a stable order)."""
        return [s for s in self.all() if s.live and model in s.models]

    def known_model(self, model: str) -> bool:
        """Some server, live or not, has served `model`."""
        return any(model in s.models for s in self._servers.values())

    def live_models(self) -> list[str]:
        return sorted({m for s in self._servers.values() if s.live for m in s.models})

    def model_cards(self) -> list[dict]:
        """The merged /v1/models: one card per model that has a live server (the first server's card)."""
        cards: dict[str, dict] = {}
        for server in self.all():
            if server.live:
                for model in server.models:
                    cards.setdefault(model, server.cards.get(model) or minimal_card(model))
        return [cards[m] for m in sorted(cards)]

    def acquire(self, server: Server) -> None:
        server.outstanding += 1
        server.dispatched += 1

    def release(self, server: Server) -> None:
        server.outstanding = max(0, server.outstanding - 1)
