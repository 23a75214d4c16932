"""Budgets: what a load run must stay within, read from TOML and judged on merged metrics.

Example budgets file::

    max_error_ratio = 0.01
    min_connect_success_ratio = 0.99
    max_loss = 0
    max_duplicates = 0

    [send_ack]
    p50_ms = 50
    p99_ms = 500
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import read_toml
from harness.errors import ConfigError
from harness.load.metrics import METRICS, LoadMetrics

PERCENTILE_KEYS = ("p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms")
RATIO_KEYS = ("max_error_ratio", "min_connect_success_ratio", "max_behind_schedule_ratio")
COUNT_KEYS = ("max_loss", "max_duplicates", "max_reordered", "max_other_violations")
TOP_KEYS = ("scenario", *RATIO_KEYS, *COUNT_KEYS, *METRICS)
DEFAULTS = {"max_loss": 0, "max_duplicates": 0}  # always judged, even when a file omits them


@dataclass(frozen=True)
class Verdict:
    """One budget judged: what was allowed, what was measured, whether it held."""

    budget: str  # e.g. "send_ack.p99_ms", "max_loss"
    limit: float
    actual: float | None
    ok: bool
    detail: str = ""

    def line(self) -> str:
        shown = "no samples" if self.actual is None else f"{self.actual:g}"
        mark = "ok  " if self.ok else "FAIL"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{mark} {self.budget:<28} limit {self.limit:<10g} actual {shown}{extra}"


@dataclass(frozen=True)
class Budgets:
    """A validated budgets file."""

    source: str
    scenario: str | None = None
    limits: Mapping[str, float] = field(default_factory=dict)  # top-level ratio/count keys
    percentiles: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # metric -> key

    def evaluate(self, metrics: LoadMetrics) -> list[Verdict]:
        """Judge every budget; a latency budget with no samples fails (nothing was measured)."""
        out: list[Verdict] = []
        for metric, keys in self.percentiles.items():
            measured = metrics.percentiles_ms(metric)
            for key, limit in keys.items():
                name = key.removesuffix("_ms")
                actual = measured.get(name)
                if actual is None:
                    out.append(Verdict(f"{metric}.{key}", limit, None, False,
                                       "nothing measured"))
                else:
                    out.append(Verdict(f"{metric}.{key}", limit, actual, actual <= limit))
        limits = {**DEFAULTS, **self.limits}
        for key, limit in limits.items():
            if key == "max_error_ratio":
                ratio = round(metrics.error_ratio(), 6)
                out.append(Verdict(key, limit, ratio, ratio <= limit))
            elif key == "max_behind_schedule_ratio":
                ratio = round(metrics.behind_schedule_ratio(), 6)
                out.append(Verdict(key, limit, ratio, ratio <= limit))
            elif key == "min_connect_success_ratio":
                success = metrics.connect_success_ratio()
                detail = ""
                if metrics.counts["limit_reached"]:
                    detail = f"{metrics.counts['limit_reached']} refused at the connection cap"
                if success is None:
                    out.append(Verdict(key, limit, None, False, "no connects attempted"))
                else:
                    out.append(Verdict(key, limit, round(success, 6), success >= limit, detail))
            else:
                counter = key.removeprefix("max_")
                value = float(metrics.counts[counter])
                out.append(Verdict(key, limit, value, value <= limit))
        return out


def parse_budgets(data: Mapping[str, Any], *, source: str) -> Budgets:
    """Validate a budgets mapping; every problem is one line naming the key and the fix."""
    limits: dict[str, float] = {}
    percentiles: dict[str, dict[str, float]] = {}
    scenario = None
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise ConfigError(
                f"budgets {source}: {key!r} is not a budget key; known: {', '.join(TOP_KEYS)}; "
                "remove or rename it"
            )
        if key == "scenario":
            if not isinstance(value, str):
                raise ConfigError(f"budgets {source}: scenario = {value!r} must be a string")
            scenario = value
        elif key in METRICS:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"budgets {source}: {key} must be a table like [{key}] with p99_ms = ..."
                )
            table: dict[str, float] = {}
            for pkey, pvalue in value.items():
                if pkey not in PERCENTILE_KEYS:
                    raise ConfigError(
                        f"budgets {source}: [{key}] {pkey!r} is not a budget key; known: "
                        f"{', '.join(PERCENTILE_KEYS)}; remove or rename it"
                    )
                table[pkey] = _number(source, f"{key}.{pkey}", pvalue)
            percentiles[key] = table
        else:
            number = _number(source, key, value)
            if key in RATIO_KEYS and not 0 <= number <= 1:
                raise ConfigError(
                    f"budgets {source}: {key} = {value!r} must be a ratio between 0 and 1"
                )
            limits[key] = number
    return Budgets(source=source, scenario=scenario, limits=limits, percentiles=percentiles)


def _number(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigError(f"budgets {source}: {key} = {value!r} must be a finite number >= 0; "
                          "fix the value")
    return float(value)


def load_budgets(path: str | Path) -> Budgets:
    """Read and validate a budgets TOML file."""
    file = Path(path)
    data = read_toml(file, missing=f"budgets file {str(path)!r} does not exist; "
                                   "pass an existing path")
    return parse_budgets(data, source=str(file))


def verdicts_ok(verdicts: list[Verdict]) -> bool:
    return all(v.ok for v in verdicts)
