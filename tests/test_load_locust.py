"""Real locust runs (subprocesses) against the real reference service: exit codes, summaries,
distributed merging, faults. Each run lasts a few seconds."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.reference.launcher import ReferenceService
from harness.timing import units, until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _args(tmp: Path, *extra: str, users: int = 2, run_time: str = "2s") -> list[str]:
    return [*LOCUST, "--headless", "-u", str(users), "-r", str(users), "-t", run_time,
            "--summary-json", str(tmp / "summary.json"), "--drain-s", "1",
            "--only-summary", *extra]


def _run(tmp: Path, *extra: str, env: dict[str, str] | None = None,
         **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_args(tmp, *extra, **kw), cwd=tmp, capture_output=True, text=True,
                          timeout=units(90), env={**os.environ, **(env or {})}, check=False)


def _summary(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "summary.json").read_text(encoding="utf-8"))


def _failed(summary: dict[str, Any]) -> set[str]:
    return {v["budget"] for v in summary["budgets"]["verdicts"] if not v["ok"]}


def test_chat_within_budget_writes_summary_csv_and_html(tmp_path: Path) -> None:
    done = _run(tmp_path, "--scenario", "chat", "--csv", str(tmp_path / "chat"),
                "--html", str(tmp_path / "chat.html"))
    assert done.returncode == 0, done.stderr[-3000:]
    s = _summary(tmp_path)
    assert s["within_budget"]
    assert s["exit_code"] == 0
    assert s["endpoint"]["describe"] == "reference v2, tier pro"
    assert s["counts"]["sends"] > 0
    assert s["counts"]["acks"] == s["counts"]["sends"]
    assert s["counts"]["deliveries"] == s["counts"]["acks"]
    # 2 chat pairs: 2 schedules, phases spread half an interval apart (reported)
    assert s["schedule"] == {"mode": "spread", "senders": 2, "distinct_phases": 2,
                             "largest_gap": 0.5}
    assert "schedule: 2 senders, phases spread" in done.stderr
    assert {"p50", "p95", "p99", "p999", "max"} <= set(s["latency_ms"]["delivery"])
    assert {v["budget"] for v in s["budgets"]["verdicts"]} >= {
        "max_loss", "max_duplicates", "delivery.p99_ms", "min_connect_success_ratio"}
    stats = (tmp_path / "chat_stats.csv").read_text(encoding="utf-8")
    assert "IM,delivery" in stats
    assert "IM,send_ack" in stats
    assert (tmp_path / "chat.html").stat().st_size > 0


def test_over_budget_exits_1(tmp_path: Path) -> None:
    (tmp_path / "tight.toml").write_text("[send_ack]\np50_ms = 0.0001\n", encoding="utf-8")
    done = _run(tmp_path, "--scenario", "chat", "--budgets", str(tmp_path / "tight.toml"))
    assert done.returncode == 1, done.stderr[-3000:]
    s = _summary(tmp_path)
    assert _failed(s) == {"send_ack.p50_ms"}
    assert not s["within_budget"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--scenario", "chatt"], "'chatt' is not a scenario"),
        (["--budgets", "misspelt.toml"], "'max_los' is not a budget key"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    (tmp_path / "misspelt.toml").write_text("max_los = 0\n", encoding="utf-8")
    done = _run(tmp_path, *extra)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("im-harness load:")]
    assert len(lines) == 1, done.stderr[-2000:]
    assert needle in lines[0]
    assert not (tmp_path / "summary.json").exists()


def test_endpoint_down_at_start_exits_2(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "im-harness.toml").write_text(
        "[endpoints.new]\n"
        f'url = "ws://127.0.0.1:{port}"\napp_id = "app1"\napp_key_env = "LOAD_DOWN_KEY"\n'
        f'options = {{ api_url = "http://127.0.0.1:{port}" }}\n',
        encoding="utf-8",
    )
    done = _run(tmp_path, "--scenario", "chat", env={"LOAD_DOWN_KEY": "not-a-real-key"})
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("im-harness load:")]
    assert "unreachable" in line
    assert "not-a-real-key" not in done.stderr


def test_processes_2_merges_both_workers(tmp_path: Path) -> None:
    from harness.load.__main__ import processes_args

    done = _run(tmp_path, "--scenario", "group", *processes_args(2), users=2)
    assert done.returncode == 0, done.stderr[-3000:]
    s = _summary(tmp_path)
    assert s["processes"] == 2
    # one group unit per worker: 4 receivers each, every send delivered to all of them
    assert s["counts"]["deliveries"] == 4 * s["counts"]["acks"] > 0
    assert s["samples"]["delivery"] == s["counts"]["deliveries"]


MASTER_BIND = """
import harness.load.user
from locust import events
from locust.argument_parser import get_parser
parser = get_parser()
events.init_command_line_parser.fire(parser=parser)
print(parser.parse_args([]).master_bind_host, parser.parse_args(
    ["--master-bind-host", "::1"]).master_bind_host)
