"""Load results in the report: one result per scenario in the Load epic, with table and plots.

Reads the load layer's JSON summary (`harness.load.summary`) and locust's
`<stem>_stats_history.csv`; plots with matplotlib (Agg, no display).
"""

from __future__ import annotations

import base64
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


def ramp_table_html(summary: Mapping[str, Any]) -> str:
    """The canary ramp: a row per stage (users on new and old, new's latencies, errors, verdict)."""
    ramp = summary.get("ramp")
    if not ramp:
        return ""
    rows = []
    for r in ramp.get("results", ()):
        delivery = (r.get("latency_ms", {}).get("new") or {}).get("delivery") or {}
        ack = (r.get("latency_ms", {}).get("new") or {}).get("send_ack") or {}
        cells = [f"{r['percent']:g} %", f"{r['users']['new']} / {r['users']['old']}",
                 *(f"{d[k]:.1f}" if isinstance(d.get(k), int | float) else "-"
                   for d, k in ((ack, "p95"), (delivery, "p50"), (delivery, "p95"))),
                 f"{r['error_ratio']['overall']:g}"]
        state = ("ran after the breach" if r.get("after_breach") else "ok" if r.get("ok") else
                 "<b>BREACH</b> " + html.escape(", ".join(r.get("breaches", ()))))
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f"<td>{state}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "stage", "users new / old", "new send_ack p95 ms", "new delivery p50 ms",
        "new delivery p95 ms", "error ratio (both)", "verdict"))
    return (f"<p>Canary ramp {html.escape(str(ramp.get('old')))} -&gt; "
            f"{html.escape(str(ramp.get('new')))}, {ramp.get('hold_s', 0):g} s a stage: "
            f"<b>{html.escape(str(ramp.get('line')))}</b></p>"
            f'<table border="1" cellpadding="4"><tr>{head}</tr>{"".join(rows)}</table>'
            + resources_html({"server_resources": (ramp.get("server_resources") or {}).get("old")},
                             "The old endpoint's server"))


def resources_html(summary: Mapping[str, Any], what: str = "Server") -> str:
    """The server's CPU per delivery and peak RSS during the run, or why they are not known."""
    part = summary.get("server_resources")
    if not part:
        return ""
    if part.get("reason"):
        return f"<p>{what} resources: not measured ({html.escape(str(part['reason']))}).</p>"
    per = part.get("cpu_s_per_delivery")
    return (f"<p>{what} resources (pid {part['pid']}, children included): CPU "
            f"{part['cpu_s']:g} s for {part['deliveries']} deliveries = "
            f"{'-' if per is None else f'{per * 1e6:.1f} µs'} per delivery; peak RSS "
            f"{part['peak_rss_bytes'] / 2**20:.1f} MiB.</p>")


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


def _from_first_sample(points: list[tuple[float, float, float]]
                       ) -> list[tuple[float, float, float]]:
    """Without the leading rows where locust writes 0 ms because nothing was timed yet."""
    first = next((i for i, (_, p50, p95) in enumerate(points) if p50 or p95), len(points))
    return points[first:]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def plots(summary: Mapping[str, Any], history: Mapping[str, list[tuple[float, float, float]]]
          ) -> list[Attachment]:
    """Latency over time (from the history) and the latency histogram, as PNGs."""
    try:
        import matplotlib
    except ImportError:  # plots are a bonus: the table and the verdict do not need them
        return []
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out: list[Attachment] = []
    scenario = summary.get("scenario", "?")
    timed = {k: v for k, v in ((k, _from_first_sample(v)) for k, v in history.items())
             if k and k != "Aggregated" and v}
    if timed:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for name, points in sorted(timed.items()):
            xs = [p[0] for p in points]
            # Markers: a run of a few seconds has one or two points, which a line alone hides.
            line = ax.plot(xs, [p[1] for p in points], marker="o", label=f"{name} p50")[0]
            ax.plot(xs, [p[2] for p in points], linestyle="--", marker="x",
                    color=line.get_color(), label=f"{name} p95")
        ax.set(xlabel="seconds into the run", ylabel="latency (ms)",
               title=f"{scenario}: latency over time (locust's rolling window, whole ms)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        out.append(Attachment("latency over time", _png(fig), "image/png", "png"))
        plt.close(fig)
    buckets = {m: rows for m, rows in (summary.get("histogram_ms") or {}).items() if rows}
    if buckets:
        out.append(Attachment("latency histogram", _png(_histogram_figure(plt, scenario, buckets)),
                              "image/png", "png"))
    elif rows := percentile_rows(summary):  # a summary from before the load layer's histogram
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for metric, _n, pct in rows:
            keys = [p for p in PERCENTILES if isinstance(pct.get(p), int | float)]
            ax.bar([f"{metric}\n{k}" for k in keys], [pct[k] for k in keys], label=metric)
        ax.set(ylabel="latency (ms)", yscale="log",
               title=f"{scenario}: latency distribution (percentiles)")
        ax.tick_params(axis="x", labelsize=6)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3, axis="y")
        out.append(Attachment("latency distribution", _png(fig), "image/png", "png"))
    plt.close("all")
    return out


