"""The sign-off verdict: GO only with no product regression, budgets met, promises kept."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report.parity import ParityTable
from harness.report.results import HARNESS, Results
from harness.report.sections import Section

# Capabilities that are about the harness's access, not what the tier promises its users.
NOT_A_PROMISE = frozenset({"tier_admin"})


@dataclass
class LoadOutcome:
    """One load scenario on the new endpoint: its JSON summary, or why there is none."""

    scenario: str
    summary: Mapping[str, Any] | None = None
    problem: str = ""
    started_ms: int = 0  # wall clock of the run, for the report's timeline
    stopped_ms: int = 0
    usage: bool = False  # locust refused its input (exit 2): no run, earlier results kept
    run: str = ""  # which run of the scenario on this endpoint ("" when it ran once)

    @property
    def void(self) -> str:
        """Why the run is void (its load generator was saturated), else ''."""
        gen = (self.summary or {}).get("generator") or {}
        return "; ".join(gen.get("reasons", ())) if self.summary and self.summary.get(
            "void") else ""

    @property
    def ok(self) -> bool:
        return self.summary is not None and bool(self.summary.get("within_budget"))

    def failed_budgets(self) -> list[str]:
        if self.summary is None:
            return []
        out = []
        for v in self.summary.get("budgets", {}).get("verdicts", ()):
            if not v.get("ok"):
                actual = "nothing measured" if v.get("actual") is None else f"{v['actual']:g}"
                out.append(f"{v['budget']} {actual} (limit {v['limit']:g})")
        out += [str(p) for p in self.summary.get("problems", ())]
        return out


@dataclass
class Verdict:
    """GO or NO-GO, with every reason for a NO-GO and notes that do not block."""

    go: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "GO" if self.go else "NO-GO"

    def headline(self) -> str:
        if self.go:
            return "GO: no product regression, every budget met, every promised capability passes"
        more = f" (+{len(self.reasons) - 1} more)" if len(self.reasons) > 1 else ""
        return f"NO-GO: {self.reasons[0]}{more}"


def _first_line(text: str, limit: int = 160) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def decide(
    results: Results,
    table: ParityTable,
    *,
    promised: Sequence[str] | None,
    loads: Sequence[LoadOutcome] = (),
    problems: Sequence[str] = (),
    old: str = "old",
    new: str = "new",
    full_run: bool = True,
    load_expected: bool = True,
    sections: Sequence[Section] = (),
) -> Verdict:
    """Judge a run. `promised`: the new endpoint's capabilities (None: unknown, a NO-GO).

    Each section's blocking findings are reasons, its other findings notes.
    """
    reasons = list(problems)
    notes: list[str] = []
    if not results.outcomes:
        reasons.append("no suite results were recorded; the suites did not run")
    elif results.junit_total is not None and results.junit_total > len(results.outcomes):
        notes.append(f"{results.junit_total - len(results.outcomes)} test(s) in the JUnit XML "
                     "have no Allure result")

    broken = [o for o in results.outcomes if o.bad and o.kind == HARNESS]
    if broken:
        first = broken[0]
        reasons.append(
            f"{len(broken)} harness or infrastructure error(s), e.g. {first.name}: "
            f"{_first_line(first.message) or first.status}"
        )
    failing_on_old = {o.case for o in results.on(old) if o.bad}
    regressions = [o for o in results.on(new) if o.bad and o.kind != HARNESS
                   and o.case not in failing_on_old]
    for o in regressions:
        reasons.append(f"product regression on {new}: {o.name}: {_first_line(o.message)}")
    both = [o for o in results.on(new) if o.bad and o.kind != HARNESS and o.case in failing_on_old]
    for o in both:
        notes.append(f"fails on {old} and {new} alike (not a regression): {o.name}")

    if promised is None:
        reasons.append(f"the capabilities of endpoint {new!r} are unknown (it was never reached)")
    else:
        untested = []
        for cap in sorted(set(promised) - NOT_A_PROMISE):
            cell = table.cell(cap, new)
            if cell.failed:
                reasons.append(f"capability {cap!r} promised by {new} has {cell.failed} failing "
                               "test(s)")
            elif cell.total == 0:
                untested.append(cap)
            elif not cell.passed:
                reasons.append(f"capability {cap!r} promised by {new} has no passing test "
                               f"({cell.short()})")
        if untested:
            which = ", ".join(repr(c) for c in untested)
            notes.append(f"promised by {new} but exercised by no test in this run: {which}")

    for load in loads:
        if load.summary is None:
            reasons.append(f"load scenario {load.scenario!r} produced no result: {load.problem}")
        elif load.void:
            reasons.append(f"load scenario {load.scenario!r} is void, not judged: the load "
                           f"generator was saturated ({load.void}), so its numbers measure the "
                           "generator, not the server; use fewer --users or more processes")
        elif not load.ok:
            failed = "; ".join(load.failed_budgets()) or "over budget"
            reasons.append(f"budget exceeded in load scenario {load.scenario!r}: {failed}")
    if load_expected and not loads:
        reasons.append("no load scenario was run, so no budget is known to be met")
    for section in sections:
        reasons += section.reasons()
        notes += section.notes()
    if not full_run:
        notes.append("a subset of the suites was run (-k or paths given)")
    return Verdict(not reasons, reasons, notes)


def verdict_document(
    verdict: Verdict,
    table: ParityTable,
    *,
    results: Results,
    endpoints: Mapping[str, Any],
    loads: Sequence[LoadOutcome],
    suite_exit: int | None,
    report: str | None,
    sections: Sequence[Section] = (),
) -> dict[str, Any]:
    """What reports/verdict.json holds."""
    counts: dict[str, dict[str, int]] = {}
    for o in results.outcomes:
        per = counts.setdefault(o.endpoint or "-", {})
        per[o.status] = per.get(o.status, 0) + 1
    return {
        "verdict": verdict.label,
        "go": verdict.go,
        "headline": verdict.headline(),
        "reasons": verdict.reasons,
        "notes": verdict.notes,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "endpoints": dict(endpoints),
        "parity": table.to_dict(),
        "suites": {"exit_code": suite_exit, "source": results.source, "counts": counts},
        "load": [
            {"scenario": lo.scenario, "within_budget": lo.ok, "problem": lo.problem,
             "failed_budgets": lo.failed_budgets(),
             "latency_ms": (lo.summary or {}).get("latency_ms")}
            for lo in loads
        ],
        "sections": {s.key: s.to_dict() for s in sections},
        "report": report,
    }


def write_json(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (a reader never sees half a verdict)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file
