"""The Matrix transport: client-server API calls over aiohttp, and a client's `/sync` loop.

`request` is one API call with Matrix errors mapped to the contract's. `SyncConnection` is the
part of a `MatrixClient` that logs in as a device, long-polls `/sync` (reconnecting with backoff
after network errors, resuming from its since token), fetches what a sync batch leaves out
(backfill, gaps), repeats idempotent requests after network errors, and closes or drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import aiohttp

from harness.adapters.base import ClientState, StreamClient
from harness.adapters.matrix.translate import (
    Room,
    Timeline,
    UserState,
    before_timeline,
    map_error,
)
from harness.backoff import Backoff
from harness.contract import Credentials
from harness.errors import (
    BadRequest,
    ConnectionLost,
    Forbidden,
    IMError,
    IMTimeout,
    Unauthorized,
)

if TYPE_CHECKING:
    from harness.adapters.matrix.adapter import MatrixAdapter

PAGE = 100  # events per /messages page
SYNC_FILTER: dict[str, Any] = {  # what a /sync brings: rooms only, 50 timeline events a batch
    "room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": False}},
    "presence": {"types": []},
    "account_data": {"types": []},
}
_R = TypeVar("_R")
log = logging.getLogger("harness.adapters.matrix")


class Secret(str):
    """An access token that reprs as hidden (tracebacks print call arguments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<hidden>'"


def http_session() -> aiohttp.ClientSession:
    """An HTTP session whose failed requests reach the adapter, which owns every retry."""
    http = aiohttp.ClientSession()
    # aiohttp silently repeats a failed idempotent request once, at once, on a new connection:
    # that would double every attempt, defeat the backoff and hide the failure from `/sync`.
    if hasattr(http, "_retry_connection"):
        http._retry_connection = False
    return http


async def request(
    http: aiohttp.ClientSession, base_url: str, method: str, path: str,
    body: Mapping[str, Any] | None = None, *, params: Mapping[str, str] | None = None,
    token: str | None = None, within: float, prefix: str = "/v3", endpoint: str = "",
) -> Any:
    """One client-server API call; Matrix errors become the contract's typed errors.

    A success whose body is not JSON (malformed in transit, or by the server) raises
    `ConnectionLost` naming the endpoint, the call and the body's first bytes: the outcome of
    the call is unknown, so the caller repeats it (a sync, an idempotent send) or reports it.
    """
    __tracebackhide__ = True  # pytest: its arguments include tokens and passwords
    url = f"{base_url}/_matrix/client{prefix}{path}"
    if path.startswith("/_synapse/"):
        url = f"{base_url}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    what = f"{method} {path.split('?')[0]}"
    if endpoint:
        what = f"endpoint {endpoint!r}: {what}"
    try:
        async with asyncio.timeout(within):
            async with http.request(
                method, url, json=body, params=params, headers=headers
            ) as resp:
                raw = await resp.read()
                try:
                    data = json.loads(raw) if raw else {}
                except ValueError as exc:
                    if resp.status < 400:
                        raise malformed(what, resp.status, raw, f"not JSON: {exc}") from None
                    data = {}
                if resp.status >= 400:
                    raise map_error(resp.status, data if isinstance(data, dict) else {}, what)
                return data
    except TimeoutError:
        raise IMTimeout(f"{what}: no answer within {within:.1f}s") from None
    except aiohttp.ClientError as exc:
        raise ConnectionLost(f"{what}: {type(exc).__name__}: {exc}") from None


BODY_SHOWN = 80  # bytes of a malformed body an error quotes
# A malformed login answer may begin with its token: the value is never quoted.
_SECRET_VALUE = re.compile(rb'("(?:access_token|refresh_token|password|mac)"\s*:\s*")[^"]*')


def malformed(what: str, status: int, raw: bytes, why: str) -> ConnectionLost:
    """The error for a success answer that is not what the call expects (its first bytes)."""
    head = _SECRET_VALUE.sub(rb"\1<hidden>", raw)[:BODY_SHOWN]
    more = f" ... ({len(raw)} bytes)" if len(raw) > BODY_SHOWN else ""
    error = ConnectionLost(f"{what}: the {status} answer is malformed ({why}); "
                           f"it begins {head!r}{more}", malformed=True)
    log.warning("%s", error)
    return error


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (whoever awaits it still gets it)."""
    if not fut.cancelled():
        fut.exception()


class SyncConnection(StreamClient):
    """A device's login, `/sync` long-poll, retried requests, close and drop."""

    def __init__(self, adapter: MatrixAdapter, credentials: Credentials, state: UserState):
        super().__init__()
        self._adapter = adapter
        self._credentials = credentials
        self._state = state
        # Before any login the server name may be unknown; a bare localpart logs in as well.
        me = adapter.mxid(credentials.user_id) if adapter.server_name or \
            credentials.user_id.startswith("@") else credentials.user_id
        self._timeline = Timeline(state, me=me, local=adapter.local, emit=self._emit,
                                  placed=self._placed)
        self._token: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[tuple[int, float]]] = {}
        self._invites: dict[str, asyncio.Event] = {}  # room id -> its invite reached the sync
        self._tasks: set[asyncio.Task[Any]] = set()  # background work besides the sync loop
        self._joining: dict[str, asyncio.Task[Any]] = {}  # room id -> the join in flight
        self._caught_up = asyncio.Event()
        opts = adapter.options
        self._backoff = Backoff(adapter.backoff_base_s, adapter.backoff_cap_s,
                                rng=random.Random(opts.jitter_seed))
        self.reconnect_attempts: list[float] = []  # time.monotonic() of each /sync retry
        self.reconnect_delays: list[float] = []  # the jittered delay drawn before each one
        self.send_retries: list[float] = []  # time.monotonic() of each repeated send request
        self.send_retry_delays: list[float] = []  # the jittered delay drawn before each one
        # What the sync brought that the contract cannot carry: (room, event id, type / why).
        self.unknown_events: list[tuple[str, str, str]] = []
        self.malformed_events: list[tuple[str, str, str]] = []

    @property
    def user_id(self) -> str:
        return self._credentials.user_id

    @property
    def _mxid(self) -> str:
        """This user's Matrix id (a bare localpart until the first login names it)."""
        return self._timeline.me

    # -- HTTP -----------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
        params: Mapping[str, str] | None = None, within: float | None = None,
    ) -> dict[str, Any]:
        if self._http is None or self._token is None:
            raise ConnectionLost(f"{self!r}: not connected; call reconnect() first")
        return await self._adapter.request(
            self._http, method, path, body, params=params, token=self._token, within=within
        )

    async def _login(self) -> None:
        if self._http is None or self._http.closed:
            self._http = http_session()
        try:
            answer = await self._login_request()
        except (Forbidden, BadRequest) as exc:  # a wrong or empty password: refused either way
            raise Unauthorized(f"{self!r}: login refused: {exc}") from None
        self._token = Secret(answer["access_token"])
        self._adapter.learn_server_name(answer["user_id"])
        self._timeline.me = answer["user_id"]

    async def _login_request(self) -> dict[str, Any]:
        assert self._http is not None
        return await self._adapter.request(self._http, "POST", "/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self._mxid},
            "password": self._credentials.token,
            "device_id": self._state.device_id,
            "initial_device_display_name": "im-harness",
        })

    async def _repeat(self, request: Callable[[], Awaitable[_R]]) -> _R:
        """An idempotent request, repeated after network errors with backoff until cancelled."""
        tries = 0
        while True:
            try:
                return await request()
            except ConnectionLost:
                if self._status is not ClientState.CONNECTED:
                    raise  # dropped or closed on purpose: the caller reconnects
                delay = self._backoff.delay(tries)
                tries += 1
                self.send_retry_delays.append(delay)
                await asyncio.sleep(delay)
                self.send_retries.append(time.monotonic())

    # -- sync -----------------------------------------------------------------------------

    async def _start(self, *, reconnected: bool) -> None:
        self._caught_up.clear()
        self._status = ClientState.CONNECTED
        task = self._sync_task = asyncio.create_task(
            self._sync_loop(reconnected=reconnected), name=f"matrix-sync {self.user_id}"
        )
        task.add_done_callback(self._sync_ended)
        waiter = asyncio.ensure_future(self._caught_up.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, task}, timeout=self._adapter.settings.connect_timeout_s * 4,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()  # done, or no longer waited for: never left pending
        if waiter not in done:
            await self._stop_sync()
            self._status = ClientState.DROPPED  # a later reconnect() starts over
            if task in done:
                task.result()  # raises the loop's error
            raise IMTimeout(f"{self!r}: the first sync did not complete in time")

    def _sync_ended(self, task: asyncio.Task[None]) -> None:
        """A sync loop ended: its outcome is always retrieved, and a failure is reported.

        Stopped on purpose, the task is cancelled; before the first sync completed, `_start`
        raises its error. After that, an error the loop does not retry (a server error, a
        malformed answer) ends the client's syncing: it says `Disconnected` with the error and
        its state is FAILED, so the failure is seen, not a client that quietly stops hearing.
        """
        if task.cancelled():
            return
        error = task.exception()
        if error is None or not self._caught_up.is_set() or task is not self._sync_task:
            return
        self._status = ClientState.FAILED
        self._disconnected(f"the sync loop stopped: {type(error).__name__}: {error}")

    def _spawn(self, work: Coroutine[Any, Any, _R], name: str) -> asyncio.Task[_R]:
        """A background task of this client: kept, its outcome retrieved, cancelled on stop."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)
        return task

    async def _join(self, room_id: str) -> None:
        """Join a room; callers at the same moment (the sync accepting an invite, a send
        joining its direct room) share one request, so the server makes one join, not two."""
        joining = self._joining.get(room_id)
        if joining is None or joining.done():
            joining = self._joining[room_id] = self._spawn(
                self._call("POST", f"/join/{quote(room_id)}", {}), f"matrix-join {self.user_id}")
            joining.add_done_callback(
                lambda done: self._joining.pop(room_id, None) if self._joining.get(
                    room_id) is done else None)
        await asyncio.shield(joining)

    def _invite_seen(self, room_id: str) -> asyncio.Event:
        """Set once this client's sync has seen an invite to `room_id`."""
        return self._invites.setdefault(room_id, asyncio.Event())

    def _waiter(self, event_id: str) -> asyncio.Future[tuple[int, float]]:
        """The future a send waits on until the sync places its event (one per event id)."""
        fut = self._waiters.get(event_id)
        if fut is None:
            fut = self._waiters[event_id] = asyncio.get_running_loop().create_future()
            # Its senders may have given up (a send timeout) before it fails on a disconnect.
            fut.add_done_callback(_retrieve)
        return fut

    async def _sync_loop(self, *, reconnected: bool) -> None:
        catching_up = True
        failures = 1 if reconnected else 0  # a reconnect() says Reconnected before what it missed
        poll = self._adapter.options.sync_timeout_s
        while True:
            params = {"timeout": "0" if catching_up else str(int(poll * 1000))}
            if self._state.since:
                params["since"] = self._state.since
            try:
                params["filter"] = await self._sync_filter()
                data = await self._call("GET", "/sync", params=params, within=poll + 10)
                if not isinstance(data.get("next_batch"), str):
                    raise malformed(f"endpoint {self._adapter.settings.name!r}: GET /sync", 200,
                                    json.dumps(data).encode(), "no next_batch token")
                if failures:
                    self._reconnected(failures)
                    failures = 0
                # A batch whose follow-up requests fail is fetched again: the since token
                # moves only after the batch is applied, and it is applied all or nothing.
                joined = await self._process(data, offline=catching_up)
            except (ConnectionLost, IMTimeout) as exc:
                # Before the first sync completed a network error fails the connect, but a
                # garbled answer is fetched again, as later (`_start` bounds the wait).
                if not self._caught_up.is_set() and not exc.details.get("malformed"):
                    raise
                if not failures:
                    self._disconnected(str(exc))
                delay = self._backoff.delay(failures)
                failures += 1
                self.reconnect_delays.append(delay)
                await asyncio.sleep(delay)
                self.reconnect_attempts.append(time.monotonic())
                continue
            except Unauthorized as exc:
                self._disconnected(str(exc))
                self._status = ClientState.CLOSED
                return
            self._state.since = data["next_batch"]
            # Rooms joined from invites during catch-up bring their backlog in the next batch.
            catching_up = catching_up and joined
            if not catching_up:
                self._caught_up.set()

    async def _sync_filter(self) -> str:
        """The id of this user's sync filter, uploaded once, as Matrix SDKs do.

        The server then parses and checks the filter once, not at every `/sync` (an inline
        filter is validated per request: CPU a loaded homeserver lacks).
        """
        if self._state.filter_id is None:
            path = f"/user/{quote(self._mxid)}/filter"
            answer = await self._call("POST", path, SYNC_FILTER)
            self._state.filter_id = str(answer["filter_id"])
        return self._state.filter_id

    async def _process(self, data: Mapping[str, Any], *, offline: bool) -> bool:
        """Apply one sync batch; True when it accepted invites.

        Everything the batch leaves out (a new room's backlog, a gap) is fetched first and the
        batch is applied only then, in one go: a batch fetched again after a failed follow-up
        request was not applied the first time, so the adapter repeats nothing on its own and
        every repeat that reaches the stream is the server's.
        """
        rooms = data.get("rooms") or {}
        joined = False
        for room_id in rooms.get("invite") or {}:
            self._invite_seen(room_id).set()
            try:
                await self._join(room_id)
                joined = True
            except ConnectionLost:
                raise  # the batch is fetched and the invite accepted again
            except IMError:  # a room that vanished meanwhile
                pass
        batch: list[tuple[str, Mapping[str, Any], list[Mapping[str, Any]]]] = []
        for section in ("join", "leave"):
            for room_id, room_data in (rooms.get(section) or {}).items():
                batch.append((room_id, room_data, await self._missing(room_id, room_data)))
        for room_id, room_data, missing in batch:  # no await from here on: all or nothing
            self._apply_room(room_id, room_data, missing, offline=offline)
        return joined

    async def _missing(self, room_id: str,
                       data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The events of a room before its sync timeline that this client has not seen.

        A room met for the first time: its backlog from the start, paged back from the
        timeline's `prev_batch`; a limited timeline of a known room: the gap back to the last
        event seen. Either read may run into the timeline itself (Synapse's `prev_batch` of a
        newly joined room is the sync's end), so it is cut where the timeline begins
        (`translate.before_timeline`).
        """
        timeline = data.get("timeline") or {}
        events = timeline.get("events") or []
        room = self._state.rooms.get(room_id)
        prev = timeline.get("prev_batch")
        if room is None:
            backlog = await (self._fill_gap(room_id, None, prev) if prev
                             else self._room_from_start(room_id))
        elif timeline.get("limited") and prev:
            backlog = await self._fill_gap(room_id, room, prev)
        else:
            return []
        return before_timeline(backlog, events)

    def _apply_room(self, room_id: str, data: Mapping[str, Any],
                    missing: list[Mapping[str, Any]], *, offline: bool) -> None:
        events = [*missing, *((data.get("timeline") or {}).get("events") or [])]
        room = self._state.rooms.setdefault(room_id, Room())
        for event in events:
            self._apply_event(room_id, room, event, offline=offline)
        for ephemeral in (data.get("ephemeral") or {}).get("events") or []:
            if ephemeral.get("type") == "m.receipt":
                self._timeline.receipts(room_id, room, ephemeral.get("content") or {},
                                        offline=offline)

    def _apply_event(self, room_id: str, room: Room, event: Any, *, offline: bool) -> None:
        """One timeline event; what the contract cannot carry is said, never a crash.

        An event type outside the Matrix namespace (`m.*`) has no contract meaning: it takes
        its place in the timeline like any other and is reported (`unknown_events`, a
        warning). A malformed event is reported (`malformed_events`, a warning) and skipped.
        """
        where = f"endpoint {self._adapter.settings.name!r}: {self.user_id}'s sync"
        if not isinstance(event, Mapping):
            self._bad_event(f"{where}: room {room_id} has a timeline entry that is not an "
                            f"object: {json.dumps(event)[:BODY_SHOWN]}", room_id, "?")
            return
        kind = event.get("type")
        event_id = str(event.get("event_id", "?"))
        if not isinstance(kind, str) or not kind.startswith("m."):
            self.unknown_events.append((room_id, event_id, str(kind)))
            log.warning("%s: event %s of unknown type %r in room %s has no contract meaning; "
                        "passed over", where, event_id, kind, room_id)
        try:
            self._timeline.apply(room_id, room, event, offline=offline)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._bad_event(f"{where}: event {event_id} ({kind!r}) in room {room_id} is "
                            f"malformed ({type(exc).__name__}: {exc}); skipped", room_id,
                            event_id)

    def _bad_event(self, text: str, room_id: str, event_id: str) -> None:
        self.malformed_events.append((room_id, event_id, text))
        log.warning("%s", text)

    def _placed(self, event_id: str, seq: int, ts: float) -> None:
        """A message took its place in a room: wake the send waiting for its own event."""
        waiter = self._waiters.pop(event_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((seq, ts))

    async def _room_from_start(self, room_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"dir": "f", "limit": str(PAGE)}
            if token:
                params["from"] = token
            page = await self._call("GET", f"/rooms/{quote(room_id)}/messages", params=params)
            chunk = page.get("chunk") or []
            out.extend(chunk)
            token = page.get("end")
            if not chunk or not token:
                return out

    async def _fill_gap(self, room_id: str, room: Room | None,
                        token: str) -> list[dict[str, Any]]:
        """Events before `token`, oldest first, back to the last one `room` knows (or the start)."""
        known = room.position if room is not None else {}
        missed: list[dict[str, Any]] = []
        next_token: str | None = token
        while next_token:
            params = {"dir": "b", "limit": str(PAGE), "from": next_token}
            page = await self._call("GET", f"/rooms/{quote(room_id)}/messages", params=params)
            chunk = page.get("chunk") or []
            for event in chunk:
                if event.get("event_id") in known:
                    return list(reversed(missed))
                missed.append(event)
            next_token = page.get("end") if chunk else None
        return list(reversed(missed))

    # -- lifecycle ------------------------------------------------------------------------

    async def _stop_sync(self) -> None:
        """Stop the sync loop and every background task, awaiting each one's end."""
        task, self._sync_task = self._sync_task, None
        tasks = [t for t in (task, *self._tasks) if t is not None]
        for each in tasks:
            each.cancel()
        for each in tasks:
            with contextlib.suppress(BaseException):
                await each
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self!r}: disconnected before the echo"))
        self._waiters.clear()

    async def _shut_down(self, was: ClientState) -> None:
        """Log out (the device's token dies) and stop syncing."""
        await self._stop_sync()
        if self._token is not None and self._http is not None:
            with contextlib.suppress(IMError):
                await self._call("POST", "/logout", {}, within=5)
        self._token = None
        if self._http is not None:
            await self._http.close()

    async def _abandon(self) -> None:
        """Stop syncing and abandon the HTTP connections without logging out."""
        await self._stop_sync()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _resume(self) -> None:
        """Resume from the since token; what arrived meanwhile comes marked offline."""
        if self._http is None or self._http.closed:
            self._http = http_session()
        if self._token is None:
            await self._login()
        await self._start(reconnected=True)
