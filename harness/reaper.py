"""Servers the harness starts die with the harness, even when it is killed -9.

`watch(pid)` starts a tiny reaper process beside a server: it polls its own parent and, once
re-parented (the harness is gone, whatever the signal), sends the server SIGTERM, then SIGKILL.
`harness.procs.spawn` puts one beside every server it starts: the one die-with-parent mechanism.
"""

from __future__ import annotations

import os
import subprocess
import sys

_REAPER = """
import os, signal, sys, time
target, grace, parent = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

while alive(target):
    if os.getppid() != parent:
        try:
            os.kill(target, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while alive(target) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(target):
                os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""


def watch(pid: int, *, grace_s: float = 5.0) -> subprocess.Popen[bytes]:
    """Start a reaper that stops `pid` once this process has died; it exits with `pid`."""
    return subprocess.Popen(
        # The harness's pid is passed, not read by the reaper: it may already be gone by then.
        [sys.executable, "-c", _REAPER, str(pid), str(grace_s), str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the harness must not kill the reaper first
    )
