"""The sign-off's upgrade-journey section: each step, the activation lags, the reconnect gaps.

Read from `im-journey.json`, which the journey suite leaves in the Allure results folder. A
failed step is a NO-GO naming it; the lags, gaps and the rollback drill's fact are notes.
"""

from __future__ import annotations

import html
import json
from typing import Any

from harness.report.sections import Finding, RunFiles, Section

JOURNEY_FILE = "im-journey.json"  # written by harness.journey.JourneyRecord.write
TITLE = "Upgrade journey"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} s"


def read_journey(files: RunFiles) -> Section | None:
    """The journey's section, or None when the run left no journey record."""
    path = files.results_dir / JOURNEY_FILE
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    findings: list[Finding] = []
    if record.get("skipped"):
        findings.append(Finding(f"not run: {record['skipped']}", blocking=False))
    steps = record.get("steps") or []
    for step in steps:
        if step["status"] == "failed":
            findings.append(Finding(f"step '{step['name']}' failed: {step['detail']}"))
    lags = record.get("lags") or {}
    for feature, lag in lags.items():
        if "window_s" in lag:
            what, limit = "old tokens refused", f"transition window {_seconds(lag['window_s'])}"
        else:
            what, limit = f"activation lag of {feature}", f"bound {_seconds(lag.get('bound_s'))}"
        findings.append(Finding(f"{what}: {_seconds(lag.get('seconds'))} after the upgrade "
                                f"({limit})", blocking=False))
    for user, gap in (record.get("gaps") or {}).items():
        parts = []
        if "back_after_s" in gap:
            parts.append(f"connected again {_seconds(gap['back_after_s'])} after the upgrade")
        if "max_ack_gap_s" in gap:
            attempts = ", ".join(map(str, gap.get("reconnects") or [])) or "no"
            parts.append(f"longest gap between acks {_seconds(gap['max_ack_gap_s'])}, "
                         f"reconnected after {attempts} attempt(s), {gap.get('acks', 0)} "
                         "messages acked")
        if parts:
            findings.append(Finding(f"client {user}: {'; '.join(parts)}", blocking=False))
    if steps:
        findings.append(Finding(f"rollback drill: {record.get('rollback', 'not drilled')}",
                                blocking=False))
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['status'])}</td>"
        f"<td>{s['seconds']:.2f}</td><td>{html.escape(s['detail'])}</td></tr>" for s in steps)
    lag_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_seconds(lag.get('seconds'))}</td>"
        f"<td>{_seconds(lag.get('bound_s', lag.get('window_s')))}</td></tr>"
        for name, lag in lags.items())
    server = html.escape(record.get("server") or "")
    block = (f"<p>{server}</p>" if server else "") + (
        "<table><tr><th>step</th><th>status</th><th>s</th><th>detail</th></tr>"
        f"{rows}</table>" if rows else "") + (
        "<table><tr><th>after the upgrade</th><th>seconds</th><th>bound</th></tr>"
        f"{lag_rows}</table>" if lag_rows else "")
    text = "\n".join([record.get("server") or "",
                      *[f"[{s['status']}] {s['name']} ({s['seconds']:.2f}s)"
                        + (f": {s['detail']}" if s["detail"] else "") for s in steps],
                      *[f"lag {n}: {_seconds(v.get('seconds'))} (bound "
                        f"{_seconds(v.get('bound_s', v.get('window_s')))})"
                        for n, v in lags.items()],
                      f"rollback: {record.get('rollback', 'not drilled')}"]).strip()
    return Section("journey", TITLE, findings, html=block, text=text, data=record)
