"""Capacity search: the most users an endpoint holds within budget, found by bracketing.

Start at `start` users and double while a step stays within budget; the first breach brackets
the capacity, and bisection narrows the bracket until it is within `resolution` of the lower
end. Each step is one whole load run (`probe(users) -> Step`), held as long as the plan's run
time, so a step is judged on as much data as any load run. A step whose load generator was
saturated (void) ends the search: beyond it the generator, not the endpoint, is measured::

    result = search(lambda users: run_step(users), start=8, cap=256, resolution=0.1)
    print(result.line())       # "48 users within budget, 52 breached: capacity 48-51 users"
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    """How a search ended."""

    CONVERGED = "converged"  # bracketed and narrowed to the resolution
    USER_CAP = "user_cap"  # within budget at the user cap: the capacity is at least that
    GENERATOR = "generator"  # a step was void: the generator saturated first
    NO_RESULT = "no_result"  # a step produced no summary


@dataclass(frozen=True)
class Step:
    """One load run at `users`: within budget or not, and the numbers the curve shows."""

    users: int
    ok: bool
    void: str = ""  # why the generator was saturated, '' when it was not
    p99_ms: float | None = None  # the scenario's delivery p99 (send->ack or connect without)
    metric: str = ""
    error_ratio: float | None = None
    connect_success: float | None = None
    failed: tuple[str, ...] = ()  # the budgets it broke
    problem: str = ""  # no summary: why

    @classmethod
    def from_summary(cls, users: int, summary: Mapping[str, Any] | None, problem: str = ""
                     ) -> Step:
        if summary is None:
            return cls(users, False, problem=problem or "no summary")
        samples = summary.get("samples") or {}
        metric = next((m for m in ("delivery", "send_ack", "connect", "history")
                       if samples.get(m)), "")
        p99 = ((summary.get("latency_ms") or {}).get(metric) or {}).get("p99") if metric else None
        gen = summary.get("generator") or {}
        failed = tuple(f"{v['budget']} {v.get('actual')} (limit {v['limit']:g})"
                       for v in (summary.get("budgets") or {}).get("verdicts", ())
                       if not v.get("ok"))
        ratios = summary.get("ratios") or {}
        return cls(users, bool(summary.get("within_budget")),
                   "; ".join(gen.get("reasons", ())) if summary.get("void") else "",
                   float(p99) if isinstance(p99, int | float) else None, metric,
                   ratios.get("error"), ratios.get("connect_success"), failed)

    def to_dict(self) -> dict[str, Any]:
        return {"users": self.users, "ok": self.ok, "void": self.void, "p99_ms": self.p99_ms,
                "metric": self.metric, "error_ratio": self.error_ratio,
                "connect_success": self.connect_success, "failed": list(self.failed),
                "problem": self.problem}


@dataclass
class Capacity:
    """The search's answer: within budget at `low`, over at `high` (None: never breached)."""

    endpoint: str
    describe: str = "?"
    low: int | None = None
    high: int | None = None
    status: Status = Status.CONVERGED
    steps: list[Step] = field(default_factory=list)
    cap: int = 0

    def line(self) -> str:
        """One sentence with the capacity and its uncertainty (the bracket)."""
        who = f"{self.endpoint} ({self.describe})"
        last = self.steps[-1] if self.steps else None
        if self.status is Status.NO_RESULT:
            return f"{who}: no capacity: a step produced no result ({last and last.problem})"
        if self.status is Status.GENERATOR and self.high is not None:
            top = self.high - 1
            return (f"{who}: {self.low or 0} users within budget, {self.high} over; the load "
                    f"generator saturated at {last.users if last else '?'} users while "
                    f"narrowing ({last and last.void}): capacity {self.low or 0}"
                    + (f"-{top}" if top > (self.low or 0) else "") + " users")
        if self.status is Status.GENERATOR:
            at = f"{last.users} users" if last else "?"
            held = f"held {self.low} users within budget; " if self.low else ""
            return (f"{who}: {held}the load generator saturated at {at} ({last and last.void}) "
                    "before the endpoint breached: capacity at least "
                    f"{self.low or 0} users (generator-bound; add --processes)")
        if self.status is Status.USER_CAP:
            return (f"{who}: within budget at {self.low} users, the user cap: hit the user cap "
                    f"without converging (capacity at least {self.low} users)")
        if self.low is None:
            return (f"{who}: over budget already at {self.high} users: capacity below "
                    f"{self.high} users")
        why = next((s for s in self.steps if s.users == self.high), None)
        broke = f" ({'; '.join(why.failed[:2])})" if why and why.failed else ""
        top = (self.high or 1) - 1
        return (f"{who}: {self.low} users within budget, {self.high} over{broke}: capacity "
                f"{self.low}" + (f"-{top}" if top > self.low else "") + " users")

    @property
    def lower_bound_only(self) -> bool:
        return self.status is Status.USER_CAP or (self.status is Status.GENERATOR
                                                  and self.high is None)

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "describe": self.describe, "low": self.low,
                "high": self.high, "status": self.status.value, "cap": self.cap,
                "line": self.line(), "steps": [s.to_dict() for s in self.steps]}


