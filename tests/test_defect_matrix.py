"""The defect matrix: every seeded defect of the reference service is caught by some suite.

Each defect runs the suites that concern it in a subprocess (`pytest suites/... --im-defect NAME`)
and must make them FAIL; a clean service must make every suite PASS. The matrix (defect x the
tests that caught it) is written to reports/defect-matrix.md and printed.

All runs use short keepalives (a generated im-harness.toml), so a dead peer is noticed within
seconds and `keepalive_dead` is observable inside the suite budget.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.reference.defects import DEFECTS
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
ALL_SUITES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "suites").glob("test_*.py"))

# The suites that concern each defect; a defect missing here runs every suite.
RELEVANT: dict[str, list[str]] = {
    "drop_delivery": ["suites/test_chat.py", "suites/test_groups.py"],
    "reorder_fanout": ["suites/test_groups.py"],
    "duplicate_on_reconnect": ["suites/test_offline.py", "suites/test_recall.py"],
    "ack_before_persist": ["suites/test_offline.py"],
    "recall_not_offline": ["suites/test_recall.py"],
    "read_cursor_back": ["suites/test_receipts.py"],
    "history_overlap": ["suites/test_offline.py"],
    "nonmember_post": ["suites/test_groups.py", "suites/test_security.py"],
    "cross_app_token": ["suites/test_security.py"],
    "tier_not_raised": ["suites/test_tier.py"],
    "keepalive_dead": ["suites/test_offline.py"],
    "no_push": ["suites/test_offline.py"],
}
CONFIG = "[harness]\nkeepalive_v1 = 2\nkeepalive_v2 = 1\n"
RUN_TIMEOUT_S = 240.0
WORKERS = 2  # the machine has two cores


@dataclass
class Run:
    """One subprocess run of some suites against a service with `defect` (None: clean)."""

    defect: str | None
    suites: list[str]
    returncode: int = -1
    seconds: float = 0.0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # an assertion failed (call phase)
    errors: list[str] = field(default_factory=list)  # setup/teardown errors
    skipped: int = 0
    output: str = ""

    @property
    def label(self) -> str:
        return self.defect or "clean"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _test_id(case: ET.Element) -> str:
    module = case.get("classname", "").replace(".", "/")
    return f"{module}.py::{case.get('name', '?')}"


def _execute(run: Run, workdir: Path, config: Path) -> Run:
    junit = workdir / f"{run.label}.xml"
    cmd = [
        sys.executable, "-m", "pytest", *run.suites, "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}", f"--im-config={config}",
    ]
    if run.defect:
        cmd += ["--im-defect", run.defect]
    env = {k: v for k, v in os.environ.items() if k != "IM_HARNESS_DEFECTS"}
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=units(RUN_TIMEOUT_S),
        )
        run.returncode, run.output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        run.output = f"timed out after {exc.timeout:.0f}s\n{exc.stdout or ''}"
    run.seconds = time.monotonic() - start
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            if case.find("failure") is not None:
                run.failed.append(_test_id(case))
            elif case.find("error") is not None:
                run.errors.append(_test_id(case))
            elif case.find("skipped") is not None:
                run.skipped += 1
            else:
                run.passed.append(_test_id(case))
    return run


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run the clean service and every defect once, two at a time; label -> Run."""
    workdir = tmp_path_factory.mktemp("defect-matrix")
    config = workdir / "im-harness.toml"
    config.write_text(CONFIG)
    runs = [Run(None, ALL_SUITES)]
    runs += [Run(name, RELEVANT.get(name, ALL_SUITES)) for name in DEFECTS]
    # Longest first, so the two workers finish together.
    runs.sort(key=lambda r: -len(r.suites))
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda r: _execute(r, workdir, config), runs))
    return {r.label: r for r in done}


def test_clean_service_passes_every_suite(matrix: dict[str, Run]) -> None:
    """Against a service without defects, every suite passes on both endpoints."""
    clean = matrix["clean"]
    broken = clean.failed + clean.errors
    assert not broken, f"the suites fail against a clean service: {broken}\n{clean.tail()}"
    assert clean.returncode == 0, f"the clean run exited {clean.returncode}:\n{clean.tail()}"
    assert len(clean.passed) > 0, f"no suite test ran:\n{clean.tail()}"


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_seeded_defect_is_caught(matrix: dict[str, Run], defect: str) -> None:
    """Each seeded defect makes at least one suite test fail on an assertion."""
    run = matrix[defect]
    assert run.returncode in (0, 1), (
        f"the run with {defect!r} did not complete (exit {run.returncode}); "
        f"that is a crash, not a catch:\n{run.tail()}"
    )
    assert run.failed, (
        f"no suite catches the seeded defect {defect!r} ({DEFECTS[defect]}); ran "
        f"{', '.join(run.suites)}: {len(run.passed)} passed, {run.skipped} skipped, "
        f"{len(run.errors)} errors. Add a suite test that catches it."
    )


def render(matrix: dict[str, Run]) -> str:
    """The matrix as Markdown: one row per defect with the tests that caught it."""
    lines = [
        "# Defect matrix",
        "",
        "Each seeded defect of the reference service, the suites run against it, and the tests",
        "that failed because of it (old/new = endpoint).",
        "",
        "| defect | caught | suites | catching tests | s |",
        "|---|---|---|---|---|",
    ]
    for name in DEFECTS:
        run = matrix[name]
        caught = f"yes ({len(run.failed)})" if run.failed else "**NO**"
        suites = ", ".join(Path(s).stem.removeprefix("test_") for s in run.suites)
        tests = "<br>".join(t.split("::", 1)[1] for t in run.failed) or "-"
        lines.append(f"| `{name}` | {caught} | {suites} | {tests} | {run.seconds:.0f} |")
    clean = matrix["clean"]
    lines += [
        "",
        f"Clean service: {len(clean.passed)} passed, {len(clean.failed)} failed, "
        f"{len(clean.errors)} errors, {clean.skipped} skipped in {clean.seconds:.0f}s.",
    ]
    return "\n".join(lines) + "\n"


def test_write_and_print_matrix(matrix: dict[str, Run], capsys: pytest.CaptureFixture) -> None:
    """The matrix is written to reports/defect-matrix.md and shown on the terminal."""
    text = render(matrix)
    out = ROOT / "reports" / "defect-matrix.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    with capsys.disabled():
        print("\n" + text)
    assert all(f"`{name}`" in text for name in DEFECTS)
