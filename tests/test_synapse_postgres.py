"""Synapse on its own throwaway PostgreSQL cluster: serves, stays on a unix socket, leaves nothing.

Also the bad input: an unknown `database` and a machine without PostgreSQL are one line each,
before any work. The upgrade on PostgreSQL is the journey test's (examples/synapse.toml) and
`test_synapse_upgrade.py`'s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import procs
from harness.adapters.matrix import MatrixAdapter
from harness.contract import Target
from harness.errors import ConfigError, HarnessError
from harness.matrix.embedded import SynapseEmbedded, SynapseOptions
from harness.matrix.launcher import SynapseServer, install_synapse
from harness.matrix.postgres import BINDIR_ENV, find_bindir
from harness.servers import ServerRequest
from harness.timing import units

VERSION = "1.163.2"
ROOT = Path(__file__).resolve().parent.parent


def _postgres_here() -> None:
    try:
        find_bindir()
    except ConfigError as exc:
        pytest.skip(str(exc))


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (a cluster's postgres and its helpers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd and "pytest" not in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _tcp_listeners(pid: int) -> list[str]:
    """The TCP ports `pid` listens on (from its socket inodes and /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.append(cols[1])
    return ports


@pytest.mark.slow
def test_a_postgres_backed_synapse_serves_and_leaves_nothing() -> None:
    _postgres_here()
    try:
        install_synapse(VERSION, postgres=True)
    except HarnessError as exc:
        pytest.skip(f"Synapse {VERSION} cannot be installed here: {str(exc).splitlines()[0]}")
    request = ServerRequest(endpoint="pg", adapter="matrix",
                            server_options=SynapseOptions(version=VERSION, database="postgres"))
    embedded = SynapseEmbedded.for_request(request)
    settings = embedded.start()
    server = embedded.server
    try:
        cluster = server.cluster
        assert cluster is not None
        assert cluster.pid is not None
        assert server.data_dir is not None
        assert cluster.top.parent == server.data_dir
        assert embedded.describe() == f"Synapse {VERSION} on PostgreSQL"
        # Synapse really stores its events in PostgreSQL, on a socket, never on a TCP port.
        assert server.query("SELECT current_setting('listen_addresses') = ''") == [["t"]]
        assert _tcp_listeners(cluster.pid) == []
        owner = Path(f"/proc/{cluster.pid}").stat().st_uid
        assert owner != 0, "postgres runs as root"
        encoding = server.query("SELECT pg_encoding_to_char(encoding), datcollate, datctype "
                                "FROM pg_database WHERE datname = current_database()")
        assert encoding == [["UTF8", "C", "C"]]

        async def both_ways() -> int:
            adapter = await MatrixAdapter.open(settings)
            tag = os.urandom(3).hex()
            try:
                a = await adapter.connect(await adapter.provision_user(f"pga-{tag}"))
                b = await adapter.connect(await adapter.provision_user(f"pgb-{tag}"))
                try:
                    for sender, peer, body in ((a, b, "hello over postgres"),
                                               (b, a, "and back")):
                        ack = await sender.send(Target.to_user(peer.user_id), body)
                        async with asyncio.timeout(units(20)):
                            async for event in peer.events():
                                message = getattr(event, "message", None)
                                if message is not None and message.message_id == ack.message_id:
                                    assert message.body == body
                                    break
                finally:
                    await a.close()
                    await b.close()
            finally:
                await adapter.aclose()
            rows = server.query("SELECT count(*) FROM events WHERE type = 'm.room.message'")
            return int(rows[0][0])

        assert asyncio.run(both_ways()) == 2
    finally:
        embedded.stop()
    assert cluster.pid is None
    assert _processes_under(cluster.top) == []
    assert not server.data_dir.exists()
    assert not procs.live_pids()


def test_no_postgresql_is_one_line_naming_the_key_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv(BINDIR_ENV, str(empty))
    with pytest.raises(ConfigError) as missing:
        find_bindir()
    text = str(missing.value)
    assert text.startswith('database = "postgres" needs PostgreSQL\'s initdb, postgres, psql, '
                           f"not found in ${BINDIR_ENV} ({empty})")
    assert text.endswith('install PostgreSQL (apt-get install postgresql) or set '
                         'database = "sqlite"')
    # The launcher names it before it installs or starts anything.
    server = SynapseServer(VERSION, database="postgres", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match='database = "postgres" needs'):
        server.start()
    assert server.data_dir is None
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ("mysql", "endpoints.new.server.database = 'mysql': input should be 'sqlite' or "
                  "'postgres'; fix the value"),
        ("postgres", "endpoints.new.server.database = 'postgres': it needs PostgreSQL's "
                     "initdb, postgres, psql, not found in "),
    ],
)
def test_bad_database_in_a_config_is_one_line_and_exit_2(
        tmp_path: Path, database: str, message: str) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    config = tmp_path / "im-harness.toml"
    config.write_text(
        "[harness]\nendpoints = [\"old\", \"new\"]\n"
        "[endpoints.old]\nadapter = \"matrix\"\nserver = { version = \"1.141.0\" }\n"
        f"[endpoints.new]\nadapter = \"matrix\"\n"
        f"server = {{ version = \"{VERSION}\", database = \"{database}\" }}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor", "-c", str(config)],
        capture_output=True, text=True, timeout=units(60), check=False, cwd=tmp_path,
        env={**os.environ, BINDIR_ENV: str(empty)},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = (proc.stderr or proc.stdout).strip()
    assert message in out, out
    assert "\n" not in out, out
    assert "Traceback" not in out, out
