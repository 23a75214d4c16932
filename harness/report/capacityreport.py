"""The capacity search in the report: capacity.json, the curve picture, a sign-off section.

`im-harness capacity` writes `<reports>/capacity.json` (both searches, every step) and
`capacity.png` (users vs p99 and error ratio, old and new); with `im-harness signoff
--capacity` the same lands in the verdict as a section of notes (a capacity is a fact to know,
not a pass/fail) and as an Allure result in the Load epic with the curve attached.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.load.capacity import Capacity, ratio_line
from harness.report.allure import Attachment, Result
from harness.report.sections import Finding, RunFiles, Section

KEY = "capacity"
TITLE = "Capacity, old vs new"
FILE = "capacity.json"
OPTION = "capacity"  # RunFiles.options flag: this sign-off searched capacity


def capacity_document(scenario: str, old: Capacity, new: Capacity) -> dict[str, Any]:
    return {"scenario": scenario, "old": old.to_dict(), "new": new.to_dict(),
            "ratio": ratio_line(old, new),
            "ratio_value": (new.low / old.low) if old.low and new.low else None}


def write_capacity(reports: Path, document: Mapping[str, Any]) -> Path:
    from harness.report.verdict import write_json

    return write_json(document, reports / FILE)


def curve_plot(document: Mapping[str, Any]) -> bytes | None:
    """Users vs p99 (top) and error / connect-failure ratio (bottom), both endpoints (PNG)."""
    try:
        import matplotlib
    except ImportError:  # pictures are a bonus: capacity.json carries the numbers
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    positive = False
    for side, color in (("old", "tab:blue"), ("new", "tab:orange")):
        cap = document.get(side) or {}
        steps = sorted((s for s in cap.get("steps", ()) if not s.get("problem")),
                       key=lambda s: s["users"])
        if not steps:
            continue
        label = f"{side}: {cap.get('describe', '?')}"
        xs = [s["users"] for s in steps]
        timed = [s for s in steps if s.get("p99_ms")]
        top.plot([s["users"] for s in timed], [s["p99_ms"] for s in timed], marker="o",
                 color=color, label=label)
        errors = [max(s.get("error_ratio") or 0.0, 1 - (s.get("connect_success") or 1.0))
                  for s in steps]
        bottom.plot(xs, errors, marker="o", color=color, label=label)
        over = [s for s in timed if not s.get("ok")]
        top.scatter([s["users"] for s in over], [s["p99_ms"] for s in over],
                    marker="x", s=80, color="#c00", zorder=3)
        positive = positive or bool(timed)
        if cap.get("low"):
            top.axvline(cap["low"], color=color, linestyle=":", alpha=0.7)
    top.set(ylabel="p99 latency (ms)", yscale="log" if positive else "linear",
            title=f"{document.get('scenario', '?')}: capacity (x: over budget; dotted: capacity)")
    bottom.set(xlabel="users", ylabel="error or connect-failure ratio", xscale="log", ylim=(0, 1))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def read_capacity(files: RunFiles) -> Section | None:
    """The section, when this sign-off searched capacity (notes: a capacity is not a verdict)."""
    if not files.options.get(OPTION):
        return None
    try:
        doc = json.loads((files.reports / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Section(KEY, TITLE, [Finding("the capacity search left no capacity.json; see "
                                            "its runs' output", blocking=False)])
    lines = [doc["old"]["line"], doc["new"]["line"], doc["ratio"]]
    text = "\n".join([f"scenario {doc.get('scenario')}", *lines])
    return Section(KEY, TITLE, [Finding(line, blocking=False) for line in lines],
                   html="", text=text, data=doc)


def capacity_result(section: Section, *, start_ms: int = 0, stop_ms: int = 0) -> Result:
    """The capacity as an Allure result in the Load epic, with the curve."""
    png = curve_plot(section.data)
    images = [Attachment("capacity curve", png, "image/png", "png")] if png else []
    inline = "".join(
        '<img alt="capacity curve" style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(img.body).decode("ascii")}"/>' for img in images)
    return Result(
        name=f"load capacity: {section.data.get('ratio', '?')}", full_name="load.capacity",
        status="passed", labels=[("epic", "Load"), ("feature", "capacity"),
                                 ("severity", "normal"), ("parentSuite", "load"),
                                 ("suite", "capacity")],
        description_html=section.to_html() + inline,
        attachments=[Attachment("capacity", json.dumps(section.data, indent=2).encode(),
                                "application/json", "json"), *images],
        start_ms=start_ms, stop_ms=stop_ms,
    )
