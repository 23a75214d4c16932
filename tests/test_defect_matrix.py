"""The defect matrix: every seeded defect of the reference service is caught by some suite.

Each defect runs the suites that concern it in a subprocess (`pytest suites/... --im-defect NAME`)
and must make them FAIL; a clean service must make every suite PASS. The matrix (defect x the
tests that caught it) is written to reports/defect-matrix.md and printed.

All runs use short keepalives (a generated im-harness.toml), so a dead peer is noticed within
seconds and `keepalive_dead` is observable inside the suite budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matrix_runner import ROOT, Run, publish, run_all

from harness.reference.defects import DEFECTS

pytestmark = pytest.mark.slow

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
    "history_lost_on_upgrade": ["suites/test_upgrade.py"],
    "old_tokens_refused": ["suites/test_upgrade.py"],
    "activation_stuck": ["suites/test_upgrade.py"],
}
RUN_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run the clean service and every defect once, two at a time; label -> Run."""
    runs = [Run(None, ALL_SUITES)]
    runs += [Run(name, RELEVANT.get(name, ALL_SUITES)) for name in DEFECTS]
    # Longest first, so the two workers finish together.
    runs.sort(key=lambda r: -len(r.suites))
    return run_all(runs, tmp_path_factory.mktemp("defect-matrix"), key=lambda r: r.label,
                   timeout_s=RUN_TIMEOUT_S, drop_env=("IM_HARNESS_DEFECTS",))


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
    publish(text, "defect-matrix.md", capsys)
    assert all(f"`{name}`" in text for name in DEFECTS)
