"""The sign-off's old-vs-new load section: each scenario's runs side by side with the A/A noise.

Reads `reports/load/compare.json` (written by `harness.report.signoff.run_compare`: which runs
of which scenario on which endpoint, and the scenario's `[compare]` rules) and the summaries it
names; `harness.load.compare` judges. A regression is a blocking finding naming the metric, both
numbers and the noise; a void or missing run leaves its scenario not judged (also blocking).
The pictures (old vs new percentiles per metric) go into one Allure result in the Load epic.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.load.budgets import CompareRules
from harness.load.compare import NEW, OLD, Comparison, compare_runs
from harness.report.allure import Attachment, Result
from harness.report.sections import Finding, RunFiles, Section

KEY = "load_compare"
TITLE = "Load, old vs new"
OPTION = "load_compare"  # RunFiles.options flag: this run compared (else the reader is silent)


def _read(path: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


def comparisons(folder: Path) -> list[Comparison] | None:
    """Every scenario compared in `folder` (reports/load), or None without a compare.json."""
    manifest = _read(folder / "compare.json")
    if manifest is None:
        return None
    out = []
    for scenario, entry in (manifest.get("scenarios") or {}).items():
        rules = CompareRules.from_dict(entry.get("rules") or {})
        sides: dict[str, list[Mapping[str, Any] | None]] = {OLD: [], NEW: []}
        numbers: dict[str, list[int]] = {OLD: [], NEW: []}
        problems = []
        for run in entry.get("runs", ()):
            summary = _read(folder / run["summary"]) if run.get("summary") else None
            if summary is None:
                problems.append(f"{run['role']} run {run['index']} ({run['endpoint']}) produced "
                                f"no result: {run.get('problem') or 'no summary'}")
            sides[run["role"]].append(summary)
            numbers[run["role"]].append(int(run["index"]))
        out.append(compare_runs(sides[OLD], sides[NEW], rules, scenario=scenario,
                                problems=problems, numbers=numbers))
    return out


def read_load_compare(files: RunFiles) -> Section | None:
    """The section, when this run compared old and new under load."""
    if not files.options.get(OPTION):
        return None
    found = comparisons(files.reports / "load")
    if found is None:
        return Section(KEY, TITLE, [Finding("the comparison runs left no load/compare.json; "
                                            "see the load runs' output")])
    findings = [Finding(what, blocking) for c in found for what, blocking in c.findings()]
    return Section(KEY, TITLE, findings,
                   html="".join(c.to_html() for c in found),
                   text="\n\n".join(c.text() for c in found),
                   data={"scenarios": [c.to_dict() for c in found]})


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def percentile_plot(comparison: Mapping[str, Any]) -> bytes | None:
    """Old vs new latency percentiles per metric, each side's runs as its error bar (PNG)."""
    try:
        import matplotlib
    except ImportError:  # pictures are a bonus: the section's table carries the numbers
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in comparison.get("rows", ()) if r.get("unit") == "ms"
            and r.get("old_value") is not None and r.get("new_value") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 3.8))
    xs = list(range(len(rows)))
    for offset, side, color in ((-0.2, "old", "tab:blue"), (0.2, "new", "tab:orange")):
        values = [float(r[f"{side}_value"]) for r in rows]
        runs = [[v for v in r[side] if v is not None] for r in rows]
        low = [v - min(rs, default=v) for v, rs in zip(values, runs, strict=True)]
        high = [max(rs, default=v) - v for v, rs in zip(values, runs, strict=True)]
        ax.bar([x + offset for x in xs], values, width=0.4, color=color,
               label=f"{side}: {comparison.get(side, '?')}", yerr=[low, high], capsize=3)
    for x, r in zip(xs, rows, strict=True):
        if r.get("regression"):
            ax.annotate("REGRESSION", (x, float(r["new_value"])), ha="center", va="bottom",
                        color="#c00", fontsize="x-small")
    ax.set_xticks(xs, [str(r["label"]) for r in rows], rotation=30,
                  ha="right", fontsize="small")
    ax.set(ylabel="latency (ms)", title=f"{comparison.get('scenario', '?')}: old vs new "
           "(bars: mean of the runs; whiskers: their range)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    data = _png(fig)
    plt.close(fig)
    return data


def comparison_result(section: Section, *, start_ms: int = 0, stop_ms: int = 0) -> Result:
    """The section as an Allure result in the Load epic, with a picture per scenario."""
    images = []
    for comparison in section.data.get("scenarios", ()):
        png = percentile_plot(comparison)
        if png:
            images.append(Attachment(f"{comparison['scenario']}: old vs new percentiles", png,
                                     "image/png", "png"))
    inline = "".join(
        f'<h4>{html.escape(img.name)}</h4><img alt="{html.escape(img.name)}" '
        'style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(img.body).decode("ascii")}"/>'
        for img in images)
    return Result(
        name=f"load old vs new: {'no regression' if section.ok else 'REGRESSION or not judged'}",
        full_name="load.compare", status="passed" if section.ok else "failed",
        labels=[("epic", "Load"), ("feature", "old vs new"), ("severity", "critical"),
                ("parentSuite", "load"), ("suite", "old vs new")],
        message="\n".join(section.reasons()),
        description_html=section.to_html() + inline,
        attachments=[Attachment("old vs new", section.text.encode()), *images],
        start_ms=start_ms, stop_ms=stop_ms,
    )
