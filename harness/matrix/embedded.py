"""Synapse as an embedded server: an endpoint `adapter = "matrix"` with no url starts one.

`upgrade(to)` stops this release and starts the one `to` names on the same database, signing
key, secrets and port, then waits until Synapse's background updates have finished.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from harness.contract import EndpointSettings
from harness.errors import ConfigError, HarnessError, UpgradeRefused
from harness.managed import ManagedEndpoint
from harness.matrix.launcher import KNOWN_VERSIONS, PROFILES, Database, SynapseServer
from harness.matrix.postgres import find_bindir
from harness.servers import ServerRequest
from harness.timing import units

REFUSAL_WORDS = ("too new", "schema", "database")  # how Synapse's own refusal line reads


class SynapseOptions(BaseModel):
    """The `[endpoints.X.server]` table of an embedded matrix endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(description="the Synapse release to install and start")
    rate_profile: Literal["relaxed", "default"] = Field(
        default="relaxed",
        description="'relaxed' for tests, 'default' for Synapse's own 0.2 msg/s, burst 10",
    )
    database: Database = Field(
        default="sqlite",
        description="'sqlite' (one file, one writer) or 'postgres' (a throwaway cluster of "
        "its own in the server's data dir; needs PostgreSQL installed)",
    )

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if value not in KNOWN_VERSIONS:
            raise ValueError(
                f"{value!r} has no pinned dependency date; use one of {', '.join(KNOWN_VERSIONS)}"
            )
        return value

    @field_validator("database")
    @classmethod
    def _database(cls, value: Database) -> Database:
        if value == "postgres":
            try:
                find_bindir()  # a missing PostgreSQL is a config problem, named before any work
            except ConfigError as exc:
                why = str(exc).replace('database = "postgres" needs', "it needs")
                raise PydanticCustomError("postgres_missing", why) from None
        return value


def _options(request: ServerRequest) -> SynapseOptions:
    options = request.server_options
    if isinstance(options, SynapseOptions):
        return options
    return SynapseOptions.model_validate(options.model_dump())


def pending_background_updates(server: SynapseServer) -> int:
    """Rows left in the `background_updates` table (0: every update has finished)."""
    return int(server.query("SELECT count(*) FROM background_updates")[0][0])


def wait_background_updates(server: SynapseServer) -> tuple[int, float]:
    """Poll until the database holds no background update; (pending when first polled, s)."""
    start = time.monotonic()
    first = pending_background_updates(server)
    pending = first
    while pending:
        if time.monotonic() - start > units(120):
            raise HarnessError(f"Synapse {server.version}: {pending} background updates still "
                               f"pending after {units(120):.0f}s")
        time.sleep(0.2)
        pending = pending_background_updates(server)
    return first, time.monotonic() - start


class SynapseEmbedded(ManagedEndpoint):
    """One Synapse homeserver on loopback, installed into the harness cache on first use."""

    Options: ClassVar[type[BaseModel]] = SynapseOptions
    defects: ClassVar[tuple[str, ...]] = ()
    default_tier: ClassVar[str] = ""
    tiers: ClassVar[tuple[str, ...]] = ()
    server: SynapseServer

    def __init__(self, request: ServerRequest, options: SynapseOptions) -> None:
        assert options.rate_profile in PROFILES
        self.request = request
        self.server = SynapseServer(options.version, profile=options.rate_profile,
                                    database=options.database)
        self._settings: EndpointSettings | None = None

    def __repr__(self) -> str:
        return f"<SynapseEmbedded {self.request.endpoint}: {self.describe()}>"

    @classmethod
    def for_request(cls, request: ServerRequest) -> SynapseEmbedded:
        return cls(request, _options(request))

    def describe(self) -> str:
        on = " on PostgreSQL" if self.server.database == "postgres" else ""
        return f"Synapse {self.server.version}{on}"

    def _learn_settings(self) -> EndpointSettings:
        base = self.server.endpoint_settings(
            self.request.endpoint, options=self.request.adapter_options
        )
        timeouts: dict[str, Any] = dict(self.request.timeouts)
        self._settings = replace(
            base,
            protocol=self.request.protocol or base.protocol,
            tier=self.request.tier or base.tier,
            **timeouts,
        )
        return self._settings

    def upgrade(self, to: ServerRequest) -> EndpointSettings:
        """Stop this release, start `to`'s on the same data; `UpgradeRefused` with Synapse's line.

        After a refusal the previous release serves the data again.
        """
        version, profile = _options(to).version, _options(to).rate_profile
        before = self.server
        before.stop()
        after = before.on_same_data(version)
        after.profile = profile
        try:
            after.start()
        except HarnessError as exc:
            lines = str(exc).splitlines()
            reason = next((line.strip() for line in lines
                           if any(w in line.lower() for w in REFUSAL_WORDS)
                           and "exited with code" not in line), lines[0])
            self.server = after.on_same_data(before.version)
            self.server.profile = before.profile
            self.server.start()
            raise UpgradeRefused(f"Synapse {version}: {reason}") from None
        self.server = after
        wait_background_updates(after)
        self.request = to
        return self._learn_settings()

    def admin(self) -> None:
        return None  # Matrix has no tiers or apps the harness administers

    def app(self) -> None:
        return None

    def secrets(self) -> frozenset[str]:
        return frozenset({self.server.registration_shared_secret})
