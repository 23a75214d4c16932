"""The sign-off's "what changed" section: old vs new, every default the adapters report.

Capabilities, tier limits, keepalive, send timeout, protocols and the rules each side enforces,
from the upgrade journey's record (the endpoint before and after the in-place upgrade) or else
from `im-endpoints.json`; plus each difference the journey observed. Notes, never a NO-GO: a
changed default is what a team must know about before production, not a failure by itself.
"""

from __future__ import annotations

import html
import json
from typing import Any

from harness.journey import flatten
from harness.report.journey import JOURNEY_FILE
from harness.report.results import ENDPOINTS_FILE
from harness.report.sections import Finding, RunFiles, Section

TITLE = "What changed (old -> new)"



def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def _sides(files: RunFiles) -> tuple[dict[str, Any], dict[str, Any], str, list[str]] | None:
    journey = files.results_dir / JOURNEY_FILE
    if journey.exists():
        record = json.loads(journey.read_text())
        infos = record.get("infos") or {}
        if "before" in infos and "after" in infos:
            observed = [d for d in record.get("differences") or [] if ":" in d]
            return infos["before"], infos["after"], "the upgraded endpoint, before and after", \
                observed
    endpoints = files.results_dir / ENDPOINTS_FILE
    if endpoints.exists():
        data = json.loads(endpoints.read_text())
        old, new = files.endpoints
        if old in data and new in data:
            return data[old], data[new], f"endpoints {old!r} and {new!r}", []
    return None


def read_changes(files: RunFiles) -> Section | None:
    """The what-changed table, or None when the run left no description of the endpoints."""
    sides = _sides(files)
    if sides is None:
        return None
    before, after, source, observed = sides
    a, b = flatten(before), flatten(after)
    keys = sorted((set(a) | set(b)) - {"describe", "url"})
    rows, changed = [], []
    for key in keys:
        old, new = a.get(key), b.get(key)
        differs = old != new
        if differs:
            changed.append(f"{key}: {_shown(old)} -> {_shown(new)}")
        mark = ' style="font-weight:bold"' if differs else ""
        rows.append(f"<tr{mark}><td>{html.escape(key)}</td><td>{html.escape(_shown(old))}</td>"
                    f"<td>{html.escape(_shown(new))}</td></tr>")
    findings = [Finding(f"{len(changed)} reported default(s) differ ({source})", blocking=False)]
    reported = set(changed)
    extra = [d for d in observed if d not in reported and d.split(":")[0] not in keys]
    findings += [Finding(f"observed by the journey: {d}", blocking=False) for d in extra]
    block = ("<table><tr><th>setting</th><th>old</th><th>new</th></tr>" + "".join(rows)
             + "</table>")
    text = "\n".join([f"what changed ({source}):", *changed, *extra])
    return Section("changes", TITLE, findings, html=block, text=text,
                   data={"source": source, "old": before, "new": after, "changed": changed,
                         "observed": extra})
