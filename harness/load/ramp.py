"""The canary ramp: move a share of the users from the old endpoint to the new one in stages.

Each stage (5, 20, 50, 100 % by default) puts that share of the process's units on the new
endpoint and the rest on the old one, holds for `hold_s` from its first send on new (its units
log in first), then drains and judges it: the budgets on the stage's new-endpoint traffic, plus
the error ratio of old and new together. The first stage that breaches ends the ramp ("roll
back at 20 %: delivery.p95_ms 231.0 > 150"); a clean ramp ends "ramp complete: 100 % on new".

A stage is a `LoadRun` per endpoint, so every stage has its own metrics and its own oracle; the
clients of a stage close when it ends and its units log in again for the next one (on the
endpoint the new share gives them), as users of a moving canary do. Unit `i` goes to new at a
stage of p % when `i * 0.618... mod 1 < p / 100`: the shares are spread evenly, a unit on new
stays there at the later stages, and unit 0 is on new from the first stage.

In one process the ramp is judged live and stops at the breach. With several locust processes
each runs the same stages on its own clock and the master judges the merged stages at the end
(`judge_payloads`): the stages after a breach have run, and the summary says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.load.budgets import Budgets, Verdict
from harness.load.driver import Emit, LoadRun
from harness.load.metrics import METRICS, LoadMetrics
from harness.load.scenarios import ScenarioPlan
from harness.session import Endpoint
from harness.timing import WaitTimeout, units, until

DEFAULT_STAGES = (5.0, 20.0, 50.0, 100.0)
DEFAULT_HOLD_S = 10.0
MAX_HOLD_S = 3600.0
SPREAD = (math.sqrt(5) - 1) / 2  # golden-ratio steps: any first n units spread evenly
SETUP_WAIT_UNITS = 10  # at most this long (time units) for a stage's first send on new
OVERALL_ERROR = "overall.max_error_ratio"  # the error ratio of old and new traffic together


class Outcome:
    """How a ramp ended (plain strings in the JSON summary)."""

    COMPLETE = "complete"
    ROLLED_BACK = "rolled_back"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class RampPlan:
    """The stages (percent of units on new), the hold per stage and the two endpoints."""

    stages: tuple[float, ...] = DEFAULT_STAGES
    hold_s: float = DEFAULT_HOLD_S
    old: str = "old"
    new: str = "new"

    def to_dict(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "hold_s": self.hold_s, "old": self.old,
                "new": self.new}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RampPlan:
        return cls(stages=tuple(float(s) for s in data["stages"]), hold_s=float(data["hold_s"]),
                   old=str(data["old"]), new=str(data["new"]))

    def run_time_s(self, drain_s: float) -> float:
        """A locust run time that fits every stage: hold, drain, log-ins and closing each."""
        return len(self.stages) * (self.hold_s + 2 * drain_s + units(SETUP_WAIT_UNITS)) + units(5)


def parse_stages(text: str, option: str = "--ramp") -> tuple[float, ...]:
    """`5,20,50,100` -> (5.0, 20.0, 50.0, 100.0); rising percentages above 0, at most 100."""
    parts = [p.strip().removesuffix("%").strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{option} {text!r} names no stage; pass rising percentages, e.g. "
                          "5,20,50,100")
    stages: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= 100):
            raise ConfigError(f"{option} {text!r}: stage {part!r} must be a percentage above 0 "
                              "and at most 100, e.g. 5,20,50,100")
        if stages and value <= stages[-1]:
            raise ConfigError(f"{option} {text!r}: stages must rise ({value:g} after "
                              f"{stages[-1]:g}), e.g. 5,20,50,100")
        stages.append(value)
    return tuple(stages)


def parse_hold(text: str, option: str = "--ramp-hold") -> float:
    """`10s`, `2m`, `1.5` (seconds) -> seconds, above 0 and at most an hour."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"{option} {text!r} is not a duration; use e.g. 10s or 1m")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= MAX_HOLD_S:
        raise ConfigError(f"{option} {text!r} must be more than 0s and at most 1h; use e.g. 10s")
    return seconds


