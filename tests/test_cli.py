"""`im-harness` end to end: real suites on the embedded services, real locust, real Allure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from harness.reference.launcher import ReferenceService
from harness.report.allure import ALLURE_ENV
from harness.report.loadreport import read_history
from harness.timing import units

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]  # its node_modules has the Allure CLI (`npm ci`)
RECALL_ONLINE = "test_recall_reaches_online_peer_and_history"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240):
    import subprocess

    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=units(timeout),
                          env={**os.environ, "COLUMNS": "200", ALLURE_ENV: str(ROOT),
                               **(env or {})}, check=False)


def verdict(reports: Path) -> dict:
    return json.loads((reports / "verdict.json").read_text())


@pytest.mark.parametrize(("args", "words"), [
    (["signoff", "--config", "missing.toml"], "no such file"),
    (["signoff", "--load-time", "soon"], "--load-time 'soon' is not a duration"),
    (["signoff", "--scenario", "nope"], "--scenario 'nope' is not a load scenario"),
    (["signoff", "--endpoints", "old"], "must name two endpoints"),
    (["doctor", "--endpoints", "old,staging"], "'staging' is not configured"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    done = cli(*args, cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert words in lines[0]
    assert not (tmp_path / "reports").exists()


def test_signoff_subset_is_go_with_parity_load_and_report(tmp_path):
    # --compare-repeats 0: load on new only (old vs new: tests/test_load_compare_runs.py)
    done = cli("signoff", "-k", RECALL_ONLINE, "--scenario", "chat", "--load-time", "2s",
               "--users", "4", "--compare-repeats", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = tmp_path / "reports"
    doc = verdict(reports)
    assert doc["verdict"] == "GO"
    assert doc["go"] is True
    assert doc["parity"]["recall"]["old"]["skipped_not_supported"] == 1
    assert doc["parity"]["recall"]["new"]["passed"] == 1
    assert doc["load"][0]["scenario"] == "chat"
    assert doc["load"][0]["within_budget"]
    assert "recall" in doc["endpoints"]["new"]["capabilities"]
    assert "Parity" in done.stdout
    assert "GO: no product regression" in done.stdout
    report = reports / "allure-report" / "index.html"
    assert report.is_file()
    assert doc["report"] == str(report.resolve())
    assert [p.name for p in (reports / "allure-report").iterdir() if p.is_dir()] == []
    assert (reports / "allure-history.jsonl").stat().st_size > 0
    load_results = [json.loads(p.read_text()) for p in
                    (reports / "allure-results").glob("*-result.json")]
    [load] = [r for r in load_results if r["fullName"].startswith("load.chat")]
    assert load["status"] == "passed"
    names = {a["name"] for a in load["attachments"]}
    assert {"latency histogram", "summary"} <= names
    # Locust writes its history once a second, 0 ms until its window has a sample: a 2 s run
    # may end before a measured row, and then there is no time plot rather than a false one.
    timed = read_history(reports / "load" / "chat-new_stats_history.csv")
    measured = any(p50 or p95 for name, points in timed.items() if name != "Aggregated"
                   for _, p50, p95 in points)
    assert ("latency over time" in names) == measured


def test_product_regression_on_new_is_no_go(tmp_path):
    done = cli("signoff", "-k", "test_recall_reaches_offline_peer_on_reconnect", "--no-load",
               "--no-html", cwd=tmp_path, env={"IM_HARNESS_DEFECTS": "recall_not_offline"})
    assert done.returncode == 1, done.stdout + done.stderr
    doc = verdict(tmp_path / "reports")
    assert doc["verdict"] == "NO-GO"
    assert any(r.startswith("product regression on new: test_recall_reaches_offline_peer")
               for r in doc["reasons"]), doc["reasons"]
    assert doc["parity"]["recall"]["new"]["failed"] == 1


CRASHING = '''
import os
import signal


async def test_first(endpoint, im_user):
    await im_user("alice")


async def test_dies(endpoint):
    if endpoint.name == "new":
        os.kill(os.getpid(), signal.SIGKILL)
'''


def test_suites_crashing_mid_run_give_a_partial_report_and_no_go(tmp_path):
    suite = tmp_path / "crash" / "test_crash.py"
    suite.parent.mkdir()
    suite.write_text(CRASHING)
    (suite.parent / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    done = cli("signoff", "--path", str(suite), "--no-load", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    reports = tmp_path / "reports"
    doc = verdict(reports)
    assert doc["verdict"] == "NO-GO"
    assert "the suites did not complete (signal 9)" in doc["reasons"][0]
    assert doc["parity"]["crash"]["old"]["passed"] == 2
    assert (reports / "allure-report" / "index.html").is_file()


def test_without_node_the_verdict_and_parity_are_still_produced(tmp_path):
    path = os.path.dirname(sys.executable)  # python only: no node, no npm
    done = cli("signoff", "-k", RECALL_ONLINE, "--no-load", cwd=tmp_path, env={"PATH": path})
    assert "npm ci" in done.stderr, done.stderr
    assert "Node.js" in done.stderr
    assert "Parity" in done.stdout
    doc = verdict(tmp_path / "reports")
    assert doc["report"] is None
    assert "npm ci" in doc["report_problem"]
    assert doc["parity"]["recall"]["new"]["passed"] == 1
    assert done.returncode == (0 if doc["go"] else 1)


def test_a_configured_secret_never_appears_in_the_results(tmp_path):
    with ReferenceService(tmp_path / "db.sqlite") as service:
        old = service.create_app_sync(tier="free")
        new = service.create_app_sync(tier="pro", features={"recall": True, "receipts": True})
        config = tmp_path / "im-harness.toml"
        config.write_text(f'''
[endpoints.old]
adapter = "reference"
url = "{service.ws_url}"
app_id = "{old.app_id}"
protocol = "v1"
app_key_env = "T_OLD_KEY"
tier = {{ name = "free" }}
[endpoints.old.options]
api_url = "{service.api_url}"

[endpoints.new]
adapter = "reference"
url = "{service.ws_url}"
app_id = "{new.app_id}"
protocol = "v2"
app_key_env = "T_NEW_KEY"
admin_token_env = "T_ADMIN"
tier = {{ name = "pro", features = {{ recall = true, receipts = true }} }}
[endpoints.new.options]
api_url = "{service.api_url}"
''')
        secrets = {"T_OLD_KEY": old.app_key, "T_NEW_KEY": new.app_key,
                   "T_ADMIN": service.admin_token}
        done = cli("signoff", "--config", str(config), "-k", "test_chat and ack_fields",
                   "--scenario", "chat", "--load-time", "2s", "--users", "2", cwd=tmp_path,
                   env=secrets)
    reports = tmp_path / "reports"
    doc = verdict(reports)
    assert doc["parity"]["chat"]["new"]["passed"] >= 1, doc
    assert doc["endpoints"]["new"]["url"] == service.ws_url
    files = [p for p in reports.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        body = path.read_bytes()
        for var, value in secrets.items():
            assert value.encode() not in body, f"{var}'s value is in {path}"
    for value in secrets.values():
        assert value not in done.stdout + done.stderr


def test_run_gives_parity_and_report_and_drops_a_stale_verdict(tmp_path):
    stale = tmp_path / "reports" / "verdict.json"
    stale.parent.mkdir()
    stale.write_text('{"verdict": "GO"}')
    done = cli("run", "-k", RECALL_ONLINE, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Parity" in done.stdout
    assert "not supported" in done.stdout  # recall on old
    assert (tmp_path / "reports" / "allure-report" / "index.html").is_file()
    assert not stale.exists()


def test_signoff_refuses_to_run_the_suites_without_the_harness_plugins(tmp_path):
    done = cli("signoff", "--no-load", cwd=tmp_path, timeout=30,
               env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "PYTEST_DISABLE_PLUGIN_AUTOLOAD" in line
    assert not (tmp_path / "reports").exists()


def test_doctor_reaches_the_endpoints_and_prints_capabilities(tmp_path):
    done = cli("doctor", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "reference v2, tier pro" in done.stdout
    assert "receipts" in done.stdout
    assert "max_message_bytes=" in done.stdout


def test_doctor_says_a_wrong_admin_token_is_refused_not_tier_admin(tmp_path):
    with ReferenceService(tmp_path / "db.sqlite") as service:
        app = service.create_app_sync(tier="pro")
        (tmp_path / "im-harness.toml").write_text(f'''
[endpoints.old]
url = "{service.ws_url}"
app_id = "{app.app_id}"
app_key_env = "T_KEY"
[endpoints.old.options]
api_url = "{service.api_url}"
[endpoints.new]
url = "{service.ws_url}"
app_id = "{app.app_id}"
app_key_env = "T_KEY"
admin_token_env = "T_ADMIN"
[endpoints.new.options]
api_url = "{service.api_url}"
''')
        wrong = "wrong-admin-token-4242"
        done = cli("doctor", cwd=tmp_path, timeout=60,
                   env={"T_KEY": app.app_key, "T_ADMIN": wrong})
        right = cli("doctor", cwd=tmp_path, timeout=60,
                    env={"T_KEY": app.app_key, "T_ADMIN": service.admin_token})
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "endpoint 'new': its admin secret is refused" in line
    assert "tier_admin" not in done.stdout
    assert wrong not in done.stdout + done.stderr
    assert right.returncode == 0, right.stdout + right.stderr
    assert "tier_admin" in right.stdout


def test_serve_prints_urls_keeps_keys_in_a_private_file_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess

    from harness.timing import until

    env_file = tmp_path / "serve.env"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--env-file",
                             str(env_file)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        import asyncio

        asyncio.run(until(env_file.exists, timeout=units(30), what="serve.env"))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=units(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "old: ws://127.0.0.1:" in out
    assert "new: ws://127.0.0.1:" in out
    assert out.rstrip().endswith("stopped")
    assert env_file.stat().st_mode & 0o777 == 0o600
    keys = [line.split("=", 1)[1] for line in env_file.read_text().split()]
    assert len(keys) == 2
    assert all(k and k not in out for k in keys)


TEAM_SUITE = '''
async def test_team_hello(im_user):
    alice = await im_user("alice")
    bob = await im_user("bob")
    await alice.send(bob, "from the team's own suite")
    await bob.recorder.wait_messages(1)
'''


def test_a_team_suite_runs_beside_the_packaged_suites(tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    (team / "test_team.py").write_text(TEAM_SUITE)
    done = cli("signoff", "--path", "harness.suites", "--path", str(team), "-k",
               f"{RECALL_ONLINE} or test_team_hello", "--no-load", "--no-html", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = verdict(tmp_path / "reports")
    assert doc["parity"]["recall"]["new"]["passed"] == 1  # a packaged suite
    assert doc["parity"]["team"]["old"]["passed"] == 1  # the team's, on both endpoints
    assert doc["parity"]["team"]["new"]["passed"] == 1
