"""Matrix events and answers <-> the contract, without I/O.

`Timeline` applies the events a client's `/sync` (or a backfill) brings to what the client
knows of its rooms, and emits the contract events they mean; the functions turn room state,
history and error answers into contract objects. Nothing here makes a request.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.contract import (
    Capability,
    ClientHides,
    Event,
    GroupInfo,
    HistoryPage,
    MembershipChanged,
    Message,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    ServerRule,
)
from harness.errors import (
    BadRequest,
    Forbidden,
    IMError,
    LimitReached,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unsupported,
)

CAPABILITIES = frozenset({
    Capability.CHAT, Capability.CUSTOM, Capability.GROUPS, Capability.ROLES, Capability.MUTE,
    Capability.MUTE_ALL,
    Capability.RECALL, Capability.RECEIPTS, Capability.GROUP_RECEIPTS, Capability.OFFLINE,
    Capability.HISTORY, Capability.IDEMPOTENT_SEND,
})  # no PUSH: no pusher is wired to a webhook; no TIER_ADMIN: Matrix has no tiers
# Contract rules Matrix leaves open, refused by this adapter itself (see the package docstring).
CLIENT_ENFORCED = frozenset({ServerRule.PEER_RECALL_1TO1, ServerRule.FORMER_MEMBER_READS})
# What real Matrix SDKs hide from their app and this adapter passes on (declared, not done):
# matrix-js-sdk and matrix-rust-sdk drop a timeline event whose id they already hold, and keep
# a user's read receipt where it is when a receipt for an earlier event arrives.
CLIENT_HIDES = frozenset({ClientHides.DUPLICATE_EVENTS, ClientHides.RECEIPTS_BACKWARDS})
MAX_EVENT_BYTES = 65536  # Synapse's limit on a whole event (envelope included), not the body
# The body limit the adapter declares and enforces: the event limit minus room for the envelope.
# Measured envelope of a 1:1 text message (14-character localparts, 34-character client id):
# 706 bytes on Synapse 1.141.0, 674 on 1.163.2; the rest allows 255-character ids and
# client ids, and a few more prev_events. Characters that JSON escapes (quotes, backslashes,
# control characters) take more room in the event, so such bodies meet the event limit sooner.
MAX_BODY_BYTES = 64000
ROLE_LEVELS = {"owner": 100, "admin": 50, "member": 0}
MUTED_LEVEL = -1
MUTE_ALL_LEVEL = 50  # events_default while everyone but admins and owners is muted
CLIENT_ID_KEY = "im_harness.client_id"
CUSTOM_KEY = "im_harness.custom"
KIND_KEY = "im_harness.kind"
PAIR_KEY = "im_harness.pair"

_ERRCODES: dict[str, type[IMError]] = {
    "M_FORBIDDEN": Forbidden,
    "M_GUEST_ACCESS_FORBIDDEN": Forbidden,
    "M_UNKNOWN_TOKEN": Unauthorized,
    "M_MISSING_TOKEN": Unauthorized,
    "M_USER_DEACTIVATED": Unauthorized,
    "M_NOT_FOUND": NotFound,
    "M_TOO_LARGE": TooLarge,
    "M_UNRECOGNIZED": Unsupported,
    "M_UNSUPPORTED_ROOM_VERSION": Unsupported,
    "M_INCOMPATIBLE_ROOM_VERSION": Unsupported,
    "M_RESOURCE_LIMIT_EXCEEDED": LimitReached,
    "M_BAD_JSON": BadRequest,
    "M_NOT_JSON": BadRequest,
    "M_INVALID_PARAM": BadRequest,
    "M_MISSING_PARAM": BadRequest,
    "M_INVALID_USERNAME": BadRequest,
    "M_USER_IN_USE": BadRequest,
    "M_ROOM_IN_USE": BadRequest,
}
_BY_STATUS: dict[int, type[IMError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: TooLarge,
}

Local = Callable[[str], str]  # a Matrix id -> the contract user id


def map_error(status: int, body: Mapping[str, Any], what: str) -> IMError:
    """The contract's typed error for a Matrix error answer."""
    errcode = str(body.get("errcode") or "")
    text = f"{what}: {errcode or status} {body.get('error') or ''}".rstrip()
    if errcode == "M_LIMIT_EXCEEDED" or status == 429:
        retry_ms = body.get("retry_after_ms")
        # Synapse truncates the wait left to whole milliseconds, so 0 means "under 1 ms": report
        # that bound, not "no wait". Without the field the server named no wait at all: 0.
        wait_ms = max(float(retry_ms), 1.0) if isinstance(retry_ms, int | float) else 0.0
        return RateLimited(text, retry_after=wait_ms / 1000.0, errcode=errcode)
    cls = _ERRCODES.get(errcode) or _BY_STATUS.get(status) or IMError
    return cls(text, errcode=errcode, status=status)


