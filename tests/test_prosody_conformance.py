"""The conformance kit passes for the xmpp adapter on a real Prosody (13, the new endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_config
from harness.conformance import Outcome, run_conformance
from harness.xmpp.launcher import DEFAULT_BINARIES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_xmpp_adapter_conforms() -> None:
    if not Path(DEFAULT_BINARIES["13"]).exists():
        pytest.skip(f"Prosody 13 is not installed ({DEFAULT_BINARIES['13']}); .ci/run does it")
    results = run_conformance(load_config(ROOT / "examples" / "prosody.toml"), "new")
    failed = {r.clause: r.reason for r in results if r.outcome is Outcome.FAIL}
    assert not failed, failed
    got = {r.clause: r for r in results}
    # What Prosody can show, the kit saw: these are not waved through as n/a.
    for clause in ("send.ack", "events.message", "errors.unauthorized", "errors.not_found",
                   "lifecycle.drop", "lifecycle.close", "history.paging",
                   "capability.offline", "capability.history", "capability.recall",
                   "capability.receipts", "capability.groups", "capability.roles",
                   "capability.mute", "capability.mute_all"):
        assert got[clause].outcome is Outcome.PASS, got[clause]
    # Mute is offered (voice, XEP-0045 §8.4) and checked as declared; mute-all refuses.
    assert got["capability.mute"].reason.startswith("declared;"), got["capability.mute"]
    assert got["capability.mute_all"].reason.startswith("not declared;"), got["capability.mute_all"]