def histogram_bars(rows: list[list[float]]) -> list[tuple[float, float, int]]:
    """The summary's `[[upper_ms, count], ...]` as bars `(left_ms, width_ms, count)`.

    The load layer's steps are equal and empty ones are left out, so the width is the smallest
    gap between two bounds; a row counts the values up to its bound from one step below it.
    """
    uppers = [float(u) for u, _ in rows]
    gaps = [b - a for a, b in zip(uppers, uppers[1:], strict=False) if b > a]
    width = min(gaps) if gaps else max(uppers[0] * 0.05, 0.001)
    return [(u - width, width, int(c)) for u, (_, c) in zip(uppers, rows, strict=True)]


def _histogram_figure(plt: Any, scenario: str, buckets: Mapping[str, list[list[float]]]) -> Any:
    """One panel per metric: each has its own latency range (connect is not send -> ack)."""
    metrics = [m for m in ("connect", "send_ack", "delivery", "history") if m in buckets]
    metrics += sorted(set(buckets) - set(metrics))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 1.9 * len(metrics) + 0.6),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        bars = histogram_bars(buckets[metric])
        ax.bar([b[0] for b in bars], [b[2] for b in bars], width=[b[1] for b in bars],
               align="edge", color="tab:blue", edgecolor="white", linewidth=0.3)
        ax.set_ylabel("operations")
        ax.set_title(f"{metric} ({sum(b[2] for b in bars)} samples)", fontsize="medium",
                     loc="left")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, axis="y")
    axes[-1, 0].set_xlabel("latency (ms)")
    fig.suptitle(f"{scenario}: latency histogram")
    fig.tight_layout()
    return fig


def load_result(outcome: LoadOutcome, *, history_csv: str | Path | None = None,
                text: str = "") -> Result:
    """The Allure result of one scenario: passed within budget, failed (budget) over it, broken
    (harness) when the run is void because its generator was saturated."""
    summary = outcome.summary
    labels = [("epic", "Load"), ("feature", outcome.scenario), ("story", "budgets"),
              ("severity", "critical"), ("parentSuite", "load"), ("suite", outcome.scenario)]
    if summary is None:
        return Result(
            name=f"load {outcome.scenario}: no result", full_name=f"load.{outcome.scenario}",
            status="broken", labels=[*labels, (FAILURE_LABEL, "harness")],
            message=outcome.problem or "the load run wrote no summary",
            attachments=[Attachment("locust output", text.encode())] if text else [],
            start_ms=outcome.started_ms, stop_ms=outcome.stopped_ms,
        )
    endpoint = summary.get("endpoint") or {}
    # A void run measured its own generator, not the server: broken (the harness's), not failed
    failed = [f"void: {outcome.void}"] if outcome.void else outcome.failed_budgets()
    status = "broken" if outcome.void else "passed" if outcome.ok else "failed"
    rows = "".join(
        f"<tr><td>{'ok' if v.get('ok') else '<b>FAIL</b>'}</td><td>{html.escape(v['budget'])}"
        f"</td><td>{v['limit']:g}</td><td>{'-' if v.get('actual') is None else v['actual']}</td>"
        "</tr>" for v in summary.get("budgets", {}).get("verdicts", ()))
    description = (
        f"<p>Scenario <b>{html.escape(outcome.scenario)}</b> on endpoint "
        f"{html.escape(str(endpoint.get('name', '?')))} "
        f"({html.escape(str(endpoint.get('describe', '?')))}), "
        f"{summary.get('duration_s') or '?'} s, deliveries/s {summary.get('deliveries_per_s')}"
        f"</p>{ramp_table_html(summary)}{percentile_table_html(summary)}"
        f"{resources_html(summary)}<p>Budgets "
        f"({html.escape(str(summary.get('budgets', {}).get('source')))}):</p>"
        f'<table border="1" cellpadding="4"><tr><th></th><th>budget</th><th>limit</th>'
        f"<th>actual</th></tr>{rows}</table>"
    )
    history = read_history(history_csv) if history_csv else {}
    images = plots(summary, history)
    # The plots also go inline, so the page shows them without opening an attachment.
    description += "".join(
        f'<h4>{html.escape(img.name)}</h4><img alt="{html.escape(img.name)}" '
        f'style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(img.body).decode("ascii")}"/>' for img in images)
    attachments = [
        Attachment("summary", json.dumps(summary, indent=2).encode(), "application/json",
                   "json"),
        *images,
    ]
    if text:
        attachments.append(Attachment("run output", text.encode()))
    labels.append(("im_endpoint_load", str(endpoint.get("name", "?"))))
    if outcome.void:
        labels.append((FAILURE_LABEL, "harness"))
    elif not outcome.ok:
        labels.append((FAILURE_LABEL, "budget"))
    return Result(
        name=f"load {outcome.scenario} on {endpoint.get('name', '?')}"
             + (f" (run {outcome.run})" if outcome.run else "") + ": "
             + ("within budget" if outcome.ok else "VOID" if outcome.void else "OVER BUDGET"),
        full_name=f"load.{outcome.scenario}.{endpoint.get('name', '?')}"
                  + (f".{outcome.run}" if outcome.run else ""),
        status=status, labels=labels,
        parameters=[("endpoint", str(endpoint.get("name", "?"))),
                    ("describe", str(endpoint.get("describe", "?")))],
        message="; ".join(failed), description_html=description, attachments=attachments,
        start_ms=outcome.started_ms, stop_ms=outcome.stopped_ms,
    )
