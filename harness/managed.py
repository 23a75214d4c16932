"""What every server the harness runs from a data folder of its own shares, in one place.

A plugin that runs a real server (Synapse, Prosody, a team's own) writes two classes:

- the launcher, a `ManagedServer`: it sets `data_dir` (and `_own_dir` when it made the folder),
  names its `log_path`, and writes `start()`, which puts a `harness.procs.spawn` child in
  `_proc`. Reading the log, stop, kill, restart, cleanup and `with` come from here.
- the endpoint, a `ManagedEndpoint` (the `harness.servers.EmbeddedServer` half): it holds the
  launcher as `server` and writes `_learn_settings()`, the endpoint settings of the running
  server. start (removing what a failed start left), stop, kill, restart, `settings` and `pid`
  come from here.

Example::

    @dataclass
    class MyServer(ManagedServer):
        data_dir: Path | None = None
        _proc: procs.Child | None = field(default=None, init=False)
        _own_dir: bool = field(default=False, init=False)

        @property
        def log_path(self) -> Path: return self.data_dir / "my.log"

        def start(self) -> MyServer: ...
"""

from __future__ import annotations

import collections
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import procs
from harness.contract import EndpointSettings
from harness.errors import HarnessError

LOG_TAIL_LINES = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot take 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManagedServer:
    """A server process started from its own data folder; the data outlives stop() and kill()."""

    data_dir: Path | None
    _proc: procs.Child | None
    _own_dir: bool

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def start(self) -> Any:
        raise NotImplementedError

    def title(self) -> str:
        """The server in words, for errors: e.g. "Synapse 1.141.0"."""
        return type(self).__name__

    def exited(self, code: int | None, where: str) -> HarnessError:
        """The error for a server that exited before answering (a plugin may say more)."""
        return HarnessError(f"{self.title()} exited with code {code} before it answered "
                            f"{where}; last log lines:\n{self.log_tail()}")

    def wait_ready(self, answers: Callable[[], bool], *, limit: float, where: str,
                   interval: float = 0.05) -> None:
        """Poll `answers()` until it holds; the server exiting first, or `limit` seconds passing
        (then it is stopped), is an error naming `where` with the log's last lines."""
        deadline = time.monotonic() + limit
        while True:
            proc = self._proc
            if proc is None or not proc.running:
                code = proc.returncode if proc is not None else None
                if proc is not None:
                    proc.forget()
                self._proc = None
                raise self.exited(code, where)
            if answers():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(
                    f"{self.title()} did not answer {where} within {limit:.0f}s; raise "
                    f"IM_HARNESS_TIME_SCALE on a slow machine; last log lines:\n"
                    f"{self.log_tail()}")
            time.sleep(interval)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.running else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log (empty when there is none)."""
        if self.data_dir is None or not self.log_path.exists():
            return ""
        with open(self.log_path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines)).rstrip()

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; the data folder stays for `restart()`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def kill(self) -> None:
        """SIGKILL (a crash); the data stays."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop, and remove the data folder when this server made it."""
        self.stop()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class ManagedEndpoint:
    """An embedded server (`harness.servers.EmbeddedServer`) over one `ManagedServer`."""

    server: ManagedServer
    _settings: EndpointSettings | None

    def _learn_settings(self) -> EndpointSettings:
        """The running server's endpoint settings; sets and returns `_settings`."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def settings(self) -> EndpointSettings:
        if self._settings is None:
            raise HarnessError(f"{self!r} is not started; call start() first")
        return self._settings

    def start(self) -> EndpointSettings:
        try:
            self.server.start()
        except BaseException:
            self.server.cleanup()
            raise
        return self._learn_settings()

    def stop(self) -> None:
        """Stop the server and remove the data it made."""
        self.server.cleanup()

    def kill(self) -> None:
        self.server.kill()

    def restart(self, *, kill: bool = False) -> EndpointSettings:
        self.server.restart(kill=kill)
        return self._learn_settings()
