"""The reference wire format -> contract objects, without a service: raw frames in, objects out."""

from __future__ import annotations

import json

import pytest

from harness.adapters.reference import translate
from harness.contract import (
    Ack,
    Capability,
    GroupInfo,
    MembershipChanged,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Target,
    TierLimits,
)
from harness.errors import FeatureDisabled, Forbidden, IMError, RateLimited

MESSAGE = {
    "message_id": "m17", "conversation": "d:alice:bob", "seq": 5, "sender": "alice",
    "client_id": "c-123", "kind": "text", "body": "hi", "custom": None,
    "ts": 1732160000.123, "group": None, "recalled": False,
}


def test_a_message_event_becomes_message_received() -> None:
    frame = {"ev": "message", "pos": 12, "offline": True, "message": MESSAGE}
    event = translate.event(frame)
    assert isinstance(event, MessageReceived)
    assert event.offline is True
    m = event.message
    assert (m.message_id, m.conversation, m.seq, m.sender, m.client_id) == (
        "m17", "d:alice:bob", 5, "alice", "c-123")
    assert (m.kind, m.body, m.server_ts, m.group, m.recalled, m.custom) == (
        "text", "hi", 1732160000.123, None, False, None)


def test_a_group_custom_message_keeps_its_payload_and_group() -> None:
    raw = {**MESSAGE, "conversation": "g:g3", "group": "g3", "kind": "custom", "body": "",
           "custom": {"type": "card", "n": 2}, "client_id": None, "ts": None}
    m = translate.message(raw)
    assert (m.kind, m.group, m.custom, m.client_id, m.server_ts) == (
        "custom", "g3", {"type": "card", "n": 2}, "", 0.0)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"ev": "recall", "pos": 3, "offline": False, "conversation": "d:alice:bob",
          "message_id": "m17", "by": "alice"},
         MessageRecalled("d:alice:bob", "m17", "alice", False)),
        ({"ev": "receipt", "pos": 4, "offline": True, "conversation": "d:alice:bob",
          "reader": "bob", "seq": "5"},
         ReceiptUpdated("d:alice:bob", "bob", 5, True)),
        ({"ev": "membership", "pos": 5, "group": "g3", "user": "dave", "change": "role",
          "by": "alice", "role": "admin"},
         MembershipChanged("g3", "dave", "role", "alice", "admin")),
        ({"ev": "membership", "pos": 6, "group": "g3", "user": "dave", "change": "left",
          "by": "dave"},
         MembershipChanged("g3", "dave", "left", "dave", None)),
        ({"ev": "mute", "pos": 7, "group": "g3", "user": None, "muted": True, "by": "alice"},
         MuteChanged("g3", None, True, "alice")),
        ({"ev": "mute", "pos": 8, "group": "g3", "user": "bob", "muted": False, "by": "alice"},
         MuteChanged("g3", "bob", False, "alice")),
    ],
)
def test_each_event_frame_becomes_its_contract_event(frame: dict, expected: object) -> None:
    assert translate.event(frame) == expected


def test_internal_and_unknown_frames_are_not_events() -> None:
    assert translate.event({"ev": "caught_up", "pos": 9}) is None
    assert translate.event({"ev": "typing", "user": "bob"}) is None


def test_a_malformed_event_raises_for_the_client_to_log() -> None:
    with pytest.raises(KeyError):
        translate.event({"ev": "recall", "conversation": "d:a:b"})
    with pytest.raises(ValueError, match="invalid literal"):
        translate.event({"ev": "receipt", "conversation": "c", "reader": "r", "seq": "x"})


def test_capabilities_drop_unknown_features_admin_and_v2_only_on_v1() -> None:
    features = ["chat", "groups", "recall", "receipts", "group_receipts", "tier_admin", "wormhole"]
    v2 = translate.capabilities_from(features, "v2")
    assert v2 == {Capability.CHAT, Capability.GROUPS, Capability.RECALL, Capability.RECEIPTS,
                  Capability.GROUP_RECEIPTS}
    assert translate.capabilities_from(features, "v1") == {Capability.CHAT, Capability.GROUPS}


def test_limits_keep_only_the_contract_fields() -> None:
    raw = {"max_connections": 50, "send_rate_per_user": 5.0, "webhook_timeout_s": 2}
    assert translate.limits_from(raw) == TierLimits(max_connections=50, send_rate_per_user=5.0)
    assert translate.limits_from(None) == TierLimits()


def test_an_accepted_send_answer_becomes_an_ack() -> None:
    answer = {"re": 2, "ok": True, "message_id": "m17", "conversation": "d:alice:bob",
              "seq": 5, "ts": 1732160000.123, "duplicate": True}
    assert translate.ack(answer, "c-123") == Ack("c-123", "m17", "d:alice:bob", 5,
                                                 1732160000.123, duplicate=True)


def test_refusals_become_typed_errors_with_retry_after() -> None:
    limited = translate.error({"re": 2, "ok": False, "error": {
        "code": "rate_limited", "message": "slow down", "retry_after": 1.5}}, "send")
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 1.5
    assert isinstance(translate.error(
        {"ok": False, "error": {"code": "forbidden", "message": "muted"}}, "send"), Forbidden)
    assert isinstance(translate.error(
        {"ok": False, "error": {"code": "feature_disabled"}}, "recall"), FeatureDisabled)
    bare = translate.error({"ok": False}, "history")
    assert isinstance(bare, IMError)
    assert "history failed" in str(bare)


def test_group_and_history_answers() -> None:
    raw = {"group_id": "g3", "name": "team", "members": {"alice": "owner", "bob": "member"},
           "muted_all": True, "muted": ["bob"]}
    assert translate.group(raw) == GroupInfo("g3", "team", {"alice": "owner", "bob": "member"},
                                             muted_all=True, muted=frozenset({"bob"}))
    recalled = {**MESSAGE, "message_id": "m18", "seq": 6, "body": "", "recalled": True}
    page = translate.history_page({"re": 5, "ok": True, "conversation": "d:alice:bob",
                                   "messages": [MESSAGE, recalled], "has_more": True}, "x")
    assert page.conversation == "d:alice:bob"
    assert [(m.seq, m.recalled) for m in page.messages] == [(5, False), (6, True)]
    assert page.has_more
    empty = translate.history_page({"ok": True}, "d:alice:bob")
    assert (empty.conversation, empty.messages, empty.has_more) == ("d:alice:bob", (), False)


def test_send_frames_as_the_protocol_writes_them() -> None:
    text = translate.send_frame(Target.to_user("bob"), "hi", None, "c-1")
    assert text == {"op": "send", "to": {"user": "bob"}, "kind": "text", "body": "hi",
                    "custom": None, "client_id": "c-1"}
    custom = translate.send_frame(Target.to_group("g3"), "", {"n": 1}, "c-2")
    assert (custom["to"], custom["kind"], custom["custom"]) == ({"group": "g3"}, "custom",
                                                                 {"n": 1})
    assert translate.encode({"id": 1, **text}) == json.dumps(
        {"id": 1, **text}, separators=(",", ":"))
