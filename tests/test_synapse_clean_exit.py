"""A Synapse run observes every task's outcome: asyncio and aiohttp have nothing to complain of.

Runs a subset of the suites (chat over cut and silent links, offline catch-up after a
reconnect and after a server crash) against the embedded Synapse as a subprocess, with pytest's
log and output capture off so that asyncio's own error log ("Future exception was never
retrieved", ...) and aiohttp's "Unclosed client session" reach stderr, and asserts stderr has
none of them. The detector is shown to fire on a test that drops a failed future and an open
aiohttp session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.matrix.launcher import install_synapse
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# What asyncio and aiohttp log when an outcome is never observed or a session never closed.
UNOBSERVED = (
    "Future exception was never retrieved",
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "Unclosed client session",
    "Unclosed connector",
)
SUBSET = ["suites/test_chat.py", "suites/test_offline.py", "-k",
          "both_directions or silent_link or cut_link or missed_messages or server_crash"]

DROPS_A_FUTURE = """
import asyncio, gc
import aiohttp

async def test_drops_a_failed_future_and_a_session():
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(RuntimeError("nobody looks"))
    del fut
    session = aiohttp.ClientSession()
    del session
    gc.collect()
"""


def complaints(*args: str, cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str],
                                                                list[str]]:
    """Run pytest with `args` (log capture off) and return it with stderr's complaint lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
         "-p", "no:logging", "-s", "-W", "default"],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )
    found = [line for line in proc.stderr.splitlines() if any(u in line for u in UNOBSERVED)]
    return proc, found


def test_the_detector_sees_a_dropped_future_and_session(tmp_path: Path) -> None:
    """The check can fail: a test that drops both is caught by the same command."""
    (tmp_path / "test_drops.py").write_text(DROPS_A_FUTURE)
    proc, found = complaints("test_drops.py", "-o", "asyncio_mode=auto", "-o",
                             "asyncio_default_fixture_loop_scope=function", cwd=tmp_path,
                             timeout=units(60))
    assert proc.returncode == 0, proc.stdout[-2000:]
    text = "\n".join(found)
    assert "Future exception was never retrieved" in text, proc.stderr[-2000:]
    assert "Unclosed client session" in text, proc.stderr[-2000:]


def test_a_synapse_run_leaves_no_unobserved_outcome() -> None:
    """Chat and offline suites on the embedded Synapse: stderr names no unobserved outcome."""
    try:
        install_synapse("1.163.2")
    except HarnessError as exc:
        pytest.skip(f"Synapse 1.163.2 cannot be installed here: {str(exc).splitlines()[0]}")
    proc, found = complaints(*SUBSET, "--im-config", "examples/synapse.toml",
                             "--im-endpoints", "new", cwd=ROOT, timeout=units(600))
    assert not found, "a Synapse run left outcomes unobserved:\n" + "\n".join(found[:20]) + (
        "\n--- stderr ---\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
