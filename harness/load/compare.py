"""Old vs new under the same load: alternating runs, an A/A noise floor, and what regressed.

Each scenario runs on old and new with the same plan, in alternating order (old, new, new, old
for two repeats), so a machine that warms up or slows down over the job hurts neither side. The
two old runs are an A/A pair: how far old differs from itself is this machine's and endpoint's
noise. New is a regression on a number only when it is worse than old by more than that noise
*and* by the scenario's relative and absolute thresholds (`[compare]` in its budgets file), in
every new run::

    rows = compare_runs(old_summaries, new_summaries, rules)
    for finding in rows.findings(): ...

Inputs are the load layer's JSON summaries (`harness.load.summary`); nothing here runs load.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import as_file
from pathlib import Path
from typing import Any

from harness.load.budgets import CompareRules, load_budgets

OLD, NEW = "old", "new"
DEFAULT_REPEATS = 2


def run_order(repeats: int = DEFAULT_REPEATS) -> list[str]:
    """`old,new,new,old,...`: each repeat flips the order; old runs at least twice (A/A)."""
    order: list[str] = []
    for i in range(max(1, repeats)):
        order += [OLD, NEW] if i % 2 == 0 else [NEW, OLD]
    if order.count(OLD) < 2:
        order.append(OLD)  # the A/A run: old against old again
    return order


def compare_rules(scenario: str, budgets_dir: str | Path | None = None) -> CompareRules:
    """The `[compare]` rules of a scenario's budgets file (defaults when it has none)."""
    from harness.load.scenarios import scenarios

    if budgets_dir:
        return load_budgets(Path(budgets_dir) / f"{scenario}.toml").compare
    if scenario in scenarios and (packaged := scenarios.get(scenario).budgets) is not None \
            and packaged.is_file():
        with as_file(packaged) as file:
            return load_budgets(file).compare
    return CompareRules()


@dataclass(frozen=True)
class Row:
    """One number side by side: every run's value, the means, the A/A noise, the judgement."""

    label: str  # e.g. "delivery p99"
    old: list[float | None]
    new: list[float | None]
    noise: float | None  # how far the old runs differ from each other (None: one old run)
    threshold: str  # the rule in words, e.g. "+25 % and +50 ms"
    regression: bool = False
    lower_is_worse: bool = False
    unit: str = ""

    @property
    def old_value(self) -> float | None:
        return _mean(self.old)

    @property
    def new_value(self) -> float | None:
        return _mean(self.new)

    def delta(self) -> float | None:
        a, b = self.old_value, self.new_value
        return None if a is None or b is None else b - a

    def ratio(self) -> float | None:
        a, b = self.old_value, self.new_value
        return None if a is None or b is None or not a else b / a

    def finding(self) -> str:
        a, b, d = self.old_value, self.new_value, self.delta()
        ratio = self.ratio()
        times = f", {ratio:.2f}x" if ratio is not None else ""
        noise = "no A/A run" if self.noise is None else f"A/A noise {_num(self.noise)}{self.unit}"
        return (f"{self.label} {_num(b)}{self.unit} on new vs {_num(a)}{self.unit} on old "
                f"({'+' if (d or 0) >= 0 else ''}{_num(d)}{self.unit}{times}; {noise}; "
                f"regression beyond {self.threshold})")

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit.strip(), "old": self.old, "new": self.new,
                "old_value": self.old_value, "new_value": self.new_value, "noise": self.noise,
                "delta": self.delta(), "ratio": self.ratio(), "threshold": self.threshold,
                "regression": self.regression}