def redacts(event: Mapping[str, Any]) -> str | None:
    """The event id a redaction removes."""
    # Room versions before 11 carry `redacts` at the top level, 11 and later in the content.
    return event.get("redacts") or (event.get("content") or {}).get("redacts")


def custom_of(content: Mapping[str, Any]) -> dict[str, Any] | None:
    """The structured payload of a custom message (a JSON string; an object from older events)."""
    custom = content.get(CUSTOM_KEY)
    if isinstance(custom, str):
        with contextlib.suppress(ValueError):
            custom = json.loads(custom)
    return dict(custom) if isinstance(custom, Mapping) else None


def is_redacted(event: Mapping[str, Any]) -> bool:
    return "redacted_because" in (event.get("unsigned") or {})


def creators_outrank(room_version: str) -> bool:
    """Room version 12 and later: the creators outrank every power level."""
    try:
        return int(room_version) >= 12
    except ValueError:
        return False


def message_level(power: Mapping[str, Any]) -> int:
    """The power level a room's power levels require to send a message."""
    events = power.get("events") or {}
    return int(events.get("m.room.message", power.get("events_default", 0)))


def role(level: int) -> str:
    if level >= ROLE_LEVELS["owner"]:
        return "owner"
    if level >= ROLE_LEVELS["admin"]:
        return "admin"
    return "member"


def shared_history() -> dict[str, Any]:
    """The initial state event of the rooms the adapter creates: members read the backlog."""
    return {"type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "shared"}}


def message_content(body: str, custom: Mapping[str, Any] | None, client_id: str,
                    who: str = "send") -> dict[str, Any]:
    """The `m.room.message` content of a send; TooLarge / BadRequest before any request."""
    size = len(body.encode())
    if size > MAX_BODY_BYTES:
        raise TooLarge(f"{who}: a body of {size} bytes is over the {MAX_BODY_BYTES}-byte "
                       f"limit (the event, envelope included, may be {MAX_EVENT_BYTES})")
    content: dict[str, Any] = {"msgtype": "m.text", "body": body, CLIENT_ID_KEY: client_id}
    if custom is not None:
        try:
            encoded = json.dumps(dict(custom), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"{who}: custom payload is not JSON: {exc}") from None
        # A string, not an object: Matrix's canonical JSON refuses floats inside events.
        content.update(msgtype="im_harness.custom", body=body or encoded,
                       **{CUSTOM_KEY: encoded})
    return content


@dataclass
class Room:
    """What one client knows of one room, in the server's timeline order."""

    kind: str | None = None  # "direct" / "group" / None (a room the harness did not make)
    pair: tuple[str, ...] = ()
    name: str = ""
    creators: frozenset[str] = frozenset()  # room v12+: creators outrank every power level
    power: dict[str, Any] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)  # mxid -> membership
    position: dict[str, int] = field(default_factory=dict)  # event id -> messages up to it
    messages: list[str] = field(default_factory=list)  # seq - 1 -> event id
    stamps: dict[str, float] = field(default_factory=dict)  # message event id -> server ts (s)
    # event id -> the contract events it meant when it first came: a repeat brings them again
    meant: dict[str, tuple[Event, ...]] = field(default_factory=dict)


