"""Send with retries the way a careful SDK user would: one client id, backoff, retry-after.

Every attempt reuses the same client id, so an endpoint that deduplicates resends
(`IDEMPOTENT_SEND`) stores the message once however many attempts it took.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from harness.backoff import Backoff
from harness.contract import Ack
from harness.errors import ConfigError, ConnectionLost, IMTimeout, RateLimited

RETRYABLE = (RateLimited, IMTimeout, ConnectionLost)


@dataclass(frozen=True)
class Attempt:
    """One failed attempt: when it ended (monotonic), why, and how long we waited after it."""

    number: int
    at: float
    error: BaseException
    wait_s: float


def backoff_s(attempt: int, *, base: float, cap: float, jitter: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): min(cap, base * 2**attempt), jittered.

    `jitter` is the fraction of the delay drawn at random: 0 is none, 1 is "full jitter".
    The policy is `harness.backoff.Backoff`; this is its one-call form.
    """
    return Backoff(base, cap, jitter=jitter, rng=rng).delay(attempt)


def _check(name: str, value: object, *, minimum: float, upper: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and value >= minimum and (upper is None or value <= upper):  # type: ignore[operator]
        return
    bound = f"a number from {minimum:g} to {upper:g}" if upper is not None else f">= {minimum:g}"
    raise ConfigError(f"send_with_retry: {name}={value!r} is not allowed; pass {bound}")


async def send_with_retry(
    client: Any,
    to: Any,
    body: str = "",
    *,
    attempts: int = 5,
    base: float = 0.2,
    cap: float = 5.0,
    jitter: float = 0.5,
    client_id: str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - passed on to each send
    reconnect: bool = True,
    rng: random.Random | None = None,
    on_retry: Callable[[Attempt], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> Ack:
    """Send `body` to `to`, retrying timeouts, lost connections and rate limits; return the ack.

    `client` is an `IMClient` (then `to` is a `Target`) or a `harness.session.User` (then `to`
    is a User, GroupInfo or user id and the oracle hears of the ack). A `RateLimited` answer
    waits at least its `retry_after`; a `ConnectionLost` reconnects first when `reconnect`.
    Other errors, and the last retryable one, are raised.

    Example: ``ack = await send_with_retry(alice, bob, "hi", attempts=6, base=0.1, cap=2)``
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(
            f"send_with_retry: attempts={attempts!r} is not allowed; pass an int >= 1"
        )
    _check("base", base, minimum=0)
    _check("cap", cap, minimum=0)
    _check("jitter", jitter, minimum=0, upper=1)
    backoff = Backoff(base, cap, jitter=jitter, rng=rng or random.Random())
    cid = client_id or f"c-{uuid.uuid4().hex}"
    kwargs: dict[str, Any] = {"client_id": cid}
    if timeout is not None:
        kwargs["timeout"] = timeout
    needs_reconnect = False
    for number in range(attempts):
        try:
            if needs_reconnect:
                needs_reconnect = False
                await client.reconnect()
            return await client.send(to, body, **kwargs)
        except RETRYABLE as exc:
            if number + 1 >= attempts:
                raise
            wait = backoff.delay(number)
            if isinstance(exc, RateLimited):
                wait = max(wait, exc.retry_after)
            elif isinstance(exc, ConnectionLost) and reconnect:
                needs_reconnect = True
            if on_retry is not None:
                on_retry(Attempt(number + 1, time.monotonic(), exc, wait))
            await sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


__all__ = ["RETRYABLE", "Attempt", "backoff_s", "send_with_retry"]
