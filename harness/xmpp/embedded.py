"""Prosody as an embedded server: an endpoint `adapter = "xmpp"` with no url starts one.

It can upgrade in place (`harness.servers.Upgradable`): stop this version, start the version
the other endpoint's request names on the same data directory and port. When that version
refuses the data, `UpgradeRefused` carries Prosody's own error lines, and this version is
started again on the data, so the endpoint keeps serving.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.contract import EndpointSettings
from harness.errors import UpgradeRefused
from harness.managed import ManagedEndpoint
from harness.servers import ServerRequest
from harness.xmpp.launcher import DOMAIN, PROFILES, ProsodyExited, ProsodyServer


class ProsodyOptions(BaseModel):
    """The `[endpoints.X.server]` table of an embedded xmpp endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal["0.12", "13"] = Field(
        description="the Prosody release to start: '0.12' (Debian bookworm) or '13' "
        "(bookworm-backports)")
    binary: str | None = Field(
        default=None, description="path of that release's `prosody`; unset: /usr/bin/prosody "
        "for 0.12, /opt/prosody-13/usr/bin/prosody for 13 (where .ci/run unpacks it)")
    rate_profile: Literal["relaxed", "default"] = Field(
        default="relaxed", description="'relaxed' for tests (no c2s throttling), 'default' "
        "for mod_limits' 10 kB/s per client with 2 s of burst")


def _options(request: ServerRequest) -> ProsodyOptions:
    options = request.server_options
    if isinstance(options, ProsodyOptions):
        return options
    return ProsodyOptions.model_validate(options.model_dump())


class ProsodyEmbedded(ManagedEndpoint):
    """One Prosody on loopback with its own data directory, removed at `stop()`."""

    Options: ClassVar[type[BaseModel]] = ProsodyOptions
    defects: ClassVar[tuple[str, ...]] = ()
    default_tier: ClassVar[str] = ""
    tiers: ClassVar[tuple[str, ...]] = ()
    server: ProsodyServer

    def __init__(self, request: ServerRequest, options: ProsodyOptions) -> None:
        assert options.rate_profile in PROFILES
        self.request = request
        self.server = ProsodyServer(options.version, binary=options.binary,
                                    profile=options.rate_profile)
        self._settings: EndpointSettings | None = None

    def __repr__(self) -> str:
        return f"<ProsodyEmbedded {self.request.endpoint}: {self.describe()}>"

    @classmethod
    def for_request(cls, request: ServerRequest) -> ProsodyEmbedded:
        return cls(request, _options(request))

    def describe(self) -> str:
        assert self.server.binary is not None
        release = Path(self.server.binary).resolve().parents[1] / "lib/prosody/prosody.version"
        try:
            return f"Prosody {release.read_text().strip()}"
        except OSError:
            return f"Prosody {self.server.version}"

    def _learn_settings(self) -> EndpointSettings:
        timeouts: dict[str, Any] = dict(self.request.timeouts)
        self._settings = EndpointSettings(
            name=self.request.endpoint, adapter="xmpp",
            url=f"tcp://127.0.0.1:{self.server.port}",
            protocol=self.request.protocol or f"prosody-{self.server.version}",
            tier=self.request.tier or self.server.profile,
            options={"domain": DOMAIN, **self.request.adapter_options},
        )
        self._settings = replace(self._settings, **timeouts)
        return self._settings

    def upgrade(self, to: ServerRequest) -> EndpointSettings:
        """Stop this Prosody, start `to`'s version on the same data; see the module docstring."""
        target = _options(to)
        before = self.server
        before.stop()
        after = before.on_same_data(target.version, binary=target.binary)
        try:
            after.start()
        except BaseException as exc:
            after.stop()
            before._own_dir, after._own_dir = after._own_dir, False
            before.start()  # the endpoint keeps serving as it was
            if isinstance(exc, ProsodyExited):
                raise UpgradeRefused(str(exc)) from None
            raise
        self.server = after
        self.request = replace(self.request, protocol=to.protocol, server_options=target)
        return self._learn_settings()

    def admin(self) -> None:
        return None  # XMPP has no tiers or apps the harness administers

    def app(self) -> None:
        return None

    def secrets(self) -> frozenset[str]:
        return frozenset()  # users' passwords live in their Credentials, not in the server
