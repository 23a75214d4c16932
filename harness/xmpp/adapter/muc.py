"""Groups as XEP-0045 multi-user chat rooms: the stanzas, without I/O.

A group is a members-only, moderated, non-anonymous, persistent room on the MUC service. The
contract's group roles are the room's affiliations (owner = owner, admin = admin, member =
member); removing a member sets its affiliation to none, which in a members-only room also
ends its visit. The room is moderated, so voice (XEP-0045 §8.3/§8.4) is a moderator's to
give and take: the contract's mute is the occupant's role `visitor`, released by `participant`
(mute-all has no XEP-0045 counterpart, see translate.ABSENT_BECAUSE). Nothing here touches a
socket.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.xmpp.adapter.translate import (
    NS_CLIENT,
    NS_CUSTOM,
    NS_DATA,
    NS_MUC_USER,
    NS_SID,
    bare,
    error_of,
)

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_ADMIN = f"{NS_MUC}#admin"
NS_MUC_OWNER = f"{NS_MUC}#owner"
NS_REGISTER = "jabber:iq:register"
NS_ROOMCONFIG = f"{NS_MUC}#roomconfig"

GROUP_ROLES = ("owner", "admin", "member")  # the contract's roles, each an affiliation
# The roles of voice (XEP-0045 §5.1): a visitor may not speak in a moderated room.
MUTED, VOICED = "visitor", "participant"
# XEP-0045 status codes of a presence (§15.6): 110 this presence is yours, 201 room created,
# 307 kicked, 321 removed by an affiliation change, 301 banned.
SELF, CREATED, KICKED, AFFILIATION_GONE, BANNED = 110, 201, 307, 321, 301


def group_conversation(group_id: str) -> str:
    return f"group:{group_id}"


def group_of(conversation: str) -> str | None:
    return conversation[len("group:"):] if conversation.startswith("group:") else None


def group_message_id(group_id: str, stanza_id: str) -> str:
    """A group message's id: the room archive's XEP-0359 stanza-id, the same for everyone."""
    return f"{group_id}/{stanza_id}"


@dataclass(frozen=True)
class Occupancy:
    """One presence from a room: who (nick, real JID), with what affiliation and role."""

    room: str  # bare room JID
    nick: str
    available: bool
    affiliation: str
    role: str
    jid: str | None = None  # the occupant's bare JID (the room is non-anonymous)
    actor: str | None = None  # who changed it (nick or JID), when the room says
    codes: frozenset[int] = frozenset()
    error: tuple[str, str] | None = None

    @property
    def own(self) -> bool:
        return SELF in self.codes


def parse_presence(el: ET.Element) -> Occupancy | None:
    """The occupancy a `<presence>` from a room describes; None if it is not a room's."""
    sender = el.get("from") or ""
    if "/" not in sender:
        return None
    room, nick = sender.split("/", 1)
    if el.get("type") == "error":  # a refused entry: Prosody's error carries no <x>
        return Occupancy(room, nick, False, "none", "none", error=error_of(el))
    x = el.find(f"{{{NS_MUC_USER}}}x")
    if x is None:
        return None
    item = x.find(f"{{{NS_MUC_USER}}}item")
    attrs = item.attrib if item is not None else {}
    actor_el = item.find(f"{{{NS_MUC_USER}}}actor") if item is not None else None
    actor = None
    if actor_el is not None:
        actor = actor_el.get("nick") or (bare(actor_el.get("jid") or "") or None)
    codes = frozenset(int(s.get("code", "0")) for s in x.findall(f"{{{NS_MUC_USER}}}status"))
    jid = attrs.get("jid")
    return Occupancy(
        room=room, nick=nick, available=el.get("type") != "unavailable",
        affiliation=attrs.get("affiliation", "none"), role=attrs.get("role", "none"),
        jid=bare(jid) if jid else None, actor=actor, codes=codes,
    )