def ramp_plan(stages: str, hold: str, *, old: str, new: str,
              options: tuple[str, str, str, str] = ("--ramp", "--ramp-hold", "--ramp-from",
                                                    "--endpoint")) -> RampPlan:
    """The validated plan of `--ramp STAGES --ramp-hold HOLD --ramp-from OLD --endpoint NEW`.

    `options` names those four options in errors, for a front end that spells them otherwise.
    """
    stages_opt, hold_opt, from_opt, to_opt = options
    if not old.strip():
        raise ConfigError(f"{from_opt} '' names no endpoint; pass the endpoint users leave, "
                          "e.g. old")
    if old.strip() == new.strip():
        raise ConfigError(f"{from_opt} {old!r} is also {to_opt}: the ramp moves users from one "
                          "endpoint to another, e.g. from old to new")
    return RampPlan(stages=parse_stages(stages, stages_opt), hold_s=parse_hold(hold, hold_opt),
                    old=old.strip(), new=new.strip())


def on_new(index: int, percent: float) -> bool:
    """Whether unit `index` is on the new endpoint at a stage of `percent` %."""
    return (index * SPREAD) % 1.0 * 100 < percent


@dataclass
class _Stage:
    """One stage in this process: a LoadRun per endpoint and the units running on them."""

    percent: float
    old: LoadRun
    new: LoadRun
    started: float = field(default_factory=time.monotonic)
    setup_s: float = 0.0  # from the stage's start to its first send on new
    open: bool = True
    users: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class RampRun:
    """One process's ramp; `unit` and `finish` stand in for a `LoadRun`'s in the locust layer.

    With `budgets` every stage is judged when it ends and a breach ends the ramp; without (a
    worker of a distributed run) every stage runs and the master judges them.
    """

    def __init__(self, old: Endpoint, new: Endpoint, plan: ScenarioPlan, ramp: RampPlan, *,
                 drain_s: float, budgets: Budgets | None = None, emit: Emit | None = None,
                 first_index: int = 0, index_step: int = 1) -> None:
        self.endpoint = new  # the endpoint the locust layer closes; `finish` closes `old`
        self.old_endpoint = old
        self.plan = plan
        self.ramp = ramp
        self.drain_s = drain_s
        self.budgets = budgets
        self.emit = emit
        self.stages: list[dict[str, Any]] = []  # each ended stage's payload (see _end)
        self.breach: dict[str, Any] | None = None
        self.current: _Stage | None = None
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        # unit indexes first, first + step, ...: each of n processes takes every n-th one
        self._units, self._step = max(0, first_index), max(1, index_step)
        self._driver: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"<RampRun {self.plan.label} {self.ramp.old}->{self.ramp.new} "
                f"stages {list(self.ramp.stages)}, {len(self.stages)} ended>")

    def start(self) -> RampRun:
        """Start the stages (in the running loop)."""
        if self._driver is None:
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        return self

    async def _drive(self) -> None:
        try:
            for percent in self.ramp.stages:
                stage = _Stage(percent, LoadRun(self.old_endpoint, self.plan, emit=self.emit),
                               LoadRun(self.endpoint, self.plan, emit=self.emit))
                self.current = stage
                self._wake()
                await self._first_send(stage)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.ramp.hold_s)
                ended = await self._end(stage, cut_short=self._stop.is_set())
                self.stages.append(ended)
                if self.budgets is not None:
                    verdicts = judge_stage(self.budgets, LoadMetrics.merged([ended["new"]]),
                                           LoadMetrics.merged([ended["old"]]))
                    if not all(v.ok for v in verdicts):
                        self.breach = {"percent": percent, "verdicts": _verdict_dicts(verdicts)}
                        break
                if self._stop.is_set():
                    break
        finally:
            self.current = None
            self.done.set()
            self._wake()

    async def _first_send(self, stage: _Stage) -> None:
        """Hold from the stage's first send on new: its units log in first (bounded wait)."""
        with contextlib.suppress(WaitTimeout):
            await until(lambda: stage.new.metrics.counts["sends"] > 0 or self._stop.is_set(),
                        timeout=units(SETUP_WAIT_UNITS), interval=0.02,
                        what="the stage's first send on new")
        stage.setup_s = round(time.monotonic() - stage.started, 3)
        stage.started = time.monotonic()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _end(self, stage: _Stage, *, cut_short: bool) -> dict[str, Any]:
        """Stop the stage's sends, drain and judge both runs, end its units."""
        stage.open = False
        held = time.monotonic() - stage.started
        old, new = await asyncio.gather(stage.old.finish(self.drain_s),
                                        stage.new.finish(self.drain_s))
        if stage.tasks:  # units that only wait (idle) end when cancelled
            await asyncio.wait(set(stage.tasks), timeout=units(1))
            for task in stage.tasks:
                task.cancel()
        return {"percent": stage.percent, "users": dict(stage.users), "held_s": round(held, 3),
                "setup_s": stage.setup_s, "cut_short": cut_short, "old": old, "new": new}

    async def unit(self, scenario: str) -> None:
        """One user: in every stage, the scenario's unit on the endpoint its share gives it."""
        index, self._units = self._units, self._units + self._step
        seen: _Stage | None = None
        while not self.done.is_set():
            stage = self.current
            if stage is None or stage is seen or not stage.open:
                await self._changed.wait()
                continue
            seen = stage
            side = "new" if on_new(index, stage.percent) else "old"
            run = stage.new if side == "new" else stage.old
            stage.users[side] += 1
            task = asyncio.ensure_future(run.unit(scenario))
            stage.tasks.add(task)
            await asyncio.wait({task})  # ends with the stage; its own errors stay in the run
            if not task.cancelled() and task.exception() is not None:
                run.metrics.note(f"ramp: a {scenario} unit failed: {task.exception()!r}")

    async def finish(self, drain_s: float) -> dict[str, Any]:
        """End the ramp (the current stage is drained and judged), close `old`, encode."""
        self._stop.set()
        if self._driver is not None:
            await self._driver
        with contextlib.suppress(Exception):
            await self.old_endpoint.aclose()
        total = LoadMetrics.merged([p for s in self.stages for p in (s["old"], s["new"])])
        total.sources = 1
        payload = total.encode()
        payload["cohorts"] = {}
        payload["ramp"] = {"plan": self.ramp.to_dict(), "stages": self.stages,
                           "live_breach": self.breach}
        return payload


