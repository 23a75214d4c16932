"""The reference service as an embedded server: an endpoint with no url starts one.

Each endpoint gets its own service process and one app on it, with the endpoint's tier,
features and limits; the service's admin API gives tests apps of their own. `upgrade(to)`
restarts the process as the release `to` asks for on the same database and moves the app to
`to`'s tier, its newly promised features switched on after the activation lag.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.contract import EndpointSettings
from harness.errors import HarnessError, UpgradeRefused
from harness.reference.admin import AdminClient, AppHandle
from harness.reference.defects import DEFECTS
from harness.reference.launcher import ReferenceService
from harness.reference.tiers import TIERS
from harness.servers import ServerRequest, UpgradeTerms
from harness.timing import units

DEFAULT_PROTOCOL = "v2"  # what an embedded endpoint speaks when it names no protocol
DEFAULT_TIER = "free"
# Test-service defaults, in time units: short enough for a journey of seconds, long enough to
# be observed on two slow cores.
ACTIVATION_LAG_UNITS = 1.0
TOKEN_WINDOW_UNITS = 12.0  # past the reconnect backoff cap (10 s) of clients in the field


class ReferenceOptions(BaseModel):
    """The `[endpoints.X.server]` table of an embedded reference endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release: int | None = Field(
        default=None, ge=1, le=2,
        description="the service release to run (default: 1 for protocol v1, else 2)")
    activation_lag_s: float | None = Field(
        default=None, ge=0,
        description="after an upgrade to this endpoint: seconds until newly promised features "
                    f"come on (default {ACTIVATION_LAG_UNITS:g} time unit)")
    token_window_s: float | None = Field(
        default=None, ge=0,
        description="after an upgrade to this endpoint: seconds tokens minted before it stay "
                    f"valid (default {TOKEN_WINDOW_UNITS:g} time units)")


def _options(request: ServerRequest) -> ReferenceOptions:
    options = request.server_options
    if isinstance(options, ReferenceOptions):
        return options
    return ReferenceOptions.model_validate(options.model_dump())


def release_for(request: ServerRequest) -> int:
    """The release an endpoint's server runs: its own option, else by its protocol."""
    chosen = _options(request).release
    if chosen is not None:
        return chosen
    return 1 if (request.protocol or DEFAULT_PROTOCOL) == "v1" else 2


class ReferenceServer:
    """One reference service process serving one endpoint's app."""

    Options: ClassVar[type[BaseModel]] = ReferenceOptions
    defects: ClassVar[tuple[str, ...]] = tuple(DEFECTS)
    default_tier: ClassVar[str] = DEFAULT_TIER
    tiers: ClassVar[tuple[str, ...]] = tuple(TIERS)

    def __init__(self, request: ServerRequest) -> None:
        self.request = request
        self.service = ReferenceService(
            defects=request.defects,
            keepalive_v1=request.keepalive.get("v1"),
            keepalive_v2=request.keepalive.get("v2"),
            propagation_delay=request.propagation_delay,
            seed=request.seed,
            defect_rate=request.defect_rate,
            release=release_for(request),
            token_window_s=_options(request).token_window_s,
        )
        self._app: AppHandle | None = None
        self._settings: EndpointSettings | None = None
        self._terms = UpgradeTerms()

    def __repr__(self) -> str:
        return f"<ReferenceServer {self.request.endpoint}: {self.service!r}>"

    @classmethod
    def for_request(cls, request: ServerRequest) -> ReferenceServer:
        return cls(request)

    def describe(self) -> str:
        return f"reference service release {self.service.release}"

    @property
    def pid(self) -> int | None:
        return self.service.pid

    @property
    def settings(self) -> EndpointSettings:
        if self._settings is None:
            raise HarnessError(f"{self!r} is not started; call start() first")
        return self._settings

    def start(self) -> EndpointSettings:
        """Start the service and create the endpoint's app on it."""
        request = self.request
        self.service.start()
        try:
            self._app = self.service.create_app_sync(
                tier=request.tier or DEFAULT_TIER,
                features=dict(request.features),
                recall_window_s=request.limits.get("recall_window_s"),
                app_id=request.app_id or None,
                **({"limits": dict(request.limits)} if request.limits else {}),
            )
        except BaseException:
            self.service.stop()
            raise
        return self._learn_settings()

    def _learn_settings(self) -> EndpointSettings:
        request, app = self.request, self._app
        assert app is not None
        self._settings = EndpointSettings(
            name=request.endpoint,
            adapter=request.adapter,
            url=self.service.ws_url,
            app_id=app.app_id,
            protocol=request.protocol or DEFAULT_PROTOCOL,
            tier=request.tier or DEFAULT_TIER,
            secrets={"app_key": app.app_key},
            options={**request.adapter_options, "api_url": self.service.api_url},
            **dict(request.timeouts),
        )
        return self._settings

    def stop(self) -> None:
        self.service.stop()

    def kill(self) -> None:
        self.service.kill()

    def restart(self, *, kill: bool = False) -> EndpointSettings:
        self.service.restart(kill=kill)
        return self._learn_settings()

    def upgrade(self, to: ServerRequest) -> EndpointSettings:
        """Restart as `to`'s release on the same data; the app moves to `to`'s tier and features.

        Newly promised features come on after `to`'s activation lag; tokens minted before stay
        valid for its token window. An older release that refuses the data raises
        `UpgradeRefused` with the service's own line, and this release serves again.
        """
        if self._app is None:
            raise HarnessError(f"{self!r} is not started; call start() before upgrade()")
        options, previous = _options(to), self.service.release
        release = release_for(to)
        window = options.token_window_s
        window = units(TOKEN_WINDOW_UNITS) if window is None else window
        lag = options.activation_lag_s
        lag = units(ACTIVATION_LAG_UNITS) if lag is None else lag
        try:
            self.service.start_as(release, token_window_s=window)
        except HarnessError as exc:
            reason = self.service.refusal() or str(exc).splitlines()[0]
            self.service.start_as(previous or release_for(self.request))
            raise UpgradeRefused(f"reference service release {release}: {reason}") from None
        app_id = self._app.app_id
        state = self._app_state(app_id)
        promised = tuple(sorted(name for name, on in to.features.items()
                                if on and not state["features"].get(name)))
        switched_off = {name: False for name, on in to.features.items() if not on}
        self.service.update_app_sync(
            app_id, tier=to.tier or DEFAULT_TIER, features=switched_off or None,
            recall_window_s=to.limits.get("recall_window_s"), delay_s=0,
            limits={k: v for k, v in to.limits.items() if k != "recall_window_s"} or None)
        if promised:
            self.service.update_app_sync(app_id, features=dict.fromkeys(promised, True),
                                         delay_s=lag)
        self._terms = UpgradeTerms(activation_lag_s=lag if promised else None,
                                   token_window_s=window, promised=promised)
        self.request = to
        return self._learn_settings()

    def upgrade_terms(self) -> UpgradeTerms:
        """What the last `upgrade()` promised (no terms before one)."""
        return self._terms

    def _app_state(self, app_id: str) -> dict[str, Any]:
        state: dict[str, Any] = self.service.admin_sync("get_app", app_id)
        return state

    def admin(self) -> AdminClient:
        return self.service.admin()

    def app(self) -> AppHandle | None:
        return self._app

    def secrets(self) -> frozenset[str]:
        found = {self.service.admin_token}
        if self._app is not None:
            found.add(self._app.app_key)
        return frozenset(found)
