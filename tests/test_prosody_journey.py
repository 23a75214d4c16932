"""The packaged upgrade journey on examples/prosody.toml: Prosody 0.12 -> 13 with clients live.

Groups (XEP-0045 rooms) are written on 0.12 and read back on 13; the live senders' resends
after the acks the restart lost are stored once (the adapter reads the archive before it sends
a client id again, Prosody does not deduplicate on origin-id); the rollback is a fact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.timing import units
from harness.xmpp.launcher import DEFAULT_BINARIES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_journey_suite_passes_on_prosody(tmp_path: Path) -> None:
    missing = [b for b in DEFAULT_BINARIES.values() if not Path(b).exists()]
    if missing:
        pytest.skip(f"Prosody is not installed here ({', '.join(missing)}); .ci/run installs it")
    results = tmp_path / "allure"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_upgrade.py", "-q", "-p", "no:cacheprovider",
         "--im-config", "examples/prosody.toml", "--alluredir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=units(300), check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    record = json.loads((results / "im-journey.json").read_text())
    assert record["server"].startswith("Prosody 0.12"), record["server"]
    status = {s["name"]: s["status"] for s in record["steps"]}
    assert "failed" not in status.values(), record["steps"]
    for ran in ("live continuity: no acknowledged message lost or duplicated",
                "written before -> readable after: history pages",
                "written before -> readable after: groups, members and roles",
                "offline queue delivered exactly once after the upgrade",
                "v1 clients converse with v2 clients after the upgrade",
                "rollback drill"):
        assert status[ran] == "passed", (ran, record["steps"])
    live = [g for g in record["gaps"].values() if "acks" in g]  # the live senders' gaps
    assert live, record["gaps"]
    assert all(g["acks"] > 0 for g in live), record["gaps"]
