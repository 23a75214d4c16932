"""Groups as XEP-0045 rooms, the stanzas without a server (harness.xmpp.adapter.muc)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.contract import Capability
from harness.errors import Forbidden
from harness.xmpp.adapter import muc, translate

OWN = "bob@localhost"
ROOM = "g-1@conference.localhost"
MUC_USER = "http://jabber.org/protocol/muc#user"


def _presence(nick: str, item: str, *codes: int, kind: str = "") -> ET.Element:
    status = "".join(f'<status code="{c}"/>' for c in codes)
    type_attr = f' type="{kind}"' if kind else ""
    return ET.fromstring(
        f'<presence xmlns="jabber:client" from="{ROOM}/{nick}" to="{OWN}/r"{type_attr}>'
        f'<x xmlns="{MUC_USER}">{item}{status}</x></presence>')


def test_a_removal_names_the_affiliation_change_and_its_actor() -> None:
    occ = muc.parse_presence(_presence(
        "bob", '<item affiliation="none" role="none" jid="bob@localhost/r">'
        '<actor nick="alice"/></item>', 110, 321, kind="unavailable"))
    assert occ is not None
    assert (occ.room, occ.nick, occ.available, occ.affiliation, occ.jid, occ.actor) == (
        ROOM, "bob", False, "none", OWN, "alice")
    assert occ.own
    assert muc.AFFILIATION_GONE in occ.codes


def test_a_refused_entry_is_an_error_even_without_the_muc_element() -> None:
    el = ET.fromstring(
        f'<presence xmlns="jabber:client" from="{ROOM}/dave" type="error"><error type="auth">'
        '<registration-required xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error>'
        '</presence>')
    occ = muc.parse_presence(el)
    assert occ is not None
    assert occ.error == ("registration-required", "")
    assert isinstance(translate.map_error(*occ.error, "entering"), Forbidden)


def test_a_presence_that_is_not_a_rooms_is_ignored() -> None:
    el = ET.fromstring('<presence xmlns="jabber:client" from="alice@localhost/r"/>')
    assert muc.parse_presence(el) is None


def test_only_an_invitation_the_room_relayed_is_one() -> None:
    relayed = ET.fromstring(
        f'<message xmlns="jabber:client" from="{ROOM}" to="{OWN}"><body>join</body>'
        f'<x xmlns="{MUC_USER}"><invite from="alice@localhost/r"/></x></message>')
    assert translate.parse_message(relayed, OWN).invite == (ROOM, "alice@localhost")
    # Our own outgoing invitation, as our archive holds it: not an invitation to us.
    ours = ET.fromstring(
        f'<message xmlns="jabber:client" from="{OWN}/r" to="{ROOM}">'
        f'<x xmlns="{MUC_USER}"><invite to="carol@localhost"/></x></message>')
    assert translate.parse_message(ours, OWN).invite is None


def test_a_groupchat_message_is_numbered_by_the_rooms_archive_id() -> None:
    el = ET.fromstring(
        f'<message xmlns="jabber:client" type="groupchat" from="{ROOM}/alice" to="{OWN}/r">'
        '<body>hi</body><origin-id xmlns="urn:xmpp:sid:0" id="o1"/>'
        f'<stanza-id xmlns="urn:xmpp:sid:0" by="{OWN}" id="personal"/>'
        f'<stanza-id xmlns="urn:xmpp:sid:0" by="{ROOM}" id="room-7"/></message>')
    item = translate.parse_message(el, OWN)
    assert (item.sender, item.nick, item.origin_id, item.stanza_id) == (
        ROOM, "alice", "o1", "room-7")
    assert muc.group_message_id("g-1", "room-7") == "g-1/room-7"


def test_the_room_is_configured_members_only_and_moderated() -> None:
    form = muc.config_form("team")
    values = {f.get("var"): f.findtext("{jabber:x:data}value")
              for f in form.iter("{jabber:x:data}field")}
    assert values["muc#roomconfig_membersonly"] == "1"
    assert values["muc#roomconfig_moderatedroom"] == "1"
    assert values["muc#roomconfig_whois"] == "anyone"
    assert values["muc#roomconfig_roomname"] == "team"


def test_mute_is_offered_and_mute_all_is_absent_naming_xep_0045() -> None:
    assert {Capability.GROUPS, Capability.ROLES, Capability.MUTE} <= translate.CAPABILITIES
    assert Capability.MUTE_ALL not in translate.CAPABILITIES
    assert Capability.MUTE not in translate.ABSENT_BECAUSE
    assert "XEP-0045" in translate.ABSENT_BECAUSE[Capability.MUTE_ALL]
    assert "has voice again" in translate.VOICE_LASTS_WHILE_PRESENT


def test_voice_is_the_occupants_role_by_its_nick() -> None:
    """§8.4 revoke / §8.3 grant: a role change names the nick (Prosody needs it to find the
    occupant), never an affiliation (that would change membership instead)."""
    for muted, role in ((True, "visitor"), (False, "participant")):
        item = muc.voice_item("bob", muted=muted).find(f"{{{muc.NS_MUC_ADMIN}}}item")
        assert item is not None
        assert item.attrib == {"nick": "bob", "role": role}


def test_a_role_change_presence_carries_the_role_and_its_actor() -> None:
    occ = muc.parse_presence(_presence(
        "bob", '<item affiliation="member" role="visitor" jid="bob@localhost/r">'
        '<actor nick="alice"/></item>', 110))
    assert occ is not None
    assert (occ.role, occ.actor, occ.own, occ.jid) == ("visitor", "alice", True, OWN)


def test_a_mam_start_is_an_xep_0082_time() -> None:
    assert translate.format_stamp(0.0) == "1970-01-01T00:00:00Z"
    assert translate.format_stamp(1.25) == "1970-01-01T00:00:01.250000Z"
    assert translate.parse_stamp(translate.format_stamp(1796175277.5)) == 1796175277.5
