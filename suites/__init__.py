"""Regression suites: the same tests against the old and the new endpoint, side by side.

A few helpers the suite modules share live here (the fixtures come from the pytest plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.contract import EndpointInfo, IMClient, MessageReceived, ServerRule
from harness.errors import ConfigError
from harness.faults import FaultLink
from harness.registry import adapters
from harness.session import describe
from harness.timing import WaitTimeout, units, until


def burst_size(endpoint: Any, wanted: int = 20) -> int:
    """`wanted`, capped by the tier's send burst so a burst is never rate limited."""
    burst = endpoint.info.limits.send_burst
    return wanted if burst is None else max(1, min(wanted, burst))


async def settled(oracle: Any) -> None:
    """Wait until every acked copy has been seen, so a following `assert_ok` judges no race.

    Bounded: after `units(5)` it returns anyway and `oracle.assert_ok()` reports what is missing.
    """
    with contextlib.suppress(WaitTimeout):
        await until(lambda: not oracle.missing(), timeout=units(5), what="every acked copy")


def require_protocols(endpoint: Any, *wanted: str) -> None:
    """Skip unless `endpoint` accepts every protocol version in `wanted`."""
    offered = endpoint.info.protocols
    for protocol in wanted:
        if protocol not in offered:
            pytest.skip(
                f"endpoint {endpoint.name!r} ({describe(endpoint.info)}) does not offer protocol "
                f"{protocol!r} (offers: {', '.join(sorted(offered))})"
            )


def require_server_enforces(endpoint: Any, rule: ServerRule, what: str) -> None:
    """Skip where the server leaves `rule` to the adapter: a pass would not test the server."""
    if rule in endpoint.info.client_enforced:
        pytest.skip(
            f"endpoint {endpoint.name!r} ({describe(endpoint.info)}) declares no server-side check "
            f"that {what} ({rule.value}); its adapter refuses it itself"
        )


async def sentinel(sender: Any, receiver: Any) -> None:
    """Send a 1:1 message and wait for it: a user's inbox is ordered, so earlier entries are in."""
    ack = await sender.send(receiver, "sentinel")
    await receiver.recorder.wait_for(
        lambda e: isinstance(e, MessageReceived) and e.message.message_id == ack.message_id,
        timeout=units(5),
        what=f"the sentinel at {receiver.id}",
    )


@contextlib.asynccontextmanager
async def client_through_link(
    endpoint: Any, **options: Any
) -> AsyncIterator[tuple[FaultLink, IMClient, EndpointInfo]]:
    """A fresh user of `endpoint`'s app logged in through a loopback FaultLink.

    `options` are added to the adapter's options (e.g. `send_timeout_s`). Yields
    `(link, client, info)`; the link, client and the extra adapter are closed afterwards.
    """
    url = endpoint.settings.url
    port = urlport(url)
    if port is None:
        pytest.skip(f"endpoint {endpoint.name!r}: url has no port; the fault link needs one")
    link = await FaultLink("127.0.0.1", port).start()
    try:
        linked = link.url_for(url)
    except ConfigError as exc:  # a remote endpoint: the link only serves loopback
        await link.stop()
        pytest.skip(f"endpoint {endpoint.name!r} cannot be put behind a fault link: {exc}")
    settings = dataclasses.replace(
        endpoint.settings, url=linked, options={**endpoint.settings.options, **options}
    )
    adapter = await adapters.get(endpoint.settings.adapter).open(settings)
    client = None
    try:
        creds = await adapter.provision_user(f"linked-{uuid.uuid4().hex[:8]}")
        client = await adapter.connect(creds)
        yield link, client, adapter.info
    finally:
        await link.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.drop(), units(5))
        await adapter.aclose()


def urlport(url: str) -> int | None:
    """The port in `url`, or None."""
    try:
        return urlsplit(url).port
    except ValueError:
        return None
