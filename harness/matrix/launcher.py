"""Install a pinned Synapse into its own cached venv, then run it on loopback as a child process.

Each version gets `<cache>/synapse-<version>` (cache: `$IM_HARNESS_CACHE`, else
`~/.cache/im-harness`), installed with uv and an `--exclude-newer` date so its dependencies
resolve as they did when that release came out (1.141.0 fails at import on a newer
prometheus_client); with `postgres` also psycopg2 (`matrix-synapse[postgres]`). A server is
SQLite-backed (`database="sqlite"`, the default) or uses its own throwaway PostgreSQL cluster
in its data dir (`database="postgres"`, `harness.matrix.postgres`); it listens on 127.0.0.1
only, has no federation listener, and is stopped by PID (its own session), at `stop()` or at
interpreter exit.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import procs
from harness.contract import EndpointSettings
from harness.errors import ConfigError, HarnessError
from harness.managed import ManagedServer, free_port
from harness.matrix.postgres import PostgresCluster, find_bindir
from harness.timing import units

CACHE_ENV = "IM_HARNESS_CACHE"
LOG_TAIL_LINES = 20
DATABASES = ("sqlite", "postgres")
Database = Literal["sqlite", "postgres"]

# version -> the --exclude-newer date its dependencies resolve at (a day or so after release).
KNOWN_VERSIONS: dict[str, str] = {
    "1.141.0": "2025-10-30",
    "1.163.2": "2026-10-25",  # released 2026-10-23
}


@dataclass(frozen=True)
class RateProfile:
    """Synapse rate limits for sending messages, as (per second, burst)."""

    name: str
    message_per_second: float
    message_burst: int
    relaxed_others: bool  # logins, registrations, joins, invites, room creation

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "rc_message": {
                "per_second": self.message_per_second,
                "burst_count": self.message_burst,
            }
        }
        if self.relaxed_others:
            loose = {"per_second": 1000, "burst_count": 1000}
            for key in (
                "rc_registration",
                "rc_room_creation",
                "rc_joins_per_room",
                "rc_admin_redaction",
                "rc_delayed_event_mgmt",
                "rc_reports",
                "rc_profile",
                "rc_user_directory",
            ):
                cfg[key] = loose
            cfg["rc_login"] = {k: loose for k in ("address", "account", "failed_attempts")}
            cfg["rc_joins"] = {"local": loose, "remote": loose}
            cfg["rc_invites"] = {k: loose for k in ("per_room", "per_user", "per_issuer")}
        return cfg


PROFILES: dict[str, RateProfile] = {
    # Tests create many users and rooms quickly; the message limit stays real but roomy: a
    # burst of 30 (more than any suite sends from one user) and 5 per second after it, so a
    # flood of one burst and a half is refused in part even while Synapse works through it.
    "relaxed": RateProfile("relaxed", 5.0, 30, relaxed_others=True),
    # Synapse's own defaults (0.2 msg/s, burst 10): for tests of rate limiting.
    "default": RateProfile("default", 0.2, 10, relaxed_others=False),
}


def cache_root() -> Path:
    """Where Synapse venvs live: `$IM_HARNESS_CACHE` or `~/.cache/im-harness`."""
    raw = os.environ.get(CACHE_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "im-harness"


def _find_uv() -> list[str]:
    beside = Path(sys.executable).with_name("uv")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("uv")
    if found:
        return [found]
    raise HarnessError(
        "uv is needed to install Synapse and was not found next to "
        f"{sys.executable} nor on PATH; install it with `{sys.executable} -m pip install uv`"
    )


def install_synapse(
    version: str, *, cache_dir: Path | None = None, exclude_newer: str | None = None,
    postgres: bool = False,
) -> Path:
    """Install `matrix-synapse==version` into its cached venv (once) and return its python.

    With `postgres`, `matrix-synapse[postgres]` (psycopg2) into a venv of its own,
    `synapse-<version>+postgres`: the cache keys on the extra, and a venv a running server
    uses is never changed under it.
    """
    if exclude_newer is None:
        exclude_newer = KNOWN_VERSIONS.get(version)
    root = cache_dir or cache_root()
    extra = "[postgres]" if postgres else ""
    venv = root / (f"synapse-{version}+postgres" if postgres else f"synapse-{version}")
    python = venv / "bin" / "python"
    marker = venv / ".im-harness-installed"
    if marker.exists() and python.exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel workers install each version once
        if marker.exists() and python.exists():
            return python
        uv = _find_uv()
        _run([*uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)], version)
        cmd = [*uv, "pip", "install", "--quiet", "--python", str(python)]
        if exclude_newer:
            cmd += ["--exclude-newer", exclude_newer]
        _run([*cmd, f"matrix-synapse{extra}=={version}"], version)
        check = "import synapse.app.homeserver" + ("; import psycopg2" if postgres else "")
        _run([str(python), "-c", check], version)
        marker.write_text(f"{version}{extra} {exclude_newer or ''}\n")
    return python


def _run(cmd: list[str], version: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-LOG_TAIL_LINES:])
        raise HarnessError(
            f"installing Synapse {version} failed at `{' '.join(cmd[:3])} ...` "
            f"(exit {proc.returncode}); pin a date in KNOWN_VERSIONS or check the network:\n{tail}"
        )


def _signing_key() -> str:
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


@dataclass
class SynapseServer(ManagedServer):
    """One Synapse homeserver on loopback; `with SynapseServer("1.141.0") as hs: hs.base_url`."""

    version: str = "1.141.0"
    data_dir: Path | None = None
    profile: str = "relaxed"
    database: Database = "sqlite"  # or "postgres": its own cluster in data_dir/postgres
    server_name: str = "localhost"
    start_timeout: float | None = None  # seconds; default 30 time units (60 on postgres)
    cache_dir: Path | None = None
    registration_shared_secret: str = field(
        default_factory=lambda: secrets.token_urlsafe(24), repr=False
    )
    # Kept across restarts (and an in-place upgrade) so tokens and sessions stay valid.
    _macaroon_key: str = field(
        default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False
    )
    _form_secret: str = field(
        default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False
    )
    port: int | None = field(default=None, init=False)
    _proc: procs.Child | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)
    # The database server (postgres only); passed on by on_same_data with the data dir.
    _cluster: PostgresCluster | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(
                f"synapse profile {self.profile!r} is unknown; use one of {sorted(PROFILES)}"
            )
        if self.database not in DATABASES:
            raise ConfigError(
                f"synapse database {self.database!r} is unknown; use one of {', '.join(DATABASES)}"
            )

    @property
    def cluster(self) -> PostgresCluster | None:
        """The PostgreSQL cluster of a postgres-backed server once started (else None)."""
        return self._cluster

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise HarnessError("SynapseServer is not started; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def rate_profile(self) -> RateProfile:
        return PROFILES[self.profile]

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "synapse.log"

    def install(self) -> Path:
        """Install this version (cached) and return its python."""
        return install_synapse(self.version, cache_dir=self.cache_dir,
                               postgres=self.database == "postgres")

    def _database_config(self) -> dict[str, Any]:
        assert self.data_dir is not None
        if self._cluster is not None:
            return {"name": "psycopg2", "args": self._cluster.synapse_args()}
        return {"name": "sqlite3", "args": {"database": str(self.data_dir / "homeserver.db")}}

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a read-only `sql` on this server's database, each column as text."""
        if self._cluster is not None:
            return self._cluster.query(sql)
        assert self.data_dir is not None
        db = self.data_dir / "homeserver.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=units(5)) as conn:
            return [["" if v is None else str(v) for v in row] for row in conn.execute(sql)]

    def _write_config(self) -> Path:
        assert self.data_dir is not None
        assert self.port is not None
        d = self.data_dir
        key = d / "signing.key"
        if not key.exists():
            key.write_text(_signing_key())
            key.chmod(0o600)  # the data dir may be traversable by the postgres user
        log_cfg = d / "log.yaml"
        log_cfg.write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s "
                                             "%(message)s"}},
                    "handlers": {
                        "console": {"class": "logging.StreamHandler", "formatter": "plain"}
                    },
                    "root": {"level": "WARNING", "handlers": ["console"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        cfg: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(d / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": self._database_config(),
            "log_config": str(log_cfg),
            "media_store_path": str(d / "media_store"),
            "signing_key_path": str(key),
            "registration_shared_secret": self.registration_shared_secret,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "bcrypt_rounds": 4,  # registration and login cost ms, not a quarter second
            # Background updates (after an upgrade) run back to back instead of pausing
            # between batches, so "finished" comes in seconds, not minutes.
            "background_updates": {"sleep_enabled": False},
            "macaroon_secret_key": self._macaroon_key,
            "form_secret": self._form_secret,
            **self.rate_profile.config(),
        }
        path = d / "homeserver.yaml"
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML; no yaml dependency here
        path.chmod(0o600)
        return path

    def start(self) -> SynapseServer:
        """Install if needed, start Synapse, wait until the client API answers."""
        if self.pid is not None:
            return self
        if self.database == "postgres":
            find_bindir()  # a missing PostgreSQL is named before anything is installed
        python = self.install()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="im-harness-synapse-"))
            self._own_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        if self.database == "postgres":
            if self._cluster is None:
                self._cluster = PostgresCluster(self.data_dir / "postgres",
                                                name=f"PostgreSQL for Synapse {self.version}")
            self._cluster.start()
        config = self._write_config()
        log = open(self.log_path, "ab")
        try:
            self._proc = procs.spawn(
                [str(python), "-m", "synapse.app.homeserver", "-c", str(config)],
                name=f"Synapse {self.version}", cwd=self.data_dir, stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # On PostgreSQL a first start creates Synapse's schema statement by statement: about
        # 1.5x SQLite's start on this project's 2-core machine, hence the larger bound there.
        default = units(60) if self.database == "postgres" else units(30)
        limit = self.start_timeout if self.start_timeout is not None else default
        url = f"{self.base_url}/_matrix/client/versions"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self.wait_ready(answers, limit=limit, where=url, interval=0.1)

    def title(self) -> str:
        return f"Synapse {self.version}"

    def cleanup(self) -> None:
        """Stop Synapse and its database; remove the data directory when this server made it.

        stop(), kill() and restart() touch Synapse only: a PostgreSQL cluster keeps running (as
        a deployment's database would across a Synapse restart or upgrade) until here.
        """
        self.stop()
        if self._cluster is not None:
            self._cluster.stop()
        super().cleanup()

    def on_same_data(self, version: str) -> SynapseServer:
        """A stopped server of `version` on this one's data, port and secrets (in-place upgrade).

        The data directory and the database cluster pass to the new server: its `cleanup()`
        stops the cluster and removes the directory.
        """
        other = SynapseServer(
            version,
            data_dir=self.data_dir,
            profile=self.profile,
            database=self.database,
            server_name=self.server_name,
            start_timeout=self.start_timeout,
            cache_dir=self.cache_dir,
            registration_shared_secret=self.registration_shared_secret,
        )
        other._macaroon_key, other._form_secret = self._macaroon_key, self._form_secret
        other.port = self.port
        other._own_dir, self._own_dir = self._own_dir, False
        other._cluster, self._cluster = self._cluster, None
        return other

    def endpoint_settings(
        self, name: str = "matrix", *, options: Mapping[str, Any] | None = None
    ) -> EndpointSettings:
        """Settings for `MatrixAdapter.open`, with the shared secret and the rate limits."""
        prof = self.rate_profile
        return EndpointSettings(
            name=name,
            adapter="matrix",
            url=self.base_url,
            protocol=f"synapse-{self.version}",
            tier=prof.name,
            secrets={"registration_shared_secret": self.registration_shared_secret},
            options={
                "server_name": self.server_name,
                "send_rate_per_user": prof.message_per_second,
                "send_burst": prof.message_burst,
                **(options or {}),
            },
        )
