"""Matrix events and answers -> contract objects, without a homeserver: raw events in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.adapters.matrix import translate
from harness.adapters.matrix.translate import Room, Timeline, UserState
from harness.contract import (
    ClientHides,
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


def received(events: list[Event]) -> list[tuple[str, int, bool]]:
    return [(e.message.message_id, e.message.seq, e.offline) for e in events
            if isinstance(e, MessageReceived)]


def test_a_repeated_event_reaches_the_stream_again_with_its_first_seq() -> None:
    seen = Seen()
    # The server lists $t1 twice in one timeline: two MessageReceived, one number.
    got = seen.apply(create(), text(1), text(2), text(1), offline=True)
    assert received(got) == [("$t1", 1, True), ("$t2", 2, True), ("$t1", 1, True)]
    assert seen.room.messages == ["$t1", "$t2"]  # the room's order is not changed by a repeat
    # Again in a later batch: passed on with this delivery's offline mark, still seq 1.
    assert received(seen.apply(text(1))) == [("$t1", 1, False)]


def test_seq_follows_the_servers_order_not_the_arrival_count() -> None:
    seen = Seen()
    seen.apply(create(), text(1), text(2), text(3))
    # A replayed since token brings $t2 and $t3 again before the new $t4: arrival order would
    # make $t4 the sixth message; the server's order makes it the fourth.
    got = seen.apply(text(2), text(3), text(4))
    assert received(got) == [("$t2", 2, False), ("$t3", 3, False), ("$t4", 4, False)]
    # The order is the server's listing, not the events' timestamps.
    other = Seen()
    late_first = text(9)
    late_first["origin_server_ts"] = 1  # older clock, listed first by the server
    assert received(other.apply(create(), text(8), late_first)) == [
        ("$t8", 1, False), ("$t9", 2, False)]


def test_a_repeated_copy_is_translated_as_delivered() -> None:
    seen = Seen()
    seen.apply(create(), text(1), text(2))
    redacted = text(1, unsigned={"redacted_because": {"type": "m.room.redaction"}})
    redacted["content"] = {}
    (again,) = seen.apply(redacted)
    assert isinstance(again, MessageReceived)
    assert (again.message.message_id, again.message.seq, again.message.recalled,
            again.message.body) == ("$t1", 1, True, "")


def test_own_repeated_messages_stay_out_and_keep_the_numbering() -> None:
    seen = Seen(me=ALICE)
    assert seen.apply(create(), text(1), text(1), text(2, sender=BOB)) == [
        MessageReceived(translate.message(ROOM, "group", text(2, sender=BOB), 2, local), False)]


def test_repeated_state_events_bring_their_change_again_without_reapplying_it() -> None:
    seen = Seen()
    invite, join = member(CAROL, "invite", ALICE, 1), member(CAROL, "join", CAROL, 2)
    kick = member(CAROL, "leave", ALICE, 3)
    seen.apply(create(), text(1), invite, join, kick)
    redaction = {"type": "m.room.redaction", "event_id": "$r1", "sender": ALICE,
                 "content": {"redacts": "$t1"}}
    assert seen.apply(redaction) == [MessageRecalled(ROOM, "$t1", "alice", False)]
    # The server sends the invite and the redaction again (a replayed sync token).
    assert seen.apply(invite, redaction, offline=True) == [
        MembershipChanged(ROOM, "carol", "added", "alice"),
        MessageRecalled(ROOM, "$t1", "alice", True),
    ]
    assert seen.room.members[CAROL] == "leave"  # the old invite does not rewind the state


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


def test_receipts_are_passed_on_as_sent_even_moving_back() -> None:
    seen = Seen()
    seen.apply(create(), member(ALICE, "join", ALICE, 1), text(1), text(2))
    receipts = seen.timeline.receipts
    receipts(ROOM, seen.room, {"$t2": {"m.read": {ALICE: {"ts": 1}, BOB: {"ts": 1}}}},
             offline=True)
    receipts(ROOM, seen.room, {"$t1": {"m.read": {ALICE: {"ts": 2}}}}, offline=False)  # back
    receipts(ROOM, seen.room, {"$t1": {"m.read": {ALICE: {"ts": 3}}}}, offline=False)  # again
    receipts(ROOM, seen.room, {"$unknown": {"m.read": {CAROL: {}}}}, offline=False)
    receipts(ROOM, seen.room, {"$m1": {"m.read": {CAROL: {}}}}, offline=False)  # before msg 1
    assert [e for e in seen.events if isinstance(e, ReceiptUpdated)] == [
        ReceiptUpdated(ROOM, "alice", 2, True),  # bob's own receipt is not a peer's
        ReceiptUpdated(ROOM, "alice", 1, False),  # the lower seq, as the server sent it
        ReceiptUpdated(ROOM, "alice", 1, False),
    ]


def test_real_sdks_hiding_repeats_is_declared_not_done() -> None:
    assert translate.CLIENT_HIDES == {ClientHides.DUPLICATE_EVENTS,
                                      ClientHides.RECEIPTS_BACKWARDS}


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


def test_history_lists_a_repeated_event_twice_with_its_first_seq() -> None:
    events = [create(), text(1), text(2), text(1), text(3)]
    page = translate.history_page(ROOM, events, before=None, after=None, limit=10, local=local)
    assert [(m.message_id, m.seq) for m in page.messages] == [
        ("$t1", 1), ("$t2", 2), ("$t1", 1), ("$t3", 3)]


def test_a_backlog_is_cut_where_the_sync_timeline_begins() -> None:
    ids = lambda events: [e["event_id"] for e in events]  # noqa: E731
    timeline = [text(3), text(4)]
    # Synapse's prev_batch of a newly joined room is the sync's end: the read runs into it.
    overlapping = [create(), text(1), text(2), text(3), text(4)]
    assert ids(translate.before_timeline(overlapping, timeline)) == ["$create", "$t1", "$t2"]
    # A prev_batch that is the timeline's start: nothing to cut.
    assert ids(translate.before_timeline([create(), text(1)], timeline)) == ["$create", "$t1"]
    # A repeat the server made inside the backlog stays; the cut is by position.
    repeated = [create(), text(3), text(1), text(3), text(4)]
    assert ids(translate.before_timeline(repeated, timeline)) == ["$create", "$t3", "$t1"]
    assert ids(translate.before_timeline(overlapping, [])) == ids(overlapping)


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
    # Synapse truncates to whole ms: 0 is "under 1 ms"; no field at all is no wait named.
    under = translate.map_error(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 0}, "send")
    assert isinstance(under, RateLimited)
    assert under.retry_after == 0.001
    silent = translate.map_error(429, {"errcode": "M_LIMIT_EXCEEDED"}, "send")
    assert isinstance(silent, RateLimited)
    assert silent.retry_after == 0.0


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
