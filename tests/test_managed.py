"""The shared server lifecycle (harness.managed) on a real child: a tiny log-writing server."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import procs
from harness.contract import EndpointSettings
from harness.errors import HarnessError
from harness.managed import ManagedEndpoint, ManagedServer, free_port
from harness.timing import units

# Writes a numbered line per start into its log, then waits to be stopped.
SERVER = ("import sys, time\n"
          "log = open(sys.argv[1], 'a')\n"
          "log.write('started\\n'); log.flush()\n"
          "if len(sys.argv) > 2: sys.exit(3)\n"
          "time.sleep(600)\n")


@dataclass
class TinyServer(ManagedServer):
    data_dir: Path | None = None
    fail: bool = False
    crash: bool = False  # the process starts, then exits 3
    _proc: procs.Child | None = field(default=None, init=False)
    _own_dir: bool = field(default=False, init=False)

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "tiny.log"

    def start(self) -> TinyServer:
        if self.data_dir is None:
            self.data_dir, self._own_dir = Path(tempfile.mkdtemp(prefix="im-tiny-")), True
        if self.fail:
            raise HarnessError("tiny server refused to start")
        lines = self.log_tail().count("started")
        self._proc = procs.spawn([sys.executable, "-c", SERVER, str(self.log_path),
                                  *(["crash"] if self.crash else [])], name="tiny")
        self.wait_ready(lambda: self._proc is not None and not self.crash
                        and self.log_tail().count("started") > lines,
                        limit=units(10), where="in its log")
        return self


class TinyEndpoint(ManagedEndpoint):
    def __init__(self, server: TinyServer) -> None:
        self.server, self._settings = server, None
        self.port = free_port()

    def _learn_settings(self) -> EndpointSettings:
        self._settings = EndpointSettings(name="tiny", adapter="tiny",
                                          url=f"tcp://127.0.0.1:{self.port}")
        return self._settings


def test_restart_keeps_the_data_and_cleanup_removes_what_it_made() -> None:
    with TinyServer() as server:
        first = server.pid
        assert first is not None
        assert first in procs.live_pids()
        server.restart(kill=True)
        assert server.pid not in (None, first)
        assert first not in procs.live_pids()
        assert server.log_tail().count("started") == 2  # the same log: the same data folder
        folder = server.data_dir
    assert server.pid is None
    assert folder is not None
    assert not folder.exists()


def test_a_folder_the_caller_gave_is_left_in_place(tmp_path: Path) -> None:
    server = TinyServer(data_dir=tmp_path)
    server.start()
    server.cleanup()
    assert server.pid is None
    assert "started" in (tmp_path / "tiny.log").read_text()


def test_the_endpoint_half_reports_settings_only_while_started() -> None:
    endpoint = TinyEndpoint(TinyServer())
    with pytest.raises(HarnessError, match="not started"):
        _ = endpoint.settings
    assert endpoint.start().url.startswith("tcp://127.0.0.1:")
    assert endpoint.pid is not None
    before = endpoint.pid
    assert endpoint.restart().name == "tiny"
    assert endpoint.pid not in (None, before)
    folder = endpoint.server.data_dir
    endpoint.stop()
    assert endpoint.pid is None
    assert folder is not None
    assert not folder.exists()


def test_a_failed_start_removes_what_it_made() -> None:
    server = TinyServer(fail=True)
    with pytest.raises(HarnessError, match="refused"):
        TinyEndpoint(server).start()
    assert server.data_dir is not None
    assert not server.data_dir.exists()


def test_a_server_that_exits_before_answering_is_named_with_its_code_and_log() -> None:
    server = TinyServer(crash=True)
    try:
        with pytest.raises(HarnessError, match=r"TinyServer exited with code 3 before it "
                           r"answered in its log; last log lines:\nstarted"):
            server.start()
        assert server.pid is None
    finally:
        server.cleanup()


def test_a_server_that_never_answers_is_stopped_and_named() -> None:
    server = TinyServer()
    server.data_dir, server._own_dir = Path(tempfile.mkdtemp(prefix="im-tiny-")), True
    server._proc = procs.spawn([sys.executable, "-c", SERVER, str(server.log_path)], name="tiny")
    pid = server._proc.pid
    try:
        with pytest.raises(HarnessError, match=r"did not answer the void within 0s; raise "
                           "IM_HARNESS_TIME_SCALE"):
            server.wait_ready(lambda: False, limit=0, where="the void")
        assert server.pid is None
        assert pid not in procs.live_pids()
    finally:
        server.cleanup()