"""


def test_a_master_binds_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    # locust's own default is "*": every interface of the machine
    done = subprocess.run([sys.executable, "-c", MASTER_BIND], cwd=tmp_path, capture_output=True,
                          text=True, timeout=units(60), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["127.0.0.1", "::1"]


def test_master_and_worker_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    worker = subprocess.Popen(
        [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        done = _run(tmp_path, "--scenario", "chat", "--master", "--master-bind-host",
                    "127.0.0.1", "--master-bind-port", str(port), "--expect-workers", "1")
        assert done.returncode == 0, done.stderr[-3000:]
        assert worker.wait(timeout=units(20)) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    s = _summary(tmp_path)
    assert s["processes"] == 1
    assert s["counts"]["deliveries"] > 0
    assert s["within_budget"]


def test_seeded_drop_delivery_fails_the_loss_budget(tmp_path: Path) -> None:
    done = _run(tmp_path, "--scenario", "chat", "--im-defect", "drop_delivery",
                "--im-defect-rate", "0.5")
    assert done.returncode == 1, done.stderr[-3000:]
    s = _summary(tmp_path)
    assert "max_loss" in _failed(s)
    assert s["counts"]["loss"] > 0
    assert any(n.startswith("[loss]") for n in s["notes"])


def test_endpoint_dying_mid_run_ends_on_time_and_fails(tmp_path: Path) -> None:
    with ReferenceService() as service:
        app = service.create_app_sync(tier="pro")
        (tmp_path / "im-harness.toml").write_text(
            "[endpoints.new]\n"
            f'url = "{service.ws_url}"\napp_id = "{app.app_id}"\n'
            'app_key_env = "LOAD_DIES_KEY"\nprotocol = "v2"\ntier = "pro"\n'
            f'options = {{ api_url = "{service.api_url}" }}\n',
            encoding="utf-8",
        )
        proc = subprocess.Popen(_args(tmp_path, "--scenario", "chat", run_time="4s"),
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "LOAD_DIES_KEY": app.app_key})
        try:
            _wait_for_messages(service, timeout=units(20))
            service.kill()
            started = time.monotonic()
            _, stderr = proc.communicate(timeout=units(60))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, stderr[-3000:]
    assert time.monotonic() - started < units(30)
    s = _summary(tmp_path)
    assert not s["within_budget"]
    assert "max_error_ratio" in _failed(s)
    assert s["counts"]["send_errors"] > 0


def _wait_for_messages(service: ReferenceService, timeout: float) -> None:
    async def poll() -> None:
        admin = service.admin()
        try:
            async def sent() -> bool:
                return bool((await admin.counters())["messages"])

            await until(sent, timeout=timeout, interval=0.05, what="the first stored message")
        finally:
            await admin.aclose()

    asyncio.run(poll())


@pytest.mark.parametrize("with_uvloop", [True, False], ids=["uvloop", "asyncio-fallback"])
def test_bridge_runs_coroutines_on_uvloop_or_the_fallback_loop(
        monkeypatch: pytest.MonkeyPatch, with_uvloop: bool) -> None:
    from harness.load import bridge as bridge_module

    if not with_uvloop:
        monkeypatch.setattr(bridge_module, "uvloop", None)
    elif bridge_module.uvloop is None:
        pytest.fail("uvloop is part of the load extra; install it")
    bridge = bridge_module.AsyncBridge()
    try:
        async def loop_kind() -> str:
            await asyncio.sleep(0.001)
            return type(asyncio.get_running_loop()).__module__

        kind = bridge.run(loop_kind(), timeout=units(5))
    finally:
        bridge.close()
    assert kind.startswith("uvloop") if with_uvloop else kind.startswith("asyncio")


TEAM_LOCUSTFILE = '''
from pathlib import Path

from harness.load.scenarios import scenario
from harness.load.user import IMUser


@scenario("pairs", defaults={"rate": 4.0}, description="a team's own scenario: pairs chatting",
          budgets=Path(__file__).with_name("pairs.toml"))
async def pairs(run, params, index):
    ends = await run.setup(lambda: run.pair("pairs"))
    if ends is not None:
        await run.chat(params["rate"], ends)


class TeamUser(IMUser):
    pass
'''


def test_a_team_locustfile_adds_a_scenario_judged_by_its_registered_budgets(
        tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(TEAM_LOCUSTFILE, encoding="utf-8")
    (tmp_path / "pairs.toml").write_text(
        'scenario = "pairs"\nmax_loss = 0\n[send_ack]\np50_ms = 0.0001\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "locust", "-f", str(tmp_path / "locustfile.py"),
           *_args(tmp_path, "--scenario", "pairs")[len(LOCUST):]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=units(90), check=False)
    assert done.returncode == 1, done.stderr[-3000:]  # over the team's own (impossible) budget
    s = _summary(tmp_path)
    assert s["budgets"]["source"] == str(tmp_path / "pairs.toml")
    assert _failed(s) == {"send_ack.p50_ms"}
    assert s["counts"]["deliveries"] == s["counts"]["acks"] > 0
    assert s["plan"]["weights"] == {"pairs": 1}


def test_a_scenario_whose_registered_budgets_are_missing_is_a_usage_error(
        tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(TEAM_LOCUSTFILE, encoding="utf-8")  # no pairs.toml
    cmd = [sys.executable, "-m", "locust", "-f", str(tmp_path / "locustfile.py"),
           *_args(tmp_path, "--scenario", "pairs")[len(LOCUST):]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=units(60), check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("im-harness load:")]
    assert "scenario 'pairs' registered the budgets" in line
    assert "pairs.toml" in line
    assert not (tmp_path / "summary.json").exists()
