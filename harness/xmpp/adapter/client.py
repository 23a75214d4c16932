"""One logged-in XMPP connection (slixmpp): send, catch-up, markers, history, lifecycle.

Everything a connection receives goes through one pump task, in arrival order: MAM results of
its own queries are handed to the query that asked; chat messages and markers become contract
events. What the server sends is passed on as sent (a message it delivers twice is emitted
twice, with the seq it got the first time); the one thing the client skips is its own overlap:
a message of the second catch-up query (after presence) that this session already received
live, since that repeat is the adapter's doing, not the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Message as MessageStanza
from slixmpp.stanza import Presence
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness.adapters.base import ClientState, StreamClient
from harness.backoff import Backoff
from harness.contract import (
    Ack,
    Capability,
    Credentials,
    GroupInfo,
    HistoryPage,
    MembershipChanged,
    Message,
    MessageReceived,
    MuteChanged,
    Target,
)
from harness.errors import (
    BadRequest,
    ConnectionLost,
    Forbidden,
    IMError,
    IMTimeout,
    NotFound,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from harness.timing import WaitTimeout, until
from harness.xmpp.adapter import muc, speedups, translate
from harness.xmpp.adapter.translate import Conversation, Incoming, UserState

if TYPE_CHECKING:
    from harness.xmpp.adapter.adapter import XmppAdapter

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)  # it logs every failed attempt
NS_TIME = "urn:xmpp:time"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


def _retrieved(job: asyncio.Future[Any]) -> None:
    """Mark a shared read's outcome seen (its callers may all have stopped waiting)."""
    if not job.cancelled():
        job.exception()


