"""The defect matrix for faults and properties: who catches the ordering, loss and receipt bugs.

The property tests ALONE (suites/test_properties.py) must fail against each seeded ordering,
duplicate, loss and receipt defect; the fault suites (suites/test_faults.py) must fail against
the defects they target; both must pass against a clean service. Each run is a pytest
subprocess with `--im-defect NAME` and short keepalives. The matrix (defect, run, the tests that
failed, the oracle's violation kinds) is printed and written to reports/defect-matrix-faults.md.

A property run is one search, never repeated: on endpoint `new`, the whole `ci` search (profile
`ci-full`: its 40 examples, without the time budget that would cut it short on a slow machine)
with the fixed seed `PROPERTY_SEED`, the same for every defect and for the clean run, so it
tries the same examples on every machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from matrix_runner import Run, publish, run_all

from harness.oracle import KINDS

pytestmark = pytest.mark.slow

PROPERTIES = "suites/test_properties.py"
FAULTS = "suites/test_faults.py"
PROPERTY_DEFECTS = [
    "reorder_fanout", "duplicate_on_reconnect", "drop_delivery", "read_cursor_back",
]
# ack_before_persist is the fault suites' (below): their kill lands right after an ack by
# design. The property search reaches it only when a random kill lands inside the late-flush
# window, which is timing, not logic: its whole search took 560 s on a loaded machine and missed
# it on a quieter one, so it is not claimed here.
FAULT_DEFECTS = ["keepalive_dead", "ack_before_persist", "duplicate_on_reconnect"]
RUN_TIMEOUT_S = 600.0
PROPERTY_SEED = 0
PROPERTY_ARGS = ["--im-endpoints=new", f"--hypothesis-seed={PROPERTY_SEED}",
                 "--hypothesis-profile=ci-full"]
KIND_RE = re.compile(r"\[(" + "|".join(map(str, KINDS)) + r")\]")  # every kind the oracle has
REPLAY_RE = re.compile(r"^\s*(pytest \S+ --hypothesis-seed=\d+.*)$", re.M)


class SuiteRun(Run):
    """A run of one suite file, with what its failures name: violation kinds, a replay command."""

    @property
    def suite(self) -> str:
        return self.suites[0]

    @property
    def key(self) -> str:
        return f"{Path(self.suite).stem}:{self.label}"

    @property
    def kinds(self) -> list[str]:
        """The oracle violation kinds the failure messages name."""
        return sorted(set(KIND_RE.findall(self.output)))

    @property
    def replay(self) -> str | None:
        match = REPLAY_RE.search(self.output)
        return match.group(1) if match else None


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SuiteRun]:
    """Every run, two at a time, longest first; key `suite:defect` -> Run."""
    runs = [SuiteRun(None, [PROPERTIES], PROPERTY_ARGS), SuiteRun(None, [FAULTS])]
    runs += [SuiteRun(d, [PROPERTIES], PROPERTY_ARGS) for d in PROPERTY_DEFECTS]
    runs += [SuiteRun(d, [FAULTS]) for d in FAULT_DEFECTS]
    workdir = tmp_path_factory.mktemp("defect-matrix-faults")
    return run_all(runs, workdir, key=lambda r: r.key, timeout_s=RUN_TIMEOUT_S,
                   drop_env=("IM_HARNESS_",))


@pytest.mark.parametrize("suite", [PROPERTIES, FAULTS])
def test_clean_service_passes(matrix: dict[str, SuiteRun], suite: str) -> None:
    """Against a clean service the property tests and fault suites pass."""
    run = matrix[f"{Path(suite).stem}:clean"]
    assert run.returncode == 0, (
        f"{suite} fails against a clean service (exit {run.returncode}): "
        f"{run.failed + run.errors}\n{run.tail()}"
    )
    assert run.passed, f"{suite}: nothing ran\n{run.tail()}"


@pytest.mark.parametrize("defect", PROPERTY_DEFECTS)
def test_property_tests_alone_catch(matrix: dict[str, SuiteRun], defect: str) -> None:
    """The property tests fail on an oracle violation against each seeded defect."""
    run = matrix[f"{Path(PROPERTIES).stem}:{defect}"]
    assert run.returncode == 1, f"{defect}: exit {run.returncode}, not a failure\n{run.tail()}"
    assert run.failed, f"the property tests do not catch {defect!r}\n{run.tail()}"
    assert run.replay, f"{defect}: the failure printed no replay command\n{run.tail()}"


@pytest.mark.parametrize("defect", FAULT_DEFECTS)
def test_fault_suites_catch(matrix: dict[str, SuiteRun], defect: str) -> None:
    """The fault suites fail against the defects they target."""
    run = matrix[f"{Path(FAULTS).stem}:{defect}"]
    assert run.returncode == 1, f"{defect}: exit {run.returncode}, not a failure\n{run.tail()}"
    assert run.failed, f"no fault suite catches {defect!r}\n{run.tail()}"


def render(matrix: dict[str, SuiteRun]) -> str:
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


def test_write_and_print_matrix(matrix: dict[str, SuiteRun], capsys: pytest.CaptureFixture) -> None:
    """The matrix is written to reports/defect-matrix-faults.md and printed."""
    text = render(matrix)
    publish(text, "defect-matrix-faults.md", capsys)
    assert all(d in text for d in PROPERTY_DEFECTS + FAULT_DEFECTS)
