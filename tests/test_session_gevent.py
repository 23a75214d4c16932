"""A session starts its embedded servers also in a gevent-patched process (a locust process).

There, threads are greenlets in one OS thread: two servers started "in parallel" each ran a
private event loop in the same thread and one failed with "asyncio.run() cannot be called from
a running event loop" (about one start in three here). The session now starts them one at a time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.timing import units

STARTS = 4
SCRIPT = f"""
from gevent import monkey
monkey.patch_all()
from harness.config import load_config
from harness.session import HarnessSession
from harness.syncrun import threads_are_real
assert not threads_are_real()
for _ in range({STARTS}):
    session = HarnessSession(load_config(None), ["old", "new"])
    session.start()
    try:
        print("started", ",".join(sorted(session.servers)), flush=True)
    finally:
        session.stop()
"""


@pytest.mark.slow
def test_old_and_new_start_together_under_gevent(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True,
                          text=True, timeout=units(120), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n").count("started new,old") == STARTS, done.stdout
    assert "never awaited" not in done.stderr


def test_threads_are_real_without_gevent() -> None:
    from harness.syncrun import threads_are_real

    assert threads_are_real()
