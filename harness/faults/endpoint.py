"""Faults applied to an opened endpoint: a FaultLink in front of it, and a server restart.

`link_for(endpoint)` starts a link to the endpoint's TCP address; `linked_endpoint(endpoint,
link)` opens the same app through it, so users made on the result reach the service only
through the link. `restart_service(endpoint)` kills (or stops) and restarts a service the
harness started itself, and records it on the timeline like any other fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harness.errors import Unsupported
from harness.faults.link import FaultLink, _is_loopback
from harness.faults.timeline import FaultRecord, FaultTimeline

if TYPE_CHECKING:
    from harness.session import Endpoint

TCP_SCHEMES = ("ws", "wss", "http", "https", "tcp")
_DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


class NotProxiable(Unsupported):
    """The endpoint cannot be put behind a fault link (not TCP-based, or not on loopback)."""


def _where(endpoint: Endpoint) -> str:
    info = endpoint.info
    return f"endpoint {endpoint.name!r} ({info.adapter} {info.protocol or '?'}, tier {info.tier})"


def proxy_problem(endpoint: Endpoint) -> str | None:
    """Why a fault link cannot sit in front of `endpoint`, or None when it can."""
    url = endpoint.settings.url
    parts = urlsplit(url)
    scheme = parts.scheme or "(none)"
    if getattr(type(endpoint.adapter), "tcp_based", True) is False or scheme not in TCP_SCHEMES:
        return (
            f"{_where(endpoint)}: adapter {endpoint.settings.adapter!r} is not TCP-based "
            f"(url scheme {scheme!r}); network faults need an endpoint reached over TCP "
            f"({', '.join(TCP_SCHEMES)})"
        )
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    host = parts.hostname or ""
    if port is None:
        return f"{_where(endpoint)}: url has no port; the fault link needs host:port"
    if not _is_loopback(host):
        return (
            f"{_where(endpoint)}: host {host!r} is not on loopback; the fault link only proxies "
            "127.0.0.1 (run the endpoint locally to inject network faults)"
        )
    return None


async def link_for(
    endpoint: Endpoint, *, timeline: FaultTimeline | None = None, name: str | None = None
) -> FaultLink:
    """A started FaultLink to `endpoint`'s host:port; raises NotProxiable with the reason."""
    problem = proxy_problem(endpoint)
    if problem:
        raise NotProxiable(problem)
    parts = urlsplit(endpoint.settings.url)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    link = FaultLink("127.0.0.1", port, timeline=timeline, name=name)
    return await link.start()


async def linked_endpoint(
    endpoint: Endpoint, link: FaultLink | None, **options: Any
) -> Endpoint:
    """The endpoint's app opened again (through `link`, if any) with extra adapter `options`.

    Example: ``through = await linked_endpoint(endpoint, link, backoff_base_s=0.05)``
    """
    from harness.session import open_endpoint

    settings = dataclasses.replace(
        endpoint.settings,
        url=link.url_for(endpoint.settings.url) if link is not None else endpoint.settings.url,
        options={**endpoint.settings.options, **options},
    )
    opened = await open_endpoint(settings, admin=endpoint.admin, server=endpoint.server)
    opened.app = endpoint.app
    return opened


async def restart_service(
    endpoint: Endpoint, *, kill: bool = True, timeline: FaultTimeline | None = None
) -> FaultRecord | None:
    """Kill -9 (or stop) the endpoint's server and start it again on the same data and ports.

    Raises `Unsupported` when the harness did not start the server itself.
    """
    server = endpoint.server
    if server is None:
        raise Unsupported(
            f"{_where(endpoint)} is not started by the harness, so it cannot be restarted; "
            "server-restart faults need an embedded endpoint"
        )
    record = None
    if timeline is not None:
        record = timeline.begin(
            "server_restart", {"kill": kill, "endpoint": endpoint.name}, link=endpoint.name
        )
    try:
        await asyncio.to_thread(server.restart, kill=kill)
    finally:
        if record is not None:
            timeline.end(record)  # type: ignore[union-attr]
    return record


__all__ = [
    "NotProxiable",
    "link_for",
    "linked_endpoint",
    "proxy_problem",
    "restart_service",
]
