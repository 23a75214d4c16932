"""Load results in the report: one result per scenario in the Load epic, with table and plots.

Reads the load layer's JSON summary (`harness.load.summary`) and locust's
`<stem>_stats_history.csv`; plots with matplotlib (Agg, no display).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.report.allure import Attachment, Result
from harness.report.results import FAILURE_LABEL
from harness.report.verdict import LoadOutcome

PERCENTILES = ("p50", "p75", "p90", "p95", "p99", "p99.9", "max")


def percentile_rows(summary: Mapping[str, Any]) -> list[tuple[str, int, dict[str, float]]]:
    """(metric, samples, percentiles in ms) for every metric that has samples."""
    rows = []
    for metric, pct in (summary.get("latency_ms") or {}).items():
        n = int((summary.get("samples") or {}).get(metric) or 0)
        if n and pct:
            rows.append((metric, n, dict(pct)))
    return rows


def percentile_table_html(summary: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{p}</th>" for p in PERCENTILES)
    body = []
    for metric, n, pct in percentile_rows(summary):
        cells = "".join(
            f"<td>{pct[p]:.1f}</td>" if isinstance(pct.get(p), int | float) else "<td>-</td>"
            for p in PERCENTILES)
        body.append(f"<tr><th>{html.escape(metric)}</th><td>{n}</td>{cells}</tr>")
    return (f'<table border="1" cellpadding="4"><tr><th>metric (ms)</th><th>n</th>{head}</tr>'
            f"{''.join(body)}</table>")


def read_history(path: str | Path) -> dict[str, list[tuple[float, float, float]]]:
    """Locust's stats history: metric name -> [(seconds from start, p50 ms, p95 ms)]."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return series
    start = None
    for row in rows:
        name = row.get("Name") or ""
        try:
            ts = float(row["Timestamp"])
            p50, p95 = float(row["50%"]), float(row["95%"])
        except (KeyError, TypeError, ValueError):
            continue  # "N/A" before the first sample
        start = ts if start is None else min(start, ts)
        series.setdefault(name, []).append((ts, p50, p95))
    return {name: [(ts - (start or ts), a, b) for ts, a, b in points]
            for name, points in series.items()}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def plots(summary: Mapping[str, Any], history: Mapping[str, list[tuple[float, float, float]]]
          ) -> list[Attachment]:
    """Latency over time (from the history) and the latency distribution, as PNGs."""
    try:
        import matplotlib
    except ImportError:  # plots are a bonus: the table and the verdict do not need them
        return []
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out: list[Attachment] = []
    scenario = summary.get("scenario", "?")
    timed = {k: v for k, v in history.items() if k and k != "Aggregated" and v}
    if timed:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for name, points in sorted(timed.items()):
            xs = [p[0] for p in points]
            line = ax.plot(xs, [p[1] for p in points], label=f"{name} p50")[0]
            ax.plot(xs, [p[2] for p in points], linestyle="--", color=line.get_color(),
                    label=f"{name} p95")
        ax.set(xlabel="seconds into the run", ylabel="latency (ms)",
               title=f"{scenario}: latency over time")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        out.append(Attachment("latency over time", _png(fig), "image/png", "png"))
        plt.close(fig)
    buckets = summary.get("histogram_ms") or {}
    rows = percentile_rows(summary)
    if buckets or rows:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        if buckets:  # {metric: [[upper_ms, count], ...]} when the load layer provides it
            for metric, pairs in sorted(buckets.items()):
                uppers = [float(u) for u, _ in pairs]
                counts = [int(c) for _, c in pairs]
                ax.step(uppers, counts, where="post", label=metric)
            ax.set(xlabel="latency (ms)", ylabel="operations", xscale="log",
                   title=f"{scenario}: latency histogram")
        else:
            for metric, _n, pct in rows:
                keys = [p for p in PERCENTILES if isinstance(pct.get(p), int | float)]
                ax.bar([f"{metric}\n{k}" for k in keys], [pct[k] for k in keys], label=metric)
            ax.set(ylabel="latency (ms)", yscale="log",
                   title=f"{scenario}: latency distribution (percentiles)")
            ax.tick_params(axis="x", labelsize=6)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3, axis="y")
        name = "latency histogram" if buckets else "latency distribution"
        out.append(Attachment(name, _png(fig), "image/png", "png"))
        plt.close(fig)
    return out


def load_result(outcome: LoadOutcome, *, history_csv: str | Path | None = None,
                text: str = "") -> Result:
    """The Allure result of one scenario: passed within budget, failed (budget) otherwise."""
    summary = outcome.summary
    labels = [("epic", "Load"), ("feature", outcome.scenario), ("story", "budgets"),
              ("severity", "critical"), ("parentSuite", "load"), ("suite", outcome.scenario)]
    if summary is None:
        return Result(
            name=f"load {outcome.scenario}: no result", full_name=f"load.{outcome.scenario}",
            status="broken", labels=[*labels, (FAILURE_LABEL, "harness")],
            message=outcome.problem or "the load run wrote no summary",
            attachments=[Attachment("locust output", text.encode())] if text else [],
        )
    endpoint = summary.get("endpoint") or {}
    failed = outcome.failed_budgets()
    status = "passed" if outcome.ok else "failed"
    rows = "".join(
        f"<tr><td>{'ok' if v.get('ok') else '<b>FAIL</b>'}</td><td>{html.escape(v['budget'])}"
        f"</td><td>{v['limit']:g}</td><td>{'-' if v.get('actual') is None else v['actual']}</td>"
        "</tr>" for v in summary.get("budgets", {}).get("verdicts", ()))
    description = (
        f"<p>Scenario <b>{html.escape(outcome.scenario)}</b> on endpoint "
        f"{html.escape(str(endpoint.get('name', '?')))} "
        f"({html.escape(str(endpoint.get('describe', '?')))}), "
        f"{summary.get('duration_s') or '?'} s, deliveries/s {summary.get('deliveries_per_s')}"
        f"</p>{percentile_table_html(summary)}<p>Budgets "
        f"({html.escape(str(summary.get('budgets', {}).get('source')))}):</p>"
        f'<table border="1" cellpadding="4"><tr><th></th><th>budget</th><th>limit</th>'
        f"<th>actual</th></tr>{rows}</table>"
    )
    history = read_history(history_csv) if history_csv else {}
    attachments = [
        Attachment("summary", json.dumps(summary, indent=2).encode(), "application/json",
                   "json"),
        *plots(summary, history),
    ]
    if text:
        attachments.append(Attachment("run output", text.encode()))
    labels.append(("im_endpoint_load", str(endpoint.get("name", "?"))))
    if not outcome.ok:
        labels.append((FAILURE_LABEL, "budget"))
    return Result(
        name=f"load {outcome.scenario} on {endpoint.get('name', '?')}: "
             + ("within budget" if outcome.ok else "OVER BUDGET"),
        full_name=f"load.{outcome.scenario}.{endpoint.get('name', '?')}",
        status=status, labels=labels,
        parameters=[("endpoint", str(endpoint.get("name", "?"))),
                    ("describe", str(endpoint.get("describe", "?")))],
        message="; ".join(failed), description_html=description, attachments=attachments,
    )