class XmppClient(StreamClient):
    """One resource of one XMPP user on the adapter's server."""

    def __init__(self, adapter: XmppAdapter, credentials: Credentials, state: UserState):
        super().__init__()
        self._adapter = adapter
        self._credentials = credentials
        self._state = state
        self._jid = adapter.jid(credentials.user_id)
        self._xmpp: slixmpp.ClientXMPP | None = None  # the connected stream, or None
        self._conn: slixmpp.ClientXMPP | None = None  # the one stream object, reused
        self._started: asyncio.Future[None] | None = None  # the current login attempt
        self._gone = asyncio.Event()  # slixmpp saw the stream go
        self._inbox: asyncio.Queue[Incoming | Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._pump_task: asyncio.Task[None] | None = None
        self._queries: dict[str, list[tuple[str, Incoming]]] = {}
        self._bounces: dict[str, tuple[str, str]] = {}  # origin-id -> error of its bounce
        self._live_ids: set[str] = set()  # archive ids received live in this session
        # Rooms: this session's view of each room's occupants (from their presences), the
        # entries waiting for the room's answer, the sends waiting for their reflection, the
        # rooms this client is leaving, and room archive ids its catch-up delivered.
        self._occupants: dict[str, dict[str, muc.Occupancy]] = {}
        self._joins: dict[str, asyncio.Future[None]] = {}
        self._echoes: dict[str, asyncio.Future[Incoming]] = {}
        self._leaving: set[str] = set()
        self._caught: set[str] = set()
        self._nick = translate.local(self._jid)  # one nick per user in every room
        self._present = False  # initial presence sent: rooms can be entered
        self._tasks: set[asyncio.Future[None]] = set()
        self._reconnecting: asyncio.Future[None] | None = None  # the client's own reconnect
        # Archive reads per conversation: the one running and the one queued after it.
        self._reads: dict[str, asyncio.Future[Any]] = {}
        self._next_reads: dict[str, asyncio.Future[Conversation]] = {}
        self._backoff = Backoff(adapter.options.backoff_base_s, adapter.options.backoff_cap_s)

    def __repr__(self) -> str:
        return f"XmppClient({self.user_id!r}, {self._status})"

    @property
    def user_id(self) -> str:
        return self._credentials.user_id

    @property
    def protocol(self) -> str:
        return self._adapter.info.protocol

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._adapter.info.capabilities

    # -- connection -------------------------------------------------------------------------

    def _connection(self) -> slixmpp.ClientXMPP:
        """The client's one slixmpp stream, made once and connected again on reconnect."""
        if self._conn is not None:
            return self._conn
        speedups.install()
        xmpp = slixmpp.ClientXMPP(f"{self._jid}/{self._state.resource}",
                                  self._credentials.token, ssl_context=speedups.shared_context())
        xmpp.enable_plaintext, xmpp.enable_starttls, xmpp.enable_direct_tls = True, False, False
        xmpp.whitespace_keepalive = False
        xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
        xmpp.plugin["feature_mechanisms"].unencrypted_plain = True

        def fail(exc: Exception) -> None:
            if self._started is not None and not self._started.done():
                self._started.set_exception(exc)

        def ready(_: object) -> None:
            if self._started is not None and not self._started.done():
                self._started.set_result(None)

        xmpp.add_event_handler("session_start", ready)
        xmpp.add_event_handler("failed_auth", lambda _: fail(Unauthorized(
            f"{self!r}: the server refused the credentials of {self._jid}")))
        xmpp.add_event_handler("connection_failed", lambda e: fail(ConnectionLost(
            f"{self!r}: cannot connect to {self._adapter.host}:{self._adapter.port}: {e}")))
        xmpp.add_event_handler("disconnected", lambda _: self._lost())
        # Every <message>: slixmpp's own "message" event skips those without a body (MAM
        # results, markers). Run in the stream, so it comes before a later iq's answer.
        xmpp.register_handler(Callback("imh-messages", MatchXPath(
            f"{{{translate.NS_CLIENT}}}message"), self._on_stanza, instream=True))
        xmpp.register_handler(Callback("imh-presence", MatchXPath(
            f"{{{translate.NS_CLIENT}}}presence"), self._on_presence, instream=True))
        self._conn = xmpp
        return xmpp

    async def _login(self) -> None:
        """Connect, authenticate (SCRAM), bind; catch up from the archive; send presence."""
        xmpp = self._connection()
        started = self._started = asyncio.get_running_loop().create_future()
        self._gone.clear()
        self._xmpp = xmpp
        xmpp.connect(self._adapter.host, self._adapter.port)
        try:
            async with asyncio.timeout(self._adapter.settings.connect_timeout_s * 2):
                await started
        except TimeoutError:
            await self._cut()
            raise IMTimeout(f"{self!r}: no session within the connect timeout") from None
        except BaseException:
            await self._cut()
            raise
        self._status = ClientState.CONNECTED
        self._live_ids = set()
        self._occupants, self._caught, self._present = {}, set(), False
        self._reads, self._next_reads = {}, {}  # the last session's reads wait on nothing now
        self._pump_task = asyncio.ensure_future(self._pump())
        await self._in_order(self._catch_up)  # before presence: Prosody sends no offline flood
        xmpp.send_presence()
        await self._in_order(self._catch_up_again)  # what came between the query and presence
        self._present = True
        for room in list(self._state.rooms):  # back into every room, each caught up
            await self._rejoin(room)
        if self._adapter.options.keepalive_s:
            every = self._adapter.options.keepalive_s
            name = f"imh-ping-{id(self)}"
            with contextlib.suppress(KeyError, ValueError):
                xmpp.cancel_schedule(name)  # the last connection's, when slixmpp kept it
            xmpp.schedule(name, every, self._keepalive, repeat=True)  # type: ignore[arg-type]

    def _keepalive(self) -> None:
        asyncio.ensure_future(self._ping_or_abort())

    async def _ping_or_abort(self) -> None:
        if self._xmpp is None or self._status is not ClientState.CONNECTED:
            return
        try:
            await self._barrier(self._adapter.options.keepalive_timeout_s)
        except (IMError, IqError, IqTimeout):
            if self._xmpp is not None:
                self._xmpp.abort()  # the disconnected handler reconnects

    def _lost(self) -> None:
        self._gone.set()
        started = self._started
        if started is not None and not started.done():
            started.set_exception(ConnectionLost(f"{self!r}: the server closed the stream"))
            return
        if self._xmpp is None or self._status is not ClientState.CONNECTED:
            return
        self._status = ClientState.RECONNECTING
        self._disconnected("connection lost")
        self._reconnecting = asyncio.ensure_future(self._reconnect_loop())

    async def _cut(self) -> None:
        """Abort the stream at once and wait (briefly) until slixmpp has seen it go."""
        xmpp, self._xmpp = self._xmpp, None
        if xmpp is None:
            return
        xmpp.cancel_connection_attempt()
        xmpp.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._gone.wait()

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while self._status is ClientState.RECONNECTING:
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1
            if self._status is not ClientState.RECONNECTING:
                return
            await self._stop_pump()
            try:
                await self._login()
            except Unauthorized as exc:
                self._status = ClientState.FAILED
                self._disconnected(str(exc))
                return
            except (IMError, OSError):
                continue
            self._reconnected(attempt)
            return

    async def _stop_pump(self) -> None:
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._inbox = asyncio.Queue()
        self._queries.clear()

    async def _shut_down(self, was: ClientState) -> None:
        xmpp = self._xmpp
        if xmpp is not None and was is ClientState.CONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(xmpp.disconnect(wait=1.0), timeout=2.0)
        await self._cut()
        await self._stop_pump()

    async def _abandon(self) -> None:
        await self._cut()
        await self._stop_pump()

    async def _resume(self) -> None:
        running = self._reconnecting
        if running is not None and not running.done():
            # Its own reconnect is under way: wait for it (one login at a time on one stream).
            limit = self._adapter.settings.connect_timeout_s * 2
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), limit)
            if self._status is ClientState.CONNECTED:
                return
            if self._status is ClientState.FAILED:
                raise Unauthorized(f"{self!r}: the server refused the credentials of {self._jid}")
            if not running.done():
                raise ConnectionLost(f"{self!r}: still reconnecting after {limit}s")
        await self._stop_pump()
        await self._login()
        self._reconnected(1)

    # -- what arrives -----------------------------------------------------------------------

    def _on_stanza(self, msg: StanzaBase) -> None:
        """Route a stanza as it arrives: query results and bounces at once, the rest in order."""
        el = msg.xml
        result = translate.parse_mam_result(el, self._jid)
        if result is not None:
            queryid, archive_id, item = result
            if queryid in self._queries:
                self._queries[queryid].append((archive_id, item))
            return
        item = translate.parse_message(el, self._jid)
        if item.error is not None:
            echo = self._echoes.pop(item.origin_id, None)
            if echo is not None and not echo.done():
                echo.set_exception(translate.map_error(*item.error, f"{self!r}: group send"))
            self._bounces[item.origin_id] = item.error
            return
        if item.nick is not None and item.nick == self._nick:
            echo = self._echoes.pop(item.origin_id, None)
            if echo is not None and not echo.done():
                echo.set_result(item)  # the room's reflection of our send: the ack
        if item.stanza_id:
            self._live_ids.add(item.stanza_id)
        self._inbox.put_nowait(item)

    async def _pump(self) -> None:
        while True:
            job = await self._inbox.get()
            if isinstance(job, Incoming):
                await self._deliver(job, offline=False)
            else:
                await job()

    async def _in_order(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` in the pump, after everything received so far."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                await job()
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)
                raise
            if not done.done():
                done.set_result(None)

        self._inbox.put_nowait(run)
        await done

    async def _deliver(self, item: Incoming, *, offline: bool) -> None:
        """Turn one received chat message into a contract event, numbered as archived."""
        if item.nick is not None:
            return await self._deliver_group(item, offline=offline)
        if item.invite is not None:
            await self._on_invite(item)
        elif item.body is not None:  # else a marker or another message the contract names not
            await self._deliver_chat(item, offline=offline)
        if item.stanza_id:  # only once it is handled: a reconnect's catch-up starts after it
            self._state.cursor = item.stanza_id

    async def _deliver_chat(self, item: Incoming, *, offline: bool) -> None:
        conv_id = translate.pair_conversation(item.sender, item.recipient)
        conv = self._state.conversation(conv_id)
        key = translate.message_id(item.sender, item.origin_id)
        if key not in conv.seqs:
            with contextlib.suppress(IMError):  # unanswered: it goes last, stamped on arrival
                await self._sync(conv_id)
        seq = conv.place(key)  # one the archive does not hold goes last
        if item.sender == self._jid:
            return  # our own message (our archive's copy): numbered, not received
        stamp = conv.stamps.get(key, item.stamp)
        message = translate.as_message(conv_id, item, seq, stamp if stamp is not None
                                       else time.time())
        self._emit(MessageReceived(message, offline=offline))

    async def _coalesced(self, conv_id: str,
                         read: Callable[[], Awaitable[Conversation]]) -> Conversation:
        """Run `read` (an archive read of one conversation) for a caller, sharing it: while
        one read runs, everyone who asks meanwhile waits for the one after it (it starts after
        they asked, so it sees what they sent). Two reads at most, not one per send."""
        running = self._reads.get(conv_id)
        job: asyncio.Future[Conversation]
        if running is None or running.done():
            job = asyncio.ensure_future(read())
            self._reads[conv_id] = job
        else:
            job = self._next_reads.get(conv_id) or asyncio.ensure_future(
                self._read_after(conv_id, running, read))
            self._next_reads[conv_id] = job
        job.add_done_callback(_retrieved)
        return await asyncio.shield(job)

    async def _read_after(self, conv_id: str, before: asyncio.Future[Conversation],
                          read: Callable[[], Awaitable[Conversation]]) -> Conversation:
        await asyncio.wait([before])
        self._next_reads.pop(conv_id, None)
        current = asyncio.current_task()
        assert current is not None
        self._reads[conv_id] = current
        return await read()

    async def _sync(self, conv_id: str) -> Conversation:
        """Number the conversation's messages in the order of our archive (the server's).

        Both users' archives hold a 1:1 message in the same order (Prosody writes both copies
        as it routes it), so both sides give it the same seq; a message the archive holds
        twice keeps the seq it got first, as in history.
        """
        return await self._coalesced(conv_id, lambda: self._sync_once(conv_id))

    async def _sync_once(self, conv_id: str) -> Conversation:
        conv = self._state.conversation(conv_id)
        peer = self._peer(conv_id)
        for archive_id, item in await self._mam(with_jid=peer, after=conv.archive_cursor):
            conv.archive_cursor = archive_id
            if item.body is None or item.error is not None:
                continue
            key = translate.message_id(item.sender, item.origin_id)
            conv.place(key)
            if item.stamp is not None:
                conv.stamps.setdefault(key, item.stamp)
        return conv

    def _peer(self, conv_id: str) -> str:
        members = translate.pair_members(conv_id)
        return next((m for m in members if m != self._jid), self._jid)

    # -- requests -----------------------------------------------------------------------------

    def _need_xmpp(self) -> slixmpp.ClientXMPP:
        if self._xmpp is None or self._status is not ClientState.CONNECTED:
            raise ConnectionLost(f"{self!r}: not connected; call reconnect() first")
        return self._xmpp

    async def _iq(self, kind: str, payload: ET.Element, *, to: str | None = None,
                  timeout: float | None = None) -> ET.Element:  # noqa: ASYNC109
        xmpp = self._need_xmpp()
        iq = xmpp.make_iq_set(sub=payload) if kind == "set" else xmpp.make_iq_get()
        if kind != "set":
            iq.append(payload)
        if to:
            iq["to"] = to
        limit = timeout if timeout is not None else self._adapter.settings.send_timeout_s
        try:
            answer = await iq.send(timeout=limit)
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            raise translate.map_error(condition, exc.iq["error"]["text"], repr(self)) from None
        except IqTimeout:
            raise IMTimeout(f"{self!r}: no answer to an iq within {limit}s") from None
        return answer.xml

    async def _barrier(self, timeout: float | None = None) -> float:  # noqa: ASYNC109
        """Ask the server its time (XEP-0202); it answers after every earlier stanza of this
        stream was processed (Prosody handles a stream's stanzas in order). Server seconds."""
        answer = await self._iq("get", ET.Element(f"{{{NS_TIME}}}time"),
                                to=self._adapter.domain, timeout=timeout)
        utc = answer.find(f"{{{NS_TIME}}}time/{{{NS_TIME}}}utc")
        stamp = translate.parse_stamp(utc.text if utc is not None else None)
        return stamp if stamp is not None else time.time()

    async def _mam(self, *, with_jid: str | None = None, after: str | None = None,
                   ids: Sequence[str] = (), to: str | None = None, start: float | None = None,
                   ) -> list[tuple[str, Incoming]]:
        """Every item of the user's own archive (or room `to`'s) that matches (all pages)."""
        items: list[tuple[str, Incoming]] = []
        while True:
            queryid = uuid.uuid4().hex
            page: list[tuple[str, Incoming]] = []
            self._queries[queryid] = page
            try:
                answer = await self._iq("set", translate.mam_query(
                    queryid, with_jid=with_jid, after=after, ids=ids,
                    start=None if after else start), to=to)
            finally:
                self._queries.pop(queryid, None)
            items += page
            complete, last = translate.fin_of(answer)
            if complete or not last or ids:
                return items
            after = last

    async def _catch_up(self, *, again: bool = False) -> None:
        """Everything the archive holds after the cursor, as offline events."""
        items = await self._mam(after=self._state.cursor)
        for archive_id, item in items:
            if again and archive_id in self._live_ids:
                continue  # this session got it live (queued behind us): our query repeats it
            await self._deliver(item, offline=True)
            self._state.cursor = archive_id

    async def _catch_up_again(self) -> None:
        await self._catch_up(again=True)

    # -- the contract's operations ------------------------------------------------------------

    async def send(
        self, to: Target, body: str = "", *, custom: Mapping[str, Any] | None = None,
        client_id: str | None = None, timeout: float | None = None,  # noqa: ASYNC109 - contract
    ) -> Ack:
        xmpp = self._need_xmpp()
        text = body if custom is None else (body or translate.json_body(custom))
        size = len(text.encode())
        if size > translate.MAX_BODY_BYTES:
            raise TooLarge(f"{self!r}: body of {size} bytes is over the declared maximum "
                           f"{translate.MAX_BODY_BYTES}")
        if to.group is not None:
            return await self._send_group(to.group, text, custom, client_id, timeout)
        assert to.user is not None
        peer = self._adapter.jid(to.user)
        origin = client_id or uuid.uuid4().hex
        limit = timeout if timeout is not None else self._adapter.send_timeout_s
        el = translate.chat_message(peer, text, custom, origin)
        conv_id = translate.pair_conversation(self._jid, peer)
        message_id = translate.message_id(self._jid, origin)
        try:
            async with asyncio.timeout(limit):
                if origin in self._state.sent:  # did the server store an earlier attempt?
                    conv = await self._sync(conv_id)
                    if message_id in conv.seqs:
                        return self._stored(origin, message_id, conv_id, conv)
                MessageStanza(xmpp, xml=el).send()
                self._state.sent[origin] = conv_id
                ts = await self._barrier(limit)
                bounce = self._bounces.pop(origin, None)
                if bounce is not None:
                    self._state.sent.pop(origin, None)  # refused: not stored
                    raise translate.map_error(*bounce, f"{self!r}: send to {to.user!r}")
                conv = await self._sync(conv_id)
        except TimeoutError:
            raise IMTimeout(f"{self!r}: send {origin!r} not acknowledged in {limit}s") from None
        seq = conv.place(message_id)  # one the archive does not hold goes last
        stamp = conv.stamps.get(message_id, ts)
        return Ack(origin, message_id, conv_id, seq, stamp)

    def _stored(self, origin: str, message_id: str, conv_id: str, conv: Conversation, *,
                key: str | None = None) -> Ack:
        """The ack of an earlier attempt the archive shows was stored (not sent again)."""
        key = key or message_id
        return Ack(origin, message_id, conv_id, conv.seqs[key],
                   conv.stamps.get(key, time.time()))

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        raise Unsupported(f"{self!r}: read receipts: "
                          f"{translate.ABSENT_BECAUSE[Capability.RECEIPTS]}")

    async def history(
        self, conversation: str, *, before: int | None = None, after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        group = muc.group_of(conversation)
        if group is not None:
            return await self._group_history(group, before=before, after=after, limit=limit)
        members = translate.pair_members(conversation)
        if self._jid not in members:
            raise Forbidden(f"{self!r}: {conversation!r} is not a conversation of this user")
        peer = next((m for m in members if m != self._jid), self._jid)
        messages: list[Message] = []
        numbers: dict[str, int] = {}
        for _, item in await self._mam(with_jid=peer):
            if item.body is None or item.error is not None:
                continue
            key = translate.message_id(item.sender, item.origin_id)
            seq = numbers.setdefault(key, len(numbers) + 1)
            messages.append(translate.as_message(conversation, item, seq,
                                                 item.stamp or 0.0))
        return translate.history_page(conversation, messages, before=before, after=after,
                                      limit=limit)

    # -- groups: XEP-0045 rooms (see harness.xmpp.adapter.muc) -----------------------------

    def _room(self, group: str) -> str:
        return group if "@" in group else f"{group}@{self._adapter.muc_domain}"

    def _on_presence(self, stanza: StanzaBase) -> None:
        occ = muc.parse_presence(stanza.xml)
        if occ is None:
            return
        if occ.room in self._joins or occ.room in self._occupants:
            self._inbox.put_nowait(lambda: self._presence(occ))

    async def _presence(self, occ: muc.Occupancy) -> None:
        """One room presence, in arrival order: an entry completing, or a change to report."""
        room = occ.room
        join = self._joins.get(room)
        if occ.error is not None:
            if join is not None and not join.done():
                join.set_exception(translate.map_error(
                    *occ.error, f"{self!r}: entering {room} (XEP-0045 §7.2)"))
            return
        view = self._occupants.get(room)
        if view is None:
            return  # a room we are not in (any more): an entry that timed out, say
        before = view.get(occ.nick)
        if occ.available:
            view[occ.nick] = occ
        else:
            view.pop(occ.nick, None)
        if occ.own and occ.available and join is not None and not join.done():
            try:  # entered: what the room archived since we last read it, before anything live
                await self._catch_up_room(room)
            except IMError as exc:
                join.set_exception(exc)
            else:
                join.set_result(None)
            return
        self._changed(room, before, occ)

    def _changed(self, room: str, before: muc.Occupancy | None, occ: muc.Occupancy) -> None:
        """The contract's events of a change of an occupant's presence."""
        group = translate.local(room)
        user = translate.local(occ.jid) if occ.jid else occ.nick
        by = translate.local(occ.actor) if occ.actor else ""
        if not occ.available:
            if not occ.codes & {muc.AFFILIATION_GONE, muc.KICKED, muc.BANNED}:
                return  # an occupant went offline: still a member
            if occ.own:
                self._occupants.pop(room, None)
                self._state.rooms.pop(room, None)
                change = "left" if room in self._leaving else "removed"
                self._leaving.discard(room)
            else:
                change = "removed" if by and by != user else "left"
            self._emit(MembershipChanged(group, user, change, by=by or user))  # type: ignore[arg-type]
            return
        if before is None:
            return  # an occupant came in: no membership changed
        if before.affiliation != occ.affiliation and occ.affiliation in muc.GROUP_ROLES:
            self._emit(MembershipChanged(group, user, "role", by=by, role=occ.affiliation))
        if muc.MUTED in (before.role, occ.role) and before.role != occ.role:
            # voice revoked (§8.4) or given back (§8.3, or with an admin's role): as the room
            # tells every occupant, the muted one in its own presence (status 110)
            self._emit(MuteChanged(group, user, muted=occ.role == muc.MUTED, by=by))

    async def _enter(self, room: str) -> None:
        """Enter a room (creating it when it does not exist) and catch up on its archive.

        One entry at a time: a caller that comes while one is under way (the invitation's,
        say, as an operation enters the room first) waits for that one's answer.
        """
        xmpp = self._need_xmpp()
        limit = self._adapter.settings.send_timeout_s * 2
        running = self._joins.get(room)
        if running is not None:
            try:
                async with asyncio.timeout(limit):
                    await asyncio.shield(running)
            except TimeoutError:
                raise IMTimeout(f"{self!r}: {room} did not answer the entry") from None
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joins[room] = done
        self._occupants.setdefault(room, {})
        try:
            Presence(xmpp, xml=muc.join_presence(room, self._nick)).send()
            async with asyncio.timeout(limit):
                await done
        except TimeoutError:
            raise IMTimeout(f"{self!r}: {room} did not answer the entry") from None
        except BaseException:
            self._occupants.pop(room, None)
            raise
        finally:
            self._joins.pop(room, None)

    async def _rejoin(self, room: str) -> None:
        """Enter a room of ours again; a refusal means we were removed while away."""
        try:
            await self._enter(room)
        except (Forbidden, NotFound):
            if self._state.rooms.pop(room, None) is not None:
                self._emit(MembershipChanged(translate.local(room), self.user_id, "removed",
                                             by=""))

    async def _on_invite(self, item: Incoming) -> None:
        """The room's invitation (sent as we were added): a member from the time it was sent."""
        assert item.invite is not None
        room, inviter = item.invite
        if room in self._state.rooms:
            return  # a member already: an archive read again repeats old invitations
        stamp = item.stamp
        if stamp is None and item.stanza_id:  # live: our archive has the server's time of it
            with contextlib.suppress(IMError):
                for _, archived in await self._mam(ids=[item.stanza_id]):
                    stamp = archived.stamp
        self._state.rooms[room] = stamp if stamp is not None else time.time()
        self._emit(MembershipChanged(translate.local(room), self.user_id, "added",
                                     by=translate.local(inviter)))
        if self._present:  # else the login enters it, after its initial presence
            task = asyncio.ensure_future(self._rejoin(room))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up_room(self, room: str) -> None:
        """What the room archived after our last reading (or since we were added)."""
        where = self._state.rooms.get(room)
        first = not isinstance(where, str)  # just added: these are not missed messages
        items = await self._mam(to=room, after=where if isinstance(where, str) else None,
                                start=where if isinstance(where, float) else None)
        for archive_id, item in items:
            self._caught.add(archive_id)
            await self._deliver_group(item, offline=not first, caught=True)

    async def _deliver_group(self, item: Incoming, *, offline: bool,
                             caught: bool = False) -> None:
        """One groupchat message, numbered in the room archive's order (the same for all)."""
        room = item.sender
        if item.body is None or item.error is not None or item.nick is None:
            return  # a subject, a status message: nothing the contract names
        key = item.stanza_id or f"{item.nick}/{item.origin_id}"
        if not caught and key in self._caught:
            return  # our catch-up's query already gave it (queued behind the query)
        group = translate.local(room)
        conv = self._state.conversation(muc.group_conversation(group))
        if key not in conv.seqs:
            with contextlib.suppress(IMError):  # unanswered: it goes last, stamped on arrival
                await self._sync_room(room)
        seq = conv.place(key)
        if item.nick != self._nick:  # else the reflection of our own send: numbered only
            stamp = conv.stamps.get(key, item.stamp)
            self._emit(MessageReceived(self._group_message(group, key, item, seq, stamp),
                                       offline=offline))
        if item.stanza_id and room in self._state.rooms:  # handled: read on after it
            self._state.rooms[room] = item.stanza_id

    def _group_message(self, group: str, key: str, item: Incoming, seq: int,
                       stamp: float | None) -> Message:
        return Message(
            message_id=muc.group_message_id(group, key),
            conversation=muc.group_conversation(group), seq=seq, sender=item.nick or "",
            client_id=item.origin_id, kind="custom" if item.custom is not None else "text",
            body=item.body or "", server_ts=stamp if stamp is not None else time.time(),
            group=group, custom=item.custom,
        )

    async def _sync_room(self, room: str) -> Conversation:
        """Number the room's messages in its archive's order (read on from the last read)."""
        return await self._coalesced(muc.group_conversation(translate.local(room)),
                                     lambda: self._sync_room_once(room))

    async def _sync_room_once(self, room: str) -> Conversation:
        conv = self._state.conversation(muc.group_conversation(translate.local(room)))
        for archive_id, item in await self._mam(to=room, after=conv.archive_cursor):
            conv.archive_cursor = archive_id
            if item.body is None or item.error is not None:
                continue
            conv.place(archive_id)
            conv.origins.setdefault(f"{item.nick}/{item.origin_id}", archive_id)
            if item.stamp is not None:
                conv.stamps.setdefault(archive_id, item.stamp)
        return conv

    async def _send_group(self, group: str, text: str, custom: Mapping[str, Any] | None,
                          client_id: str | None, timeout: float | None) -> Ack:  # noqa: ASYNC109
        """A groupchat message; the room's reflection of it is the ack (XEP-0045 §7.4)."""
        xmpp = self._need_xmpp()
        room = self._room(group)
        origin = client_id or uuid.uuid4().hex
        limit = timeout if timeout is not None else self._adapter.send_timeout_s
        group_id, conv_id = translate.local(room), muc.group_conversation(translate.local(room))
        echo: asyncio.Future[Incoming] = asyncio.get_running_loop().create_future()
        self._echoes[origin] = echo
        try:
            async with asyncio.timeout(limit):
                if room not in self._occupants:  # one posts from inside the room (§7.2)
                    await self._enter(room)
                if origin in self._state.sent:  # did the room store an earlier attempt?
                    conv = await self._sync_room(room)
                    stored = conv.origins.get(f"{self._nick}/{origin}")
                    if stored is not None:
                        return self._stored(origin, muc.group_message_id(group_id, stored),
                                            conv_id, conv, key=stored)
                MessageStanza(xmpp, xml=muc.groupchat(room, text, custom, origin)).send()
                self._state.sent[origin] = conv_id
                reflected = await echo
                conv = await self._sync_room(room)
        except TimeoutError:
            raise IMTimeout(f"{self!r}: send {origin!r} to {group!r} not reflected in "
                            f"{limit}s") from None
        except (ConnectionLost, IMTimeout):
            raise  # the outcome is unknown: a resend reads the archive first
        except IMError:
            self._state.sent.pop(origin, None)  # refused: not stored
            raise
        finally:
            self._echoes.pop(origin, None)
        key = reflected.stanza_id or f"{self._nick}/{origin}"
        seq = conv.place(key)
        stamp = conv.stamps.get(key, time.time())
        return Ack(origin, muc.group_message_id(group_id, key), conv_id, seq, stamp)

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        """A new room, configured (members-only, moderated, non-anonymous), members added."""
        group = f"g-{uuid.uuid4().hex[:12]}"
        room = self._room(group)
        self._state.rooms[room] = 0.0  # a new room: its whole archive is ours
        try:
            await self._enter(room)
            await self._iq("set", muc.config_form(name), to=room)
        except BaseException:
            self._state.rooms.pop(room, None)
            raise
        for user in members:
            await self.add_member(group, user)
        return await self.group_info(group)

    async def group_info(self, group: str) -> GroupInfo:
        """The room's affiliation lists (members may read them in a non-anonymous
        members-only room), its name, and the occupants this session sees without voice."""
        room = self._room(group)
        answers = await asyncio.gather(
            *(self._iq("get", muc.admin_item(affiliation=a), to=room) for a in muc.GROUP_ROLES),
            self._iq("get", ET.Element(f"{{{NS_DISCO_INFO}}}query"), to=room))
        members = {translate.local(jid): affiliation
                   for answer in answers[:-1] for jid, affiliation in muc.affiliations_of(answer)}
        muted = frozenset(translate.local(o.jid) for o in self._occupants.get(room, {}).values()
                          if o.jid and o.role == muc.MUTED)  # as the room's presences say
        return GroupInfo(group, muc.room_name_of(answers[-1]) or group, members, muted=muted)

    async def add_member(self, group: str, user: str) -> None:
        """Affiliation member (admins and owners only), then the room's invitation tells
        the user (a member's client enters the room when invited)."""
        room = self._room(group)
        jid = self._adapter.jid(user)
        await self._iq("set", muc.admin_item(affiliation="member", jid=jid), to=room)
        MessageStanza(self._need_xmpp(), xml=muc.invite(room, jid)).send()

    async def remove_member(self, group: str, user: str) -> None:
        """Affiliation none: in a members-only room the server also ends the user's visit."""
        await self._iq("set", muc.admin_item(affiliation="none", jid=self._adapter.jid(user)),
                       to=self._room(group))

    async def leave(self, group: str) -> None:
        """Give up one's affiliation: a member cancels its registration with the room; an
        owner drops its own affiliation, which the server refuses to its last owner."""
        room = self._room(group)
        own = self._occupants.get(room, {}).get(self._nick)
        self._leaving.add(room)
        try:
            if own is not None and own.affiliation in ("owner", "admin"):
                await self._iq("set", muc.admin_item(affiliation="none", jid=self._jid),
                               to=room)
            else:
                await self._iq("set", muc.unregister(), to=room)
        except IMError as exc:
            self._leaving.discard(room)
            if exc.details.get("condition") == "conflict":
                raise Forbidden(f"{self!r}: the last owner cannot leave {group!r} "
                                f"(XEP-0045 §10.6: a room keeps an owner)") from None
            raise

    async def set_role(self, group: str, user: str, role: str) -> None:
        """The contract's role is the room affiliation of the same name."""
        if role not in muc.GROUP_ROLES:
            raise BadRequest(f"{self!r}: role {role!r} is not one of {list(muc.GROUP_ROLES)}")
        await self._iq("set", muc.admin_item(affiliation=role, jid=self._adapter.jid(user)),
                       to=self._room(group))

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        """Revoke (XEP-0045 §8.4) or grant (§8.3) the member's voice: its role in the room
        becomes `visitor`, or `participant` again. The server decides who may (a moderator:
        the owner or an admin, in the room) and refuses a visitor's groupchat messages.

        What voice does not carry: translate.VOICE_LASTS_WHILE_PRESENT. The member's own
        presence in the room is waited for (up to the send timeout: a member just added
        enters when its invitation arrives); if it does not come, the server is asked anyway
        and its item-not-found is NotFound.
        """
        room, jid = self._room(group), self._adapter.jid(user)
        limit = self._adapter.send_timeout_s
        if room not in self._occupants:
            await self._enter(room)  # a role is changed from inside the room (§8.4)

        def nick() -> str | None:
            view = self._occupants.get(room, {})
            return next((o.nick for o in view.values() if o.jid == jid), None)

        try:
            found = await until(nick, timeout=limit, what=f"{user!r} in {room}")
        except WaitTimeout:
            found = translate.local(jid)  # the nick the adapter's clients take
        try:
            await self._iq("set", muc.voice_item(str(found), muted=muted), to=room)
        except NotFound as exc:
            raise NotFound(f"{self!r}: mute {user!r} in {group!r}: {exc.message}; "
                           f"{translate.VOICE_LASTS_WHILE_PRESENT}", **exc.details) from None

    async def mute_all(self, group: str, muted: bool = True) -> None:
        raise Unsupported(f"{self!r}: mute all: "
                          f"{translate.ABSENT_BECAUSE[Capability.MUTE_ALL]}")

    async def _group_history(self, group: str, *, before: int | None, after: int | None,
                             limit: int) -> HistoryPage:
        """The room's archive from its start, numbered as live (a non-member is refused)."""
        messages: list[Message] = []
        for archive_id, item in await self._mam(to=self._room(group)):
            if item.body is None or item.error is not None or item.nick is None:
                continue
            messages.append(self._group_message(group, archive_id, item, len(messages) + 1,
                                                item.stamp or 0.0))
        return translate.history_page(muc.group_conversation(group), messages, before=before,
                                      after=after, limit=limit)

    async def recall(self, conversation: str, message_id: str) -> None:
        raise Unsupported(f"{self!r}: recall needs XEP-0424 message retraction, which "
                          f"Prosody does not offer")
