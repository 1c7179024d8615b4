"""A server's side of registration: `opsctl serve --proxy-url URL` announces itself to an `opsctl proxy`.

`proxy_registration(...)` gives the server launcher its `announce` hook (engine/server/launcher.py
calls it once the server listens and leaves it when shutdown begins): POST /nodes/add {"url",
"models"} with the shared token, again every `heartbeat_s` (so a restarted proxy, which remembers
nothing, learns the server back within one period), and POST /nodes/remove on the way out, before
the server drains, so the proxy sends nothing new to a server that is stopping. A proxy that cannot
be reached or refuses is logged (once per change, not every period) and never stops the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Callable

import httpx

from .registry import normalize_url

log = logging.getLogger("opsctl.proxy.registration")

HEARTBEAT_S = 15.0


def advertised_url(host: str, port: int, advertise_url: str | None = None) -> str:
    """The URL the proxy should use for this server: --advertise-url, else http://HOST:PORT with a
    wildcard address (0.0.0.0, ::) replaced by this machine's name, which a proxy elsewhere can resolve."""
    if advertise_url:
        return normalize_url(advertise_url)
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return normalize_url(f"http://{host}:{port}")


class Registration:
    """Registers `url` serving `models` with the proxy at `proxy_url` until closed."""

    def __init__(self, proxy_url: str, token: str, url: str, models: list[str], *, heartbeat_s: float = HEARTBEAT_S,
                 timeout_s: float = 5.0):
        self.proxy_url = normalize_url(proxy_url)
        self.url = url
        self.models = models
        self.heartbeat_s = heartbeat_s
        self._headers = {"authorization": f"Bearer {token}"}
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)
        self._ok: bool | None = None  # the last attempt's outcome, so a change is logged once

    async def register_once(self) -> bool:
        try:
            response = await self._client.post(self.proxy_url + "/nodes/add", headers=self._headers,
                                               json={"url": self.url, "models": self.models})
            ok, why = response.status_code == 200, f"HTTP {response.status_code}: {_message(response)}"
        except httpx.HTTPError as e:
            ok, why = False, f"{type(e).__name__} {e}".strip()
        if ok and self._ok is not True:
            log.info("registered %s (%s) with the proxy %s", self.url, ", ".join(self.models), self.proxy_url)
        elif not ok and self._ok is not False:
            hint = " (check $OPSCTL_PROXY_TOKEN / --proxy-token-file)" if why.startswith("HTTP 401") else ""
            log.warning("cannot register with the proxy %s: %s%s; retrying every %.0f s",
                        self.proxy_url, why, hint, self.heartbeat_s)
        self._ok = ok
        return ok

    async def heartbeat(self) -> None:
        while True:
            await self.register_once()
            await asyncio.sleep(self.heartbeat_s)

    async def deregister(self) -> None:
        try:
            await self._client.post(self.proxy_url + "/nodes/remove", headers=self._headers, json={"url": self.url})
        except httpx.HTTPError as e:
            log.warning("could not deregister from the proxy %s: %s", self.proxy_url, type(e).__name__)

    @contextlib.asynccontextmanager
    async def running(self):
        task = asyncio.create_task(self.heartbeat(), name="opsctl-proxy-registration")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.deregister()
            await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def proxy_registration(proxy_url: str, token: str, host: str, advertise_url: str | None = None,
                       heartbeat_s: float = HEARTBEAT_S) -> Callable:
    """The launcher's `announce` hook: (bound port, served model name) -> an async context manager."""
    for flag, value in (("--proxy-url", proxy_url), ("--advertise-url", advertise_url)):
        if value is not None:  # a bad URL fails at start, before the model loads
            try:
                normalize_url(value)
            except ValueError as e:
                raise ValueError(f"{flag}: {e}") from None

    def announce(port: int, model_name: str):
        url = advertised_url(host, port, advertise_url)
        return Registration(proxy_url, token, url, [model_name], heartbeat_s=heartbeat_s).running()

    return announce