def search(probe: Callable[[int], Step], *, start: int, cap: int, resolution: float = 0.1,
           endpoint: str = "?") -> Capacity:
    """Double from `start` until a breach (or `cap`), then bisect to `resolution` of the low end."""
    out = Capacity(endpoint, cap=cap)
    low: int | None = None
    high: int | None = None

    def step(users: int) -> Step | None:
        taken = probe(users)
        out.steps.append(taken)
        if taken.problem:
            out.status = Status.NO_RESULT
            return None
        if taken.void:
            out.status = Status.GENERATOR
            return None
        return taken

    users = max(1, min(start, cap))
    while True:
        taken = step(users)
        if taken is None:
            out.low, out.high = low, high
            return out
        if not taken.ok:
            high = users
            break
        low = users
        if users >= cap:
            out.low, out.status = low, Status.USER_CAP
            return out
        users = min(cap, users * 2)
    while high - (low or 0) > max(1.0, resolution * (low or 1)):
        mid = ((low or 0) + high) // 2
        if mid <= (low or 0):
            break
        taken = step(mid)
        if taken is None:
            out.low, out.high = low, high
            return out
        if taken.ok:
            low = mid
        else:
            high = mid
    out.low, out.high, out.status = low, high, Status.CONVERGED
    return out


def ratio_line(old: Capacity, new: Capacity) -> str:
    """'the new endpoint holds 2.7x the old one's users' (or at least, or why there is none)."""
    if not old.low or not new.low:
        return ("no ratio: " + ("old" if not old.low else "new") + " held no step within budget")
    ratio = new.low / old.low
    if old.lower_bound_only and new.lower_bound_only:
        return (f"new/old = {ratio:.1f}x of two lower bounds (neither search converged): no "
                "ratio is known")
    # only one side a lower bound: say which way the ratio can move
    bound = "at least " if new.lower_bound_only else "at most " if old.lower_bound_only else ""
    return (f"new/old = {bound}{ratio:.1f}x: {new.endpoint} ({new.describe}) holds {bound}"
            f"{ratio:.1f}x the users of {old.endpoint} ({old.describe})")


def run_capacity(plan: Any, scenario: str, endpoint: str, ui: Any, *, start: int, cap: int,
                 resolution: float) -> Capacity:
    """Search one endpoint with real load runs (`harness.report.signoff.run_load`)."""
    from harness.report.signoff import run_load

    folder = plan.reports / "capacity"
    describe = ["?"]

    def probe(users: int) -> Step:
        outcome, _, _ = run_load(plan, scenario, ui, endpoint=endpoint, tag=f"u{users}",
                                 users=users, folder=folder)
        if outcome.summary:
            describe[0] = str((outcome.summary.get("endpoint") or {}).get("describe", "?"))
        return Step.from_summary(users, outcome.summary, outcome.problem)

    result = search(probe, start=start, cap=cap, resolution=resolution, endpoint=endpoint)
    result.describe = describe[0]
    return result
