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
    Message,
    MessageReceived,
    Target,
)
from harness.errors import (
    ConnectionLost,
    Forbidden,
    IMError,
    IMTimeout,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from harness.xmpp.adapter import translate
from harness.xmpp.adapter.translate import Conversation, Incoming, UserState

if TYPE_CHECKING:
    from harness.xmpp.adapter.adapter import XmppAdapter

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)  # it logs every failed attempt
NS_TIME = "urn:xmpp:time"


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
        """The client's one slixmpp stream, made once and connected again on reconnect
        (making one costs a TLS context: a third of a second on a busy machine)."""
        if self._conn is not None:
            return self._conn
        xmpp = slixmpp.ClientXMPP(f"{self._jid}/{self._state.resource}",
                                  self._credentials.token)
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
        self._pump_task = asyncio.ensure_future(self._pump())
        await self._in_order(self._catch_up)  # before presence: Prosody sends no offline flood
        xmpp.send_presence()
        await self._in_order(self._catch_up_again)  # what came between the query and presence
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
        asyncio.ensure_future(self._reconnect_loop())

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
            self._bounces[item.origin_id] = item.error
            return
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
        conv_id = translate.pair_conversation(item.sender, item.recipient)
        conv = self._state.conversation(conv_id)
        if item.stanza_id:
            self._state.cursor = item.stanza_id
        if item.body is None:
            return  # a marker or another bodiless message: nothing the contract names
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

    async def _sync(self, conv_id: str) -> Conversation:
        """Number the conversation's messages in the order of our archive (the server's).

        Both users' archives hold a 1:1 message in the same order (Prosody writes both copies
        as it routes it), so both sides give it the same seq; a message the archive holds
        twice keeps the seq it got first, as in history.
        """
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
                   ids: Sequence[str] = ()) -> list[tuple[str, Incoming]]:
        """Every item of the user's own archive that matches (all pages)."""
        items: list[tuple[str, Incoming]] = []
        while True:
            queryid = uuid.uuid4().hex
            page: list[tuple[str, Incoming]] = []
            self._queries[queryid] = page
            try:
                answer = await self._iq("set", translate.mam_query(
                    queryid, with_jid=with_jid, after=after, ids=ids))
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
        if to.group is not None:
            raise Unsupported(f"{self!r}: groups (MUC, XEP-0045) are not offered by this adapter")
        assert to.user is not None
        xmpp = self._need_xmpp()
        text = body if custom is None else (body or translate.json_body(custom))
        size = len(text.encode())
        if size > translate.MAX_BODY_BYTES:
            raise TooLarge(f"{self!r}: body of {size} bytes is over the declared maximum "
                           f"{translate.MAX_BODY_BYTES}")
        peer = self._adapter.jid(to.user)
        origin = client_id or uuid.uuid4().hex
        limit = timeout if timeout is not None else self._adapter.send_timeout_s
        el = translate.chat_message(peer, text, custom, origin)
        conv_id = translate.pair_conversation(self._jid, peer)
        message_id = translate.message_id(self._jid, origin)
        try:
            async with asyncio.timeout(limit):
                MessageStanza(xmpp, xml=el).send()
                ts = await self._barrier(limit)
                bounce = self._bounces.pop(origin, None)
                if bounce is not None:
                    raise translate.map_error(*bounce, f"{self!r}: send to {to.user!r}")
                conv = await self._sync(conv_id)
        except TimeoutError:
            raise IMTimeout(f"{self!r}: send {origin!r} not acknowledged in {limit}s") from None
        seq = conv.place(message_id)  # one the archive does not hold goes last
        stamp = conv.stamps.get(message_id, ts)
        return Ack(origin, message_id, conv_id, seq, stamp)

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        raise Unsupported(f"{self!r}: read receipts: "
                          f"{translate.ABSENT_BECAUSE[Capability.RECEIPTS]}")

    async def history(
        self, conversation: str, *, before: int | None = None, after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
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

    # -- what this adapter does not offer (declared absent in its capabilities) -----------

    def _no_groups(self) -> Unsupported:
        return Unsupported(f"{self!r}: groups (MUC, XEP-0045) are not offered by this adapter")

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        raise self._no_groups()

    async def group_info(self, group: str) -> GroupInfo:
        raise self._no_groups()

    async def add_member(self, group: str, user: str) -> None:
        raise self._no_groups()

    async def remove_member(self, group: str, user: str) -> None:
        raise self._no_groups()

    async def leave(self, group: str) -> None:
        raise self._no_groups()

    async def set_role(self, group: str, user: str, role: str) -> None:
        raise self._no_groups()

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        raise self._no_groups()

    async def mute_all(self, group: str, muted: bool = True) -> None:
        raise self._no_groups()

    async def recall(self, conversation: str, message_id: str) -> None:
        raise Unsupported(f"{self!r}: recall needs XEP-0424 message retraction, which "
                          f"Prosody does not offer")
