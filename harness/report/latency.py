"""The sign-off's latency section: old vs new percentiles per operation, from the suites' run.

The suites leave `im-latency-<worker>.json` in the Allure results folder (`harness.latency`,
written by the pytest Allure layer); this reader merges them and compares, per operation, new's
p95 with old's. New slower than old by more than `latency_factor` times AND by more than
`latency_floor_ms` is a blocking finding with both numbers; an operation with too few samples
on either side (`latency_min_samples`, 20) is a note, never a verdict. The knobs arrive as
`Plan.section_options` (see `options`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness.latency import FILE_PREFIX, OPERATIONS, LatencyFileError, LatencyLog
from harness.report.sections import Finding, RunFiles, Section

if TYPE_CHECKING:
    from harness.config import HarnessOptions

KEY = "latency"
TITLE = "Latency in the suites"
DEFAULT_FACTOR = 2.0
# Why 20 ms: a ratio alone would call 1 ms vs 3 ms on an idle loopback a 3x regression. Measured
# on a busy 2-core host (load average 11-19) the clean default's suite p95s were 12-30 ms per
# operation and old and new differed by at most 7 ms; 20 ms is about three times that jitter and
# far below what a chat user notices (~100 ms), so a real slowdown (the 200 ms `slow_delivery`
# defect) still shows by a wide margin.
DEFAULT_FLOOR_MS = 20.0
DEFAULT_MIN_SAMPLES = 20  # fewer on either side: a p95 of a handful of values is one value
SHOWN = ("p50", "p95", "p99")


def options(harness: HarnessOptions, *, factor: object = None, floor_ms: object = None
            ) -> dict[str, Any]:
    """The knobs this reader takes, as `Plan.section_options` entries.

    From the `[harness]` table, unless the sign-off's `--latency-factor` / `--latency-floor-ms`
    give them (those win); a bad command-line value is a `ConfigError` naming the option.
    """
    from harness.config import number_problem
    from harness.errors import ConfigError

    out = {"latency_factor": harness.latency_factor, "latency_floor_ms": harness.latency_floor_ms}
    for flag, key, raw, low, example in (("--latency-factor", "latency_factor", factor, 1, "2"),
                                         ("--latency-floor-ms", "latency_floor_ms", floor_ms, 0,
                                          "20")):
        if raw is None:
            continue
        problem = number_problem(flag, raw, low=low, example=example)
        if problem:
            raise ConfigError(problem)
        out[key] = float(str(raw))
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def read_latency(files: RunFiles) -> Section | None:
    """The latency section, or None when the suites recorded no latency."""
    paths = sorted(files.results_dir.glob(f"{FILE_PREFIX}-*.json"))
    if not paths:
        return None
    opts: Mapping[str, Any] = files.options
    factor = float(opts.get("latency_factor", DEFAULT_FACTOR))
    floor = float(opts.get("latency_floor_ms", DEFAULT_FLOOR_MS))
    least = int(opts.get("latency_min_samples", DEFAULT_MIN_SAMPLES))
    findings: list[Finding] = []
    log = LatencyLog()
    for path in paths:
        try:
            log.merge(LatencyLog.from_json(path.read_text(encoding="utf-8"), path.name).encode())
        except (OSError, UnicodeDecodeError, LatencyFileError) as exc:
            findings.append(Finding(f"could not read {path.name}, so latency is judged without "
                                    f"it: {exc}"))
    old, new = files.endpoints
    rows: dict[str, Any] = {}
    for op, label in OPERATIONS.items():
        sides = {}
        for name in (old, new):
            pct = log.percentiles_ms(name, op)
            sides[name] = {"count": log.samples(name, op),
                           **{p: pct[p] for p in SHOWN if p in pct}}
        rows[op] = {"label": label, **sides}
        n_old, n_new = sides[old]["count"], sides[new]["count"]
        if not n_old and not n_new:
            continue
        if min(n_old, n_new) < least:
            findings.append(Finding(
                f"{label}: too few samples to compare ({old} {n_old}, {new} {n_new}; at least "
                f"{least} on each side)", blocking=False))
            continue
        p95_old, p95_new = sides[old]["p95"], sides[new]["p95"]
        if p95_new > p95_old * factor and p95_new - p95_old > floor:
            findings.append(Finding(
                f"{label} p95 on {new} {p95_new:.1f} ms vs {old} {p95_old:.1f} ms: over "
                f"{factor:g}x and +{floor:g} ms"))
    return Section(
        key=KEY, title=TITLE, findings=findings,
        html=_html(rows, old, new), text=_text(rows, old, new, factor, floor),
        data={"factor": factor, "floor_ms": floor, "min_samples": least,
              "files": [p.name for p in paths], "operations": rows},
    )


def _cells(side: Mapping[str, Any]) -> list[str]:
    return [str(side["count"]), *(_ms(side.get(p)) for p in SHOWN)]


def _html(rows: Mapping[str, Any], old: str, new: str) -> str:
    head = "".join(f"<th>{p}</th>" for p in SHOWN)
    body = "".join(
        f"<tr><th>{html.escape(row['label'])}</th>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in [*_cells(row[old]), *_cells(row[new])])
        + "</tr>"
        for row in rows.values()
    )
    return ('<table class="latency" border="1" cellpadding="4"><tr><th rowspan="2">operation '
            f'(ms)</th><th colspan="4">{html.escape(old)}</th><th colspan="4">'
            f'{html.escape(new)}</th></tr><tr><th>n</th>{head}<th>n</th>{head}</tr>{body}'
            "</table>")


def _text(rows: Mapping[str, Any], old: str, new: str, factor: float, floor: float) -> str:
    header = ["operation (ms)", *(f"{old} {c}" for c in ("n", *SHOWN)),
              *(f"{new} {c}" for c in ("n", *SHOWN))]
    table = [header] + [[row["label"], *_cells(row[old]), *_cells(row[new])]
                        for row in rows.values()]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in table]
    rule = (f"A finding: {new}'s p95 over {old}'s by more than {factor:g}x and more than "
            f"+{floor:g} ms.")
    return "\n".join([*lines, "", rule]) + "\n"
