"""The property runner (profiles, seeds, replayable failure reports) and the retry helper's math."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from harness.errors import ConfigError
from harness.properties import PROFILE_ENV, profile_name, register_profiles, run_machine
from harness.retry import backoff_s, send_with_retry


class Counter(RuleBasedStateMachine):
    """A tiny machine with a real bug: the total may never reach 3, but it can."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @rule(n=st.integers(min_value=0, max_value=2))
    def add(self, n: int) -> None:
        self.total += n

    @invariant()
    def below_three(self) -> None:
        assert self.total < 3, f"total reached {self.total}"


def test_profiles_are_registered_and_bounded() -> None:
    register_profiles()
    ci, deep = settings.get_profile("ci"), settings.get_profile("deep")
    assert ci.deadline is None
    assert ci.database is None
    assert ci.max_examples * ci.stateful_step_count <= 1000  # the ci minute
    full = settings.get_profile("ci-full")  # the same search, without the time budget
    assert (full.max_examples, full.stateful_step_count) == (ci.max_examples,
                                                             ci.stateful_step_count)
    assert deep.max_examples * deep.stateful_step_count >= 10_000  # thousands of steps


def test_profile_from_option_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert profile_name(None) == "ci"
    monkeypatch.setenv(PROFILE_ENV, "deep")
    assert profile_name(None) == "deep"
    assert profile_name("ci") == "ci"  # the command line wins
    monkeypatch.setenv(PROFILE_ENV, "nightly")
    with pytest.raises(ConfigError,
                       match=r"IM_HARNESS_PROFILE='nightly' .* use one of: ci, ci-full, deep"):
        profile_name(None)


def test_failure_prints_and_stores_steps_seed_and_one_replay_command(tmp_path: Path) -> None:
    printed: list[str] = []
    with pytest.raises(AssertionError, match="total reached") as info:
        run_machine(Counter, test="suites/x.py::test_counter", seed_value=1234,
                    replay_args=["--im-defect=drop_delivery"], report_dir=tmp_path,
                    echo=printed.append)
    [summary] = printed
    command = ("pytest suites/x.py::test_counter --hypothesis-seed=1234 "
               "--hypothesis-profile=ci --im-defect=drop_delivery")
    assert command in summary
    assert "state.add(" in summary  # the shrunk steps
    assert any(command in note for note in info.value.__notes__)
    [stored] = tmp_path.glob("*.md")
    assert stored.name == "test_counter-seed1234.md"
    text = stored.read_text()
    assert "seed: 1234" in text
    assert command in text
    assert "state.add(" in text


def test_the_same_seed_replays_the_same_shrunk_steps(tmp_path: Path) -> None:
    def steps(seed_value: int) -> str:
        printed: list[str] = []
        with pytest.raises(AssertionError):
            run_machine(Counter, test="t::c", seed_value=seed_value, report_dir=tmp_path,
                        echo=printed.append)
        body = printed[0].split("Shrunk steps:\n", 1)[1]
        return body.split("Replay with:", 1)[0]

    assert steps(99) == steps(99)


def test_a_passing_machine_reports_nothing(tmp_path: Path) -> None:
    class Fine(RuleBasedStateMachine):
        @rule()
        def noop(self) -> None:
            pass

    printed: list[str] = []
    run_machine(Fine, test="t::fine", seed_value=1, report_dir=tmp_path, echo=printed.append)
    assert printed == []
    assert list(tmp_path.iterdir()) == []


class FakeClock:
    """`harness.properties`' clock, moved on by the machine under test (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_slow_endpoint_runs_fewer_examples_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("harness.properties.time", clock)

    class TenSecondsAnExample(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            clock.now += 10.0

        @rule()
        def noop(self) -> None:
            pass

    search = run_machine(TenSecondsAnExample, test="t::slow", budget_s=45.0,
                         report_dir=tmp_path)
    # A first phase of one example (10 s) learns the pace; the next fits three more (40 s);
    # then none fits the 5 s left.
    assert (search.examples, search.phases) == (4, 2)
    assert search.stopped_by_budget
    assert "4 examples in 2 phase(s)" in search.summary()
    assert "stopped by the 45s budget" in search.summary()
    unbounded = run_machine(TenSecondsAnExample, test="t::slow", seed_value=3, budget_s=None,
                            report_dir=tmp_path)
    assert unbounded.examples >= settings.get_profile("ci").max_examples
    assert not unbounded.stopped_by_budget


def test_a_failure_found_within_the_budget_is_still_shrunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("harness.properties.time", clock)

    class SlowCounter(Counter):
        def __init__(self) -> None:
            super().__init__()
            clock.now += 1.0  # the budget would end the search after 5 examples

    printed: list[str] = []
    with pytest.raises(AssertionError, match="total reached"):
        run_machine(SlowCounter, test="t::c", budget_s=5.0, report_dir=tmp_path,
                    echo=printed.append)
    [summary] = printed
    # Shrinking ran past the budget: the steps are the minimal ones, not the first found.
    assert summary.count("state.add(") <= 2, summary
    # The printed seed replays it: a given seed's first phase starts with the failing phase.
    seed_value = int(summary.split("failed (seed ", 1)[1].split(",", 1)[0])
    replayed: list[str] = []
    with pytest.raises(AssertionError, match="total reached"):
        run_machine(SlowCounter, test="t::c", seed_value=seed_value, budget_s=5.0,
                    report_dir=tmp_path, echo=replayed.append)
    assert f"failed (seed {seed_value}," in replayed[0]


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    rng = random.Random(0)
    plain = [backoff_s(k, base=0.1, cap=1.0, jitter=0, rng=rng) for k in range(6)]
    assert plain == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    for k in range(6):
        jittered = backoff_s(k, base=0.1, cap=1.0, jitter=0.5, rng=rng)
        assert plain[k] * 0.5 <= jittered <= plain[k]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"attempts": 0}, "attempts=0"), ({"base": -1}, "base=-1"), ({"cap": float("nan")}, "cap=nan"),
     ({"jitter": 1.5}, "jitter=1.5"), ({"attempts": True}, "attempts=True")],
)
async def test_bad_retry_parameters_name_the_parameter(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"send_with_retry: {named} is not allowed"):
        await send_with_retry(object(), "bob", "hi", **kwargs)
