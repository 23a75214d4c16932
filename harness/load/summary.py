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
) -> dict[str, Any]:
    """The JSON summary of one run; `problems` (e.g. a worker that sent nothing) fail it."""
    ok = all(v.ok for v in verdicts) and not problems
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
    for problem in summary.get("problems", ()):
        lines.append(f"PROBLEM {problem}")
    for note in summary.get("notes", ()):
        lines.append(f"note: {note}")
    lines.append("within budget" if summary["within_budget"] else "OVER BUDGET")
    return "\n".join(lines)


def compare_table(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Side by side: old, new and new/old for every percentile and ratio that both measured."""
    rows: list[tuple[str, Any, Any]] = []
    for metric in METRICS:
        po, pn = old["latency_ms"].get(metric, {}), new["latency_ms"].get(metric, {})
        for key in ("p50", "p95", "p99", "max"):
            if key in po or key in pn:
                rows.append((f"{metric} {key} ms", po.get(key), pn.get(key)))
    for key in ("deliveries", "acks", "send_errors", "connects", "connect_failures",
                "limit_reached", "loss", "duplicates", "reordered"):
        rows.append((key, old["counts"].get(key), new["counts"].get(key)))
    rows.append(("deliveries/s", old.get("deliveries_per_s"), new.get("deliveries_per_s")))
    rows.append(("error ratio", old["ratios"]["error"], new["ratios"]["error"]))
    rows.append(("within budget", old["within_budget"], new["within_budget"]))
    out = [f"{'':<22} {'old':>12} {'new':>12} {'new/old':>9}"]
    for label, a, b in rows:
        out.append(f"{label:<22} {_cell(a):>12} {_cell(b):>12} {_ratio(a, b):>9}")
    for side, summary in (("old", old), ("new", new)):
        for note in summary.get("notes", ()):
            if "LimitReached" in note:
                out.append(f"{side}: {note}")
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, bool) or isinstance(b, bool):
        return ""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not a:
        return "-"
    return f"{b / a:.2f}x"
