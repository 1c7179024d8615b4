"""The health checker: every server's GET /health on a period; drop the dead, re-admit the returned.

A server is dropped (no longer routed to, its models gone from /v1/models when it was their last)
after `failures` checks in a row fail (not 200 within the timeout, or no connection); the first good
check re-admits it. A registered server that stays down for `forget_after_s` is removed: in a
cluster its pod comes back on a new address and registers again. Servers whose models are not known
from the server itself (a servers-file entry without `models:`, a registration that named only the
models) are asked for /v1/models when they answer /health, so the merged list carries their cards.
"""
from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .metrics import ProxyMetrics
from .registry import REGISTERED, Server, ServerRegistry

log = logging.getLogger("opsctl.proxy")


async def fetch_models(client: httpx.AsyncClient, url: str, headers: dict, timeout: float) -> dict[str, dict]:
    """{model id: card} from a server's /v1/models; ValueError with one line when it cannot be read."""
    try:
        response = await client.get(url + "/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach {url}/v1/models: {type(e).__name__} {e}".strip()) from None
    if response.status_code != 200:
        raise ValueError(f"{url}/v1/models answered HTTP {response.status_code}")
    try:
        data = response.json()["data"]
        cards = {str(card["id"]): dict(card) for card in data if isinstance(card, dict) and card.get("id")}
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{url}/v1/models did not answer an OpenAI model list") from None
    if not cards:
        raise ValueError(f"{url}/v1/models lists no model")
    return cards


class HealthChecker:
    def __init__(self, registry: ServerRegistry, client: httpx.AsyncClient, metrics: ProxyMetrics, *,
                 interval_s: float, timeout_s: float, failures: int, forget_after_s: float,
                 upstream_headers: dict | None = None):
        self.registry = registry
        self.client = client
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures = failures
        self.forget_after_s = forget_after_s
        self.upstream_headers = upstream_headers or {}

    async def run(self) -> None:
        """Check every server each period until cancelled."""
        while True:
            started = time.monotonic()
            await self.check_all()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def check_all(self) -> None:
        servers = self.registry.all()
        if servers:
            await asyncio.gather(*(self.check(s) for s in servers))

    async def check(self, server: Server) -> bool:
        """One check of one server; returns whether it answered healthy."""
        reason = ""
        try:
            response = await self.client.get(server.url + "/health", timeout=self.timeout_s)
            if response.status_code != 200:
                reason = f"/health answered HTTP {response.status_code}"
        except httpx.HTTPError as e:
            reason = f"/health failed: {type(e).__name__}"
        if self.registry.get(server.url) is not server:
            return not reason  # removed (deregistered) while the check ran: nothing to record
        if not reason:
            if self.registry.mark_live(server):
                log.info("proxy: %s is back: routing to it again", server.url)
            if not server.cards_fetched:
                await self._learn_models(server)
            return True
        self.metrics.failures.labels(server.url, "health").inc()
        server.failures += 1
        server.failures_in_a_row += 1
        server.last_error = reason
        if server.live and server.failures_in_a_row >= self.failures:
            self.registry.mark_down(server, reason)
            log.warning("proxy: %s dropped (%s, %d checks in a row)", server.url, reason, server.failures_in_a_row)
        if (server.source == REGISTERED and not server.live and server.down_since is not None
                and time.monotonic() - server.down_since >= self.forget_after_s):
            self.registry.remove(server.url)
            log.warning("proxy: %s removed: down for %.0f s and registered (it registers again when it returns)",
                        server.url, self.forget_after_s)
        return False

    async def _learn_models(self, server: Server) -> None:
        try:
            cards = await fetch_models(self.client, server.url, self.upstream_headers, self.timeout_s)
        except ValueError as e:
            if not server.models:  # nothing to route by: keep it out of routing until its models are known
                self.registry.mark_down(server, str(e))
            log.warning("proxy: %s: %s", server.url, e)
            return
        self.registry.set_models(server, cards.keys(), cards)
