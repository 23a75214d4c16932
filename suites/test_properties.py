"""Property tests: a small world of v1 and v2 users keeps every IM guarantee, whatever happens.

Hypothesis drives sends, group posts, recalls, read marks, disconnects, reconnects, network
faults and service restarts against the real reference service; the oracle judges after every
step and once more when the world has settled. Profile `ci` by default; `--hypothesis-profile
deep` (or IM_HARNESS_PROFILE=deep) for the nightly run. A failure prints its shrunk steps and
one command that replays them, and stores both under reports/properties/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from harness.testkit import WorldContext, WorldMachine, profile_name, run_machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def world_context(im_session: Any) -> WorldContext:
    """The first endpoint whose server the harness started and administers (apps per example)."""
    for name in im_session.names:
        server = im_session.servers.get(name)
        if server is not None and server.app() is not None:
            return WorldContext(server=server, settings=im_session.settings(name))
    named = " and ".join(f"endpoint {name!r}" for name in im_session.names)
    pytest.skip(
        f"{named}: not started by the harness with an admin API (the property tests restart "
        "the server and create an app per example)"
    )


def _replay_args(config: pytest.Config, defects: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for flag in ("--im-config", "--im-endpoints"):
        value = config.getoption(flag)
        if value:
            args.append(f"{flag}={value}")
    return args + [f"--im-defect={name}" for name in defects]


def test_conversations_keep_their_guarantees(
    world_context: WorldContext,
    im_session: Any,
    fault_timeline: Any,
    request: pytest.FixtureRequest,
) -> None:
    """No acked message lost or duplicated, order kept, recalls and receipts consistent."""
    config = request.config
    try:
        profile = profile_name(config.getoption("--hypothesis-profile"))
    except Exception as exc:  # a bad profile name is a usage error, not a property failure
        pytest.fail(str(exc), pytrace=False)
    seed = config.getoption("--hypothesis-seed")
    world_context.timeline = fault_timeline  # every example's faults land on this test's

    class Machine(WorldMachine):
        context = world_context

    start = time.monotonic()
    run_machine(
        Machine,
        test=request.node.nodeid,
        profile=profile,
        seed_value=int(seed) if seed is not None else None,
        replay_args=_replay_args(config, im_session.defects),
        report_dir=Path(config.rootpath) / "reports" / "properties",
    )
    print(f"property run took {time.monotonic() - start:.1f}s (profile {profile})")
