"""Scenario selection and parameters: names, weights and knobs, from TOML and the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import read_toml
from harness.errors import ConfigError

# scenario -> parameter -> default; every parameter is a number.
DEFAULTS: dict[str, dict[str, float]] = {
    "chat": {"weight": 1, "rate": 2.0},  # rate: messages/s per sender (both peers send)
    "group": {"weight": 1, "rate": 1.0, "group_size": 5},
    "churn": {"weight": 1, "rate": 1.0, "hold_s": 0.5},  # rate: connects/s per user
    "history": {"weight": 1, "rate": 2.0, "prefill": 30, "page": 10},
    "storm": {"weight": 1, "rate": 4.0, "receivers": 8, "every_s": 3.0, "offline_s": 0.5},
    "canary": {"weight": 1, "rate": 2.0, "cohort": 20},  # cohort: % of clients on v2
    "idle": {"weight": 1, "sessions": 10},  # connected sessions that only listen
}
SCENARIOS = tuple(DEFAULTS)
DESCRIPTIONS = {
    "chat": "1:1 chat between two peers in one process, both sending on a fixed schedule",
    "group": "group fan-out: the owner sends to a group of group_size members",
    "churn": "connect/login churn: log in, hold hold_s, log out, on a fixed schedule",
    "history": "history paging through prefill messages, page messages a page",
    "storm": "offline-reconnect storm: receivers drop and return together every every_s",
    "canary": "mixed old/new clients: cohort % of clients on v2, the rest on v1, chatting",
    "idle": "idle connected sessions (capacity)",
}


@dataclass(frozen=True)
class ScenarioPlan:
    """The chosen scenarios with their weights and parameters."""

    weights: Mapping[str, int]
    params: Mapping[str, Mapping[str, float]]

    @property
    def label(self) -> str:
        return "+".join(self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "params": {k: dict(v) for k, v in
                                                          self.params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioPlan:
        return cls(weights=dict(data["weights"]), params={k: dict(v) for k, v in
                                                          data["params"].items()})


def parse_selection(text: str) -> dict[str, int]:
    """`chat` or `chat:3,group:1` -> {name: weight}; unknown names are a usage error."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in DEFAULTS:
            raise ConfigError(
                f"--scenario {name!r} is not a scenario; known: {', '.join(SCENARIOS)}"
            )
        if weight:
            try:
                out[name] = int(weight)
            except ValueError:
                raise ConfigError(
                    f"--scenario {part!r}: weight {weight!r} is not an integer; write {name}:2"
                ) from None
            if out[name] < 1:
                raise ConfigError(f"--scenario {part!r}: weight must be >= 1")
        else:
            out[name] = 0  # filled from the config below
    if not out:
        raise ConfigError(f"--scenario is empty; choose from {', '.join(SCENARIOS)}")
    return out


def load_params(path: str | Path | None) -> dict[str, dict[str, float]]:
    """Scenario parameters: the defaults, overridden by a TOML file of [scenario] tables."""
    params = {name: dict(values) for name, values in DEFAULTS.items()}
    if path is None:
        return params
    file = Path(path)
    data = read_toml(file, missing=f"--scenarios-file {str(path)!r} does not exist; "
                                   "pass an existing path")
    for name, table in data.items():
        if name not in DEFAULTS:
            raise ConfigError(
                f"scenarios {file}: [{name}] is not a scenario; known: {', '.join(SCENARIOS)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"scenarios {file}: {name} must be a table [{name}]")
        for key, value in table.items():
            if key not in DEFAULTS[name]:
                raise ConfigError(
                    f"scenarios {file}: [{name}] {key!r} is not a parameter; known: "
                    f"{', '.join(DEFAULTS[name])}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"scenarios {file}: [{name}] {key} = {value!r} must be >= 0")
            params[name][key] = float(value)
    return params


def plan(selection: str, params_file: str | Path | None = None,
         overrides: Mapping[str, float] | None = None) -> ScenarioPlan:
    """Build the plan for `--scenario`, the scenarios file, and per-run overrides (rate, ...)."""
    weights = parse_selection(selection)
    params = load_params(params_file)
    for name in weights:
        for key, value in (overrides or {}).items():
            if value is not None and key in params[name]:
                params[name][key] = float(value)
        weights[name] = weights[name] or max(1, int(params[name]["weight"]))
    cohort = params["canary"]["cohort"]
    if not 0 <= cohort <= 100:
        raise ConfigError(f"canary cohort = {cohort:g} must be a percentage from 0 to 100")
    return ScenarioPlan(weights=weights, params={n: params[n] for n in weights})
