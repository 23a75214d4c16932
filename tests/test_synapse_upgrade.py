"""In-place upgrade of a real Synapse homeserver: 1.141.0 seeded, 1.163.2 on the same data.

Also the rollback finding: Synapse refuses a database only when its stored compat version is newer
than the schema the code knows (synapse/storage/schema/__init__.py: SCHEMA_COMPAT_VERSION), so
1.141.0 (schema 92) is expected to start on 1.163.2's data (schema 94, compat 84).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness import procs
from harness.errors import HarnessError
from harness.matrix.launcher import SynapseServer, install_synapse
from harness.matrix.postgres import find_bindir
from harness.matrix.upgrade import code_schema_version, database_versions, run_upgrade
from harness.timing import units

pytestmark = pytest.mark.slow

OLD, NEW = "1.141.0", "1.163.2"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    for version in (OLD, NEW):
        try:
            install_synapse(version)
        except HarnessError as exc:
            pytest.skip(f"Synapse {version} cannot be installed here: {str(exc).splitlines()[0]}")


def test_upgrade_keeps_everything_and_rollback_follows_the_compat_rule() -> None:
    report = run_upgrade(OLD, NEW)
    text = report.render()
    assert report.ok, text
    names = [c.name for c in report.checks]
    for expected in (
        f"on {NEW}: background updates finished",
        f"on {NEW}: server reports its version",
        f"on {NEW}: alice's saved access token still works",
        f"on {NEW}: history of the direct room unchanged",
        f"on {NEW}: history of the group unchanged",
        f"on {NEW}: the redaction holds (content gone, redacted_because kept)",
        f"on {NEW}: read receipts in the direct room",
        f"on {NEW}: read receipts in the group",
        f"on {NEW}: carol's since-token resumes with exactly what was sent after it",
        f"on {NEW}: new writes work and are delivered",
        f"on {NEW}: a new user registers and logs in",
    ):
        assert expected in names, f"check {expected!r} did not run:\n{text}"
    # Observed and documented: the compat version (84) is below what 1.141.0 knows (92).
    assert report.rollback.startswith(f"accepted: {OLD} (knows schema 92)"), report.rollback
    assert f"on {OLD}: history of the group unchanged" in names
    assert not procs.live_pids(), "a Synapse process outlived the run"


def test_upgrade_on_postgres_keeps_the_cluster_and_everything_in_it() -> None:
    """The same seed/verify on a PostgreSQL-backed pair (the rollback drill is the journey's)."""
    try:
        find_bindir()
        for version in (OLD, NEW):
            install_synapse(version, postgres=True)
    except HarnessError as exc:
        pytest.skip(f"Synapse on PostgreSQL cannot run here: {str(exc).splitlines()[0]}")
    report = run_upgrade(OLD, NEW, rollback=False, database="postgres")
    text = report.render()
    assert report.ok, text
    names = [c.name for c in report.checks]
    for expected in (
        f"on {NEW}: the same PostgreSQL cluster and database serve it",
        f"on {NEW}: history of the direct room unchanged",
        f"on {NEW}: history of the group unchanged",
        f"on {NEW}: read receipts in the group",
        f"on {NEW}: carol's since-token resumes with exactly what was sent after it",
        f"on {NEW}: new writes work and are delivered",
    ):
        assert expected in names, f"check {expected!r} did not run:\n{text}"
    assert not procs.live_pids(), "a Synapse or PostgreSQL process outlived the run"


def test_old_refuses_a_database_whose_compat_version_it_does_not_know() -> None:
    server = SynapseServer(OLD).start()
    try:
        server.stop()
        knows = code_schema_version(server)
        assert server.data_dir is not None
        with sqlite3.connect(server.data_dir / "homeserver.db", timeout=units(5)) as conn:
            conn.execute("UPDATE schema_compat_version SET compat_version = ?", (knows + 1,))
        assert database_versions(server)[1] == knows + 1
        with pytest.raises(HarnessError, match="exited with code") as refused:
            server.start()
        # Synapse's own words (synapse/storage/prepare_database.py), shown from its log.
        assert "Cannot use this database as it is too new for the server to understand" in str(
            refused.value)
        assert server.pid is None
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--old", "9.9.9"], "error: --old '9.9.9' is not a known Synapse release; known: "),
        (["--new", OLD], f"error: --old and --new are both '{OLD}'; pick two releases"),
        (["--bogus"], "error: unrecognized arguments: --bogus; usage: "),
        (["--database", "mongo"], "error: --database 'mongo' is unknown; use one of sqlite, "
                                  "postgres\n"),
    ],
)
def test_cli_bad_flags_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.matrix.upgrade", *args],
        capture_output=True, text=True, timeout=units(30), check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(message)
    assert proc.stderr.count("\n") == 1


def test_the_journey_suite_passes_on_synapse(tmp_path: Path) -> None:
    """The packaged journey on examples/synapse.toml: every step holds, the rollback is a fact."""
    results = tmp_path / "allure"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_upgrade.py", "-q", "-p", "no:cacheprovider",
         "--im-config", "examples/synapse.toml", "--alluredir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=units(400), check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    record = json.loads((results / "im-journey.json").read_text())
    # examples/synapse.toml runs both releases on PostgreSQL: the upgrade keeps the database.
    assert record["server"] == f"Synapse {OLD} on PostgreSQL -> Synapse {NEW} on PostgreSQL"
    status = {s["name"]: s["status"] for s in record["steps"]}
    assert "failed" not in status.values(), record["steps"]
    for ran in ("live continuity: no acknowledged message lost or duplicated",
                "written before -> readable after: history pages",
                "written before -> readable after: recalled messages stay recalled",
                "offline queue delivered exactly once after the upgrade",
                "v1 clients converse with v2 clients after the upgrade"):
        assert status[ran] == "passed", (ran, record["steps"])
    # Matrix tokens have no transition window; Synapse has no tiers to activate.
    assert status["old credentials refused with Unauthorized after the window"] == "skipped"
    assert record["rollback"] == (f"accepted: Synapse {NEW} on PostgreSQL -> Synapse {OLD} on "
                                  "PostgreSQL on the upgraded data")
    assert record["gaps"], record
    live = [g for g in record["gaps"].values() if "acks" in g]  # the live senders' gaps
    assert live, record["gaps"]
    assert all(g["acks"] > 0 for g in live), record["gaps"]
