"""Hypothesis profiles for the property tests, and a runner that makes failures replayable.

Profiles: `ci` (bounded: a property test stays under a minute per endpoint), `ci-full` (the
same search without its time budget: all of it, however fast the machine; the defect matrix
runs it) and `deep` (nightly: thousands of steps). Pick one with `--hypothesis-profile` or
`IM_HARNESS_PROFILE`.

`run_machine` runs a `RuleBasedStateMachine` with a known seed. On failure it prints the
shrunk steps, the seed and one command that replays them, and stores all three under
`reports/properties/`.

A profile with a time budget (`ci`) searches in phases: each phase is a hypothesis run of a few
examples with its own seed (the run's seed, then seed+1, ...), and no phase starts once the
budget is spent, so a slow endpoint (a real server, a loaded machine) runs fewer examples in
the same minute instead of more minutes. For one seed the phases are the same sequence (as far
as the endpoint behaves the same), and a failure names its phase's seed: given that seed, the
first phase is a whole one, and hypothesis' examples for one seed are a prefix of those of a
longer run, so the replay's first phase starts with the failing phase's examples.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, Verbosity, seed, settings
from hypothesis.reporting import with_reporter
from hypothesis.stateful import RuleBasedStateMachine

from harness.errors import ConfigError

PROFILE_ENV = "IM_HARNESS_PROFILE"
DEFAULT_PROFILE = "ci"
_QUIET_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

PROFILES: dict[str, dict[str, Any]] = {
    # One example is a fresh app on a live service, most of a second: 40 fit the ci minute.
    "ci": {"max_examples": 40, "stateful_step_count": 20},
    "ci-full": {"max_examples": 40, "stateful_step_count": 20},
    "deep": {"max_examples": 400, "stateful_step_count": 60},
}
# Seconds hypothesis may spend shrinking one failure (its own default is 300).
SHRINK_SECONDS = {"ci": 20.0, "ci-full": 20.0, "deep": 300.0}
# Seconds of search per run (None: max_examples decides alone). A phase starts only when the
# slowest example so far says one more fits; the first (one example) always runs. A phase's
# examples may be slower than any before them (a restart of a real server), and shrinking a
# failure may add SHRINK_SECONDS.
BUDGET_SECONDS: dict[str, float | None] = {"ci": 45.0, "ci-full": None, "deep": None}
PHASE_EXAMPLES = 8  # the most examples one phase runs (a replay's first phase runs this many)


def register_profiles() -> None:
    """Register `ci` and `deep` with hypothesis (idempotent)."""
    for name, values in PROFILES.items():
        settings.register_profile(
            name,
            deadline=None,  # steps talk to a real service; their time is not the property
            database=None,  # a failure replays from its printed seed, not from a local cache
            print_blob=True,
            suppress_health_check=_QUIET_CHECKS,
            **values,
        )


def profile_name(option: str | None = None) -> str:
    """The profile to run: the command line's, else `IM_HARNESS_PROFILE`, else `ci`."""
    register_profiles()
    name = option or os.environ.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE
    try:
        settings.get_profile(name)
    except Exception:
        known = ", ".join(PROFILES)
        where = "--hypothesis-profile" if option else PROFILE_ENV
        raise ConfigError(
            f"{where}={name!r} is not a registered hypothesis profile; use one of: {known}"
        ) from None
    return name


@dataclass(frozen=True)
class Failure:
    """A property failure: what broke, the shrunk steps, and how to replay them."""

    test: str
    seed: int
    profile: str
    steps: str
    error: str
    command: str

    def to_markdown(self) -> str:
        return (
            f"# Property failure: {self.test}\n\n"
            f"- seed: {self.seed}\n- profile: {self.profile}\n\n"
            f"Replay:\n\n```\n{self.command}\n```\n\n"
            f"Shrunk steps:\n\n```\n{self.steps}\n```\n\n"
            f"Error:\n\n```\n{self.error}\n```\n"
        )


def replay_command(nodeid: str, seed_value: int, profile: str, extra: Sequence[str] = ()) -> str:
    """`pytest <nodeid> --hypothesis-seed=N --hypothesis-profile=P ...`, shell-quoted."""
    args = ["pytest", nodeid, f"--hypothesis-seed={seed_value}", f"--hypothesis-profile={profile}"]
    return shlex.join([*args, *extra])


