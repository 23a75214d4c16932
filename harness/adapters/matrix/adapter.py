"""The matrix adapter and its client (the mapping onto Matrix: see the package docstring)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp

from harness.adapters.base import AdapterBase, ClientState, options_from
from harness.adapters.matrix import transport
from harness.adapters.matrix.ops import MatrixOps
from harness.adapters.matrix.options import MatrixOptions
from harness.adapters.matrix.translate import (
    CAPABILITIES,
    CLIENT_ENFORCED,
    CLIENT_HIDES,
    MAX_BODY_BYTES,
    UserState,
)
from harness.contract import Capability, Credentials, EndpointInfo, EndpointSettings, TierLimits
from harness.errors import ConfigError, Unsupported
from harness.registry import adapters


class MatrixClient(MatrixOps):
    """One logged-in device of one Matrix user, with a `/sync` long-poll in the background."""

    def __repr__(self) -> str:
        return f"MatrixClient({self.user_id!r}, {self._status})"

    @property
    def protocol(self) -> str:
        return self._adapter.info.protocol

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._adapter.info.capabilities


@adapters.register("matrix")
class MatrixAdapter(AdapterBase[MatrixClient]):
    """A Matrix homeserver through the client-server API (v3)."""

    name: ClassVar[str] = "matrix"
    Options: ClassVar[type[MatrixOptions]] = MatrixOptions

    def __init__(self, settings: EndpointSettings) -> None:
        where = f"endpoint {settings.name!r} (adapter 'matrix')"
        if not settings.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url {settings.url!r} is not an HTTP URL; use the "
                              f"homeserver's base URL, e.g. http://127.0.0.1:8008")
        super().__init__(settings)
        self.options = options_from(MatrixOptions, settings.options, where)
        self.base_url = settings.url.rstrip("/")
        self.server_name: str | None = self.options.server_name
        self._users: dict[str, UserState] = {}
        self.send_timeout_s = float(
            self.options.send_timeout_s if self.options.send_timeout_s is not None
            else settings.send_timeout_s
        )
        self.backoff_base_s = self.options.backoff_base_s
        self.backoff_cap_s = self.options.backoff_cap_s
        self._info = EndpointInfo(
            name=settings.name,
            adapter="matrix",
            url=settings.url,
            protocol=settings.protocol or "matrix-v3",
            tier=settings.tier or "default",
            capabilities=CAPABILITIES,
            limits=TierLimits(
                send_rate_per_user=self.options.send_rate_per_user,
                send_burst=self.options.send_burst,
                max_message_bytes=MAX_BODY_BYTES,
                recall_window_s=None,
            ),
            send_timeout_s=self.send_timeout_s,
            client_enforced=CLIENT_ENFORCED,
            client_hides=CLIENT_HIDES,
        )

    def __repr__(self) -> str:
        return f"MatrixAdapter({self.settings.name!r}, {self.base_url!r})"

    async def _ready(self) -> None:
        """Check that the homeserver answers and offers the client-server API v1.x."""
        versions = await self.request(self._session(), "GET", "/versions", prefix="")
        if "v1.1" not in versions.get("versions", []) and not any(
            v.startswith("v1.") for v in versions.get("versions", [])
        ):
            raise Unsupported(f"{self!r}: the server offers no client-server API v1.x")

    @property
    def info(self) -> EndpointInfo:
        return self._info

    def _new_http(self) -> aiohttp.ClientSession:
        return transport.http_session()

    async def request(
        self, http: aiohttp.ClientSession, method: str, path: str,
        body: Mapping[str, Any] | None = None, *, params: Mapping[str, str] | None = None,
        token: str | None = None, within: float | None = None, prefix: str = "/v3",
    ) -> Any:
        """One client-server API call; Matrix errors become the contract's typed errors."""
        __tracebackhide__ = True  # pytest: its arguments include tokens and passwords
        limit = within if within is not None else self.settings.connect_timeout_s * 2
        return await transport.request(http, self.base_url, method, path, body, params=params,
                                       token=token, within=limit, prefix=prefix,
                                       endpoint=self.settings.name)

    def learn_server_name(self, mxid: str) -> None:
        if self.server_name is None and ":" in mxid:
            self.server_name = mxid.split(":", 1)[1]

    def mxid(self, user: str) -> str:
        """The full Matrix id of a contract user id."""
        if user.startswith("@"):
            return user
        if self.server_name is None:
            raise ConfigError(f"{self!r}: server_name is unknown; set options.server_name")
        return f"@{user}:{self.server_name}"

    def local(self, mxid: str) -> str:
        """The contract user id of a Matrix id: the localpart for users of this server."""
        if self.server_name and mxid.startswith("@") and mxid.endswith(f":{self.server_name}"):
            return mxid[1:-len(self.server_name) - 1]
        return mxid

    def room_version_into(self, body: dict[str, Any]) -> None:
        version = self.options.room_version
        if version:
            body["room_version"] = str(version)

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        """Register a user with a random password (via the shared secret when there is one)."""
        localpart = user_id or f"imh-{secrets.token_hex(4)}"
        if localpart.startswith("@"):
            localpart = localpart[1:].split(":", 1)[0]
        password = secrets.token_urlsafe(18)
        http = self._session()
        shared = self.settings.secrets.get("registration_shared_secret")
        if shared:
            path = "/_synapse/admin/v1/register"
            nonce = (await self.request(http, "GET", path))["nonce"]
            mac = hmac.new(shared.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                     b"notadmin"]))
            answer = await self.request(http, "POST", path, {
                "nonce": nonce, "username": localpart, "password": password,
                "admin": False, "mac": mac.hexdigest(),
            })
        else:
            answer = await self.request(http, "POST", "/register", {
                "username": localpart, "password": password,
                "auth": {"type": "m.login.dummy"}, "inhibit_login": True,
            })
        self.learn_server_name(answer["user_id"])
        return Credentials(self.local(answer["user_id"]), password)

    async def connect(
        self, credentials: Credentials, *, protocol: str | None = None
    ) -> MatrixClient:
        """Log in as a device that resumes the user's stored sync cursor, then sync once."""
        if protocol not in (None, self._info.protocol):
            raise Unsupported(f"{self!r}: only protocol {self._info.protocol!r} is offered, "
                              f"not {protocol!r}")
        if self.server_name is None and credentials.user_id.startswith("@"):
            self.learn_server_name(credentials.user_id)
        stored = self._users.get(credentials.user_id)
        state = copy.deepcopy(stored) if stored is not None else UserState()
        live = (c for c in self._clients if c._status is not ClientState.CLOSED)
        if any(c.user_id == credentials.user_id for c in live):
            state.device_id = UserState().device_id  # a second live device of the same user
        self._users[credentials.user_id] = state
        client = MatrixClient(self, credentials, state)
        try:
            await client._login()
            await client._start(reconnected=False)
        except BaseException:
            await client.close()
            raise
        self._clients.append(client)
        return client