@dataclass
class UserState:
    """A user's client-side storage: the sync cursor, rooms and sent transactions."""

    since: str | None = None
    filter_id: str | None = None  # the sync filter uploaded for this user
    rooms: dict[str, Room] = field(default_factory=dict)
    direct: dict[str, str] = field(default_factory=dict)  # peer mxid -> room id
    sent: dict[str, str] = field(default_factory=dict)  # client id (txn id) -> event id
    device_id: str = field(default_factory=lambda: "IMH" + secrets.token_hex(5).upper())


def message(room_id: str, room_kind: str | None, event: Mapping[str, Any], seq: int,
            local: Local) -> Message:
    """The contract message of an `m.room.message` event numbered `seq` in its room."""
    content = event.get("content") or {}
    custom = custom_of(content)
    client_id = content.get(CLIENT_ID_KEY) or (event.get("unsigned") or {}).get(
        "transaction_id") or event["event_id"]
    return Message(
        message_id=event["event_id"],
        conversation=room_id,
        seq=seq,
        sender=local(event.get("sender", "")),
        client_id=str(client_id),
        kind="custom" if custom is not None else "text",
        body=str(content.get("body") or ""),
        server_ts=float(event.get("origin_server_ts", 0)) / 1000.0,
        group=room_id if room_kind == "group" else None,
        recalled=is_redacted(event),
        custom=custom,
    )