def run_machine(
    factory: type[RuleBasedStateMachine],
    *,
    test: str,
    profile: str = DEFAULT_PROFILE,
    seed_value: int | None = None,
    replay_args: Sequence[str] = (),
    report_dir: Path | None = None,
    echo: Callable[[str], object] = print,
    budget_s: float | None | Literal["profile"] = "profile",
) -> Search:
    """Run the state machine under `profile` with a known seed; on failure report and re-raise.

    `budget_s` (default: the profile's `BUDGET_SECONDS`) bounds the search time in phases (see
    the module docstring). Returns what was searched; the raised error carries a note with the
    steps and the replay command.
    """
    register_profiles()
    used = seed_value if seed_value is not None else random.SystemRandom().randrange(2**31)
    base = settings.get_profile(profile)
    budget = BUDGET_SECONDS.get(profile) if budget_s == "profile" else budget_s
    search = Search(seed=used, profile=profile, budget_s=budget)
    counted = _counting(factory, search)
    start = time.monotonic()
    while search.examples < base.max_examples:
        left = base.max_examples - search.examples
        if budget is None:
            size = left
        elif not search.phases:
            # A random search first learns the endpoint's pace from one example; a given seed
            # (a replay, a fixed-seed matrix) starts with a whole phase, which the failing phase
            # of the search that printed the seed is the start of.
            size = 1 if seed_value is None else min(left, PHASE_EXAMPLES)
        else:
            # As many as the rest of the budget fits at the slowest example's pace so far;
            # none: the search ends.
            spent = time.monotonic() - start
            fits = int((budget - spent) / search.slowest_s) if search.slowest_s > 0 else left
            size = min(left, PHASE_EXAMPLES, fits)
            if size < 1:
                search.stopped_by_budget = True
                break
        phase_seed = used + search.phases
        search.phases += 1
        before = search.examples
        _run_phase(counted, base, size, phase_seed, test=test, profile=profile,
                   replay_args=replay_args, report_dir=report_dir, echo=echo)
        if budget is None or search.examples == before:
            break  # one search decides alone; or hypothesis found nothing more to try
    search.seconds = time.monotonic() - start
    return search


@dataclass
class Search:
    """What one `run_machine` searched: examples run, in how many phases, in what time."""

    seed: int
    profile: str
    budget_s: float | None
    examples: int = 0
    phases: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0  # the longest example so far
    stopped_by_budget: bool = False

    def summary(self) -> str:
        why = f", stopped by the {self.budget_s:g}s budget" if self.stopped_by_budget else ""
        return (f"{self.examples} examples in {self.phases} phase(s), {self.seconds:.1f}s "
                f"(seed {self.seed}, profile {self.profile}{why})")


def _counting(factory: type[RuleBasedStateMachine], search: Search) -> type[RuleBasedStateMachine]:
    """`factory`, counting every example (one machine per example) and its time into `search`."""

    class Counted(factory):  # type: ignore[valid-type, misc]
        def __init__(self) -> None:
            search.examples += 1
            self._began = time.monotonic()
            super().__init__()

        def teardown(self) -> None:
            try:
                super().teardown()
            finally:
                search.slowest_s = max(search.slowest_s, time.monotonic() - self._began)

    Counted.__name__ = Counted.__qualname__ = factory.__name__
    return Counted


def _run_phase(
    factory: type[RuleBasedStateMachine],
    base: settings,
    size: int,
    phase_seed: int,
    *,
    test: str,
    profile: str,
    replay_args: Sequence[str],
    report_dir: Path | None,
    echo: Callable[[str], object],
) -> None:
    from hypothesis.stateful import get_state_machine_test

    test_fn = get_state_machine_test(factory, settings=settings(base, max_examples=size))
    test_fn = seed(phase_seed)(test_fn)
    lines: list[str] = []

    def collect(text: object) -> None:
        lines.append(str(text))

    try:
        with with_reporter(collect), _shrink_budget(SHRINK_SECONDS.get(profile)):
            test_fn()
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise
        steps = "\n".join(ln for ln in [*lines, *_notes(exc)] if ln.strip())
        failure = Failure(
            test=test,
            seed=phase_seed,
            profile=profile,
            steps=steps or "(hypothesis reported no steps)",
            error=f"{type(exc).__name__}: {exc}",
            command=replay_command(test, phase_seed, profile, replay_args),
        )
        where = _store(failure, report_dir)
        summary = (
            f"property {test} failed (seed {phase_seed}, profile {profile}).\n"
            f"Shrunk steps:\n{failure.steps}\n"
            f"Replay with:\n  {failure.command}\n"
            f"Stored in {where}"
        )
        echo(summary)
        exc.add_note(summary)
        raise
    if base.verbosity >= Verbosity.verbose and lines:
        echo("\n".join(lines))


def _notes(exc: BaseException) -> list[str]:
    """The notes hypothesis attached (the failing steps), also from inside exception groups."""
    out = [str(n) for n in getattr(exc, "__notes__", ())]
    for inner in getattr(exc, "exceptions", ()):
        out += _notes(inner)
    return out


@contextlib.contextmanager
def _shrink_budget(seconds: float | None) -> Iterator[None]:
    """Bound hypothesis' shrinking time: a failing example here is a live run of a second.

    Hypothesis has no setting for it, so this adjusts its engine's module constant, and leaves
    it alone if a future version no longer has it.
    """
    from hypothesis.internal.conjecture import engine

    saved = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if seconds is None or saved is None:
        yield
        return
    engine.MAX_SHRINKING_SECONDS = seconds  # type: ignore[assignment]
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = saved


def _store(failure: Failure, report_dir: Path | None) -> Path:
    folder = report_dir or Path("reports") / "properties"
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", failure.test.split("::")[-1]).strip("_") or "property"
    path = folder / f"{stem}-seed{failure.seed}.md"
    path.write_text(failure.to_markdown())
    return path


__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_ENV",
    "Failure",
    "Search",
    "profile_name",
    "register_profiles",
    "replay_command",
    "run_machine",
]
