"""CI: the regression suites against real Prosody servers (0.12 old, 13 new), with the one switch.

Runs `python -m pytest --pyargs harness.suites --im-config examples/prosody.toml` as a
subprocess (the command a user types, with the asyncio ini flags the sign-off passes) and reads
its junit xml: no failure, both endpoints exercised, every skip explained by a capability the
endpoint lacks or a limitation it declares. In three parts (old, new, the parity test of the
two) so that `pytest -n 2` runs them side by side: the Prosody part of CI stays under 5 minutes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.report.signoff import ASYNCIO_INI
from harness.timing import units
from harness.xmpp.launcher import DEFAULT_BINARIES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ENDPOINT = re.compile(r"endpoint '(old|new)'")
LIMITATION = re.compile(
    r"does not offer capability '\w+'"
    r"|has no admin API"
    r"|declares no [\w ]+"
    r"|is too large to reach in a suite"
    r"|does not offer protocol '[\w.-]+'"
    r"|is not started by the harness"
)


PARITY = "test_same_conversation_reads_the_same_on_old_and_new"  # needs both endpoints
# The suites in three parts that `pytest -n 2` runs side by side: each endpoint's, and the
# one test that compares the two.
PARTS = {
    "old": (["--im-endpoints", "old", "-k", f"not {PARITY}"], {"old": 12}),
    "new": (["--im-endpoints", "new", "-k", f"not {PARITY}"], {"new": 12}),
    "parity": (["-k", PARITY], {"": 1}),  # one test of both endpoints: no [name] in its id
}


@pytest.mark.parametrize("part", sorted(PARTS))
def test_suites_pass_on_prosody_with_declared_skips_only(tmp_path: Path, part: str) -> None:
    missing = [b for b in DEFAULT_BINARIES.values() if not Path(b).exists()]
    if missing:
        pytest.skip(f"Prosody is not installed here ({', '.join(missing)}); .ci/run installs it")
    selection, least = PARTS[part]
    junit = tmp_path / "suites.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "harness.suites", "--im-config",
         str(ROOT / "examples" / "prosody.toml"), *ASYNCIO_INI, "-q", "-p", "no:cacheprovider",
         "-m", "not slow", *selection, f"--junitxml={junit}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=units(600), check=False,
    )
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"the suites failed on Prosody (exit {proc.returncode}):\n{tail}"
    passed: list[str] = []
    unexplained: list[str] = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            passed.append(case.get("name", ""))
            continue
        reason = skipped.get("message", "")
        if not (ENDPOINT.search(reason) and LIMITATION.search(reason)):
            unexplained.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
    assert not unexplained, "skips that name no capability or limitation:\n" + "\n".join(
        unexplained)
    for endpoint, at_least in least.items():
        ran = [n for n in passed if n.endswith(f"[{endpoint}]" if endpoint else PARITY)]
        assert len(ran) >= at_least, f"only {len(ran)} tests passed on {endpoint!r}:\n{tail}"
