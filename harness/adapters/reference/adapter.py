"""The reference adapter and its client (wire format: harness/reference/PROTOCOL.md)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar

from harness.adapters.base import AdapterBase, ClientState, options_from
from harness.adapters.reference.ops import Operations
from harness.adapters.reference.options import ReferenceOptions
from harness.adapters.reference.translate import (
    KEEPALIVE_S,
    PROTOCOLS,
    SEND_TIMEOUT_S,
    capabilities_from,
    limits_from,
)
from harness.contract import Capability, Credentials, EndpointInfo, EndpointSettings
from harness.errors import ConfigError
from harness.reference.admin import AdminClient, AppHandle, mint_credentials
from harness.registry import adapters

ADMIN_TOKEN = "admin_token"  # the secret that gives the harness an admin client
_SETTINGS_SEND_TIMEOUT_DEFAULT = next(
    f.default for f in fields(EndpointSettings) if f.name == "send_timeout_s"
)


class ReferenceClient(Operations):
    """One logged-in WebSocket connection to the reference service (an `IMClient`)."""

    def __repr__(self) -> str:
        return f"ReferenceClient(user={self.user_id!r}, {self._protocol}, {self._status})"

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The endpoint's capabilities less what this connection's protocol version lacks."""
        info = self._adapter.info
        return capabilities_from([c.value for c in info.capabilities], self._protocol)

    @property
    def state(self) -> ClientState:
        """new, connected, reconnecting (automatically), dropped, closed or failed."""
        return self._status

    @property
    def unacked(self) -> list[str]:
        """Client ids of the sends still waiting for their ack (resent after a reconnect)."""
        return [p.frame["client_id"] for p in self._sends.values() if not p.future.done()]


@adapters.register("reference")
class ReferenceAdapter(AdapterBase[ReferenceClient]):
    """The reference service through its WebSocket protocol (v1 or v2) and app server API."""

    name: ClassVar[str] = "reference"
    Options: ClassVar[type[ReferenceOptions]] = ReferenceOptions
    protocols: ClassVar[tuple[str, ...]] = tuple(PROTOCOLS)  # a config naming another is refused

    def __init__(self, settings: EndpointSettings) -> None:
        super().__init__(settings)
        where = f"endpoint {settings.name!r} (adapter 'reference')"
        self.protocol = settings.protocol or "v2"
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol {settings.protocol!r} is unknown; use v1 or v2")
        if not settings.url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: url {settings.url!r} is not a WebSocket URL; "
                              f"use the service's ws://127.0.0.1:PORT")
        self.options = options_from(ReferenceOptions, settings.options, where)
        if not self.options.api_url:
            raise ConfigError(f"{where}: options.api_url is missing; set it to the service's "
                              f"HTTP API URL, e.g. http://127.0.0.1:PORT")
        if not settings.app_id:
            raise ConfigError(f"{where}: app_id is empty; set it to the app the tests run in")
        app_key = settings.secrets.get("app_key")
        if not app_key:
            raise ConfigError(f"{where}: secret 'app_key' is missing; provide the app's key "
                              f"(e.g. through an environment variable)")
        self.api_url = self.options.api_url.rstrip("/")
        self._app = AppHandle(settings.app_id, app_key)
        self.cursors: dict[str, int] = {}  # user -> last inbox pos any of its clients processed
        # login-answer parts equal for every client (features, limits): held once, not per client
        self.login_parts: dict[str, Any] = {}
        self._info: EndpointInfo | None = None

    def __repr__(self) -> str:
        return f"ReferenceAdapter({self.settings.name!r}, {self.settings.url!r}, {self.protocol})"

    @classmethod
    def open_admin(cls, settings: EndpointSettings) -> AdminClient | None:
        """An admin client for an endpoint the harness did not start, or None.

        It needs the `admin_token` secret and `options.api_url`; the caller closes it.
        """
        token = settings.secrets.get(ADMIN_TOKEN)
        api_url = settings.options.get("api_url")
        if not token or not api_url:
            return None
        return AdminClient(str(api_url), token)

    async def _ready(self) -> None:
        """Learn the app's capabilities with a probe login."""
        await self.refresh_info()

    @property
    def info(self) -> EndpointInfo:
        if self._info is None:
            raise ConfigError(f"{self!r}: info is known after open(); use ReferenceAdapter.open")
        return self._info

    def send_timeout_for(self, protocol: str) -> float:
        """The send timeout: options.send_timeout_s, settings' if set, else the protocol's."""
        override = self.options.send_timeout_s
        if override is not None:
            return float(override)
        if self.settings.send_timeout_s != _SETTINGS_SEND_TIMEOUT_DEFAULT:
            return float(self.settings.send_timeout_s)
        return SEND_TIMEOUT_S[protocol]

    def info_from_login(self, answer: Mapping[str, Any]) -> EndpointInfo:
        protocol = str(answer.get("protocol") or self.protocol)
        return EndpointInfo(
            name=self.settings.name,
            adapter=self.name,
            url=self.settings.url,
            protocol=protocol,
            tier=str(answer.get("tier") or self.settings.tier),
            capabilities=capabilities_from(answer.get("features") or (), protocol),
            limits=limits_from(answer.get("limits")),
            keepalive_s=float(answer.get("keepalive_s") or KEEPALIVE_S[protocol]),
            send_timeout_s=self.send_timeout_for(protocol),
            protocols=frozenset(PROTOCOLS),
        )

    async def refresh_info(self) -> EndpointInfo:
        """Log a probe user in and rebuild `info` from the answer (after a tier change)."""
        creds = await self.provision_user(f"probe-{uuid.uuid4().hex[:12]}")
        client = ReferenceClient(self, creds, self.protocol)
        await client._start()
        try:
            self._info = self.info_from_login(client.login_answer)
        finally:
            await client.close()
        return self._info

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        ttl = self.options.token_ttl_s
        return await mint_credentials(self._session(), self.api_url, self._app, user_id, ttl)

    async def connect(
        self, credentials: Credentials, *, protocol: str | None = None
    ) -> ReferenceClient:
        proto = protocol or self.protocol
        if proto not in PROTOCOLS:
            raise ConfigError(f"{self!r}: protocol {proto!r} is unknown; use v1 or v2")
        client = ReferenceClient(self, credentials, proto)
        await client._start()
        self._clients.append(client)
        return client

    def note_cursor(self, user_id: str, pos: int) -> None:
        if pos > self.cursors.get(user_id, 0):
            self.cursors[user_id] = pos
