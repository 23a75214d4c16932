"""CI: the regression suites against real Synapse homeservers, with the one switch.

Runs `python -m pytest suites --im-config examples/synapse.toml` as a subprocess (the same
command a user types) and reads its junit xml: no failure, both endpoints exercised, and every
skip explained by a capability the endpoint lacks or a limitation it declares.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from synapse_example import sqlite_example

from harness.errors import HarnessError
from harness.matrix.launcher import install_synapse
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ENDPOINT = re.compile(r"endpoint '(old|new)'")
# A skip must say which endpoint lacks what: a capability, an admin API, or a declared limit.
LIMITATION = re.compile(
    r"does not offer capability '\w+'"
    r"|has no admin API"
    r"|declares no \w+"
    r"|is too large to reach in a suite"
    r"|does not offer protocol '[\w.-]+'"
    r"|is not started by the harness"
    r"|not started by the harness with an admin API"
)


INTERRUPTED = """
import os, signal

def test_interrupted(im_session):
    with open("servers.txt", "w") as fh:
        for server in im_session.servers.values():
            fh.write(f"{server.pid} {server.server.data_dir}\\n")
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the session
"""


def test_ctrl_c_stops_the_embedded_synapses(tmp_path: Path) -> None:
    """The session started both homeservers; after Ctrl-C no process and no data dir is left."""
    (tmp_path / "test_interrupted.py").write_text(INTERRUPTED)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_interrupted.py", "-p", "no:cacheprovider",
         "--im-config", str(ROOT / "examples" / "synapse.toml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=units(120), check=False,
    )
    assert proc.returncode == 2, proc.stdout[-2000:]  # pytest's "interrupted"
    servers = [line.split(" ", 1) for line in (tmp_path / "servers.txt").read_text().splitlines()]
    assert len(servers) == 2
    for pid, data_dir in servers:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
        assert not Path(data_dir).exists(), f"{data_dir} was left behind"


def test_suites_pass_on_synapse_with_declared_skips_only(tmp_path: Path) -> None:
    for version in ("1.141.0", "1.163.2"):
        try:
            install_synapse(version)
        except HarnessError as exc:
            pytest.skip(f"Synapse {version} cannot be installed here: {str(exc).splitlines()[0]}")
    junit = tmp_path / "suites.xml"
    start = time.monotonic()
    proc = subprocess.run(
        # On SQLite, the launcher's default, as before examples/synapse.toml moved to PostgreSQL
        # (tests/test_synapse_upgrade.py's journey runs the example itself).
        [sys.executable, "-m", "pytest", "suites", "--im-config", str(sqlite_example(tmp_path)),
         "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=ROOT, capture_output=True, text=True, timeout=units(600), check=False,
    )
    took = time.monotonic() - start
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"the suites failed on Synapse (exit {proc.returncode}):\n{tail}"

    cases = ET.parse(junit).getroot().iter("testcase")
    passed: list[str] = []
    unexplained: list[str] = []
    for case in cases:
        name = case.get("name", "")
        skipped = case.find("skipped")
        if skipped is None:
            passed.append(name)
            continue
        reason = skipped.get("message", "")
        if not (ENDPOINT.search(reason) and LIMITATION.search(reason)):
            unexplained.append(f"{case.get('classname')}::{name}: {reason}")
    assert not unexplained, "skips that name no capability or endpoint limitation:\n" + "\n".join(
        unexplained)
    for endpoint in ("old", "new"):
        ran = [n for n in passed if n.endswith(f"[{endpoint}]")]
        assert len(ran) >= 30, f"only {len(ran)} tests passed on {endpoint!r}:\n{tail}"
    print(f"suites on Synapse: {len(passed)} passed, {len(unexplained)} unexplained, {took:.0f}s")
