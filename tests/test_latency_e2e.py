"""Latency in the suites end to end: real suites on real reference services, real files.

A new endpoint whose live frames leave the server late (the seeded `slow_delivery` defect) makes
the sign-off NO-GO naming send->delivery with both numbers; the clean default says nothing.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.latency import LatencyLog
from harness.reference.defects import SLOW_DELIVERY_S
from harness.timing import units

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

# The chat suite without its fault tests (those record no latency): 8 tests per endpoint,
# about 40 deliveries each, in about 20 s per sign-off.
CHAT = "test_chat and not link"
SLOW_NEW = """
[endpoints.old]
protocol = "v1"
tier = "free"

[endpoints.new]
protocol = "v2"
defects = ["slow_delivery"]

[endpoints.new.tier]
name = "pro"
features = { recall = true, receipts = true }
"""
FINDING = re.compile(r"^Latency in the suites: send->delivery p95 on new (\d+\.\d) ms vs old "
                     r"(\d+\.\d) ms: over 2x and \+20 ms$")


def signoff(reports: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "signoff", "-k", CHAT, "--no-load", "--no-html",
         "--reports", str(reports), *args],
        cwd=reports.parent, capture_output=True, text=True, timeout=units(240), check=False,
        env={**os.environ, "COLUMNS": "200"})
    assert (reports / "verdict.json").is_file(), done.stdout + done.stderr
    assert (reports / "allure-results" / "im-latency-main.json").is_file()
    return json.loads((reports / "verdict.json").read_text())


def test_slow_delivery_on_new_is_a_no_go_naming_the_operation_and_the_clean_default_is_not(
    tmp_path: Path,
) -> None:
    config = tmp_path / "slow-new.toml"
    config.write_text(SLOW_NEW)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow_run = pool.submit(signoff, tmp_path / "slow", "--config", str(config))
        clean_run = pool.submit(signoff, tmp_path / "clean")
        slow, clean = slow_run.result(), clean_run.result()

    assert not slow["go"]
    [reason] = [r for r in slow["reasons"] if r.startswith("Latency in the suites")]
    match = FINDING.match(reason)
    assert match, reason
    new_ms, old_ms = float(match.group(1)), float(match.group(2))
    assert new_ms >= SLOW_DELIVERY_S * 1000 > 2 * old_ms
    latency = slow["sections"]["latency"]
    assert [f["what"] for f in latency["findings"] if f["blocking"]] == [
        reason.removeprefix("Latency in the suites: ")]
    ops = latency["data"]["operations"]
    assert ops["delivery"]["new"]["p95"] == pytest.approx(new_ms, abs=0.051)
    assert ops["send_ack"]["new"]["p95"] < SLOW_DELIVERY_S * 1000  # acks stay on time

    assert clean["go"], clean["reasons"]
    section = clean["sections"]["latency"]
    assert section["ok"]
    # The clean default may note an operation a short subset timed too rarely, nothing else.
    assert all(not f["blocking"] and "too few samples" in f["what"] for f in section["findings"])
    assert section["data"]["operations"]["delivery"]["new"]["count"] >= 20
    assert section["data"]["operations"]["delivery"]["new"]["p95"] < SLOW_DELIVERY_S * 1000


INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -p no:cacheprovider
"""

SUITE = '''
import pytest


@pytest.mark.parametrize("i", range(4))
async def test_send(endpoint, im_user, oracle, units, i):
    alice = await im_user("alice")
    bob = await im_user("bob")
    for n in range(3):
        ack = await alice.send(bob, f"m{n}")
    await bob.recorder.wait_messages(3, conversation=ack.conversation, timeout=units(5))
    page = await bob.history(ack.conversation, limit=10)
    assert len(page.messages) == 3


async def test_through_a_fault_link(endpoint, im_user, fault_link, units):
    link = await fault_link()
    alice = await im_user("alice")
    bob = await im_user("bob", via_link=link)
    ack = await alice.send(bob, "timed by the fault, not by the endpoint")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
'''


def test_each_xdist_worker_writes_its_own_file_only_with_alluredir(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "--im-endpoints", "new",
                                           "--alluredir", "results", timeout=units(120))
    assert result.parseoutcomes().get("passed") == 5, result.stdout.str()
    files = sorted((pytester.path / "results").glob("im-latency-*.json"))
    assert files
    assert {f.name for f in files} <= {"im-latency-gw0.json", "im-latency-gw1.json"}
    log = LatencyLog.merged(LatencyLog.from_json(f.read_text(), f.name) for f in files)
    # 4 tests x (2 connects, 3 sends, 3 deliveries, 1 page); the fault-link test adds nothing.
    counts = {op: log.samples("new", op) for op in ("connect", "send_ack", "delivery", "history")}
    assert counts == {"connect": 8, "send_ack": 12, "delivery": 12, "history": 4}
    assert log.names == ["new"]

    again = pytester.runpytest_subprocess("--im-endpoints", "new", "-k", "test_send",
                                          timeout=units(120))
    assert again.parseoutcomes().get("passed") == 4, again.stdout.str()
    assert sorted(pytester.path.rglob("im-latency*")) == files  # nothing new without it
