"""Generator health: was the load generator itself saturated? Then the run is void.

A saturated generator measures itself: its sends leave late, its event loop answers late and
every latency grows, whatever the server does. Each load process measures, while it runs,
its event loop's lag (a timer every `PROBE_S` notes how late it fired), its own CPU
time over the wall time, and (in the driver) the sends that left behind their schedule. The
master judges the merged numbers against `Bounds`; a run beyond one is void, with the numbers,
and is never judged as the server's fault.

Example::

    probe = LoopProbe()
    probe.start()            # inside the running loop, when the first send is scheduled
    ...
    payload["health"] = probe.stop()
    verdict = judge([payload, ...], behind_ratio=0.01)   # {"void": False, ...}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.timing import unit

PROBE_S = 0.05  # the lag probe's interval
MAX_SAMPLES = 100_000  # lag samples kept per process (an hour and a half at 20 per second)
MIN_CPU_WINDOW_S = 1.0  # a CPU share over less wall time than this says nothing (two threads)


def _lag_bound() -> float:
    return 100.0 * unit()  # a wait, so it scales with IM_HARNESS_TIME_SCALE like every other


@dataclass(frozen=True)
class Bounds:
    """Beyond any of these the generator, not the server, was the bottleneck."""

    loop_lag_p99_ms: float = field(default_factory=_lag_bound)
    cpu_ratio: float = 0.9  # a process's CPU seconds per wall second (one core = 1.0)
    behind_schedule_ratio: float = 0.3  # sends that left more than the slack (50 ms) late


class LoopProbe:
    """Measures the running loop's lag and this process's CPU share while a run sends."""

    def __init__(self, interval_s: float = PROBE_S) -> None:
        self.interval_s = interval_s
        self.lags_ms: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._started = False
        self._cpu0 = 0.0
        self._wall0 = 0.0

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start measuring (idempotent); must be called inside the running loop."""
        if self._started:
            return
        self._started = True
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()
        self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback, not a sleeping task: the same lateness, no task step per sample.
        self._armed_at = time.monotonic()
        self._timer = loop.call_later(self.interval_s, self._fired, loop)

    def _fired(self, loop: asyncio.AbstractEventLoop) -> None:
        lags = self.lags_ms
        if len(lags) < MAX_SAMPLES:
            late = time.monotonic() - self._armed_at - self.interval_s
            lags.append(max(0.0, late * 1000.0))
        self._arm(loop)

    def stop(self) -> dict[str, Any] | None:
        """The numbers of this process (None when it never started)."""
        if not self._started:
            return None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wall = time.monotonic() - self._wall0
        cpu = time.process_time() - self._cpu0
        lags = sorted(self.lags_ms)
        return {"loop_lag_ms": {"p50": _pct(lags, 50), "p99": _pct(lags, 99),
                                "max": lags[-1] if lags else 0.0, "samples": len(lags)},
                "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                "cpu_ratio": round(cpu / wall, 3) if wall > 0 else 0.0}


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    return round(values[min(len(values) - 1, int(len(values) * p / 100))], 3)


def judge(payloads: Sequence[Mapping[str, Any]], *, behind_ratio: float,
          bounds: Bounds | None = None) -> dict[str, Any]:
    """Merge every process's health into one verdict: void (with reasons) or not."""
    bounds = bounds or Bounds()
    processes = [p["health"] for p in payloads if isinstance(p.get("health"), Mapping)]
    reasons: list[str] = []
    lag = max((float(h["loop_lag_ms"]["p99"]) for h in processes), default=0.0)
    cpu = max((float(h["cpu_ratio"]) for h in processes
               if float(h.get("wall_s", 0.0)) >= MIN_CPU_WINDOW_S), default=0.0)
    if lag > bounds.loop_lag_p99_ms:
        reasons.append(f"event-loop lag p99 {lag:g} ms > {bounds.loop_lag_p99_ms:g} ms")
    if cpu > bounds.cpu_ratio:
        reasons.append(f"a generator process used {cpu:.0%} of a core > {bounds.cpu_ratio:.0%}")
    if behind_ratio > bounds.behind_schedule_ratio:
        reasons.append(f"{behind_ratio:.1%} of sends behind schedule > "
                       f"{bounds.behind_schedule_ratio:.0%}")
    return {"void": bool(reasons), "reasons": reasons, "loop_lag_p99_ms": lag,
            "max_cpu_ratio": cpu, "behind_schedule_ratio": round(behind_ratio, 6),
            "bounds": {"loop_lag_p99_ms": bounds.loop_lag_p99_ms, "cpu_ratio": bounds.cpu_ratio,
                       "behind_schedule_ratio": bounds.behind_schedule_ratio},
            "processes": processes}


def offered_rate(weights: Mapping[str, int], params: Mapping[str, Mapping[str, float]],
                 users: int) -> tuple[float, float] | None:
    """(sends/s, deliveries/s) the plan offers: users x rate x senders per unit x fan-out.

    Users are split across scenarios by weight, as locust spawns them. None when a chosen
    scenario did not register its shape (`scenario(..., shape=...)`).
    """
    from harness.load.scenarios import scenarios

    total = sum(weights.values()) or 1
    sends = deliveries = 0.0
    for name, weight in weights.items():
        shape = scenarios.get(name).shape
        if shape is None:
            return None
        p = params.get(name, {})
        senders, fanout = shape(p)
        rate = float(p.get("rate", 0.0)) * senders * users * weight / total
        sends += rate
        deliveries += rate * fanout
    return sends, deliveries