@dataclass
class Comparison:
    """One scenario on old and new: its rows, and why it could not be judged (if so)."""

    scenario: str
    old_describe: str = "?"
    new_describe: str = "?"
    rows: list[Row] = field(default_factory=list)
    resources: list[Row] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)  # void or missing runs
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in (*self.rows, *self.resources) if r.regression]

    def findings(self) -> list[tuple[str, bool]]:
        """(line, blocking): every regression, everything not judged, and the notes."""
        out = [(f"{self.scenario}: {r.finding()}", True) for r in self.regressions]
        out += [(f"{self.scenario}: {why}", True) for why in self.not_judged]
        out += [(f"{self.scenario}: {note}", False) for note in self.notes]
        if not out:
            noise = [r.noise for r in self.rows if r.noise is not None and r.unit == " ms"]
            floor = f"; A/A noise up to {_num(max(noise))} ms" if noise else ""
            out.append((f"{self.scenario}: new is not worse than old beyond the noise and the "
                        f"thresholds ({len(self.rows)} numbers compared{floor})", False))
        return out

    def text(self) -> str:
        head = (f"{self.scenario}: old = {self.old_describe}, new = {self.new_describe}\n"
                f"{'':<22} {'old':>10} {'new':>10} {'A/A noise':>10} {'new-old':>10} "
                f"{'new/old':>8}  runs old | new")
        lines = [head]
        for r in (*self.rows, *self.resources):
            ratio = r.ratio()
            label = f"{r.label} ({r.unit.strip()})" if r.unit else r.label
            runs = (" ".join(_num(v) for v in r.old) + " | "
                    + " ".join(_num(v) for v in r.new))
            lines.append(f"{label:<22} {_num(r.old_value):>10} {_num(r.new_value):>10} "
                         f"{_num(r.noise):>10} {_num(r.delta()):>10} "
                         f"{'-' if ratio is None else f'{ratio:.2f}x':>8}  {runs}"
                         + ("  REGRESSION" if r.regression else ""))
        lines += [f"not judged: {why}" for why in self.not_judged]
        return "\n".join(lines)

    def to_html(self) -> str:
        cells = []
        for r in (*self.rows, *self.resources):
            ratio = r.ratio()
            style = ' style="color:#c00;font-weight:bold"' if r.regression else ""
            cells.append(
                f"<tr{style}><th>{html.escape(r.label)}{html.escape(r.unit)}</th>"
                f"<td>{_num(r.old_value)}</td>"
                f"<td>{_num(r.new_value)}</td><td>{_num(r.noise)}</td><td>{_num(r.delta())}</td>"
                f"<td>{'-' if ratio is None else f'{ratio:.2f}x'}</td>"
                f"<td>{html.escape(' '.join(_num(v) for v in r.old))}</td>"
                f"<td>{html.escape(' '.join(_num(v) for v in r.new))}</td>"
                f"<td>{html.escape(r.threshold)}</td>"
                f"<td>{'REGRESSION' if r.regression else 'ok'}</td></tr>")
        return (f"<h4>{html.escape(self.scenario)}: old = {html.escape(self.old_describe)}, "
                f"new = {html.escape(self.new_describe)}</h4>"
                '<table class="load-compare" border="1" cellpadding="4"><tr><th></th>'
                "<th>old</th><th>new</th><th>A/A noise</th><th>new&minus;old</th><th>new/old</th>"
                "<th>old runs</th><th>new runs</th><th>regression beyond</th><th></th></tr>"
                f"{''.join(cells)}</table>")

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "old": self.old_describe, "new": self.new_describe,
                "rows": [r.to_dict() for r in self.rows],
                "resources": [r.to_dict() for r in self.resources],
                "not_judged": list(self.not_judged), "notes": list(self.notes)}


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _spread(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) - min(known) if len(known) >= 2 else None


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value and abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.0f}"


def _worse(row: Row, absolute: float, relative: float) -> bool:
    """Worse by more than the noise, the absolute and the relative threshold, and in every run.

    "Every run": each new run is worse than old's mean, so one unlucky new run on a busy
    machine is not a regression (the A/A noise comes from old's runs only).
    """
    old, new = row.old_value, row.new_value
    if old is None or new is None:
        return False
    sign = -1.0 if row.lower_is_worse else 1.0
    by = sign * (new - old)
    if by <= (row.noise or 0.0) or by <= absolute:
        return False
    if any(v is None or sign * (v - old) <= 0 for v in row.new):
        return False
    return not old or by / abs(old) > relative


def _latency(summary: Mapping[str, Any], metric: str, key: str) -> float | None:
    samples = (summary.get("samples") or {}).get(metric)
    value = ((summary.get("latency_ms") or {}).get(metric) or {}).get(key)
    return float(value) if samples and isinstance(value, int | float) else None


