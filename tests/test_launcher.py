"""The reference service launcher and admin client, against real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import BadRequest, ConfigError, HarnessError, Unauthorized
from harness.procs import live_pids
from harness.reference.admin import AdminClient
from harness.reference.launcher import ReferenceService
from harness.timing import units


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _reference_children() -> list[int]:
    """Pids of live `harness.reference` processes whose parent is this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and b"harness.reference" in cmdline:
            found.append(int(entry.name))
    return found


def test_start_then_stop_leaves_no_process(tmp_path: Path) -> None:
    svc = ReferenceService().start()
    pid = svc.pid
    assert pid is not None
    assert _alive(pid)
    assert svc.ws_url.startswith("ws://127.0.0.1:")
    assert svc.api_url.startswith("http://127.0.0.1:")
    db_dir = svc.db_path.parent if svc.db_path else None
    assert db_dir is not None
    assert db_dir.exists()
    assert pid in live_pids()
    svc.stop()
    assert not _alive(pid)
    assert svc.pid is None
    assert pid not in live_pids()
    assert not db_dir.exists(), "the temporary db directory must be removed on stop"


def test_admin_token_reaches_child_and_is_never_shown() -> None:
    with ReferenceService() as svc:
        app = svc.create_app_sync(tier="pro", features={"recall": True})
        assert app.app_id
        assert app.app_key
        assert svc.admin_token not in repr(svc)
        assert app.app_key not in repr(app)

        async def wrong_token() -> None:
            client = AdminClient(svc.api_url, "not-the-token")
            try:
                await client.counters()
            finally:
                await client.aclose()

        with pytest.raises(Unauthorized) as info:
            asyncio.run(wrong_token())
        assert "not-the-token" not in str(info.value)
        assert svc.admin_token not in "\n".join(svc.log_tail(500))


async def test_admin_client_round_trip() -> None:
    with ReferenceService() as svc:
        admin = svc.admin()
        try:
            app = await admin.create_app(tier="free")
            settings = await admin.get_app(app.app_id)
            assert app.app_key not in repr(settings)
            effective_at = await admin.update_app(app.app_id, tier="pro", delay_s=0)
            assert effective_at > 0
            defects = await admin.defects()
            assert defects
            assert not any(defects.values())
            name = sorted(defects)[0]
            assert (await admin.set_defects(**{name: True}))[name] is True
            with pytest.raises(BadRequest, match="no_such_defect"):
                await admin.set_defects(no_such_defect=True)
            creds = await admin.mint_user(app, "alice-launcher")
            assert creds.user_id == "alice-launcher"
            assert creds.token
            counters = await admin.counters()
            assert "connections" in counters
            assert "messages" in counters
        finally:
            await admin.aclose()


def test_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    db = tmp_path / "ref.db"
    with ReferenceService(db) as svc:
        app = svc.create_app_sync(tier="pro")
        ports, first_pid = (svc.ws_port, svc.api_port), svc.pid
        svc.restart()
        assert (svc.ws_port, svc.api_port) == ports
        assert first_pid is not None
        assert not _alive(first_pid)
        svc.kill()
        assert svc.pid is None
        assert db.exists(), "kill keeps the data on disk"
        svc.restart(kill=True)
        assert (svc.ws_port, svc.api_port) == ports

        async def app_exists() -> dict:
            admin = svc.admin()
            try:
                return await admin.get_app(app.app_id)
            finally:
                await admin.aclose()

        assert asyncio.run(app_exists())
    assert db.exists(), "a db the caller named is not removed"
    assert not _reference_children()


def test_start_failure_on_busy_port_raises_with_log_tail() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        svc = ReferenceService(extra_args=["--port", str(port)], start_timeout=units(15))
        with pytest.raises(HarnessError, match="failed to start") as info:
            svc.start()
    message = str(info.value)
    assert "stderr" in message
    tail = svc.log_tail()
    assert tail, "the child said nothing on stderr about the busy port"
    assert tail[-1] in message
    assert svc.pid is None
    assert not _reference_children()
    svc.stop()  # removes the temporary db dir; safe after a failed start


def test_bad_flag_fails_fast_with_its_message() -> None:
    svc = ReferenceService(defects=["no_such_defect"])
    with pytest.raises(HarnessError, match="no_such_defect"):
        svc.start()
    assert not _reference_children()
    svc.stop()


_ORPHAN_SCRIPT = textwrap.dedent("""
    import sys, time
    from harness.reference.launcher import ReferenceService
    svc = ReferenceService().start()
    print(svc.pid, flush=True)
    if sys.argv[1] == "wait":
        time.sleep(60)
""")


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigkill"])
def test_children_die_with_the_parent(ending: str) -> None:
    """A parent that forgets stop() (atexit), is SIGTERMed or is killed -9 leaves no service."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, "exit" if ending == "exit" else "wait"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"parent did not report a child pid: {line!r}"
        child = int(line)
        if ending != "exit":
            assert _alive(child)
            parent.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGKILL)
        parent.wait(timeout=units(15))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + units(5)
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)  # the child is not ours to wait for: poll /proc until it is reaped
    assert not _alive(child), f"reference service {child} outlived its parent ({ending})"


@pytest.mark.parametrize(("kw", "names"), [({"start_timeout": 0}, "start_timeout=0"),
                                           ({"defect_rate": 1.5}, "defect_rate=1.5")])
def test_bad_arguments_are_refused_before_spawning(kw: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        ReferenceService(**kw)
