"""The one backoff policy: growth, cap, jitter bounds, reproducibility, bad parameters."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from harness.backoff import Backoff


def test_ceiling_grows_by_the_factor_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, jitter="none")
    assert [backoff.delay(k) for k in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    tripling = Backoff(1.0, 100.0, factor=3.0, jitter="none")
    assert [tripling.ceiling(k) for k in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_thousands_of_attempts_stay_at_the_cap() -> None:
    """An unlimited reconnect loop must never overflow (2.0 ** 1100 does)."""
    assert Backoff(0.5, 10.0, jitter="none").delay(5000) == 10.0
    assert Backoff(0.0, 10.0, jitter="none").delay(5000) == 0.0
    assert 0.0 <= Backoff(0.5, 10.0).delay(5000) <= 10.0


def test_full_jitter_draws_uniformly_below_the_ceiling() -> None:
    backoff = Backoff(0.02, 0.32, rng=random.Random(3))
    for k in range(8):
        draws = [backoff.delay(k) for _ in range(200)]
        ceiling = min(0.32, 0.02 * 2**k)
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < ceiling * 0.2, "no short delays: not spread over [0, ceiling]"
        assert max(draws) > ceiling * 0.8, "no long delays: not spread over [0, ceiling]"


def test_full_jitter_is_ceiling_times_one_draw() -> None:
    """The adapters' seeded delays are the same as before: uniform(0, ceiling) with one draw."""
    backoff, rng = Backoff(0.5, 10.0, rng=random.Random(7)), random.Random(7)
    assert [backoff.delay(k) for k in range(10)] == [
        rng.uniform(0.0, min(10.0, 0.5 * 2**k)) for k in range(10)
    ]


def test_partial_jitter_only_shortens_by_its_fraction() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(0))
    for k in range(6):
        ceiling = min(1.0, 0.1 * 2**k)
        for _ in range(50):
            assert ceiling * 0.5 <= backoff.delay(k) <= ceiling


def test_same_seed_same_delays_and_no_jitter_draws_nothing() -> None:
    a, b = Backoff(1, 60, rng=random.Random("s")), Backoff(1, 60, rng=random.Random("s"))
    assert [a.delay(k) for k in range(20)] == [b.delay(k) for k in range(20)]
    rng = random.Random(1)
    state = rng.getstate()
    Backoff(1, 60, jitter="none", rng=rng).delay(3)
    assert rng.getstate() == state


async def test_sleep_waits_the_delay_it_returns() -> None:
    backoff = Backoff(0.05, 0.05, jitter="none")
    started = time.monotonic()
    waited = await backoff.sleep(4)
    assert waited == 0.05
    assert time.monotonic() - started >= 0.045
    assert await asyncio.wait_for(Backoff(0, 0).sleep(0), 1) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"base_s": -1}, "base_s=-1"), ({"cap_s": float("inf")}, "cap_s=inf"),
     ({"factor": 0.5}, "factor=0.5"), ({"jitter": 1.5}, "jitter=1.5"),
     ({"jitter": "half"}, "jitter='half'"), ({"base_s": True}, "base_s=True")],
)
def test_bad_parameters_name_the_parameter(kwargs: dict, named: str) -> None:
    params = {"base_s": 0.5, "cap_s": 10.0, **kwargs}
    with pytest.raises(ValueError, match=f"Backoff: {named} is not allowed"):
        Backoff(**params)


def test_attempts_count_from_zero() -> None:
    with pytest.raises(ValueError, match="attempt=-1"):
        Backoff(1, 2).delay(-1)
