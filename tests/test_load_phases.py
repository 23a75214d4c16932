"""Senders' schedule phases follow the setting: spread evenly by default, lock-step on request.

Behaviour, not timing: the intended send times a real run fires on (against the real reference
service) are checked against each sender's assigned phase, whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.contract import EndpointSettings
from harness.errors import ConfigError
from harness.load.driver import LoadRun
from harness.load.phases import PhaseMode, Phases, summarize, van_der_corput
from harness.load.scenarios import plan
from harness.reference.launcher import AppHandle, ReferenceService
from harness.session import open_endpoint
from harness.timing import units, until

RATE = 20.0  # sends per second per sender
UNITS = 4  # chat pairs: 4 schedules (both ends of a pair fire on its phase), 8 senders


@pytest.fixture(scope="module")
def service() -> Iterator[ReferenceService]:
    with ReferenceService() as svc:
        yield svc


@pytest.fixture(scope="module")
def app(service: ReferenceService) -> AppHandle:
    return service.create_app_sync(tier="pro")


def _circular(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def test_spread_phases_are_even_for_any_count_and_interleave_processes() -> None:
    assert sorted(van_der_corput(i) for i in range(8)) == [i / 8 for i in range(8)]
    one = Phases(PhaseMode.SPREAD)
    for n in range(1, 33):
        one.next()
        assert summarize([one.encode()])["largest_gap"] <= 2 / n
    first, second = (Phases(PhaseMode.SPREAD, process=p, processes=2) for p in (0, 1))
    for _ in range(4):
        first.next()
        second.next()
    both = summarize([first.encode(), second.encode()])
    assert both == {"mode": "spread", "senders": 8, "distinct_phases": 8, "largest_gap": 0.125}
    lock = Phases(PhaseMode.LOCKSTEP)
    for _ in range(5):
        lock.next()
    assert summarize([lock.encode()])["distinct_phases"] == 1


async def _run(service: ReferenceService, app: AppHandle, chosen: object) -> LoadRun:
    settings = EndpointSettings(
        name="new", adapter="reference", url=service.ws_url, app_id=app.app_id, protocol="v2",
        secrets={"app_key": app.app_key}, options={"api_url": service.api_url})
    endpoint = await open_endpoint(settings)
    run = LoadRun(endpoint, chosen)  # type: ignore[arg-type]
    try:
        for _ in range(UNITS):
            run.background(run.unit("chat"))

        def each_sent_three() -> bool:
            senders: dict[str, int] = {}
            for client_id in run.intended:
                sender = client_id.rpartition(":")[0]
                senders[sender] = senders.get(sender, 0) + 1
            return len(senders) == 2 * UNITS and min(senders.values()) >= 3

        await until(each_sent_three, timeout=units(20), interval=0.05,
                    what="every sender's first three sends")
        payload = await run.finish(units(3))
    finally:
        await endpoint.aclose()
    run.payload = payload  # type: ignore[attr-defined]
    return run


def _fractions(run: LoadRun) -> dict[str, set[float]]:
    """Each sender's intended send times as fractions of its interval (its grid's phase)."""
    out: dict[str, set[float]] = {}
    for client_id, intended in run.intended.items():
        sender = client_id.rpartition(":")[0]
        out.setdefault(sender, set()).add(round((intended * RATE) % 1.0, 6) % 1.0)
    return out


async def test_senders_fire_on_their_spread_phases(service: ReferenceService,
                                                   app: AppHandle) -> None:
    run = await _run(service, app, plan("chat", overrides={"rate": RATE}))
    schedule = summarize(run.payload["schedule"])  # type: ignore[attr-defined]
    assert schedule == {"mode": "spread", "senders": UNITS, "distinct_phases": UNITS,
                        "largest_gap": 1 / UNITS}
    phases = [p for part in run.payload["schedule"] for p in part["phases"]]  # type: ignore[attr-defined]
    fractions = _fractions(run)
    for sender, seen in fractions.items():
        assert len(seen) == 1 or max(_circular(a, b) for a in seen for b in seen) < 1e-5, \
            f"{sender} fired off its own grid: {sorted(seen)}"
    firing = sorted(next(iter(seen)) for seen in fractions.values())
    for fraction in firing:
        assert min(_circular(fraction, p) for p in phases) < 1e-5, (firing, phases)
    assert len(firing) == 2 * UNITS
    assert len({round(f, 4) for f in firing}) == UNITS, firing  # a pair shares its phase


async def test_a_scenario_can_ask_for_lockstep(service: ReferenceService, app: AppHandle,
                                               tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[chat]\nlockstep = 1\n", encoding="utf-8")
    run = await _run(service, app, plan("chat", tmp_path / "s.toml", {"rate": RATE}))
    schedule = summarize(run.payload["schedule"])  # type: ignore[attr-defined]
    assert schedule == {"mode": "lockstep", "senders": UNITS, "distinct_phases": 1,
                        "largest_gap": 1.0}
    for sender, seen in _fractions(run).items():
        assert all(_circular(f, 0.0) < 1e-5 for f in seen), f"{sender}: {sorted(seen)}"


def test_lockstep_must_be_0_or_1(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[chat]\nlockstep = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[chat\] lockstep = 2 must be 0 .* or 1"):
        plan("chat", tmp_path / "s.toml")
