"""Session objects: endpoints opened from the configuration, and test users on them.

`HarnessSession` lives for a whole test session (per xdist worker): it starts the embedded
servers once (whatever `harness.servers` has registered for a url-less endpoint's adapter) and
knows every selected endpoint's settings. `Endpoint` and `User`
live for one test, in that test's event loop. Nothing here imports pytest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from harness.config import EndpointConfig, HarnessConfig
from harness.contract import (
    Ack,
    Adapter,
    Capability,
    Credentials,
    EndpointInfo,
    EndpointSettings,
    GroupInfo,
    HistoryPage,
    IMClient,
    Target,
)
from harness.errors import (
    ConfigError,
    ConnectionLost,
    HarnessError,
    IMError,
    IMTimeout,
    Unauthorized,
    Unsupported,
)
from harness.latency import EndpointLatency, LatencyLog
from harness.oracle import Oracle
from harness.recorder import Recorder
from harness.registry import adapters
from harness.servers import AdminHandle, EmbeddedServer, servers
from harness.syncrun import run_sync, threads_are_real

T = TypeVar("T")


class EndpointUnavailable(ConfigError):
    """An endpoint could not be opened: unreachable, or its credentials were refused."""


def describe(info: EndpointInfo) -> str:
    """`reference v1, tier free`: how skip reasons and the report header name an endpoint."""
    return f"{info.adapter} {info.protocol or '?'}, tier {info.tier or '?'}"


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(eq=False)
class Endpoint:
    """One endpoint opened for one test: adapter, info, and admin access when the harness has it."""

    name: str
    settings: EndpointSettings
    adapter: Adapter
    info: EndpointInfo
    admin: AdminHandle | None = None
    server: EmbeddedServer | None = None  # the server process when the harness started it
    app: Any = None  # the app the endpoint's server created for it, if it has apps
    latency: EndpointLatency | None = None  # where its users' latencies go (None: not recorded)
    _owns_admin: bool = field(default=False, repr=False)
    _children: list[Endpoint] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return f"<Endpoint {self.name}: {describe(self.info)} at {self.settings.url}>"

    def supports(self, capability: Capability | str) -> bool:
        return self.info.supports(capability)

    async def with_app(
        self,
        *,
        tier: str | None = None,
        features: Mapping[str, bool] | None = None,
        recall_window_s: float | None = None,
        webhook: str | None = None,
        protocol: str | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> Endpoint:
        """A fresh app on the same service (closed with this endpoint); needs an admin client.

        `limits` (per-app overrides of tier limits) raises `Unsupported` unless the service's
        admin API takes them.

        Example: ``pro = await endpoint.with_app(tier="pro", features={"recall": True})``
        """
        if self.admin is None:
            raise Unsupported(
                f"endpoint {self.name!r} ({describe(self.info)}) has no admin API, so the "
                "harness cannot create apps on it; mark the test @pytest.mark.needs_admin"
            )
        tier = tier or self.settings.tier or "free"
        extra: dict[str, Any] = {}
        if limits:
            if "limits" not in inspect.signature(self.admin.create_app).parameters:
                raise Unsupported(
                    f"endpoint {self.name!r} ({describe(self.info)}) cannot override tier limits "
                    f"per app ({', '.join(limits)}); use the tier's own limits"
                )
            extra["limits"] = dict(limits)
        app = await self.admin.create_app(
            tier=tier, features=features, webhook=webhook, recall_window_s=recall_window_s,
            **extra,
        )
        settings = replace(
            self.settings,
            app_id=app.app_id,
            tier=tier,
            protocol=protocol or self.settings.protocol,
            secrets={**self.settings.secrets, "app_key": app.app_key},
        )
        child = await open_endpoint(settings, admin=self.admin, server=self.server)
        child.app = app
        child.latency = self.latency
        self._children.append(child)
        return child

    async def aclose(self) -> None:
        """Close the adapter (and every endpoint made by `with_app`), then the admin client."""
        children, self._children = self._children, []
        for child in children:
            with contextlib.suppress(Exception):
                await child.aclose()
        try:
            await self.adapter.aclose()
        finally:
            if self._owns_admin and self.admin is not None:
                await self.admin.aclose()


async def open_endpoint(
    settings: EndpointSettings,
    *,
    admin: AdminHandle | None = None,
    server: EmbeddedServer | None = None,
) -> Endpoint:
    """Open the adapter for `settings`; failures to reach or log in are one-line errors.

    The admin handle comes from the server the harness started, else from the adapter's
    optional `open_admin(settings)` (an endpoint the team runs, with an admin secret).
    """
    factory: Any = adapters.get(settings.adapter)
    owns_admin = False
    if admin is None:
        if server is not None:
            admin = server.admin()
        elif hasattr(factory, "open_admin"):
            admin = factory.open_admin(settings)
        owns_admin = admin is not None
    where = f"endpoint {settings.name!r} ({settings.adapter}) at {settings.url}"
    try:
        adapter: Adapter = await factory.open(settings)
    except BaseException as exc:
        if owns_admin and admin is not None:
            await admin.aclose()
        if isinstance(exc, ConfigError):
            raise
        if isinstance(exc, Unauthorized):
            raise EndpointUnavailable(
                f"{where}: credentials refused ({_cause(exc)}); check app_id and the "
                "environment variables its *_env keys name"
            ) from None
        if isinstance(exc, OSError | TimeoutError | HarnessError):
            cause = _cause(exc).removesuffix("; is the service running?")
            raise EndpointUnavailable(
                f"{where} is unreachable: {cause}; check the url and that the endpoint is up"
            ) from None
        raise
    info = adapter.info
    if admin is not None:
        info = replace(info, capabilities=info.capabilities | {Capability.TIER_ADMIN})
    return Endpoint(
        name=settings.name,
        settings=settings,
        adapter=adapter,
        info=info,
        admin=admin,
        server=server,
        _owns_admin=owns_admin,
    )


async def _admin_problem(endpoint: Endpoint) -> str:
    """Why the admin handle of an endpoint the team runs is not usable ('' when it is).

    A handle made from an admin secret proves nothing until the endpoint accepts it: ask for its
    counters. The harness's own servers' handles need no check.
    """
    if endpoint.admin is None or endpoint.server is not None:
        return ""
    try:
        await endpoint.admin.counters()
    except Exception as exc:  # any refusal or failure: the handle is not usable
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return (f"endpoint {endpoint.name!r}: its admin secret is refused ({cause[:160]}); "
                "check the variable its admin_token_env names (capability tier_admin is not "
                "offered)")
    return ""


def apply_profile(info: EndpointInfo, ep: EndpointConfig) -> EndpointInfo:
    """Apply a configured tier profile to an external endpoint's info.

    Limit overrides fill in what the endpoint does not report; a feature set to false removes
    that capability (the app has it switched off).
    """
    limits = info.limits
    if ep.tier.limits:
        overrides: dict[str, Any] = dict(ep.tier.limits)
        for key in ("max_connections", "send_burst", "max_message_bytes", "max_group_members"):
            if key in overrides:
                overrides[key] = int(overrides[key])
        limits = replace(limits, **overrides)
    off = {name for name, on in ep.tier.features.items() if not on}
    caps = frozenset(c for c in info.capabilities if c.value not in off)
    return replace(info, limits=limits, capabilities=caps, tier=info.tier or ep.tier.name)


class HarnessSession:
    """The selected endpoints of one test session; embedded services started once.

    Example::

        with HarnessSession(load_config(), ["old", "new"]) as hs:
            endpoint = await hs.open("new")   # in the test's event loop
    """

    def __init__(
        self,
        config: HarnessConfig,
        names: Sequence[str] | None = None,
        *,
        defects: Iterable[str] | None = None,
        defect_rate: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.names = config.selected(names)
        self.defects = tuple(config.harness.defects if defects is None else defects)
        self.defect_rate = config.harness.defect_rate if defect_rate is None else defect_rate
        self._environ = environ
        self.servers: dict[str, EmbeddedServer] = {}
        self.infos: dict[str, EndpointInfo] = {}
        # endpoints the team runs whose admin secret the endpoint refused: name -> why
        self.admin_problems: dict[str, str] = {}
        self._settings: dict[str, EndpointSettings] = {}
        self._started = False
        self.latency = LatencyLog()  # what this session's users timed, per endpoint

    def __repr__(self) -> str:
        return f"<HarnessSession {', '.join(self.names)} started={self._started}>"

    def endpoint_config(self, name: str) -> EndpointConfig:
        return self.config.endpoints[name]

    def external(self) -> list[str]:
        """The selected endpoints the harness does not start itself."""
        return [n for n in self.names if not self.config.endpoints[n].embedded]

    def resolve(self) -> None:
        """Resolve the external endpoints' settings (secrets from the environment)."""
        for name in self.external():
            if name not in self._settings:
                self._settings[name] = self.config.settings_for(name, self._environ)

    def start(self) -> HarnessSession:
        """Start the embedded services (in parallel where threads are real), resolve settings,
        learn every endpoint."""
        if self._started:
            return self
        self.resolve()
        embedded = [n for n in self.names if self.config.endpoints[n].embedded]
        try:
            if embedded and not threads_are_real():
                for name in embedded:  # greenlets, not threads: one private loop at a time
                    self._start_one(name)
            elif embedded:
                with concurrent.futures.ThreadPoolExecutor(len(embedded)) as pool:
                    futures = [pool.submit(self._start_one, name) for name in embedded]
                    # Wait for every start, so a failed one never leaves another one running.
                    concurrent.futures.wait(futures)
                    for future in futures:
                        future.result()
            self._started = True
            self.probe()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, name: str) -> None:
        """Start the server registered for endpoint `name`'s adapter and learn its settings."""
        ep = self.config.endpoints[name]
        harness = self.config.harness.model_copy(
            update={"defects": list(self.defects), "defect_rate": self.defect_rate}
        )
        request = ep.server_request(name, harness)
        server = servers.get(ep.adapter).for_request(request)
        try:
            settings = server.start()
        except BaseException:
            server.stop()
            raise
        self.servers[name], self._settings[name] = server, settings

    def probe(self, names: Iterable[str] | None = None) -> dict[str, EndpointInfo]:
        """Open and close each endpoint once (reachability, credentials) and keep its info."""
        chosen = list(self.names if names is None else names)
        self.resolve()

        async def probe_all() -> None:
            for name in chosen:
                endpoint = await self.open(name)
                try:
                    info = endpoint.info
                    problem = await _admin_problem(endpoint)
                    if problem:
                        self.admin_problems[name] = problem
                        info = replace(info, capabilities=info.capabilities
                                       - {Capability.TIER_ADMIN})
                    self.infos[name] = info
                finally:
                    await endpoint.aclose()

        run_sync(probe_all())
        return {n: self.infos[n] for n in chosen}

    def summary(self, name: str) -> str:
        """`adapter X, url U, protocol P, tier T` for the report header (never a secret)."""
        info = self.infos.get(name)
        if info is not None:
            return (
                f"adapter {info.adapter}, url {info.url}, protocol {info.protocol or '?'}, "
                f"tier {info.tier or '?'}"
            )
        ep = self.config.endpoints[name]
        if ep.embedded:
            server_cls = servers.get(ep.adapter)
            options = server_cls.Options.model_validate(ep.server).model_dump(
                exclude_defaults=True
            )
            what = ", ".join(f"{key} {value}" for key, value in options.items())
            return (
                f"adapter {ep.adapter}, url embedded ({what + ', ' if what else ''}started on "
                f"first use), protocol {ep.protocol or 'default'}, tier "
                f"{ep.tier.name or server_cls.default_tier or '?'}"
            )
        return (
            f"adapter {ep.adapter}, url {ep.url}, protocol {ep.protocol or '?'}, "
            f"tier {ep.tier.name or '?'}"
        )

    def settings(self, name: str) -> EndpointSettings:
        """The settings of an endpoint that is resolved (external) or started (embedded)."""
        try:
            return self._settings[name]
        except KeyError:
            raise HarnessError(
                f"endpoint {name!r} is not started; call HarnessSession.start() first"
            ) from None

    async def open(self, name: str) -> Endpoint:
        """Open endpoint `name` in the running event loop (close it with `aclose`)."""
        server = self.servers.get(name)
        endpoint = await open_endpoint(self.settings(name), server=server)
        endpoint.app = server.app() if server is not None else None
        if endpoint.app is None:
            endpoint.info = apply_profile(endpoint.info, self.config.endpoints[name])
        endpoint.latency = self.latency.endpoint(name)
        return endpoint

    def restart(self, name: str, *, kill: bool = False) -> EndpointSettings:
        """Restart endpoint `name`'s server on the same data; its settings may change."""
        server = self.servers.get(name)
        if server is None:
            raise Unsupported(f"endpoint {name!r} is not started by the harness")
        self._settings[name] = server.restart(kill=kill)
        return self._settings[name]

    def stop(self) -> None:
        """Stop every embedded server this session started (and remove the data they made)."""
        started, self.servers = self.servers, {}
        try:
            for server in started.values():
                with contextlib.suppress(Exception):
                    server.stop()
        finally:
            self._started = False

    def __enter__(self) -> HarnessSession:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def unique_id(name: str) -> str:
    """`alice` -> `alice-1f3a9c07`: unique per test, readable in transcripts."""
    return f"{name}-{secrets.token_hex(4)}"


