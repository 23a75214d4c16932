"""Start, stop, kill and restart the embedded reference service as a child process."""

from __future__ import annotations

import collections
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from harness import procs
from harness.errors import ConfigError, HarnessError
from harness.reference.admin import AdminClient, AppHandle
from harness.syncrun import run_sync

LOG_TAIL_LINES = 20

class ReferenceService:
    """The reference IM service in a child process on 127.0.0.1, ports chosen by the OS.

    Example: ``with ReferenceService() as svc: app = svc.create_app_sync(tier="pro")``
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        defects: Iterable[str] = (),
        keepalive_v1: float | None = None,
        keepalive_v2: float | None = None,
        propagation_delay: float = 0.0,
        seed: int = 0,
        defect_rate: float | None = None,
        release: int | None = None,
        token_window_s: float | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 15.0,
    ) -> None:
        if not start_timeout > 0:
            raise ConfigError(f"start_timeout={start_timeout!r} must be > 0 seconds, e.g. 15")
        if defect_rate is not None and not 0 <= defect_rate <= 1:
            raise ConfigError(f"defect_rate={defect_rate!r} must be between 0 and 1, e.g. 0.2")
        self._db_arg = Path(db_path) if db_path is not None else None
        self.defects = tuple(defects)
        self.keepalive_v1 = keepalive_v1
        self.keepalive_v2 = keepalive_v2
        self.propagation_delay = propagation_delay
        self.seed = seed
        self.defect_rate = defect_rate
        self.release = release  # None: the service's newest
        self.token_window_s = token_window_s  # None: the service's default
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.admin_token = secrets.token_urlsafe(32)
        self.ws_port: int | None = None
        self.api_port: int | None = None
        self.db_path: Path | None = self._db_arg
        self._tmpdir: str | None = None
        self._proc: procs.Child | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=500)
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.pid else "stopped"
        return f"ReferenceService(ws_url={self._url('ws', self.ws_port)!r}, {state})"

    @staticmethod
    def _url(scheme: str, port: int | None) -> str:
        return f"{scheme}://127.0.0.1:{port}" if port else ""

    @property
    def ws_url(self) -> str:
        return self._url("ws", self.ws_port)

    @property
    def api_url(self) -> str:
        return self._url("http", self.api_port)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.running else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines the child wrote on stderr."""
        return list(self._stderr)[-lines:]

    def _command(self, ws_port: int, api_port: int) -> list[str]:
        assert self.db_path is not None
        cmd = [sys.executable, "-m", "harness.reference", "--host", "127.0.0.1",
               "--port", str(ws_port), "--api-port", str(api_port), "--db", str(self.db_path)]
        for name in self.defects:
            cmd += ["--defect", name]
        if self.keepalive_v1 is not None:
            cmd += ["--keepalive-v1", str(self.keepalive_v1)]
        if self.keepalive_v2 is not None:
            cmd += ["--keepalive-v2", str(self.keepalive_v2)]
        cmd += ["--propagation-delay", str(self.propagation_delay), "--seed", str(self.seed)]
        if self.defect_rate is not None:
            cmd += ["--defect-rate", str(self.defect_rate)]
        if self.release is not None:
            cmd += ["--release", str(self.release)]
        if self.token_window_s is not None:
            cmd += ["--token-window", str(self.token_window_s)]
        return cmd + list(self.extra_args)

    def start(self) -> ReferenceService:
        """Spawn the service and wait for its ready line."""
        if self.pid is not None:
            raise HarnessError(f"{self!r} is already running; call stop() first")
        if self.db_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="im-ref-")
            self.db_path = Path(self._tmpdir) / "reference.db"
        self._spawn(0, 0)
        return self

    def _spawn(self, ws_port: int, api_port: int) -> None:
        env = dict(os.environ, IM_REF_ADMIN_TOKEN=self.admin_token, PYTHONUNBUFFERED="1")
        self._stderr.clear()
        child = procs.spawn(
            self._command(ws_port, api_port), name="reference service", env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._proc = child
        proc = child.proc
        lines: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, lines), daemon=True,
                             name=f"im-ref-{proc.pid}-stdout"),
            threading.Thread(target=self._pump, args=(proc.stderr, None), daemon=True,
                             name=f"im-ref-{proc.pid}-stderr"),
        ]
        for thread in self._threads:
            thread.start()
        try:
            ready = self._wait_ready(child, lines)
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise
        self.ws_port = int(ready["ws_port"])
        self.api_port = int(ready["api_port"])

    def _pump(self, stream: Any, lines: queue.Queue[str | None] | None) -> None:
        """Drain one pipe so the child never blocks on a full pipe."""
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if lines is not None:
                lines.put(text)
            else:
                self._stderr.append(text)
        if lines is not None:
            lines.put(None)

    def _wait_ready(self, child: procs.Child, lines: queue.Queue[str | None]) -> dict:
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(child, f"no ready line within {self.start_timeout:.1f}s")
            try:
                line = lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                if not child.running:
                    self._fail(child, f"exited with code {child.returncode} before it was ready")
                continue
            if line is None:
                child.proc.wait(timeout=5)
                self._fail(child, f"exited with code {child.returncode} before it was ready")
            try:
                ready = json.loads(line)
            except ValueError:
                continue  # stray output before the ready line
            if isinstance(ready, dict) and ready.get("event") == "ready":
                return ready

    def _fail(self, child: procs.Child, why: str) -> NoReturn:
        child.kill()
        for thread in self._threads:
            thread.join(timeout=2)  # so the log tail is complete
        tail = "\n".join(self.log_tail()) or "(no output on stderr)"
        raise HarnessError(
            f"reference service failed to start: {why}; last {LOG_TAIL_LINES} lines of its "
            f"stderr:\n{tail}"
        )

    def _terminate(self, sig: int) -> None:
        child = self._proc
        if child is None:
            return
        child.stop(sig)
        for thread in self._threads:
            thread.join(timeout=2)
        for stream in (child.proc.stdout, child.proc.stderr):
            if stream is not None:
                stream.close()
        self._proc = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs); removes a temporary db."""
        self._terminate(signal.SIGTERM)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.db_path = None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data on disk stays for restart()."""
        self._terminate(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same db and, when free, the same ports."""
        if self.db_path is None:
            raise HarnessError(f"{self!r} was never started; call start() instead of restart()")
        self._terminate(signal.SIGKILL if kill else signal.SIGTERM)
        ws_port, api_port = self.ws_port or 0, self.api_port or 0
        try:
            self._spawn(ws_port, api_port)
        except HarnessError:
            if not (ws_port or api_port) or not self.refusal().startswith(
                    ("im-ref: --port", "im-ref: --api-port")):
                raise
            self._spawn(0, 0)  # the old ports were taken meanwhile

    def start_as(self, release: int, *, token_window_s: float | None = None) -> None:
        """Stop and start as `release` on the same db (an upgrade, or a rollback's attempt).

        The service's own refusal (an older release on migrated data) is a `HarnessError`
        whose message holds its one-line reason; nothing is left running then.
        """
        self.release = release
        if token_window_s is not None:
            self.token_window_s = token_window_s
        self.restart()

    def refusal(self) -> str:
        """The service's own one-line reason from its last failed start, or ''."""
        return next((line for line in reversed(self.log_tail()) if line.startswith("im-ref: ")),
                    "")

    def admin(self) -> AdminClient:
        """An admin client for the current event loop."""
        if not self.api_url:
            raise HarnessError(f"{self!r} is not started; call start() first")
        return AdminClient(self.api_url, self.admin_token)

    def create_app_sync(self, **kw: Any) -> AppHandle:
        """`AdminClient.create_app` from synchronous code (runs in a private event loop)."""
        result: AppHandle = self.admin_sync("create_app", **kw)
        return result

    def update_app_sync(self, app_id: str, **kw: Any) -> float:
        """`AdminClient.update_app` from synchronous code; when the change takes effect."""
        result: float = self.admin_sync("update_app", app_id, **kw)
        return result

    def admin_sync(self, method: str, *args: Any, **kw: Any) -> Any:
        """Call `AdminClient.<method>` from synchronous code, in a private event loop."""
        async def call() -> Any:
            client = self.admin()
            try:
                return await getattr(client, method)(*args, **kw)
            finally:
                await client.aclose()

        return run_sync(call())

    def __enter__(self) -> ReferenceService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
