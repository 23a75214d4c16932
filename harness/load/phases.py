"""Senders' schedule phases: where in its send interval each sender fires, set, not accidental.

A sender is one schedule (`LoadRun.schedule`; both ends of a chat pair share their pair's).
Every sender's intended send times lie on its own grid `(m + phase) * interval` of the monotonic
clock. With `spread` (the default) the phases of a process's senders follow the base-2 van der
Corput sequence 0, 1/2, 1/4, 3/4, 1/8, ...: the first N senders, however many there are, sit
at most 2/N of an interval apart, so the load arrives evenly instead of in whatever bursts the
start-up left. A scenario asks for `lockstep` (parameter `lockstep = 1`) to have every sender
fire at the same instant (phase 0), the worst case for a server's queues. Several processes
interleave one sequence (process p of P takes indexes p, p + P, ...). The grid is anchored at
the monotonic clock's zero, which all processes of one host share, so lock-step holds across
local processes too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

PARAM = "lockstep"  # the scenario parameter: 0 spread evenly (default), 1 lock-step


class PhaseMode(enum.StrEnum):
    SPREAD = "spread"
    LOCKSTEP = "lockstep"


def mode_of(params: Mapping[str, float]) -> PhaseMode:
    """The phase mode a scenario's parameters ask for."""
    return PhaseMode.LOCKSTEP if params.get(PARAM, 0.0) else PhaseMode.SPREAD


def van_der_corput(index: int) -> float:
    """The index-th term of the base-2 van der Corput sequence: 0, 1/2, 1/4, 3/4, 1/8, ..."""
    out, denominator = 0.0, 1.0
    while index:
        denominator *= 2.0
        index, bit = divmod(index, 2)
        out += bit / denominator
    return out


class Phases:
    """Hands each new sender of one process its phase (a fraction of its interval)."""

    def __init__(self, mode: PhaseMode = PhaseMode.SPREAD, *, process: int = 0,
                 processes: int = 1) -> None:
        self.mode = mode
        self.process = process
        self.processes = max(1, processes)
        self.assigned: list[float] = []  # in the order senders started

    def next(self) -> float:
        """The phase of the next sender."""
        if self.mode is PhaseMode.LOCKSTEP:
            phase = 0.0
        else:
            phase = van_der_corput(len(self.assigned) * self.processes + self.process)
        self.assigned.append(phase)
        return phase

    def encode(self) -> dict[str, Any]:
        return {"mode": str(self.mode), "phases": [round(p, 9) for p in self.assigned]}


def first_at(now: float, interval: float, phase: float) -> float:
    """The first point of the grid `(m + phase) * interval` at or after `now`."""
    m = math.ceil(now / interval - phase - 1e-9)
    return (m + phase) * interval


def summarize(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The schedule of a run from each process's `Phases.encode()`: mode, senders, spacing.

    `largest_gap` is the widest empty stretch between neighbouring phases on the circle of one
    interval (1 for lock-step or a single sender; 1/N for N senders spread exactly evenly).
    """
    modes: set[str] = set()
    phases: list[float] = []
    for part in parts:
        if part:
            modes.add(str(part.get("mode", "")))
            phases.extend(float(p) for p in part.get("phases", ()))
    if not phases:
        return {"mode": "+".join(sorted(modes)) or None, "senders": 0}
    ordered = sorted(phases)
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    gaps.append(1.0 - ordered[-1] + ordered[0])
    return {
        "mode": "+".join(sorted(modes)),
        "senders": len(phases),
        "distinct_phases": len({round(p, 9) for p in phases}),
        "largest_gap": round(max(gaps), 6),
    }


def line(schedule: Mapping[str, Any]) -> str:
    """`schedule: 20 senders, phases spread (20 distinct, largest gap 0.0625 of an interval)`."""
    senders = schedule.get("senders", 0)
    if not senders:
        return "schedule: no senders"
    return (f"schedule: {senders} senders, phases {schedule['mode']} "
            f"({schedule['distinct_phases']} distinct, largest gap "
            f"{schedule['largest_gap']:g} of an interval)")