def _gets_recall_events(endpoint: Endpoint, client: IMClient) -> bool:
    """Whether `client`'s connection carries recall events (its protocol may offer less)."""
    return Capability.RECALL in client.capabilities and endpoint.info.supports(Capability.RECALL)


class User:
    """A provisioned test user on an endpoint, with a client whose events feed the oracle."""

    def __init__(self, endpoint: Endpoint, credentials: Credentials, oracle: Oracle) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.oracle = oracle
        self._client: IMClient | None = None
        self._recorder: Recorder | None = None

    def __repr__(self) -> str:
        state = "connected" if self._client is not None else "not connected"
        return f"<User {self.id} on {self.endpoint.name}, {state}>"

    @property
    def id(self) -> str:
        return self.credentials.user_id

    @property
    def client(self) -> IMClient:
        if self._client is None:
            raise HarnessError(f"user {self.id!r} is not connected; call `await user.connect()`")
        return self._client

    @property
    def recorder(self) -> Recorder:
        if self._recorder is None:
            raise HarnessError(f"user {self.id!r} is not connected; call `await user.connect()`")
        return self._recorder

    async def connect(self, protocol: str | None = None) -> User:
        """Log in (optionally with another protocol version) and start recording events."""
        if self._client is not None:
            raise HarnessError(f"user {self.id!r} is already connected; use reconnect()")
        started_at = time.monotonic()
        client = await self.endpoint.adapter.connect(self.credentials, protocol=protocol)
        latency = self.endpoint.latency
        if latency is not None:
            latency.record("connect", time.monotonic() - started_at)
        if not _gets_recall_events(self.endpoint, client):
            self.oracle.no_recall_events(self.id)
        if self.endpoint.info.client_hides:
            self.oracle.client_hides(self.id, self.endpoint.info.client_hides)
        self._client = client
        self._recorder = Recorder(self.id, client, self.oracle, latency=latency)
        self._recorder.start()
        return self

    async def _target(self, to: User | GroupInfo | str) -> tuple[Target, set[str]]:
        if isinstance(to, User):
            return Target.to_user(to.id), {to.id}
        if isinstance(to, GroupInfo):
            try:
                members = set((await self.client.group_info(to.group_id)).members)
            except IMError:
                members = set(to.members)  # e.g. the sender is not a member (any more)
            return Target.to_group(to.group_id), members - {self.id}
        return Target.to_user(to), {to}

    async def send(self, to: User | GroupInfo | str, body: str = "", **kw: Any) -> Ack:
        """Send to a user (1:1) or a group and record the ack with the oracle.

        Example: ``ack = await alice.send(bob, "hi")``
        """
        target, recipients = await self._target(to)
        client_id = kw.pop("client_id", None) or f"c-{uuid.uuid4().hex}"
        # The harness's own clock orders sends: what was acked before another send started
        # must be seen first by everyone (the oracle's happens-before check).
        started_at = time.monotonic()
        try:
            ack = await self.client.send(target, body, client_id=client_id, **kw)
        except (ConnectionLost, IMTimeout):
            self.oracle.sent_unacked(self.id, client_id)
            raise
        acked_at = time.monotonic()
        self.oracle.sent(
            self.id, ack, recipients=recipients, body=None if kw.get("custom") else body,
            started_at=started_at, acked_at=acked_at,
        )
        latency = self.endpoint.latency
        if latency is not None:
            latency.record("send_ack", acked_at - started_at)
            latency.sent(ack.message_id, started_at, recipients - {self.id})
        return ack

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """One page of `conversation`'s history (`IMClient.history`), timed per endpoint.

        Feeding the page to the oracle stays the test's (it knows what the page must hold).

        Example: ``page = await bob.history(ack.conversation, limit=10)``
        """
        started_at = time.monotonic()
        page = await self.client.history(conversation, before=before, after=after, limit=limit)
        if self.endpoint.latency is not None:
            self.endpoint.latency.record("history", time.monotonic() - started_at)
        return page

    async def recall(self, message: Ack | str, conversation: str | None = None) -> None:
        """Recall a message (an ack, or a message id with its conversation) and tell the oracle."""
        if isinstance(message, Ack):
            message_id, conversation = message.message_id, message.conversation
        else:
            message_id = message
        if conversation is None:
            raise HarnessError("recall(message_id) needs conversation=; or pass the Ack")
        await self.client.recall(conversation, message_id)
        self.oracle.recalled(conversation, message_id, self.id)

    async def reconnect(self) -> None:
        """Connect again (after drop/close) and resume; connects a never-connected user."""
        if self._client is None:
            await self.connect()
            return
        await self.client.reconnect()
        if self._recorder is not None and not self._recorder.running:
            self._recorder.start()

    async def drop(self) -> None:
        """Vanish abruptly, as a phone losing signal would."""
        await self.client.drop()

    async def close(self) -> None:
        """Log out, then stop recording (what was recorded stays readable)."""
        if self._client is None:
            return
        try:
            await self._client.close()
        finally:
            if self._recorder is not None:
                await self._recorder.stop()


async def new_user(
    endpoint: Endpoint,
    oracle: Oracle,
    name: str = "user",
    *,
    protocol: str | None = None,
    connect: bool = True,
) -> User:
    """Provision `{name}-{8 hex}` on `endpoint` and (by default) connect it."""
    credentials = await endpoint.adapter.provision_user(unique_id(name))
    user = User(endpoint, credentials, oracle)
    if connect:
        await user.connect(protocol)
    return user


__all__ = [
    "Endpoint",
    "EndpointUnavailable",
    "HarnessSession",
    "User",
    "apply_profile",
    "describe",
    "new_user",
    "open_endpoint",
    "run_sync",
    "unique_id",
]
