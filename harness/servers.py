"""Servers the harness can start itself: a plugin interface beside the adapters.

An endpoint with no `url` is embedded: the harness looks up the server registered under the
endpoint's adapter name (entry-point group `im_harness.servers`), asks it for a `ServerRequest`'s
worth of endpoint, and may later kill -9 it, restart it on the same data, or upgrade it. The core
names no server: the reference service and Synapse arrive here exactly as a team's own would.

Example, in a plugin package's pyproject::

    [project.entry-points."im_harness.servers"]
    acme = "acme_harness.server:AcmeServer"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from harness.contract import EndpointSettings
from harness.registry import Registry


class NoOptions(BaseModel):
    """A server (or adapter) that takes no options: any key is a config error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ServerRequest:
    """What the harness asks an embedded server to serve for one endpoint."""

    endpoint: str  # the endpoint's name, e.g. "new"
    adapter: str
    protocol: str = ""  # "" = the server's default
    tier: str = ""  # "" = the server's default
    limits: Mapping[str, float] = field(default_factory=dict)
    features: Mapping[str, bool] = field(default_factory=dict)
    app_id: str = ""
    adapter_options: Mapping[str, Any] = field(default_factory=dict)
    server_options: BaseModel = field(default_factory=NoOptions)  # the server's own Options
    timeouts: Mapping[str, float] = field(default_factory=dict)  # EndpointSettings keywords
    defects: tuple[str, ...] = ()  # seeded defects to switch on
    defect_rate: float | None = None
    seed: int = 0
    keepalive: Mapping[str, float] = field(default_factory=dict)  # protocol -> seconds
    propagation_delay: float = 0.0  # how long app changes take to apply


@runtime_checkable
class AdminHandle(Protocol):
    """Administration of a server's apps (tiers, features, limits), for the running event loop."""

    async def create_app(self, **kw: Any) -> Any: ...
    async def update_app(self, app_id: str, **kw: Any) -> Any: ...
    async def get_app(self, app_id: str) -> dict[str, Any]: ...
    async def counters(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class EmbeddedServer(Protocol):
    """A server process the harness starts, kills, restarts on the same data, and stops.

    `start()` and `restart()` block until the server answers and return the settings an adapter
    opens it with (the url may change on restart only when the old port was taken).
    """

    Options: ClassVar[type[BaseModel]]  # the endpoint's [endpoints.X.server] table
    defects: ClassVar[tuple[str, ...]]  # the seeded defects it understands (may be empty)
    default_tier: ClassVar[str]  # the tier an endpoint gets when it names none ("" if none)
    tiers: ClassVar[tuple[str, ...]]  # the tiers it can serve (empty: any name)

    @classmethod
    def for_request(cls, request: ServerRequest) -> EmbeddedServer: ...

    def start(self) -> EndpointSettings: ...

    @property
    def settings(self) -> EndpointSettings: ...

    @property
    def pid(self) -> int | None: ...

    def describe(self) -> str: ...  # e.g. "Synapse 1.163.2", for the report header

    def stop(self) -> None: ...  # and remove the data it created

    def kill(self) -> None: ...  # SIGKILL; the data stays for restart()

    def restart(self, *, kill: bool = False) -> EndpointSettings: ...

    def admin(self) -> AdminHandle | None: ...  # a new admin client, or None without an API

    def app(self) -> Any: ...  # the app it created for the endpoint (None if it has no apps)

    def secrets(self) -> frozenset[str]: ...  # every secret it holds, so reports can mask them


class Upgradable(Protocol):
    """An embedded server that can become another version or tier in place, on the same data.

    `upgrade(to)` stops this server and starts it as what request `to` (the other endpoint's)
    asks for, on the same data, and returns the new settings; clients connected before see the
    server go away and reconnect. It raises `harness.errors.UpgradeRefused` with the server's
    own message when that version refuses the data (the rollback drill: `upgrade(old_request)`).
    """

    def upgrade(self, to: ServerRequest) -> EndpointSettings: ...


def can_upgrade(server: object) -> bool:
    """Whether `server` offers an in-place upgrade (`Upgradable`)."""
    return callable(getattr(server, "upgrade", None))


@dataclass(frozen=True)
class UpgradeTerms:
    """What the last upgrade promised, as the server that did it states it.

    An `Upgradable` server may offer `upgrade_terms() -> UpgradeTerms`; the journey measures
    against these terms (None: the server promises nothing about it).
    """

    activation_lag_s: float | None = None  # newly promised features come on within this
    token_window_s: float | None = None  # credentials from before stay valid this long; then end
    promised: tuple[str, ...] = ()  # the features the upgrade switches on (after the lag)


def upgrade_terms(server: object) -> UpgradeTerms:
    """The server's `upgrade_terms()`, or no terms when it states none."""
    terms = getattr(server, "upgrade_terms", None)
    return terms() if callable(terms) else UpgradeTerms()


servers: Registry[type[EmbeddedServer]] = Registry("server", group="im_harness.servers")
"""Embedded servers by adapter name; third-party ones arrive through `im_harness.servers`."""


__all__ = ["AdminHandle", "EmbeddedServer", "NoOptions", "ServerRequest", "Upgradable",
           "UpgradeTerms", "can_upgrade", "servers", "upgrade_terms"]
