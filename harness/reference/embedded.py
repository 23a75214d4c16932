"""The reference service as an embedded server: an endpoint with no url starts one.

Each endpoint gets its own service process and one app on it, with the endpoint's tier,
features and limits; the service's admin API gives tests apps of their own.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from harness.contract import EndpointSettings
from harness.errors import HarnessError
from harness.reference.admin import AdminClient, AppHandle
from harness.reference.defects import DEFECTS
from harness.reference.launcher import ReferenceService
from harness.reference.tiers import TIERS
from harness.servers import NoOptions, ServerRequest

DEFAULT_PROTOCOL = "v2"  # what an embedded endpoint speaks when it names no protocol
DEFAULT_TIER = "free"


class ReferenceServer:
    """One reference service process serving one endpoint's app."""

    Options: ClassVar[type[BaseModel]] = NoOptions
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
        )
        self._app: AppHandle | None = None
        self._settings: EndpointSettings | None = None

    def __repr__(self) -> str:
        return f"<ReferenceServer {self.request.endpoint}: {self.service!r}>"

    @classmethod
    def for_request(cls, request: ServerRequest) -> ReferenceServer:
        return cls(request)

    def describe(self) -> str:
        return "reference service"

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

    def admin(self) -> AdminClient:
        return self.service.admin()

    def app(self) -> AppHandle | None:
        return self._app

    def secrets(self) -> frozenset[str]:
        found = {self.service.admin_token}
        if self._app is not None:
            found.add(self._app.app_key)
        return frozenset(found)
