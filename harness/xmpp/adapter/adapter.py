"""The xmpp adapter: provisions users by in-band registration (XEP-0077), opens clients."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import secrets
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from harness.adapters.base import AdapterBase, ClientState, options_from
from harness.contract import Credentials, EndpointInfo, EndpointSettings, TierLimits
from harness.errors import BadRequest, ConfigError, ConnectionLost, IMTimeout, Unsupported
from harness.xmpp.adapter import translate
from harness.xmpp.adapter.options import XmppOptions
from harness.xmpp.adapter.translate import UserState

if TYPE_CHECKING:
    from harness.xmpp.adapter.client import XmppClient

# The entry point loads this module with every adapter lookup: it must import without the
# xmpp extra (slixmpp is imported where it is used, and a missing one is a config error).
NEEDS = "adapter 'xmpp' needs slixmpp: pip install 'im-harness[xmpp]'"


class XmppAdapter(AdapterBase["XmppClient"]):
    """An XMPP server (tested against Prosody) over c2s, through slixmpp."""

    name: ClassVar[str] = "xmpp"
    Options: ClassVar[type[XmppOptions]] = XmppOptions

    def __init__(self, settings: EndpointSettings) -> None:
        where = f"endpoint {settings.name!r} (adapter 'xmpp')"
        parts = urlsplit(settings.url)
        # tcp:// is the c2s address too: the harness's fault link proxies tcp:// endpoints.
        if parts.scheme not in ("xmpp", "tcp") or not parts.hostname or not parts.port:
            raise ConfigError(f"{where}: url {settings.url!r} is not a tcp://host:port URL; "
                              f"use the c2s address, e.g. tcp://127.0.0.1:5222")
        if importlib.util.find_spec("slixmpp") is None:
            raise ConfigError(f"{where}: {NEEDS}")
        super().__init__(settings)
        self.options = options_from(XmppOptions, settings.options, where)
        self.host, self.port = parts.hostname, parts.port
        self.domain = self.options.domain
        self.muc_domain = self.options.muc_domain or f"conference.{self.domain}"
        self._users: dict[str, UserState] = {}
        self.send_timeout_s = float(self.options.send_timeout_s
                                    if self.options.send_timeout_s is not None
                                    else settings.send_timeout_s)
        keepalive = (self.options.keepalive_s + self.options.keepalive_timeout_s
                     if self.options.keepalive_s else None)
        self._info = EndpointInfo(
            name=settings.name, adapter="xmpp", url=settings.url,
            protocol=settings.protocol or "xmpp", tier=settings.tier or "default",
            capabilities=translate.CAPABILITIES,
            limits=TierLimits(max_message_bytes=translate.MAX_BODY_BYTES),
            keepalive_s=keepalive, send_timeout_s=self.send_timeout_s,
            client_enforced=translate.CLIENT_ENFORCED, client_hides=translate.CLIENT_HIDES,
            server_ts_spread_s=translate.SERVER_TS_SPREAD_S,
        )

    def __repr__(self) -> str:
        return f"XmppAdapter({self.settings.name!r}, {self.settings.url!r})"

    @property
    def info(self) -> EndpointInfo:
        return self._info

    def jid(self, user: str) -> str:
        """The bare JID of a contract user id (a localpart, or a full JID)."""
        return user if "@" in user else f"{user}@{self.domain}"

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        """Register a user with a random password by in-band registration (XEP-0077)."""
        import slixmpp
        from slixmpp.exceptions import IqError, IqTimeout

        from harness.xmpp.adapter import speedups

        speedups.install()
        localpart = translate.local(user_id) if user_id else f"imh-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(18)
        xmpp = slixmpp.ClientXMPP(f"{localpart}@{self.domain}/register", password,
                                  ssl_context=speedups.shared_context())
        xmpp.enable_plaintext, xmpp.enable_starttls, xmpp.enable_direct_tls = True, False, False
        xmpp.register_plugin("xep_0077")
        xmpp.plugin["xep_0077"].force_registration = True
        xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(exc) if exc else done.set_result(None)

        async def register(_: object) -> None:
            iq = xmpp.Iq()
            iq["type"] = "set"
            iq["register"]["username"] = localpart
            iq["register"]["password"] = password
            try:
                await iq.send(timeout=self.settings.connect_timeout_s)
            except IqError as exc:
                condition = exc.iq["error"]["condition"]
                settle(BadRequest(f"{self!r}: registering {localpart!r} was refused: "
                                  f"{condition} {exc.iq['error']['text'] or ''}".rstrip(),
                                  condition=condition))
            except IqTimeout:
                settle(IMTimeout(f"{self!r}: no answer to registering {localpart!r}"))

        xmpp.add_event_handler("register", register)
        xmpp.add_event_handler("session_start", lambda _: settle(None))
        xmpp.add_event_handler("failed_auth", lambda _: settle(BadRequest(
            f"{self!r}: {localpart!r} was not registered (its login failed)")))
        xmpp.add_event_handler("connection_failed", lambda e: settle(ConnectionLost(
            f"{self!r}: cannot connect to {self.host}:{self.port}: {e}")))
        xmpp.connect(self.host, self.port)
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s * 2):
                await done
        except TimeoutError:
            raise IMTimeout(f"{self!r}: registering {localpart!r} took longer than "
                            f"{self.settings.connect_timeout_s * 2}s") from None
        finally:
            xmpp.abort()
        return Credentials(localpart, password)

    async def connect(self, credentials: Credentials, *, protocol: str | None = None
                      ) -> XmppClient:
        """Log in as the user's resource, catching up from the archive after its cursor."""
        if protocol not in (None, self._info.protocol):
            raise Unsupported(f"{self!r}: only protocol {self._info.protocol!r} is offered, "
                              f"not {protocol!r}")
        from harness.xmpp.adapter.client import XmppClient

        stored = self._users.get(credentials.user_id)
        state = copy.deepcopy(stored) if stored is not None else UserState()
        live = (c for c in self._clients if c._status is not ClientState.CLOSED)
        if any(c.user_id == credentials.user_id for c in live):
            state.resource = UserState().resource  # a second live resource of the same user
        self._users[credentials.user_id] = state
        client = XmppClient(self, credentials, state)
        try:
            await client._login()
        except BaseException:
            await client.close()
            raise
        self._clients.append(client)
        return client
