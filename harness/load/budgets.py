"""Budgets: what a load run must stay within, read from TOML and judged on merged metrics.

Example budgets file::

    max_error_ratio = 0.01
    min_connect_success_ratio = 0.99
    max_loss = 0
    max_duplicates = 0

    [send_ack]
    p50_ms = 50
    p99_ms = 500

    [compare]            # old vs new (harness.load.compare): a regression must beat all three
    relative = 0.25      # new worse than old by more than 25 %,
    absolute_ms = { p50 = 10, p95 = 25, p99 = 50 }   # by more than this (or one number),
                         # and by more than the A/A noise (old against old again)
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
COMPARE = "compare"
TOP_KEYS = ("scenario", *RATIO_KEYS, *COUNT_KEYS, *METRICS, COMPARE)
COMPARE_PERCENTILES = ("p50", "p75", "p90", "p95", "p99", "p999", "max")
COMPARE_KEYS = ("metrics", "percentiles", "relative", "absolute_ms", "error_ratio_absolute",
                "deliveries_drop", "cpu_growth", "rss_growth")
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
class CompareRules:
    """When new is a regression against old under the same load (the `[compare]` table)."""

    metrics: tuple[str, ...] = ("send_ack", "delivery")
    percentiles: tuple[str, ...] = ("p50", "p95", "p99")
    relative: float = 0.25  # new/old - 1 must exceed this
    absolute_ms: Mapping[str, float] = field(
        default_factory=lambda: {"p50": 10.0, "p95": 25.0, "p99": 50.0})  # per percentile
    error_ratio_absolute: float = 0.005  # error ratio up by more than this
    deliveries_drop: float = 0.2  # deliveries/s down by more than this fraction
    cpu_growth: float = 1.5  # server CPU s per delivery new/old beyond this ratio
    rss_growth: float = 1.5  # server peak RSS new/old beyond this ratio

    def absolute(self, percentile: str) -> float:
        return float(self.absolute_ms.get(percentile, max(self.absolute_ms.values(),
                                                           default=0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "percentiles": list(self.percentiles),
                "relative": self.relative, "absolute_ms": dict(self.absolute_ms),
                "error_ratio_absolute": self.error_ratio_absolute,
                "deliveries_drop": self.deliveries_drop, "cpu_growth": self.cpu_growth,
                "rss_growth": self.rss_growth}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareRules:
        return parse_compare(data, source="compare rules")


@dataclass(frozen=True)
class Budgets:
    """A validated budgets file."""

    source: str
    scenario: str | None = None
    limits: Mapping[str, float] = field(default_factory=dict)  # top-level ratio/count keys
    percentiles: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # metric -> key
    compare: CompareRules = field(default_factory=CompareRules)

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
    compare = CompareRules()
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
        elif key == COMPARE:
            compare = parse_compare(value, source=source)
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
    return Budgets(source=source, scenario=scenario, limits=limits, percentiles=percentiles,
                   compare=compare)


def parse_compare(value: Any, *, source: str) -> CompareRules:
    """Validate a `[compare]` table; unset keys keep `CompareRules`' defaults."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"budgets {source}: compare must be a table like [compare] with "
                          "relative = 0.25")
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"budgets {source}: [compare] {key}"
        if key not in COMPARE_KEYS:
            raise ConfigError(f"budgets {source}: [compare] {key!r} is not a compare key; "
                              f"known: {', '.join(COMPARE_KEYS)}; remove or rename it")
        if key in ("metrics", "percentiles"):
            known = METRICS if key == "metrics" else COMPARE_PERCENTILES
            if not isinstance(item, list) or not item or any(i not in known for i in item):
                raise ConfigError(f"{where} = {item!r} must be a non-empty list from "
                                  f"{', '.join(known)}; fix the value")
            out[key] = tuple(item)
        elif key == "absolute_ms":
            if isinstance(item, Mapping):
                bad = [k for k in item if k not in COMPARE_PERCENTILES]
                if bad:
                    raise ConfigError(f"{where}: {bad[0]!r} is not a percentile; known: "
                                      f"{', '.join(COMPARE_PERCENTILES)}")
                out[key] = {k: _number(source, f"compare.absolute_ms.{k}", v)
                            for k, v in item.items()}
            else:
                number = _number(source, "compare.absolute_ms", item)
                out[key] = {p: number for p in COMPARE_PERCENTILES}
        elif key in ("cpu_growth", "rss_growth"):
            number = _number(source, f"compare.{key}", item)
            if number < 1:
                raise ConfigError(f"{where} = {item!r} must be a ratio >= 1 (new/old); "
                                  "e.g. 1.5")
            out[key] = number
        else:
            number = _number(source, f"compare.{key}", item)
            if key != "relative" and number > 1:
                raise ConfigError(f"{where} = {item!r} must be a ratio between 0 and 1")
            out[key] = number
    return CompareRules(**out)


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