def _resource(summary: Mapping[str, Any], key: str) -> float | None:
    res = summary.get("server_resources")
    value = res.get(key) if isinstance(res, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def void_reason(summary: Mapping[str, Any]) -> str | None:
    """Why a run was void (its generator was saturated), or None."""
    gen = summary.get("generator")
    if isinstance(gen, Mapping) and gen.get("void"):
        return "; ".join(str(r) for r in gen.get("reasons", ())) or "generator saturated"
    return None


def compare_runs(old: Sequence[Mapping[str, Any] | None], new: Sequence[Mapping[str, Any] | None],
                 rules: CompareRules, *, scenario: str = "?",
                 problems: Sequence[str] = (),
                 numbers: Mapping[str, Sequence[int]] | None = None) -> Comparison:
    """Judge new against old; a void or missing run leaves the scenario not judged.

    `numbers`: each side's runs' places in the job's order (for the messages; default 1, 2...).
    """
    out = Comparison(scenario)
    describe = {side: next((str((s.get("endpoint") or {}).get("describe", "?")) for s in runs
                            if s), "?") for side, runs in ((OLD, old), (NEW, new))}
    out.old_describe, out.new_describe = describe[OLD], describe[NEW]
    out.not_judged += list(problems)
    for side, runs in ((OLD, old), (NEW, new)):
        places = list((numbers or {}).get(side, ())) or list(range(1, len(runs) + 1))
        for i, summary in zip(places, runs, strict=False):
            if summary is None:
                continue
            why = void_reason(summary)
            if why:
                out.not_judged.append(f"{side} run {i} is void, the load generator was "
                                      f"saturated ({why}); it says nothing about the server")
    done_old = [s for s in old if s is not None]
    done_new = [s for s in new if s is not None]
    if not done_old or not done_new:
        out.not_judged.append("no completed run on " + (OLD if not done_old else NEW))
    if out.not_judged:
        return out
    if len(done_old) < 2:
        out.notes.append("one old run only: no A/A noise floor; the thresholds alone judge")
    pct = ", ".join(rules.percentiles)
    for metric in rules.metrics:
        for key in rules.percentiles:
            a = [_latency(s, metric, key) for s in done_old]
            b = [_latency(s, metric, key) for s in done_new]
            if all(v is None for v in a) and all(v is None for v in b):
                continue
            absolute = rules.absolute(key)
            row = Row(f"{metric} {key}", a, b, _spread(a),
                      f"+{rules.relative:.0%} and +{_num(absolute)} ms", unit=" ms")
            if any(v is None for v in b) and all(v is not None for v in a):
                out.not_judged.append(f"new measured no {metric} in a run while old did "
                                      f"({metric} {key}; compared: {pct})")
            row = _judged(row, _worse(row, absolute, rules.relative))
            out.rows.append(row)
    errors = ([float(s["ratios"]["error"]) for s in done_old],
              [float(s["ratios"]["error"]) for s in done_new])
    row = Row("error ratio", list(errors[0]), list(errors[1]), _spread(errors[0]),
              f"+{_num(rules.error_ratio_absolute)}")
    out.rows.append(_judged(row, _worse(row, rules.error_ratio_absolute, 0.0)))
    rates: tuple[list[float | None], list[float | None]] = (
        [s.get("deliveries_per_s") for s in done_old],
        [s.get("deliveries_per_s") for s in done_new])
    if any(rates[0]):
        row = Row("deliveries/s", rates[0], rates[1], _spread(rates[0]),
                  f"-{rules.deliveries_drop:.0%}", lower_is_worse=True)
        out.rows.append(_judged(row, _worse(row, 0.0, rules.deliveries_drop)))
    for key, label, growth in (("cpu_s_per_delivery", "server CPU s/delivery", rules.cpu_growth),
                               ("peak_rss_bytes", "server peak RSS bytes", rules.rss_growth)):
        a = [_resource(s, key) for s in done_old]
        b = [_resource(s, key) for s in done_new]
        if all(v is None for v in a) or all(v is None for v in b):
            continue
        row = Row(label, a, b, _spread(a), f"{growth:g}x")
        out.resources.append(_judged(row, _worse(row, 0.0, growth - 1.0)))
    return out


def _judged(row: Row, regression: bool) -> Row:
    return Row(row.label, row.old, row.new, row.noise, row.threshold, regression,
               row.lower_is_worse, row.unit)