def join_presence(room: str, nick: str) -> ET.Element:
    """Enter a room; no MUC history (the room's archive is read instead, XEP-0313)."""
    el = ET.Element(f"{{{NS_CLIENT}}}presence", {"to": f"{room}/{nick}"})
    x = ET.SubElement(el, f"{{{NS_MUC}}}x")
    ET.SubElement(x, f"{{{NS_MUC}}}history", {"maxstanzas": "0"})
    return el


def leave_presence(room: str, nick: str) -> ET.Element:
    return ET.Element(f"{{{NS_CLIENT}}}presence", {"to": f"{room}/{nick}",
                                                    "type": "unavailable"})


def admin_item(**attrs: str) -> ET.Element:
    """A muc#admin `<query>` with one `<item>` (Prosody reads only the first item)."""
    query = ET.Element(f"{{{NS_MUC_ADMIN}}}query")
    ET.SubElement(query, f"{{{NS_MUC_ADMIN}}}item", attrs)
    return query


def voice_item(nick: str, *, muted: bool) -> ET.Element:
    """Revoke (§8.4) or grant (§8.3) an occupant's voice: its role, by its room nick."""
    return admin_item(nick=nick, role=MUTED if muted else VOICED)


def affiliations_of(query: ET.Element) -> list[tuple[str, str]]:
    """(bare JID, affiliation) of each item of a muc#admin list answer."""
    found = query.find(f"{{{NS_MUC_ADMIN}}}query")
    items = found.findall(f"{{{NS_MUC_ADMIN}}}item") if found is not None else []
    return [(bare(i.get("jid") or ""), i.get("affiliation") or "none") for i in items]


def config_form(name: str) -> ET.Element:
    """The owner's room configuration (XEP-0045 §10.2): members-only, moderated,
    non-anonymous (members read the member list and real JIDs), persistent, only admins
    invite, archived (XEP-0313)."""
    query = ET.Element(f"{{{NS_MUC_OWNER}}}query")
    form = ET.SubElement(query, f"{{{NS_DATA}}}x", {"type": "submit"})
    for var, value in (
        ("FORM_TYPE", NS_ROOMCONFIG), ("muc#roomconfig_roomname", name),
        ("muc#roomconfig_membersonly", "1"), ("muc#roomconfig_moderatedroom", "1"),
        ("muc#roomconfig_whois", "anyone"), ("muc#roomconfig_persistentroom", "1"),
        ("muc#roomconfig_publicroom", "0"), ("muc#roomconfig_allowinvites", "0"),
        ("muc#roomconfig_enablearchiving", "1"),
    ):
        field = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": var})
        ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    return query


def room_name_of(disco: ET.Element) -> str | None:
    """The room's name from its disco#info answer (its identity)."""
    for query in disco:
        for identity in query:
            if identity.tag.endswith("}identity") and identity.get("category") == "conference":
                return identity.get("name")
    return None


def invite(room: str, to: str) -> ET.Element:
    """A mediated invitation: the room relays it, and it is archived by the invitee's server."""
    el = ET.Element(f"{{{NS_CLIENT}}}message", {"to": room})
    x = ET.SubElement(el, f"{{{NS_MUC_USER}}}x")
    ET.SubElement(x, f"{{{NS_MUC_USER}}}invite", {"to": to})
    return el


def groupchat(room: str, body: str, custom: Mapping[str, Any] | None,
              origin_id: str) -> ET.Element:
    """The `<message type='groupchat'>` of a group send."""
    el = ET.Element(f"{{{NS_CLIENT}}}message", {"to": room, "type": "groupchat",
                                                 "id": origin_id})
    ET.SubElement(el, f"{{{NS_CLIENT}}}body").text = body
    ET.SubElement(el, f"{{{NS_SID}}}origin-id", {"id": origin_id})
    if custom is not None:
        ET.SubElement(el, f"{{{NS_CUSTOM}}}custom").text = json.dumps(dict(custom))
    return el


def unregister() -> ET.Element:
    """Cancel one's registration with a room (XEP-0077 `<remove/>` to the room): a member's
    affiliation becomes none (Prosody's muc register.lib keeps an owner's or admin's)."""
    query = ET.Element(f"{{{NS_REGISTER}}}query")
    ET.SubElement(query, f"{{{NS_REGISTER}}}remove")
    return query