class Timeline:
    """A user's rooms as its sync sees them: events in, contract events out (no I/O).

    `me` is the user's Matrix id (a bare localpart before the first login); `emit` receives
    each contract event; `placed(event_id, seq, ts)` hears where each message landed.

    Nothing the server sends is filtered out. seq is the server's order: the first time an
    event id appears in what the server lists (the room's `/messages` from its start, then the
    `/sync` timelines), a message takes the next number of its room. An event the server sends
    again is passed on again (a second `MessageReceived` with the same message id and the seq it
    got the first time, the same recall, membership or mute change): not de-duplicated, and not
    re-numbered. That a real SDK would drop it is declared (`CLIENT_HIDES`), not done here.
    """

    def __init__(self, state: UserState, *, me: str, local: Local,
                 emit: Callable[[Event], None],
                 placed: Callable[[str, int, float], None] | None = None) -> None:
        self.state = state
        self.me = me
        self.local = local
        self.emit = emit
        self.placed = placed

    def apply(self, room_id: str, room: Room, event: Mapping[str, Any], *, offline: bool) -> None:
        """One timeline event of `room`, as the server delivered it (a repeat included)."""
        event_id = event.get("event_id", "")
        if event_id and event_id in room.meant:
            self._repeat(room_id, room, event, offline=offline)
            return
        out: list[Event] = []
        self._apply_new(room_id, room, event, offline=offline, out=out)
        if event_id:
            room.meant[event_id] = tuple(out)
        for contract_event in out:
            self.emit(contract_event)

    def _repeat(self, room_id: str, room: Room, event: Mapping[str, Any], *,
                offline: bool) -> None:
        """An event the server sent again: it reaches the stream again, keeping its seq.

        A message is translated again as delivered now (a redacted copy says so), numbered
        where its id came first; any other event brings again what it meant the first time
        (a membership or mute change is a change against the state before it, which the
        room's state no longer is), and the room's state is not changed a second time.
        """
        event_id = event["event_id"]
        if event.get("type") == "m.room.message":
            if event.get("sender", "") != self.me:
                seq = room.position[event_id]
                self.emit(MessageReceived(message(room_id, room.kind, event, seq, self.local),
                                          offline))
            return
        for meant in room.meant[event_id]:
            if isinstance(meant, MessageRecalled):
                meant = replace(meant, offline=offline)
            self.emit(meant)

    def _apply_new(self, room_id: str, room: Room, event: Mapping[str, Any], *, offline: bool,
                   out: list[Event]) -> None:
        event_id = event.get("event_id", "")
        kind, sender = event.get("type"), event.get("sender", "")
        content = event.get("content") or {}
        mine = sender == self.me
        if kind == "m.room.message":
            room.messages.append(event_id)
            seq = len(room.messages)
            room.position[event_id] = seq
            stamp = room.stamps[event_id] = float(event.get("origin_server_ts", 0)) / 1000.0
            if self.placed is not None:
                self.placed(event_id, seq, stamp)
            txn = (event.get("unsigned") or {}).get("transaction_id")
            if mine and txn:  # our device's transaction: a resend of it gets this event back
                self.state.sent.setdefault(str(txn), event_id)
            if not mine:
                out.append(MessageReceived(message(room_id, room.kind, event, seq, self.local),
                                           offline))
            return
        room.position[event_id] = len(room.messages)
        if kind == "m.room.redaction":
            target = redacts(event)
            if target in room.position and not mine:
                out.append(MessageRecalled(room_id, target, self.local(sender), offline))
        elif kind == "m.room.create":
            room.kind = content.get(KIND_KEY)
            room.pair = tuple(content.get(PAIR_KEY) or ())
            if room.kind == "direct":
                for peer in room.pair:
                    if peer != self.me:
                        self.state.direct.setdefault(peer, room_id)
            if creators_outrank(str(content.get("room_version", "1"))):
                room.creators = frozenset({sender, *(content.get("additional_creators") or ())})
        elif kind == "m.room.name":
            room.name = str(content.get("name") or "")
        elif kind == "m.room.member":
            self._member_changed(room_id, room, event, out)
        elif kind == "m.room.power_levels":
            self._power_changed(room_id, room, content, self.local(sender), out)

    def _member_changed(self, room_id: str, room: Room, event: Mapping[str, Any],
                        out: list[Event]) -> None:
        user, sender = event.get("state_key", ""), event.get("sender", "")
        new = (event.get("content") or {}).get("membership", "")
        old = room.members.get(user)
        room.members[user] = new
        if room.kind != "group" or old == new:
            return
        local, by = self.local(user), self.local(sender)
        if new == "invite" or (new == "join" and old not in ("invite", None)):
            out.append(MembershipChanged(room_id, local, "added", by))
        elif new in ("leave", "ban") and old in ("join", "invite"):
            if user == sender:
                out.append(MembershipChanged(room_id, local, "left", by))
            else:
                out.append(MembershipChanged(room_id, local, "removed", by))

    def _power_changed(self, room_id: str, room: Room, new: Mapping[str, Any], by: str,
                       out: list[Event]) -> None:
        old, room.power = room.power, dict(new)
        if not old or room.kind != "group":
            return
        if message_level(old) != message_level(new):
            muted = message_level(new) > 0
            out.append(MuteChanged(room_id, None, muted, by))
        old_users, new_users = old.get("users") or {}, new.get("users") or {}
        for user in sorted(set(old_users) | set(new_users)):
            before = int(old_users.get(user, old.get("users_default", 0)))
            after = int(new_users.get(user, new.get("users_default", 0)))
            if before == after:
                continue
            local = self.local(user)
            if (before <= MUTED_LEVEL) != (after <= MUTED_LEVEL):
                out.append(MuteChanged(room_id, local, after <= MUTED_LEVEL, by))
            if role(before) != role(after) and MUTED_LEVEL not in (before, after):
                out.append(MembershipChanged(room_id, local, "role", by, role=role(after)))

    def receipts(self, room_id: str, room: Room, content: Mapping[str, Any], *,
                 offline: bool) -> None:
        """An `m.receipt` ephemeral event: each peer's read position, as the server sent it.

        A receipt that repeats or moves back is passed on as it is (a real SDK ignores one
        that does not advance: declared in `CLIENT_HIDES`). Only what has no contract meaning
        is not an event: this user's own receipts (the contract's receipts are a peer's), and
        a receipt on an event before the room's first message or unknown to this client
        (no seq to read up to).
        """
        for event_id, kinds in content.items():
            for reader in (kinds.get("m.read") or {}):
                seq = room.position.get(event_id)
                if reader == self.me or not seq:
                    continue
                self.emit(ReceiptUpdated(room_id, self.local(reader), seq, offline))


