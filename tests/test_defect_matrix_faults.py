"""The defect matrix for faults and properties: who catches the ordering, loss and receipt bugs.

The property tests ALONE (suites/test_properties.py) must fail against each seeded ordering,
duplicate, loss and receipt defect; the fault suites (suites/test_faults.py) must fail against
the defects they target; both must pass against a clean service. Each run is a pytest
subprocess with `--im-defect NAME` and short keepalives. The matrix (defect, run, the tests that
failed, the oracle's violation kinds) is printed and written to reports/defect-matrix-faults.md.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
PROPERTIES = "suites/test_properties.py"
FAULTS = "suites/test_faults.py"
PROPERTY_DEFECTS = [
    "reorder_fanout", "duplicate_on_reconnect", "drop_delivery", "ack_before_persist",
    "read_cursor_back",
]
FAULT_DEFECTS = ["keepalive_dead", "ack_before_persist", "duplicate_on_reconnect"]
CONFIG = "[harness]\nkeepalive_v1 = 2\nkeepalive_v2 = 1\n"
RUN_TIMEOUT_S = 600.0
WORKERS = 2  # two cores
KIND_RE = re.compile(r"\[(loss|duplicate|order|group_order|recall|receipt|history|unexpected)\]")
REPLAY_RE = re.compile(r"^\s*(pytest \S+ --hypothesis-seed=\d+.*)$", re.M)


@dataclass
class Run:
    """One pytest subprocess: one suite file against a clean service or one seeded defect."""

    suite: str
    defect: str | None
    returncode: int = -1
    seconds: float = 0.0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    output: str = ""

    @property
    def key(self) -> str:
        return f"{Path(self.suite).stem}:{self.defect or 'clean'}"

    @property
    def kinds(self) -> list[str]:
        """The oracle violation kinds the failure messages name."""
        return sorted(set(KIND_RE.findall(self.output)))

    @property
    def replay(self) -> str | None:
        match = REPLAY_RE.search(self.output)
        return match.group(1) if match else None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _execute(run: Run, workdir: Path, config: Path) -> Run:
    junit = workdir / f"{run.key.replace(':', '-')}.xml"
    cmd = [
        sys.executable, "-m", "pytest", run.suite, "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}", f"--im-config={config}", "--hypothesis-profile=ci",
    ]
    if run.defect:
        cmd += ["--im-defect", run.defect]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_HARNESS_")}
    start = time.monotonic()
    # Its own session, so a timeout kills the whole group: pytest and the services it started.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=units(RUN_TIMEOUT_S))
        run.returncode, run.output = proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        run.output = f"timed out after {units(RUN_TIMEOUT_S):.0f}s\n{out}"
    run.seconds = time.monotonic() - start
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '?')}"
            if case.find("failure") is not None:
                run.failed.append(name)
            elif case.find("error") is not None:
                run.errors.append(name)
            elif case.find("skipped") is not None:
                run.skipped += 1
            else:
                run.passed.append(name)
    return run


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every run, two at a time, longest first; key `suite:defect` -> Run."""
    workdir = tmp_path_factory.mktemp("defect-matrix-faults")
    config = workdir / "im-harness.toml"
    config.write_text(CONFIG)
    runs = [Run(PROPERTIES, None), Run(FAULTS, None)]
    runs += [Run(PROPERTIES, d) for d in PROPERTY_DEFECTS]
    runs += [Run(FAULTS, d) for d in FAULT_DEFECTS]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda r: _execute(r, workdir, config), runs))
    return {r.key: r for r in done}


@pytest.mark.parametrize("suite", [PROPERTIES, FAULTS])
def test_clean_service_passes(matrix: dict[str, Run], suite: str) -> None:
    """Against a clean service the property tests and fault suites pass."""
    run = matrix[f"{Path(suite).stem}:clean"]
    assert run.returncode == 0, (
        f"{suite} fails against a clean service (exit {run.returncode}): "
        f"{run.failed + run.errors}\n{run.tail()}"
    )
    assert run.passed, f"{suite}: nothing ran\n{run.tail()}"


@pytest.mark.parametrize("defect", PROPERTY_DEFECTS)
def test_property_tests_alone_catch(matrix: dict[str, Run], defect: str) -> None:
    """The property tests fail on an oracle violation against each seeded defect."""
    run = matrix[f"{Path(PROPERTIES).stem}:{defect}"]
    assert run.returncode == 1, f"{defect}: exit {run.returncode}, not a failure\n{run.tail()}"
    assert run.failed, f"the property tests do not catch {defect!r}\n{run.tail()}"
    assert run.replay, f"{defect}: the failure printed no replay command\n{run.tail()}"


@pytest.mark.parametrize("defect", FAULT_DEFECTS)
def test_fault_suites_catch(matrix: dict[str, Run], defect: str) -> None:
    """The fault suites fail against the defects they target."""
    run = matrix[f"{Path(FAULTS).stem}:{defect}"]
    assert run.returncode == 1, f"{defect}: exit {run.returncode}, not a failure\n{run.tail()}"
    assert run.failed, f"no fault suite catches {defect!r}\n{run.tail()}"


def render(matrix: dict[str, Run]) -> str:
    """The matrix as Markdown."""
    lines = [
        "# Defect matrix: fault suites and property tests",
        "",
        "| defect | run | caught | failing tests | oracle violations | s |",
        "|---|---|---|---|---|---|",
    ]
    for run in matrix.values():
        caught = "clean" if run.defect is None else ("yes" if run.failed else "**NO**")
        if run.defect is None:
            caught = "pass" if run.returncode == 0 else "**FAILS**"
        tests = "<br>".join(t.split("::", 1)[1] for t in run.failed) or "-"
        kinds = ", ".join(run.kinds) or "-"
        lines.append(
            f"| {run.defect or '(clean)'} | {Path(run.suite).stem} | {caught} | {tests} | "
            f"{kinds} | {run.seconds:.0f} |"
        )
    replays = [(r.key, r.replay) for r in matrix.values() if r.replay]
    if replays:
        lines += ["", "Replay commands printed by the property failures:", ""]
        lines += [f"- {key}: `{cmd}`" for key, cmd in replays]
    return "\n".join(lines) + "\n"


def test_write_and_print_matrix(matrix: dict[str, Run], capsys: pytest.CaptureFixture) -> None:
    """The matrix is written to reports/defect-matrix-faults.md and printed."""
    text = render(matrix)
    out = ROOT / "reports" / "defect-matrix-faults.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    with capsys.disabled():
        print("\n" + text)
    assert all(d in text for d in PROPERTY_DEFECTS + FAULT_DEFECTS)
