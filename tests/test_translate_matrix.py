"""Matrix events and answers -> contract objects, without a homeserver: raw events in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.adapters.matrix import translate
from harness.adapters.matrix.translate import Room, Timeline, UserState
from harness.contract import (
    Event,
    MembershipChanged,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
)
from harness.errors import (
    BadRequest,
    Forbidden,
    IMError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unsupported,
)

HS = "hs.test"
ALICE, BOB, CAROL = f"@alice:{HS}", f"@bob:{HS}", f"@carol:{HS}"
ROOM = "!room:hs.test"


def local(mxid: str) -> str:
    return mxid[1:].split(":", 1)[0] if mxid.endswith(f":{HS}") else mxid


class Seen:
    """A timeline for `me` with what it emitted and where messages landed."""

    def __init__(self, me: str = BOB) -> None:
        self.events: list[Event] = []
        self.placed: list[tuple[str, int, float]] = []
        self.state = UserState()
        self.timeline = Timeline(self.state, me=me, local=local, emit=self.events.append,
                                 placed=lambda *where: self.placed.append(where))
        self.room = Room()

    def apply(self, *events: dict[str, Any], offline: bool = False) -> list[Event]:
        start = len(self.events)
        for event in events:
            self.timeline.apply(ROOM, self.room, event, offline=offline)
        return self.events[start:]


def create(kind: str = "group", version: str = "10", **extra: Any) -> dict[str, Any]:
    return {"type": "m.room.create", "event_id": "$create", "sender": ALICE, "state_key": "",
            "content": {"room_version": version, translate.KIND_KEY: kind, **extra}}


def member(user: str, membership: str, by: str, n: int) -> dict[str, Any]:
    return {"type": "m.room.member", "event_id": f"$m{n}", "sender": by, "state_key": user,
            "content": {"membership": membership}}


def power(users: dict[str, int], n: int, events_default: int = 0) -> dict[str, Any]:
    return {"type": "m.room.power_levels", "event_id": f"$p{n}", "sender": ALICE,
            "state_key": "", "content": {"users": users, "users_default": 0,
                                         "events_default": events_default}}


def text(n: int, sender: str = ALICE, body: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": f"$t{n}", "sender": sender,
            "origin_server_ts": 1732160000123 + n,
            "content": {"msgtype": "m.text", "body": body or f"msg {n}",
                        translate.CLIENT_ID_KEY: f"cid-{n}"}, **extra}


def test_messages_are_numbered_in_timeline_order_and_placed() -> None:
    seen = Seen()
    got = seen.apply(create(), text(1), text(2), text(3, sender=BOB))
    received = [e for e in got if isinstance(e, MessageReceived)]
    assert [(e.message.seq, e.message.body, e.message.sender) for e in received] == [
        (1, "msg 1", "alice"), (2, "msg 2", "alice")]  # bob's own message is not received
    first = received[0].message
    assert (first.message_id, first.conversation, first.client_id, first.group) == (
        "$t1", ROOM, "cid-1", ROOM)
    assert first.server_ts == pytest.approx(1732160000.124)
    assert [p[:2] for p in seen.placed] == [("$t1", 1), ("$t2", 2), ("$t3", 3)]
    assert seen.room.messages == ["$t1", "$t2", "$t3"]


def test_a_repeated_event_is_applied_once_and_offline_is_passed_on() -> None:
    seen = Seen()
    assert len(seen.apply(create(), text(1), offline=True)) == 1
    assert seen.events[0].offline is True  # type: ignore[union-attr]
    assert seen.apply(text(1)) == []
    assert len(seen.room.messages) == 1


def test_own_transactions_are_remembered_for_resends() -> None:
    seen = Seen(me=ALICE)
    seen.apply(create(), text(1, unsigned={"transaction_id": "cid-1"}))
    assert seen.state.sent == {"cid-1": "$t1"}
    assert seen.events == []


def test_a_custom_message_and_a_direct_room() -> None:
    seen = Seen()
    custom = text(1)
    custom["content"] = {"msgtype": "im_harness.custom", "body": "{...}",
                         translate.CUSTOM_KEY: json.dumps({"card": 1, "x": 0.5})}
    (event,) = seen.apply(create("direct", **{translate.PAIR_KEY: [ALICE, BOB]}), custom)
    assert isinstance(event, MessageReceived)
    assert (event.message.kind, event.message.custom, event.message.group) == (
        "custom", {"card": 1, "x": 0.5}, None)
    assert seen.state.direct == {ALICE: ROOM}  # the peer's direct room, not our own id


def test_a_peer_redaction_is_a_recall_in_old_and_new_room_versions() -> None:
    seen = Seen()
    seen.apply(create(), text(1), text(2))
    old_style = {"type": "m.room.redaction", "event_id": "$r1", "sender": ALICE, "redacts": "$t1"}
    new_style = {"type": "m.room.redaction", "event_id": "$r2", "sender": ALICE,
                 "content": {"redacts": "$t2"}}
    unknown = {"type": "m.room.redaction", "event_id": "$r3", "sender": ALICE,
               "content": {"redacts": "$never-seen"}}
    assert seen.apply(old_style, new_style, unknown) == [
        MessageRecalled(ROOM, "$t1", "alice", False), MessageRecalled(ROOM, "$t2", "alice", False)]


def test_membership_changes_in_a_group() -> None:
    seen = Seen()
    got = seen.apply(
        create(),
        member(ALICE, "join", ALICE, 1),  # the creator: no event (no earlier membership)
        member(BOB, "invite", ALICE, 2),
        member(BOB, "join", BOB, 3),  # accepting the invite: already "added"
        member(CAROL, "invite", ALICE, 4),
        member(CAROL, "leave", ALICE, 5),  # kicked
        member(BOB, "leave", BOB, 6),  # left
    )
    assert got == [
        MembershipChanged(ROOM, "bob", "added", "alice"),
        MembershipChanged(ROOM, "carol", "added", "alice"),
        MembershipChanged(ROOM, "carol", "removed", "alice"),
        MembershipChanged(ROOM, "bob", "left", "bob"),
    ]


def test_power_levels_become_roles_and_mutes() -> None:
    seen = Seen()
    seen.apply(create(), power({ALICE: 100}, 1))  # the first power levels: no change to report
    got = seen.apply(
        power({ALICE: 100, BOB: 50}, 2),  # bob made admin
        power({ALICE: 100, BOB: 50, CAROL: -1}, 3),  # carol muted (not a role change)
        power({ALICE: 100, BOB: 50, CAROL: -1}, 4, events_default=50),  # mute all
        power({ALICE: 100, BOB: 50}, 5),  # carol unmuted, mute all lifted
    )
    assert got == [
        MembershipChanged(ROOM, "bob", "role", "alice", role="admin"),
        MuteChanged(ROOM, "carol", True, "alice"),
        MuteChanged(ROOM, None, True, "alice"),
        MuteChanged(ROOM, None, False, "alice"),
        MuteChanged(ROOM, "carol", False, "alice"),
    ]


def test_direct_rooms_report_no_group_changes() -> None:
    seen = Seen()
    got = seen.apply(create("direct"), member(BOB, "invite", ALICE, 1), power({ALICE: 100}, 2),
                     power({ALICE: 100, BOB: 100}, 3))
    assert got == []


def test_receipts_move_forward_only_and_skip_our_own() -> None:
    seen = Seen()
    seen.apply(create(), text(1), text(2))
    receipts = seen.timeline.receipts
    receipts(ROOM, seen.room, {"$t2": {"m.read": {ALICE: {"ts": 1}, BOB: {"ts": 1}}}},
             offline=True)
    receipts(ROOM, seen.room, {"$t1": {"m.read": {ALICE: {"ts": 2}}}}, offline=False)
    receipts(ROOM, seen.room, {"$unknown": {"m.read": {CAROL: {}}}}, offline=False)
    assert seen.events[-1:] == [ReceiptUpdated(ROOM, "alice", 2, True)]
    assert sum(isinstance(e, ReceiptUpdated) for e in seen.events) == 1


def test_group_info_from_room_state_with_creators_outranking() -> None:
    state = [
        create(version="12", additional_creators=[CAROL]),
        {"type": "m.room.name", "sender": ALICE, "state_key": "", "content": {"name": "team"}},
        power({BOB: 50, "@dave:hs.test": -1}, 1, events_default=50),
        member(ALICE, "join", ALICE, 1), member(BOB, "join", BOB, 2),
        member(CAROL, "invite", ALICE, 3), member("@dave:hs.test", "join", "@dave:hs.test", 4),
        member("@erin:hs.test", "leave", "@erin:hs.test", 5),
    ]
    info = translate.group_info(ROOM, state, local)
    assert info.name == "team"
    assert dict(info.members) == {"alice": "owner", "bob": "admin", "carol": "owner",
                                  "dave": "member"}
    assert info.muted == {"dave"}
    assert info.muted_all


def test_history_pages_number_from_the_room_start() -> None:
    events = [create(), member(ALICE, "join", ALICE, 1), *(text(n) for n in range(1, 6))]
    events[3]["unsigned"] = {"redacted_because": {"type": "m.room.redaction"}}
    newest = translate.history_page(ROOM, events, before=None, after=None, limit=2, local=local)
    assert [m.seq for m in newest.messages] == [4, 5]
    assert newest.has_more
    older = translate.history_page(ROOM, events, before=4, after=None, limit=5, local=local)
    assert [m.seq for m in older.messages] == [1, 2, 3]
    assert not older.has_more
    assert [m.recalled for m in older.messages] == [False, True, False]
    later = translate.history_page(ROOM, events, before=None, after=1, limit=3, local=local)
    assert [m.seq for m in later.messages] == [2, 3, 4]
    assert later.has_more
    assert all(m.group == ROOM for m in later.messages)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (403, {"errcode": "M_FORBIDDEN", "error": "no"}, Forbidden),
        (401, {"errcode": "M_UNKNOWN_TOKEN"}, Unauthorized),
        (404, {}, NotFound),
        (400, {"errcode": "M_UNSUPPORTED_ROOM_VERSION"}, Unsupported),
        (400, {"errcode": "M_ROOM_IN_USE"}, BadRequest),
        (500, {"errcode": "M_UNKNOWN"}, IMError),
    ],
)
def test_matrix_errors_become_contract_errors(status: int, body: dict, cls: type) -> None:
    err = translate.map_error(status, body, "PUT /rooms/x/send")
    assert type(err) is cls
    assert str(err).startswith("PUT /rooms/x/send: ")


def test_rate_limits_say_when_to_retry() -> None:
    err = translate.map_error(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}, "send")
    assert isinstance(err, RateLimited)
    assert err.retry_after == 1.5


def test_message_content_checks_size_and_json_before_any_request() -> None:
    content = translate.message_content("hi", None, "cid-1")
    assert content == {"msgtype": "m.text", "body": "hi", translate.CLIENT_ID_KEY: "cid-1"}
    custom = translate.message_content("", {"x": 0.5}, "cid-2")
    assert custom["msgtype"] == "im_harness.custom"
    assert json.loads(custom[translate.CUSTOM_KEY]) == {"x": 0.5}
    assert custom["body"] == custom[translate.CUSTOM_KEY]
    with pytest.raises(TooLarge, match="over the 64000-byte limit"):
        translate.message_content("x" * (translate.MAX_BODY_BYTES + 1), None, "cid-3")
    with pytest.raises(BadRequest, match="not JSON"):
        translate.message_content("", {"x": float("nan")}, "cid-4")
