"""A throwaway PostgreSQL cluster for one Synapse homeserver: initdb, start, query, stop.

`PostgresCluster(top)` keeps everything under `top`: the cluster (`top/data`, made by initdb),
its unix socket (`top/.s.PGSQL.5432`) and its log. It listens on that socket only
(`listen_addresses=''`, socket mode 0700), never on a network address, and trusts the local
connections that reach the socket. The server runs through `harness.procs.spawn`, so it dies
with the harness (also on kill -9, through the reaper).

Tuned for a test cluster that is thrown away after the run, never for data anyone keeps:
`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`, and `initdb --no-sync` (a crash
of the machine may lose or corrupt it; a crash of the server process does not).

PostgreSQL refuses to run as root; when the harness runs as root (euid 0), initdb and postgres
run as the unprivileged `postgres` system user (`run_as()`), which owns `top`. Otherwise they
run as the current user. The binaries come from `$IM_HARNESS_PG_BINDIR` when set, else
`pg_config --bindir`, PATH, or the newest /usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness import procs
from harness.errors import ConfigError, HarnessError
from harness.timing import units

BINDIR_ENV = "IM_HARNESS_PG_BINDIR"
NEEDED = ("initdb", "postgres", "psql")
SYSTEM_USER = "postgres"  # who runs the cluster when the harness runs as root
ROLE = "synapse"  # the cluster's superuser, the role Synapse connects as
DATABASE = "synapse"
PORT = 5432  # names the socket file only: nothing listens on a TCP port
TUNING = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "max_connections": "50",
    "logging_collector": "off",
}


def _has_all(bindir: Path) -> bool:
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in NEEDED)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def find_bindir() -> Path:
    """The directory holding initdb, postgres and psql; ConfigError naming the fix if none."""
    raw = os.environ.get(BINDIR_ENV)
    if raw:
        where = Path(raw)
        if _has_all(where):
            return where
        raise ConfigError(_missing(f"${BINDIR_ENV} ({where})"))
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=units(10), check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    for name in ("initdb", "postgres"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key,
                         reverse=True)
    for bindir in candidates:
        if _has_all(bindir):
            return bindir
    raise ConfigError(_missing("pg_config --bindir, PATH and /usr/lib/postgresql/*/bin"))


def _missing(where: str) -> str:
    return (f'database = "postgres" needs PostgreSQL\'s {", ".join(NEEDED)}, not found in '
            f'{where}; install PostgreSQL (apt-get install postgresql) or set '
            f'database = "sqlite"')


def run_as() -> Callable[[], None] | None:
    """What a child runs before exec to drop root to the `postgres` user; None when not root.

    PostgreSQL's initdb and server refuse to start as root; this is the one place the harness
    changes user, and only for them.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise ConfigError(
            f'database = "postgres" as root needs the unprivileged {SYSTEM_USER!r} system user '
            f"(PostgreSQL refuses to run as root); install postgresql (it adds the user) or run "
            f"the harness as a non-root user"
        ) from None
    uid, gid = entry.pw_uid, entry.pw_gid

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


class PostgresCluster:
    """One PostgreSQL server on a unix socket under `top`; made on first `start()`."""

    def __init__(self, top: Path, *, name: str = "PostgreSQL") -> None:
        self.top = top
        self.name = name
        self._proc: procs.Child | None = None

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.top} pid={self.pid}>"

    @property
    def data(self) -> Path:
        return self.top / "data"

    @property
    def socket_dir(self) -> Path:
        return self.top

    @property
    def log_path(self) -> Path:
        return self.top / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.running else None

    def synapse_args(self) -> dict[str, object]:
        """The `database.args` of a Synapse config that uses this cluster."""
        return {"user": ROLE, "database": DATABASE, "host": str(self.socket_dir), "port": PORT,
                "cp_min": 2, "cp_max": 10}

    def start(self) -> PostgresCluster:
        """initdb on first use, start the server, make the database; wait until it answers."""
        if self.pid is not None:
            return self
        bindir = find_bindir()
        drop = run_as()
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._initdb(bindir, drop)
        log = open(self.log_path, "ab")
        settings = {**TUNING, "unix_socket_directories": str(self.socket_dir), "port": str(PORT)}
        cmd = [str(bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        try:
            self._proc = procs.spawn(cmd, name=self.name, cwd=self.top, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=drop)
        finally:
            log.close()
        self._wait_ready(bindir)
        if fresh:
            # Synapse needs UTF8 with the C collation (docs/postgres.md), hence template0.
            self.query("CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                       "TEMPLATE template0", database="postgres")
        return self

    def _initdb(self, bindir: Path, drop: Callable[[], None] | None) -> None:
        self.top.mkdir(parents=True, exist_ok=True)
        self.top.chmod(0o700)
        if drop is not None:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.top, entry.pw_uid, entry.pw_gid)
            # The postgres user must reach `top`: its parents are traversable, not listable.
            parent = self.top.parent
            if parent.stat().st_uid == 0 and parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o011)
        proc = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync"],
            capture_output=True, text=True, cwd=self.top, preexec_fn=drop, timeout=units(120),
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise HarnessError(f"initdb into {self.data} failed (exit {proc.returncode}); the "
                               f"{SYSTEM_USER if drop else 'current'} user must be able to "
                               f"write there:\n{tail}")

    def _wait_ready(self, bindir: Path) -> None:
        assert self._proc is not None
        limit = units(30)
        deadline = time.monotonic() + limit
        while True:
            if not self._proc.running:
                code = self._proc.returncode
                self._proc.forget()
                self._proc = None
                raise HarnessError(f"{self.name} exited with code {code} before accepting "
                                   f"connections; last log lines:\n{self.log_tail()}")
            ready = subprocess.run(
                [str(bindir / "psql"), *self._conn("postgres"), "-c", "SELECT 1"],
                capture_output=True, timeout=units(10), check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(f"{self.name} did not accept connections on "
                                   f"{self.socket_dir} within {limit:.0f}s; raise "
                                   f"IM_HARNESS_TIME_SCALE on a slow machine; last log lines:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def _conn(self, database: str) -> list[str]:
        return ["-X", "-q", "-h", str(self.socket_dir), "-p", str(PORT), "-U", ROLE,
                "-d", database, "-v", "ON_ERROR_STOP=1"]

    def query(self, sql: str, *, database: str = DATABASE) -> list[list[str]]:
        """Run `sql` with psql; the rows, each a list of column texts (tab-separated output)."""
        proc = subprocess.run(
            [str(find_bindir() / "psql"), *self._conn(database), "-A", "-t", "-F", "\t",
             "-c", sql],
            capture_output=True, text=True, timeout=units(30), check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(f"{self.name}: {sql.split()[0]} failed: {proc.stderr.strip()}")
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (empty when there is none)."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """A fast shutdown (SIGINT: disconnect clients, write a checkpoint); the data stays."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the next start recovers from the write-ahead log."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
