"""The one registry of server processes the harness starts, and how they die with it.

`spawn()` starts a child in its own session, records it here and puts a reaper beside it
(`harness.reaper`), so a server dies with the harness whatever ends the harness: a normal exit
(atexit), a SIGTERM nobody else handles, or a kill -9 (the reaper notices it was re-parented).
Every embedded server goes through here: the reference service, Synapse, any plugin's server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from harness import reaper

STOP_TIMEOUT_S = 10.0

_live: dict[int, Child] = {}
_live_lock = threading.Lock()
_hooks_installed = False


class Child:
    """One server process: signal its whole process group, stop it, kill it, forget it."""

    def __init__(self, proc: subprocess.Popen[Any], name: str) -> None:
        self.proc = proc
        self.name = name
        self._reaper: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        return f"<Child {self.name} pid={self.proc.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child's process group (it leads its own session)."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> None:
        """`sig` (SIGTERM: a clean stop), wait, SIGKILL if it hangs; then forget it."""
        if self.running:
            self.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        self.forget()

    def kill(self) -> None:
        """SIGKILL, as a crash would; then forget it."""
        self.stop(signal.SIGKILL, timeout=5)

    def forget(self) -> None:
        """Drop it from the registry; its reaper exits within one poll once it is gone."""
        with _live_lock:
            _live.pop(self.proc.pid, None)
        reaper_proc, self._reaper = self._reaper, None
        if reaper_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper_proc.wait(timeout=2)


def spawn(
    cmd: Sequence[str],
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    text: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> Child:
    """Start `cmd` as a server child of this process: own session, registered, reaped.

    `text` opens its pipes as text; `preexec_fn` runs in the child before `cmd` (e.g. to pin
    a benchmark's service to one core).
    """
    _install_hooks()
    proc = subprocess.Popen(
        list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=text,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        preexec_fn=preexec_fn,
    )
    child = Child(proc, name)
    with _live_lock:
        _live[proc.pid] = child
    child._reaper = reaper.watch(proc.pid)
    return child


def live_pids() -> list[int]:
    """Pids of the servers this process started and has not stopped."""
    with _live_lock:
        return [pid for pid, child in _live.items() if child.running]


def kill_all() -> None:
    """SIGKILL every live child (at interpreter exit and on an unhandled SIGTERM)."""
    with _live_lock:
        children = list(_live.values())
    for child in children:
        child.kill()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    kill_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(kill_all)
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


__all__ = ["Child", "kill_all", "live_pids", "spawn"]
