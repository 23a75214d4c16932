"""Synapse as an embedded server: an endpoint `adapter = "matrix"` with no url starts one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.contract import EndpointSettings
from harness.errors import HarnessError
from harness.matrix.launcher import KNOWN_VERSIONS, PROFILES, SynapseServer
from harness.servers import ServerRequest


class SynapseOptions(BaseModel):
    """The `[endpoints.X.server]` table of an embedded matrix endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(description="the Synapse release to install and start")
    rate_profile: Literal["relaxed", "default"] = Field(
        default="relaxed",
        description="'relaxed' for tests, 'default' for Synapse's own 0.2 msg/s, burst 10",
    )

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if value not in KNOWN_VERSIONS:
            raise ValueError(
                f"{value!r} has no pinned dependency date; use one of {', '.join(KNOWN_VERSIONS)}"
            )
        return value


class SynapseEmbedded:
    """One Synapse homeserver on loopback, installed into the harness cache on first use."""

    Options: ClassVar[type[BaseModel]] = SynapseOptions
    defects: ClassVar[tuple[str, ...]] = ()
    default_tier: ClassVar[str] = ""
    tiers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, request: ServerRequest, options: SynapseOptions) -> None:
        assert options.rate_profile in PROFILES
        self.request = request
        self.server = SynapseServer(options.version, profile=options.rate_profile)
        self._settings: EndpointSettings | None = None

    def __repr__(self) -> str:
        return f"<SynapseEmbedded {self.request.endpoint}: {self.describe()}>"

    @classmethod
    def for_request(cls, request: ServerRequest) -> SynapseEmbedded:
        options = request.server_options
        if not isinstance(options, SynapseOptions):
            options = SynapseOptions.model_validate(options.model_dump())
        return cls(request, options)

    def describe(self) -> str:
        return f"Synapse {self.server.version}"

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def settings(self) -> EndpointSettings:
        if self._settings is None:
            raise HarnessError(f"{self!r} is not started; call start() first")
        return self._settings

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

    def start(self) -> EndpointSettings:
        try:
            self.server.start()
        except BaseException:
            self.server.cleanup()
            raise
        return self._learn_settings()

    def stop(self) -> None:
        self.server.cleanup()

    def kill(self) -> None:
        self.server.kill()

    def restart(self, *, kill: bool = False) -> EndpointSettings:
        self.server.restart(kill=kill)
        return self._learn_settings()

    def admin(self) -> None:
        return None  # Matrix has no tiers or apps the harness administers

    def app(self) -> None:
        return None

    def secrets(self) -> frozenset[str]:
        return frozenset({self.server.registration_shared_secret})
