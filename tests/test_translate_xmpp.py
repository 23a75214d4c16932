"""The xmpp adapter's stanza translation, without a server (harness.xmpp.adapter.translate)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from harness.contract import Capability
from harness.errors import BadRequest, Forbidden, IMError, NotFound, RateLimited, TooLarge
from harness.xmpp.adapter import translate

OWN = "bob@localhost"


def _live(body: str = "hi", *, sender: str = "alice@localhost/r1", extra: str = "") -> str:
    return (f'<message xmlns="jabber:client" type="chat" from="{sender}" to="{OWN}/r2" id="o1">'
            f'<body>{body}</body><origin-id xmlns="urn:xmpp:sid:0" id="o1"/>'
            f'<stanza-id xmlns="urn:xmpp:sid:0" by="mallory@localhost" id="fake"/>'
            f'<stanza-id xmlns="urn:xmpp:sid:0" by="{OWN}" id="arch-7"/>{extra}</message>')


def test_a_live_message_is_read_with_the_stamps_of_our_own_archive_only() -> None:
    item = translate.parse_message(ET.fromstring(_live()), OWN)
    assert (item.sender, item.recipient, item.origin_id, item.body) == (
        "alice@localhost", OWN, "o1", "hi")
    assert item.stanza_id == "arch-7", "a stanza-id by someone else is not our archive's id"
    assert item.error is None


def test_a_mam_result_carries_its_archive_id_and_time() -> None:
    el = ET.fromstring(
        '<message xmlns="jabber:client" to="bob@localhost/r2">'
        '<result xmlns="urn:xmpp:mam:2" queryid="q1" id="arch-9">'
        '<forwarded xmlns="urn:xmpp:forward:0">'
        '<delay xmlns="urn:xmpp:delay" stamp="2026-12-01T22:32:34.567Z"/>'
        f'{_live("from the archive")}</forwarded></result></message>')
    parsed = translate.parse_mam_result(el, OWN)
    assert parsed is not None
    queryid, archive_id, item = parsed
    assert (queryid, archive_id, item.stanza_id, item.body) == (
        "q1", "arch-9", "arch-9", "from the archive")
    assert item.stamp == pytest.approx(1796164354.567)
    assert translate.parse_mam_result(ET.fromstring(_live()), OWN) is None


def test_one_pair_one_conversation_and_message_ids_name_the_sender() -> None:
    a, b = "alice@localhost/x", "bob@localhost"
    assert translate.pair_conversation(a, b) == translate.pair_conversation(b, a)
    assert translate.pair_members(translate.pair_conversation(a, b)) == [
        "alice@localhost", "bob@localhost"]
    # The same client id from two senders is two messages.
    assert translate.message_id(a, "c1") != translate.message_id(b, "c1")


def test_a_custom_payload_travels_beside_the_body() -> None:
    el = translate.chat_message("bob@localhost", '{"k":1}', {"k": 1}, "o2")
    item = translate.parse_message(ET.fromstring(ET.tostring(el)), OWN)
    assert (item.body, item.custom, item.origin_id) == ('{"k":1}', {"k": 1}, "o2")
    message = translate.as_message("chat:x", item, 3, 1.0)
    assert (message.kind, message.seq, message.custom) == ("custom", 3, {"k": 1})


def test_a_repeated_message_keeps_its_first_seq() -> None:
    """The numbering does not hide a repeat: the same id comes back with the same seq."""
    conv = translate.Conversation()
    assert [conv.place("m1"), conv.place("m2"), conv.place("m1"), conv.place("m3")] == [
        1, 2, 1, 3]


@pytest.mark.parametrize(("condition", "error"), [
    ("forbidden", Forbidden), ("service-unavailable", NotFound), ("item-not-found", NotFound),
    ("policy-violation", TooLarge), ("resource-constraint", RateLimited),
    ("bad-request", BadRequest), ("undefined-condition", IMError),
])
def test_stanza_errors_map_onto_the_contract(condition: str, error: type[IMError]) -> None:
    bounce = ET.fromstring(
        '<message xmlns="jabber:client" type="error" id="o3" from="nobody@localhost">'
        f'<error type="cancel"><{condition} xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">why</text></error></message>')
    item = translate.parse_message(bounce, OWN)
    assert item.error == (condition, "why")
    mapped = translate.map_error(*item.error, "send")
    assert type(mapped) is error
    assert condition in str(mapped)


def test_history_pages_back_and_forward() -> None:
    item = translate.parse_message(ET.fromstring(_live()), OWN)
    messages = [translate.as_message("c", item, seq, 0.0) for seq in range(1, 8)]
    back = translate.history_page("c", messages, before=None, after=None, limit=3)
    assert ([m.seq for m in back.messages], back.has_more) == ([5, 6, 7], True)
    back = translate.history_page("c", messages, before=2, after=None, limit=3)
    assert ([m.seq for m in back.messages], back.has_more) == ([1], False)
    fwd = translate.history_page("c", messages, before=None, after=4, limit=3)
    assert ([m.seq for m in fwd.messages], fwd.has_more) == ([5, 6, 7], False)


def test_what_prosody_lacks_is_absent_with_the_xep_named() -> None:
    for capability, why in translate.ABSENT_BECAUSE.items():
        assert capability not in translate.CAPABILITIES
        assert why
    assert "XEP-0424" in translate.ABSENT_BECAUSE[Capability.RECALL]
    assert "XEP-0333" in translate.ABSENT_BECAUSE[Capability.RECEIPTS]
