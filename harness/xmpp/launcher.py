"""Run an installed Prosody on loopback as a child process, with a generated config.

Each server gets a temp data directory holding its config (`prosody.cfg.lua`), its SQLite
store (`prosody.sqlite`: accounts, rosters, MAM archives, offline messages, MUC rooms) and its
log. c2s listens on 127.0.0.1 only; s2s is disabled and no HTTP module is loaded, so nothing
else listens. A server is stopped by PID (its own session) at `stop()` or at harness exit.

Prosody binaries: 0.12 is Debian bookworm's (/usr/bin/prosody), 13 is bookworm-backports',
unpacked beside it by `.ci/run` (/opt/prosody-13/usr/bin/prosody); each version's path can be
given in `[endpoints.X.server] binary`.
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import procs
from harness.errors import ConfigError, HarnessError
from harness.timing import units

LOG_TAIL_LINES = 20
DOMAIN = "localhost"
MUC_DOMAIN = f"conference.{DOMAIN}"

# version -> where its `prosody` binary is by default (see the module docstring).
DEFAULT_BINARIES: dict[str, str] = {
    "0.12": "/usr/bin/prosody",
    "13": "/opt/prosody-13/usr/bin/prosody",
}


@dataclass(frozen=True)
class RateProfile:
    """mod_limits' c2s read rate (bytes per second) and burst; None: no limit at all."""

    name: str
    c2s_rate: str | None
    c2s_burst: str | None

    @property
    def modules(self) -> tuple[str, ...]:
        """mod_limits throttles c2s to 3 kB/s even without a `limits` table: load it or not."""
        return ("limits",) if self.c2s_rate is not None else ()

    def lua(self) -> str:
        if self.c2s_rate is None:
            return ""
        return (f'limits = {{ c2s = {{ rate = "{self.c2s_rate}"; '
                f'burst = "{self.c2s_burst}" }} }}\n')


PROFILES: dict[str, RateProfile] = {
    # Tests: no c2s throttling at all (Prosody then answers as fast as it can).
    "relaxed": RateProfile("relaxed", None, None),
    # Prosody's documented example for real deployments: 10 kB/s per client, 2 s of burst.
    "default": RateProfile("default", "10kb/s", "2s"),
}

MODULES = (
    "roster", "saslauth", "disco", "ping", "register", "mam", "offline", "carbons", "smacks",
    "posix", "time", "version",
)
# Prosody's default, written out: a stanza over it closes the client's stream.
STANZA_SIZE_LIMIT = 256 * 1024


class ProsodyExited(HarnessError):
    """Prosody exited before it answered; the message carries its own error lines."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lua_list(items: tuple[str, ...] | list[str]) -> str:
    return "{ " + "; ".join(f'"{i}"' for i in items) + " }"


@dataclass
class ProsodyServer:
    """One Prosody on loopback; `with ProsodyServer("0.12") as p: p.port`."""

    version: str = "0.12"
    binary: str | None = None  # default: DEFAULT_BINARIES[version]
    data_dir: Path | None = None
    profile: str = "relaxed"
    start_timeout: float | None = None  # seconds; default 20 time units
    port: int | None = field(default=None, init=False)
    _proc: procs.Child | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"prosody rate_profile {self.profile!r} is unknown; use one of "
                              f"{sorted(PROFILES)}")
        if self.binary is None:
            if self.version not in DEFAULT_BINARIES:
                raise ConfigError(f"prosody version {self.version!r} has no default binary; "
                                  f"use one of {sorted(DEFAULT_BINARIES)} or set server.binary")
            self.binary = DEFAULT_BINARIES[self.version]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.running else None

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "prosody.log"

    @property
    def config_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "prosody.cfg.lua"

    def _check_binary(self) -> str:
        assert self.binary is not None
        if not Path(self.binary).exists():
            raise HarnessError(
                f"Prosody {self.version}: {self.binary} does not exist; install it as .ci/run "
                f"does (0.12: apt-get install prosody lua-dbi-sqlite3; 13: unpack "
                f"bookworm-backports' package into /opt/prosody-13) or set server.binary")
        return self.binary

    def _write_config(self) -> Path:
        assert self.data_dir is not None
        assert self.port is not None
        d = self.data_dir
        text = f"""-- generated by im-harness for Prosody {self.version}; do not edit