def before_timeline(backlog: Sequence[Mapping[str, Any]],
                    timeline: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The part of a backlog the adapter read (oldest first) that comes before a sync timeline.

    Synapse's `prev_batch` for a room newly joined in an incremental sync points at the sync's
    end, not the timeline's start, so `/messages` read from it lists the timeline's events as
    well (as does a read from the room's start). The backlog is cut where the timeline's first
    event stands in it (its last place there), by position, not by a set of known ids: every
    event of the timeline reaches the stream once for each time the server's timeline lists
    it, and none once more for the adapter's own overlapping read, while a repeat inside the
    backlog or the timeline is still passed on.
    """
    if not timeline:
        return list(backlog)
    first = timeline[0].get("event_id")
    for index in range(len(backlog) - 1, -1, -1):
        if backlog[index].get("event_id") == first:
            return list(backlog[:index])
    return list(backlog)


def group_info(group_id: str, state: Sequence[Mapping[str, Any]], local: Local) -> GroupInfo:
    """A group from its room's current state events (`GET /rooms/{id}/state`)."""
    power: Mapping[str, Any] = {}
    creators: frozenset[str] = frozenset()
    name = ""
    members: list[str] = []
    for ev in state:
        kind, content = ev.get("type"), ev.get("content") or {}
        if kind == "m.room.power_levels":
            power = content
        elif kind == "m.room.name":
            name = str(content.get("name") or "")
        elif kind == "m.room.create" and creators_outrank(str(content.get("room_version"))):
            creators = frozenset({ev["sender"], *(content.get("additional_creators") or ())})
        elif kind == "m.room.member" and content.get("membership") in ("join", "invite"):
            members.append(ev["state_key"])
    users = power.get("users") or {}
    default = int(power.get("users_default", 0))
    roles = {
        local(m): "owner" if m in creators else role(int(users.get(m, default)))
        for m in members
    }
    muted = frozenset(
        local(m) for m in members
        if m not in creators and int(users.get(m, default)) <= MUTED_LEVEL
    )
    return GroupInfo(group_id, name, roles, muted_all=message_level(power) > 0, muted=muted)


def history_page(conversation: str, events: Sequence[Mapping[str, Any]], *,
                 before: int | None, after: int | None, limit: int,
                 local: Local) -> HistoryPage:
    """A history page from a room's whole timeline (numbered from its start, like live seqs).

    Every message the server lists is on the page: one it lists twice is there twice, with the
    number it got where it came first (the live rule, see `Timeline`).
    """
    kind: str | None = None
    messages: list[Message] = []
    numbers: dict[str, int] = {}  # event id -> seq
    for event in events:
        if event.get("type") == "m.room.create":
            kind = (event.get("content") or {}).get(KIND_KEY)
        elif event.get("type") == "m.room.message":
            seq = numbers.setdefault(event["event_id"], len(numbers) + 1)
            messages.append(message(conversation, kind, event, seq, local))
    if after is not None:
        picked = [m for m in messages if m.seq > after]
        page, more = picked[:limit], len(picked) > limit
    else:
        picked = [m for m in messages if before is None or m.seq < before]
        page, more = picked[-limit:] if limit else [], len(picked) > limit
    return HistoryPage(conversation, tuple(page), more)
