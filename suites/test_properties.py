"""Property tests: a small world of users on each endpoint keeps every IM guarantee.

Hypothesis drives sends, group posts, recalls, read marks, disconnects, reconnects, network
faults and server restarts against each configured endpoint (old and new, each its own test);
the oracle judges after every step and once more when the world has settled. A rule the
endpoint cannot take (a restart where the harness did not start the server, a fault where it is
not on loopback, recall without the capability) is off there, and the test says which and why.
Profile `ci` by default; `--hypothesis-profile deep` (or IM_HARNESS_PROFILE=deep) for the
nightly run. A failure prints its shrunk steps and one command that replays them, and stores
both under reports/properties/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.testkit import WorldContext, WorldMachine, profile_name, run_machine

pytestmark = pytest.mark.slow


def _replay_args(config: pytest.Config, defects: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for flag in ("--im-config", "--im-endpoints"):
        value = config.getoption(flag)
        if value:
            args.append(f"{flag}={value}")
    return args + [f"--im-defect={name}" for name in defects]


def test_conversations_keep_their_guarantees(
    endpoint: Any,
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
    # Every example's faults land on this test's timeline.
    context = WorldContext.for_endpoint(endpoint, timeline=fault_timeline)
    for rule, why in context.disabled().items():
        note = f"rule {rule} is off: {why}"
        print(note)  # in the test's output, and in Allure's stdout attachment
        request.node.user_properties.append(("disabled rule", note))

    class Machine(WorldMachine):
        pass

    Machine.context = context
    search = run_machine(
        Machine,
        test=request.node.nodeid,
        profile=profile,
        seed_value=int(seed) if seed is not None else None,
        replay_args=_replay_args(config, im_session.defects),
        report_dir=Path(config.rootpath) / "reports" / "properties",
    )
    print(f"property run on endpoint {endpoint.name!r}: {search.summary()}")