run_as_root = true -- CI runs as root; the server only ever listens on loopback
certificates = "{d / 'certs'}"
pidfile = "{d / 'prosody.pid'}"
data_path = "{d}"
log = {{ {{ levels = {{ min = "info" }}; to = "file"; filename = "{self.log_path}" }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_direct_tls_ports = {{ }}
modules_enabled = {_lua_list(MODULES + PROFILES[self.profile].modules)}
c2s_stanza_size_limit = {STANZA_SIZE_LIMIT}
modules_disabled = {{ "s2s"; "http"; "admin_socket"; "tls" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
-- SCRAM with 4096 PBKDF2 rounds (the least 13 takes), not 10000: slixmpp hashes in Python
default_iteration_count = 4096
storage = "sql"
sql = {{ driver = "SQLite3"; database = "prosody.sqlite" }}
sqlite_tune = "normal" -- 13: WAL, fsync at checkpoints (a kill -9 loses nothing); 0.12 ignores it
allow_registration = true
min_seconds_between_registrations = 0
registration_throttle_max = 100000
archive_expires_after = "never"
default_archive_policy = true
max_archive_query_results = 1000
smacks_hibernation_time = 60
{PROFILES[self.profile].lua()}
VirtualHost "{DOMAIN}"

Component "{MUC_DOMAIN}" "muc"
    modules_enabled = {{ "muc_mam" }}
    muc_room_locking = false
    muc_room_default_persistent = true
    muc_room_default_members_only = true
    muc_room_default_public = false
    muc_room_default_history_length = 0
    muc_log_by_default = true
    muc_log_all_rooms = true
    muc_log_expires_after = "never"
    restrict_room_creation = false
"""
        path = self.config_path
        path.write_text(text)
        path.chmod(0o600)
        return path

    def start(self) -> ProsodyServer:
        """Start Prosody and wait until its c2s port answers with an XMPP stream."""
        if self.pid is not None:
            return self
        binary = self._check_binary()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="im-harness-prosody-"))
            self._own_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "certs").mkdir(exist_ok=True)
        if self.port is None:
            self.port = free_port()
        config = self._write_config()
        self._marks = {name: (self.data_dir / name).stat().st_size
                       for name in ("prosody.log", "stdout.log")
                       if (self.data_dir / name).exists()}
        out = open(self.data_dir / "stdout.log", "ab")
        try:
            self._proc = procs.spawn(
                [binary, "-F", "--config", str(config)], name=f"Prosody {self.version}",
                cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT,
            )
        finally:
            out.close()
        self._wait_ready()
        return self

    def _answers(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"<?xml version='1.0'?><stream:stream to='" + DOMAIN.encode()
                             + b"' version='1.0' xmlns='jabber:client' "
                             b"xmlns:stream='http://etherx.jabber.org/streams'>")
                return b"<stream:stream" in sock.recv(4096)
        except OSError:
            return False

    def _wait_ready(self) -> None:
        assert self._proc is not None
        limit = self.start_timeout if self.start_timeout is not None else units(20)
        deadline = time.monotonic() + limit
        while True:
            if not self._proc.running:
                code = self._proc.returncode
                self._proc.forget()
                self._proc = None
                raise ProsodyExited(
                    f"Prosody {self.version} exited with code {code} before answering on "
                    f"port {self.port}: {self.refusal() or 'no error in its log'}")
            if self._answers():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(
                    f"Prosody {self.version} did not answer on 127.0.0.1:{self.port} within "
                    f"{limit:.0f}s; raise IM_HARNESS_TIME_SCALE on a slow machine; last log "
                    f"lines:\n{self.log_tail()}")
            time.sleep(0.05)

    def refusal(self) -> str:
        """Prosody's own words since the last start: its log's errors, else what it printed."""
        assert self.data_dir is not None
        marks = getattr(self, "_marks", {})
        said: dict[str, list[str]] = {}
        for name in ("prosody.log", "stdout.log"):
            path = self.data_dir / name
            if path.exists():
                with open(path, errors="replace") as fh:
                    fh.seek(marks.get(name, 0))
                    said[name] = [ln.strip() for ln in fh if ln.strip().strip("*")]
        errors = [ln for ln in said.get("prosody.log", [])
                  if "\terror\t" in ln or "fatal" in ln.lower()]
        return " | ".join(errors[-5:] or said.get("stdout.log", [])[:5])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log (empty when there is none)."""
        if self.data_dir is None or not self.log_path.exists():
            return ""
        with open(self.log_path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines)).rstrip()

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; the data directory stays for `restart()`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def kill(self) -> None:
        """SIGKILL (a crash); the database stays."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port and database."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory when this server created it."""
        self.stop()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ProsodyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def on_same_data(self, version: str, binary: str | None = None) -> ProsodyServer:
        """A stopped server of `version` on this one's data and port (in-place upgrade).

        The data directory passes to the new server: its `cleanup()` removes it.
        """
        other = ProsodyServer(version, binary=binary, data_dir=self.data_dir,
                              profile=self.profile, start_timeout=self.start_timeout)
        other.port = self.port
        other._own_dir, self._own_dir = self._own_dir, False
        return other
