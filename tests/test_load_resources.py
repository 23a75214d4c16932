"""Server resources under load: CPU seconds per delivery and peak RSS of the server the harness
runs, recorded in the load summary; absent, with the reason, for a url endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import procs
from harness.load.resources import ResourceSampler, absent, sample_server
from harness.reference.launcher import ReferenceService
from harness.timing import units, until

ROOT = Path(__file__).resolve().parents[1]
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
# A parent that only waits, and a child it forks that burns CPU.
FORKS_A_BUSY_CHILD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
                      "'while True: pass'])")


def _chat(tmp: Path, rate: str, *extra: str, env: dict[str, str] | None = None
          ) -> dict[str, Any]:
    summary = tmp / f"rate-{rate}.json"
    done = subprocess.run(
        [*LOCUST, "--headless", "-u", "2", "-r", "2", "-t", "2s", "--scenario", "chat",
         "--rate", rate, "--drain-s", "1", "--summary-json", str(summary), "--only-summary",
         *extra],
        cwd=tmp, capture_output=True, text=True, timeout=units(90),
        env={**os.environ, **(env or {})}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(summary.read_text(encoding="utf-8"))
    return data


@pytest.mark.slow
def test_server_cpu_grows_with_load_and_its_rss_is_measured(tmp_path: Path) -> None:
    low = _chat(tmp_path, "1")["server_resources"]
    high = _chat(tmp_path, "40")["server_resources"]
    for part in (low, high):
        assert part["reason"] is None
        assert isinstance(part["pid"], int)
        assert part["samples"] >= 2
        assert part["peak_rss_bytes"] > 10 * 2**20  # a Python server is tens of MiB
        assert part["cpu_s_per_delivery"] == pytest.approx(part["cpu_s"] / part["deliveries"],
                                                           rel=0.01)
    assert high["deliveries"] > 10 * low["deliveries"] > 0
    assert high["cpu_s"] > 3 * low["cpu_s"] > 0


@pytest.mark.slow
def test_a_url_endpoint_has_no_server_resources_and_says_why(tmp_path: Path) -> None:
    with ReferenceService() as service:
        app = service.create_app_sync(tier="pro")
        (tmp_path / "im-harness.toml").write_text(
            "[endpoints.new]\n"
            f'url = "{service.ws_url}"\napp_id = "{app.app_id}"\n'
            'app_key_env = "RES_URL_KEY"\nprotocol = "v2"\ntier = "pro"\n'
            f'options = {{ api_url = "{service.api_url}" }}\n',
            encoding="utf-8",
        )
        part = _chat(tmp_path, "2", env={"RES_URL_KEY": app.app_key})["server_resources"]
    assert part["reason"] == ("endpoint 'new' is not run by the harness (a url endpoint): its "
                              "server's resources are not measured")
    assert part["deliveries"] > 0
    for key in ("pid", "cpu_s", "peak_rss_bytes", "cpu_s_per_delivery"):
        assert part[key] is None


def test_a_forked_childs_cpu_is_the_servers() -> None:
    child = procs.spawn([sys.executable, "-c", FORKS_A_BUSY_CHILD], name="forks-busy-child")
    try:
        sampler = ResourceSampler(child.pid, every_s=0.05).start()

        async def busy() -> bool:
            return sampler.cpu_s >= 0.3

        asyncio.run(until(busy, timeout=units(20), interval=0.05, what="0.3 s of child CPU"))
        part = sampler.stop().part(deliveries=10)
    finally:
        child.kill()
    assert len(sampler.pids) == 2  # the parent and the child it forked
    assert part["cpu_s"] >= 0.3
    assert part["cpu_s_per_delivery"] == pytest.approx(part["cpu_s"] / 10)
    assert part["peak_rss_bytes"] > 0


def test_no_server_or_no_pid_is_a_reason_not_a_number() -> None:
    assert "not run by the harness" in str(sample_server("new", None))
    assert "reports no pid" in str(sample_server("new", object()))
    assert absent("why", 3) == {"pid": None, "cpu_s": None, "peak_rss_bytes": None,
                                "deliveries": 3, "cpu_s_per_delivery": None, "samples": 0,
                                "reason": "why"}
    gone = ResourceSampler(2**22 + 12345).start()  # above PID_MAX_LIMIT (2**22): never a pid
    assert gone.part(1)["reason"].startswith("server pid 4206649 could not be sampled")
