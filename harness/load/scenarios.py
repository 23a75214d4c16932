"""Load scenarios: each registered once by name, then chosen, weighted and tuned per run.

A scenario is one decorated coroutine: what one locust user runs (a "unit") on a `LoadRun`,
with its parameters' defaults, a one-line description and its default budgets file::

    from harness.load.scenarios import packaged_budgets, scenario

    @scenario("ping", defaults={"weight": 1, "rate": 1.0}, description="one user pinging itself",
              budgets=Path(__file__).parent / "budgets" / "ping.toml")
    async def ping(run: LoadRun, params: Mapping[str, float], index: int) -> None:
        ...

The built-in scenarios live in `harness/load/units.py`; other packages may register theirs
through the `im_harness.scenarios` entry-point group (pointing at a `Scenario`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from harness.config import read_toml
from harness.errors import ConfigError
from harness.load.phases import PARAM as PHASE_PARAM
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.load.driver import LoadRun

# unit(run, params, index): one user's share of the scenario, run until cancelled or stopped
Unit = Callable[["LoadRun", Mapping[str, float], int], Awaitable[None]]
# shape(params) -> (senders per unit, each sending `rate` per second; recipients per send)
Shape = Callable[[Mapping[str, float]], tuple[float, float]]


def packaged_budgets(name: str) -> Traversable:
    """A budgets file shipped with the package: `harness/loadtests/budgets/<name>`."""
    return files("harness.loadtests").joinpath("budgets", name)


@dataclass(frozen=True)
class Scenario:
    """A registered load scenario."""

    name: str
    unit: Unit
    defaults: Mapping[str, float]  # every parameter with its default; `weight` included
    description: str
    budgets: Traversable | Path | None = None  # judged when the run names no --budgets
    shape: Shape | None = None  # what a unit sends, for the offered rate printed at start


class _Scenarios(Registry[Scenario]):
    """The scenario registry; the built-in scenarios register on the first lookup."""

    def _load_entry_points(self) -> None:
        if not self._loaded:
            import harness.load.units  # noqa: F401 - registers the built-in scenarios

        super()._load_entry_points()

    def names(self) -> list[str]:
        """In registration order (the built-ins first), as the help and errors list them."""
        self._load_entry_points()
        return list(self._items)


scenarios: Registry[Scenario] = _Scenarios("scenario", group="im_harness.scenarios")


@overload
def scenario(name: str, *, unit: Unit, defaults: Mapping[str, float], description: str,
             budgets: Traversable | Path | None = None, shape: Shape | None = None
             ) -> Scenario: ...


@overload
def scenario(name: str, *, unit: None = None, defaults: Mapping[str, float], description: str,
             budgets: Traversable | Path | None = None, shape: Shape | None = None
             ) -> Callable[[Unit], Unit]: ...


def scenario(name: str, *, unit: Unit | None = None, defaults: Mapping[str, float],
             description: str, budgets: Traversable | Path | None = None,
             shape: Shape | None = None) -> Scenario | Callable[[Unit], Unit]:
    """Register a scenario: as a decorator on its unit, or at once with `unit=`."""
    # every scenario takes `lockstep` (its senders' phases: 0 spread evenly, 1 in lock-step)
    values = {"weight": 1.0, PHASE_PARAM: 0.0, **{k: float(v) for k, v in defaults.items()}}

    def register(fn: Unit) -> Scenario:
        item = Scenario(name=name, unit=fn, defaults=values, description=description,
                        budgets=budgets, shape=shape)
        scenarios.register(name)(item)
        return item

    if unit is not None:
        return register(unit)

    def deco(fn: Unit) -> Unit:
        register(fn)
        return fn

    return deco


def _known() -> str:
    return ", ".join(scenarios.names())


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
        if name not in scenarios:
            raise ConfigError(f"--scenario {name!r} is not a scenario; known: {_known()}")
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
        raise ConfigError(f"--scenario is empty; choose from {_known()}")
    return out


def load_params(path: str | Path | None) -> dict[str, dict[str, float]]:
    """Scenario parameters: the defaults, overridden by a TOML file of [scenario] tables."""
    params = {name: dict(scenarios.get(name).defaults) for name in scenarios.names()}
    if path is None:
        return params
    file = Path(path)
    data = read_toml(file, missing=f"--scenarios-file {str(path)!r} does not exist; "
                                   "pass an existing path")
    for name, table in data.items():
        if name not in params:
            raise ConfigError(f"scenarios {file}: [{name}] is not a scenario; known: {_known()}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"scenarios {file}: {name} must be a table [{name}]")
        for key, value in table.items():
            if key not in params[name]:
                raise ConfigError(
                    f"scenarios {file}: [{name}] {key!r} is not a parameter; known: "
                    f"{', '.join(params[name])}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                raise ConfigError(f"scenarios {file}: [{name}] {key} = {value!r} must be a "
                                  "finite number >= 0; fix the value")
            if key == PHASE_PARAM and value not in (0, 1):
                raise ConfigError(f"scenarios {file}: [{name}] {key} = {value!r} must be 0 "
                                  "(senders' phases spread evenly) or 1 (all in lock-step)")
            params[name][key] = float(value)
    return params


def plan(selection: str, params_file: str | Path | None = None,
         overrides: Mapping[str, float | None] | None = None) -> ScenarioPlan:
    """Build the plan for `--scenario`, the scenarios file, and per-run overrides (rate, ...)."""
    weights = parse_selection(selection)
    params = load_params(params_file)
    for name in weights:
        for key, value in (overrides or {}).items():
            if value is not None and key in params[name]:
                params[name][key] = float(value)
        weights[name] = weights[name] or max(1, int(params[name]["weight"]))
    cohort = params["canary"]["cohort"] if "canary" in params else 0
    if not 0 <= cohort <= 100:
        raise ConfigError(f"canary cohort = {cohort:g} must be a percentage from 0 to 100")
    return ScenarioPlan(weights=weights, params={n: params[n] for n in weights})
