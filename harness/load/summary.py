"""The run summary: every percentile, the counters, each budget's verdict; JSON and a text table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.load import phases
from harness.load.budgets import Budgets, Verdict
from harness.load.metrics import COUNTERS, METRICS, LoadMetrics

EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE = 0, 1, 2


def build_summary(
    metrics: LoadMetrics,
    *,
    scenario: str,
    endpoint: Mapping[str, Any],
    verdicts: Sequence[Verdict] = (),
    budgets: Budgets | None = None,
    duration_s: float | None = None,
    problems: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    generator: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary of one run; `problems` (e.g. a worker that sent nothing) fail it.

    `generator` is `harness.load.health.judge`'s verdict: a void run (saturated generator) is
    not within budget, and says so with its numbers instead of blaming the server.
    """
    void = bool(generator and generator.get("void"))
    ok = all(v.ok for v in verdicts) and not problems and not void
    rate = None
    if duration_s:
        rate = round(metrics.counts["deliveries"] / duration_s, 3)
    connect_ratio = metrics.connect_success_ratio()
    return {
        "scenario": scenario,
        "endpoint": dict(endpoint),
        "duration_s": duration_s,
        "processes": metrics.sources,
        "latency_ms": {m: metrics.percentiles_ms(m) for m in METRICS},
        "samples": {m: metrics.samples(m) for m in METRICS},
        "histogram_ms": {m: metrics.histogram_ms(m) for m in METRICS if metrics.samples(m)},
        "counts": {name: metrics.counts[name] for name in COUNTERS},
        "errors": dict(metrics.errors),
        "ratios": {
            "error": round(metrics.error_ratio(), 6),
            "connect_success": None if connect_ratio is None else round(connect_ratio, 6),
            "behind_schedule": round(metrics.behind_schedule_ratio(), 6),
        },
        "deliveries_per_s": rate,
        "budgets": {
            "source": budgets.source if budgets else None,
            "verdicts": [
                {"budget": v.budget, "limit": v.limit, "actual": v.actual, "ok": v.ok,
                 "detail": v.detail}
                for v in verdicts
            ],
        },
        "problems": list(problems),
        "generator": dict(generator) if generator else None,
        "void": void,
        "notes": list(metrics.notes),
        "within_budget": ok,
        "exit_code": EXIT_OK if ok else EXIT_OVER_BUDGET,
        **(dict(extra) if extra else {}),
    }


def write_summary(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Write the JSON summary atomically (a reader never sees half a file)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(file.suffix + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file


def render(summary: Mapping[str, Any]) -> str:
    """A short text report: latency table, counters, verdicts, notes."""
    ep = summary.get("endpoint", {})
    lines = [f"im-harness load: scenario {summary['scenario']} on endpoint "
             f"{ep.get('name', '?')} ({ep.get('describe', '?')}), "
             f"{summary.get('processes', 1)} process(es)"]
    lines.append(f"{'metric':<10} {'n':>8} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}  (ms)")
    for metric, pct in summary["latency_ms"].items():
        n = summary["samples"][metric]
        if not n:
            continue
        lines.append(f"{metric:<10} {n:>8} " + " ".join(
            f"{pct.get(k, 0):>9.2f}" for k in ("p50", "p95", "p99", "max")))
    if summary.get("schedule"):
        lines.append(phases.line(summary["schedule"]))
    counts = summary["counts"]
    lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items() if v))
    for v in summary["budgets"]["verdicts"]:
        verdict = Verdict(v["budget"], v["limit"], v["actual"], v["ok"], v["detail"])
        lines.append("budget " + verdict.line())
    lines.extend(ramp_lines(summary.get("ramp")))
    lines.extend(resources_lines(summary.get("server_resources")))
    for problem in summary.get("problems", ()):
        lines.append(f"PROBLEM {problem}")
    if summary.get("void"):
        why = "; ".join((summary.get("generator") or {}).get("reasons", ()))
        lines.append(f"VOID: the load generator was saturated ({why}); these numbers measure "
                     "the generator, not the server: use fewer users or more --processes")
    for note in summary.get("notes", ()):
        lines.append(f"note: {note}")
    lines.append("within budget" if summary["within_budget"] else
                 "VOID (not judged)" if summary.get("void") else "OVER BUDGET")
    return "\n".join(lines)


def ramp_lines(ramp: Mapping[str, Any] | None) -> list[str]:
    """The canary ramp, a line per stage and the outcome: `roll back at 20 %: ...`."""
    if not ramp:
        return []
    out = [f"ramp {ramp['old']} -> {ramp['new']}, stages "
           f"{', '.join(f'{s:g} %' for s in ramp['stages'])}, {ramp['hold_s']:g} s each"]
    for r in ramp["results"]:
        users = r["users"]
        delivery = r["latency_ms"]["new"].get("delivery", {})
        p95 = f"{delivery['p95']:.1f} ms" if "p95" in delivery else "-"
        state = ("after the breach" if r["after_breach"] else "ok" if r["ok"] else
                 "BREACH " + ", ".join(r["breaches"]))
        out.append(f"  stage {r['percent']:>5g} %: {users['new']} user(s) on new, "
                   f"{users['old']} on old, held {r['held_s']:g} s, new delivery p95 {p95}, "
                   f"errors {r['error_ratio']['overall']:g}: {state}")
    old = (ramp.get("server_resources") or {}).get("old")
    out.extend(f"old endpoint's {line}" for line in resources_lines(old))
    out.append(ramp["line"])
    return out


def resources_lines(part: Mapping[str, Any] | None) -> list[str]:
    """The server's CPU per delivery and peak RSS, or why they were not measured."""
    if not part:
        return []
    if part.get("reason"):
        return [f"server resources: not measured ({part['reason']})"]
    per = part.get("cpu_s_per_delivery")
    shown = "-" if per is None else f"{per * 1e6:.1f} us"
    return [f"server resources (pid {part['pid']}): cpu {part['cpu_s']:g} s, "
            f"{shown} cpu per delivery ({part['deliveries']} deliveries), peak rss "
            f"{part['peak_rss_bytes'] / 2**20:.1f} MiB"]
