"""One backoff policy: delays that grow by `factor` from `base_s` up to `cap_s`, jittered.

Core, standard library only. Adapters use it for reconnects and resends, `harness.retry` for
`send_with_retry`. Example::

    backoff = Backoff(0.5, 10.0)  # full jitter: uniform in [0, min(10, 0.5 * 2**attempt)]
    waited = await backoff.sleep(attempt)
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Literal

Jitter = float | Literal["full", "none"]


def _number(name: str, value: object, *, minimum: float, upper: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and value >= minimum and (upper is None or value <= upper):  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    bound = f"a number from {minimum:g} to {upper:g}" if upper is not None else f">= {minimum:g}"
    raise ValueError(f"Backoff: {name}={value!r} is not allowed; pass {bound}")


class Backoff:
    """Exponential backoff: retry `attempt` (0-based) waits up to min(cap, base * factor**attempt).

    `jitter` is the fraction of that ceiling drawn at random: "full" (1.0) draws the whole
    delay uniformly from [0, ceiling], "none" (0.0) waits the ceiling itself, 0.5 waits between
    half of it and all of it. `rng` makes the draws reproducible (e.g. `random.Random(seed)`).
    """

    __slots__ = ("base_s", "cap_s", "factor", "jitter", "rng")

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        factor: float = 2.0,
        jitter: Jitter = "full",
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.base_s = _number("base_s", base_s, minimum=0)
        self.cap_s = _number("cap_s", cap_s, minimum=0)
        self.factor = _number("factor", factor, minimum=1)
        named = {"full": 1.0, "none": 0.0}
        self.jitter = named[jitter] if isinstance(jitter, str) and jitter in named else \
            _number("jitter", jitter, minimum=0, upper=1)
        self.rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return (f"Backoff(base_s={self.base_s:g}, cap_s={self.cap_s:g}, factor={self.factor:g}, "
                f"jitter={self.jitter:g})")

    def ceiling(self, attempt: int) -> float:
        """The delay before retry `attempt` without jitter: min(cap, base * factor**attempt)."""
        if attempt < 0:
            raise ValueError(f"Backoff: attempt={attempt} is not allowed; attempts count from 0")
        if self.base_s == 0:
            return 0.0
        try:
            grown = self.base_s * self.factor**attempt
        except OverflowError:  # thousands of attempts: long past the cap
            return self.cap_s
        return min(self.cap_s, grown)

    def delay(self, attempt: int) -> float:
        """The jittered delay before retry `attempt` (one draw from `rng` unless jitter is 0)."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        # The fixed part, then the random part: full jitter is exactly ceiling * random().
        return ceiling * (1.0 - self.jitter + self.jitter * self.rng.random())

    async def sleep(self, attempt: int) -> float:
        """Sleep the delay before retry `attempt`; return how long that was."""
        delay = self.delay(attempt)
        await asyncio.sleep(delay)
        return delay


__all__ = ["Backoff", "Jitter"]
