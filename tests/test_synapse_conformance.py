"""The conformance kit passes for the matrix adapter on a real Synapse (old and new)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_config
from harness.conformance import Outcome, run_conformance
from harness.errors import HarnessError
from harness.matrix.launcher import install_synapse

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"old": "1.141.0", "new": "1.163.2"}


@pytest.mark.parametrize("name", ["old", "new"])
def test_the_matrix_adapter_conforms(name: str) -> None:
    try:
        install_synapse(VERSIONS[name])
    except HarnessError as exc:
        pytest.skip(f"Synapse cannot be installed here: {str(exc).splitlines()[0]}")
    results = run_conformance(load_config(ROOT / "examples" / "synapse.toml"), name)
    failed = {r.clause: r.reason for r in results if r.outcome is Outcome.FAIL}
    assert not failed, failed
    got = {r.clause: r for r in results}
    # What Synapse can show, the kit saw: these are not waved through as n/a.
    for clause in ("send.ack", "events.message", "errors.unauthorized", "errors.forbidden",
                   "errors.not_found", "lifecycle.drop", "lifecycle.close", "history.paging",
                   "capability.recall", "capability.receipts", "capability.idempotent_send"):
        assert got[clause].outcome is Outcome.PASS, got[clause]
    # The rules the matrix adapter enforces itself are declared, and the kit checks them.
    assert got["declared.client_enforced"].outcome is Outcome.PASS, got["declared.client_enforced"]