def judge_stage(budgets: Budgets, new: LoadMetrics, old: LoadMetrics) -> list[Verdict]:
    """The budgets on the stage's new traffic, and the error ratio of old and new together."""
    verdicts = budgets.evaluate(new)
    limit = budgets.limits.get("max_error_ratio")
    if limit is not None:
        both = LoadMetrics.merged([new.encode(), old.encode()])
        ratio = round(both.error_ratio(), 6)
        verdicts.append(Verdict(OVERALL_ERROR, limit, ratio, ratio <= limit))
    return verdicts


def _verdict_dicts(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [{"budget": v.budget, "limit": v.limit, "actual": v.actual, "ok": v.ok,
             "detail": v.detail} for v in verdicts]


def breach_text(verdict: Mapping[str, Any]) -> str:
    """`delivery.p95_ms 231.0 > 150` for one failed verdict."""
    budget, limit, actual = verdict["budget"], verdict["limit"], verdict["actual"]
    if actual is None:
        return f"{budget}: {verdict.get('detail') or 'nothing measured'} (limit {limit:g})"
    shown = f"{actual:.1f}" if budget.endswith("_ms") else f"{actual:g}"
    return f"{budget} {shown} {'<' if budget.startswith('min_') else '>'} {limit:g}"


def _pct(value: float) -> str:
    return f"{value:g} %"


def judge_payloads(payloads: Sequence[Mapping[str, Any]], budgets: Budgets | None
                   ) -> dict[str, Any] | None:
    """The summary's `ramp` part from every process's payload (None: not a ramp run).

    Stages are merged across processes by position and judged in order; the first breach is
    the roll-back stage. `live` says whether the ramp stopped there (one process) or later
    stages ran too (several processes, judged here at the end).
    """
    parts = [p["ramp"] for p in payloads if p.get("ramp")]
    if not parts:
        return None
    plan = RampPlan.from_dict(parts[0]["plan"])
    live = len(parts) == 1
    results: list[dict[str, Any]] = []
    stopped: float | None = None
    line = ""
    ran = max(len(part["stages"]) for part in parts)
    for i in range(ran):
        pieces = [part["stages"][i] for part in parts if i < len(part["stages"])]
        new = LoadMetrics.merged([s["new"] for s in pieces])
        old = LoadMetrics.merged([s["old"] for s in pieces])
        verdicts = judge_stage(budgets, new, old) if budgets is not None else []
        percent = float(pieces[0]["percent"])
        users = {side: sum(int(s["users"][side]) for s in pieces) for side in ("old", "new")}
        total_users = users["old"] + users["new"]
        result: dict[str, Any] = {
            "percent": percent,
            "users": users,
            "share_new": round(users["new"] / total_users, 4) if total_users else None,
            "held_s": max(float(s["held_s"]) for s in pieces),
            "setup_s": max(float(s.get("setup_s", 0.0)) for s in pieces),
            "after_breach": stopped is not None,
            "cut_short": any(bool(s.get("cut_short")) for s in pieces),
            "ok": all(v.ok for v in verdicts) if budgets is not None else None,
            "breaches": [breach_text(v) for v in _verdict_dicts(verdicts) if not v["ok"]],
            "verdicts": _verdict_dicts(verdicts),
            "latency_ms": {"new": _latency(new), "old": _latency(old)},
            "counts": {"new": _counts(new), "old": _counts(old)},
            "error_ratio": {"new": round(new.error_ratio(), 6), "old": round(old.error_ratio(), 6),
                            "overall": round(LoadMetrics.merged([new.encode(), old.encode()])
                                             .error_ratio(), 6)},
        }
        results.append(result)
        if stopped is None and result["ok"] is False:
            stopped = percent
            line = f"roll back at {_pct(percent)}: {', '.join(result['breaches'])}"
    if budgets is None:
        outcome, line = Outcome.INCOMPLETE, "ramp not judged: no budgets"
    elif stopped is not None:
        outcome = Outcome.ROLLED_BACK
        if not live and ran > len([r for r in results if not r["after_breach"]]):
            line += (" (several processes judge at the end: the later stages ran, marked "
                     "after_breach)")
    elif ran == len(plan.stages) and not results[-1]["cut_short"]:
        outcome, line = Outcome.COMPLETE, f"ramp complete: {_pct(plan.stages[-1])} on new"
    else:
        outcome = Outcome.INCOMPLETE
        held = ", ".join(_pct(r["percent"]) for r in results if not r["cut_short"]) or "none"
        line = (f"ramp incomplete: the run ended during stage {ran} of {len(plan.stages)} "
                f"(held within budget: {held}); raise the run time (-t)")
    return {**plan.to_dict(), "outcome": outcome, "line": line, "stopped_at": stopped,
            "judged": "live" if live else "at the end", "results": results}


def _latency(metrics: LoadMetrics) -> dict[str, dict[str, float]]:
    return {m: metrics.percentiles_ms(m) for m in METRICS if metrics.samples(m)}


def _counts(metrics: LoadMetrics) -> dict[str, int]:
    keys = ("sends", "acks", "send_errors", "deliveries", "connects", "connect_failures", "loss",
            "duplicates", "reordered")
    return {k: int(metrics.counts[k]) for k in keys}


def ramp_verdicts(part: Mapping[str, Any]) -> list[Verdict]:
    """Every judged stage's verdicts, named `20 %: delivery.p95_ms`, for the summary's budgets."""
    out = []
    for result in part["results"]:
        if result["after_breach"]:
            continue
        for v in result["verdicts"]:
            out.append(Verdict(f"{_pct(result['percent'])}: {v['budget']}", v["limit"],
                               v["actual"], v["ok"], v["detail"]))
    return out


OpenEndpoint = Callable[[str], Awaitable[Endpoint]]


async def open_ramp(open_endpoint: OpenEndpoint, plan: ScenarioPlan, ramp: RampPlan, *,
                    drain_s: float, budgets: Budgets | None = None, emit: Emit | None = None,
                    first_index: int = 0, index_step: int = 1) -> RampRun:
    """Open both endpoints (by name) and start the ramp's stages in the running loop."""
    old = await open_endpoint(ramp.old)
    try:
        new = await open_endpoint(ramp.new)
    except BaseException:
        await old.aclose()
        raise
    return RampRun(old, new, plan, ramp, drain_s=drain_s, budgets=budgets, emit=emit,
                   first_index=first_index, index_step=index_step).start()
