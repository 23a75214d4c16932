"""A server the harness started dies with the harness, whatever ends the harness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.timing import units

_PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from harness import reaper
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              start_new_session=True)
    reaper.watch(server.pid, grace_s=1.0)
    print(server.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_server_dies_with_its_harness(sig: signal.Signals) -> None:
    """A harness killed by SIGKILL or SIGTERM leaves no server behind."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    server = None
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        assert _alive(server)
        parent.send_signal(sig)
        parent.wait(timeout=units(5))
        deadline = time.monotonic() + units(5)
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server), f"server {server} outlived its harness ({sig.name})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


def test_reaper_leaves_with_its_server() -> None:
    """The reaper exits by itself once the server it watches is gone."""
    from harness import reaper

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              start_new_session=True)
    guard = reaper.watch(server.pid)
    try:
        server.kill()
        server.wait()
        assert guard.wait(timeout=units(3)) == 0
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
