"""One time unit for every wait in the harness, scaled by `IM_HARNESS_TIME_SCALE`.

Timeouts are written as multiples of `unit()` so a slow CI machine scales them all with one
environment variable instead of tuning sleeps to one machine.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable

from harness.errors import ConfigError, HarnessError

ENV_VAR = "IM_HARNESS_TIME_SCALE"
BASE_UNIT_S = 1.0


def scale_problem(raw: str) -> str | None:
    """Why `IM_HARNESS_TIME_SCALE=raw` is unusable (one line), or None."""
    try:
        scale = float(raw)
    except ValueError:
        scale = math.nan
    if math.isfinite(scale) and scale > 0:
        return None
    return (f"{ENV_VAR}={raw!r} must be a finite number > 0; set it to e.g. 1 or 2.5, "
            "or unset it")


def unit() -> float:
    """Seconds in one time unit: 1 s times the scale from the environment."""
    raw = os.environ.get(ENV_VAR, "1")
    problem = scale_problem(raw)
    if problem:
        raise ConfigError(problem)
    return BASE_UNIT_S * float(raw)


def units(n: float) -> float:
    """`n` time units in seconds."""
    return n * unit()


class WaitTimeout(HarnessError, AssertionError):
    """A condition awaited with `until` did not become true in time."""


async def until(
    condition: Callable[[], object | Awaitable[object]],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - a wait helper: the timeout is its point
    what: str = "condition",
    interval: float = 0.01,
) -> object:
    """Poll `condition` until it is truthy and return its value; fail after `timeout` seconds.

    Example: ``await until(lambda: len(rec.messages) == 3, timeout=units(5), what="3 messages")``
    """
    limit = units(5) if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {limit:.2f}s waiting for {what}")
        await asyncio.sleep(interval)
