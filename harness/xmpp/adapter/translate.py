"""XMPP stanzas <-> the contract, without I/O.

Parses the `<message>` elements a client receives (live, or forwarded in a MAM result) into
what they mean, builds the elements a client sends, maps stanza errors onto the contract's
errors, and numbers a conversation's messages. Nothing here touches a socket.
"""

from __future__ import annotations

import calendar
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.contract import Capability, ClientHides, HistoryPage, Message, ServerRule
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

NS_CLIENT = "jabber:client"
NS_SID = "urn:xmpp:sid:0"  # XEP-0359: origin-id, stanza-id
NS_MAM = "urn:xmpp:mam:2"  # XEP-0313
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_MARKERS = "urn:xmpp:chat-markers:0"  # XEP-0333
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CUSTOM = "urn:im-harness:custom:0"  # a custom message's JSON payload, beside the body
NS_MUC_USER = "http://jabber.org/protocol/muc#user"  # XEP-0045

# What the adapter offers on Prosody 0.12 and 13 alike (both have mod_mam, mod_offline,
# mod_muc with muc_mam, and archive chat markers). Groups are XEP-0045 rooms (see `muc`),
# their roles the room's affiliations. Not offered, and skipped with the XEP named in the
# reason (ABSENT_BECAUSE):
# - mute_all: XEP-0045 has voice per occupant (§8.4 revoke, §8.3 grant; the contract's mute,
#   offered) but no room-wide silence for members of a members-only room;
# - recall: message retraction (XEP-0424) and moderation (XEP-0425) are not in either release
#   (community modules only), so a "recalled" message would be the adapter's fiction;
# - idempotent_send: Prosody keeps origin-id (XEP-0359) but does not deduplicate on it;
# - push: XEP-0357 push needs an app server, not wired to the harness's webhook;
# - tier_admin: XMPP has no tiers.
CAPABILITIES = frozenset({
    Capability.CHAT, Capability.CUSTOM, Capability.OFFLINE, Capability.HISTORY,
    Capability.GROUPS, Capability.ROLES, Capability.MUTE,
})
ABSENT_BECAUSE: Mapping[Capability, str] = {
    Capability.RECEIPTS: "Prosody relays and archives XEP-0333 chat markers but keeps no read "
    "cursor, so a marker that moves back reaches the sender as sent",
    Capability.GROUP_RECEIPTS: "XEP-0333 markers in a room are relayed, not kept as cursors",
    Capability.MUTE_ALL: "XEP-0045 has no room-wide voice switch for the members of a "
    "members-only room: voice is one occupant's role (§8.4), and a moderated room silences "
    "only unaffiliated visitors",
    Capability.RECALL: "XEP-0424 message retraction / XEP-0425 moderation are not in Prosody",
    Capability.IDEMPOTENT_SEND: "Prosody does not deduplicate on XEP-0359 origin-id (the "
    "adapter reads its archive before sending a client id again, so one client's resends "
    "are stored once; another client's, or a fresh adapter's, are stored twice)",
    Capability.PUSH: "XEP-0357 push is not wired to a webhook",
    Capability.TIER_ADMIN: "XMPP has no tiers",
}
# What the offered mute (XEP-0045 voice) does not carry: a role is the occupant's, not the
# member's (Prosody forgets it when the member's last session leaves the room).
VOICE_LASTS_WHILE_PRESENT = (
    "voice is an occupant's role (XEP-0045 §5.1): it is set only on a member in the room "
    "(one who is not is NotFound), and on Prosody a muted member whose last session leaves "
    "and enters the room again has voice again (a reconnect does it)"
)
# A contract rule the adapter applies itself: XMPP has no 1:1 recall at all, so none applies.
CLIENT_ENFORCED: frozenset[ServerRule] = frozenset()
# XMPP clients (Conversations, Dino, Smack's MAM manager) drop a message whose stanza-id /
# origin-id they already hold.
CLIENT_HIDES = frozenset({ClientHides.DUPLICATE_EVENTS})
# The server stamps each copy of a message on its own (the ack's time query, the sender's and
# each recipient's archive entry), and Prosody 0.12 stamps in whole seconds: copies of one
# message may be a second apart, plus the time between the stamps.
SERVER_TS_SPREAD_S = 1.5
# Prosody's c2s_stanza_size_limit (256 KiB) closes the stream; the adapter declares a body
# limit well inside it and the embedded server's limit is set from it (see launcher).
MAX_BODY_BYTES = 64000

_CONDITIONS: dict[str, type[IMError]] = {
    "forbidden": Forbidden,
    "not-allowed": Forbidden,
    "not-authorized": Unauthorized,
    "registration-required": Forbidden,
    "item-not-found": NotFound,
    "recipient-unavailable": NotFound,
    "service-unavailable": NotFound,  # a message to a user who does not exist
    "remote-server-not-found": NotFound,
    "not-acceptable": BadRequest,
    "bad-request": BadRequest,
    "policy-violation": TooLarge,
    "resource-constraint": RateLimited,
    "feature-not-implemented": Unsupported,
}


def map_error(condition: str, text: str, what: str) -> IMError:
    """The contract's typed error for a stanza error condition."""
    cls = _CONDITIONS.get(condition, IMError)
    message = f"{what}: {condition}" + (f" ({text})" if text else "")
    if cls is RateLimited:
        return RateLimited(message, retry_after=0.0, condition=condition)
    return cls(message, condition=condition)


def error_of(stanza: ET.Element) -> tuple[str, str]:
    """(condition, text) of an error stanza."""
    err = stanza.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return "undefined-condition", ""
    condition, text = "undefined-condition", ""
    for child in err:
        tag = child.tag.split("}", 1)[-1]
        if child.tag.startswith(f"{{{NS_STANZAS}}}"):
            if tag == "text":
                text = child.text or ""
            else:
                condition = tag
    return condition, text


def bare(jid: str) -> str:
    return jid.split("/", 1)[0]


def local(jid: str) -> str:
    return bare(jid).split("@", 1)[0]


def pair_conversation(a: str, b: str) -> str:
    """The 1:1 conversation id of two bare JIDs (the same for both, whoever sends)."""
    return "chat:" + "|".join(sorted({bare(a), bare(b)}))


def pair_members(conversation: str) -> list[str]:
    if not conversation.startswith("chat:"):
        return []
    return conversation[len("chat:"):].split("|")


def message_id(sender: str, origin_id: str) -> str:
    """A 1:1 message's id: XMPP gives the two archives no id in common, so it is the sender's
    bare JID and the XEP-0359 origin-id the sender stamped (Prosody stamps `from` itself)."""
    return f"{bare(sender)}/{origin_id}"


def parse_stamp(stamp: str | None) -> float | None:
    """Seconds since the epoch of an XEP-0082 timestamp ('2026-12-01T22:32:34.5Z').

    Prosody 0.12 stamps archive items in whole seconds, 13 with microseconds.
    """
    if not stamp:
        return None
    text = stamp.rstrip("Z")
    frac = 0.0
    if "." in text:
        text, digits = text.split(".", 1)
        frac = float("0." + ("".join(ch for ch in digits if ch.isdigit()) or "0"))
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + frac
    except ValueError:
        return None


def format_stamp(seconds: float) -> str:
    """An XEP-0082 timestamp of seconds since the epoch (microseconds where it has them)."""
    whole = int(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    micros = round((seconds - whole) * 1e6)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


@dataclass(frozen=True)
class Incoming:
    """One received `<message>`, as the contract reads it."""

    sender: str  # bare JID, stamped by the server
    recipient: str  # bare JID
    origin_id: str
    body: str | None  # None: no body (a marker, say)
    custom: dict[str, Any] | None = None
    displayed: str | None = None  # XEP-0333: the origin-id a displayed marker points at
    stanza_id: str | None = None  # XEP-0359 id the receiving archive gave it
    stamp: float | None = None  # the archive's time (MAM results carry it)
    error: tuple[str, str] | None = None  # an error bounce: (condition, text)
    nick: str | None = None  # a groupchat message's sender in the room (its resource)
    invite: tuple[str, str] | None = None  # XEP-0045 invitation: (room, inviter), bare JIDs


def parse_message(el: ET.Element, own: str, *, stamp: float | None = None) -> Incoming:
    """A `<message>` element a client of `own` (bare JID) received.

    A groupchat message comes from the room (`sender`) as `nick`; its stanza-id is the
    room archive's, the same for every occupant.
    """
    full = el.get("from") or own
    sender = bare(full)
    recipient = bare(el.get("to") or own)
    groupchat = el.get("type") == "groupchat"
    nick = full.split("/", 1)[1] if groupchat and "/" in full else None
    origin = el.find(f"{{{NS_SID}}}origin-id")
    origin_id = origin.get("id", "") if origin is not None else (el.get("id") or "")
    stanza_id = None
    archive = sender if groupchat else bare(own)
    for sid in el.findall(f"{{{NS_SID}}}stanza-id"):
        if bare(sid.get("by") or "") == archive:
            stanza_id = sid.get("id")
    invite = None
    x = el.find(f"{{{NS_MUC_USER}}}x")
    invited = x.find(f"{{{NS_MUC_USER}}}invite") if x is not None else None
    if invited is not None and invited.get("from") and el.get("type") != "error":
        invite = (sender, bare(invited.get("from") or ""))  # relayed by the room (not ours)
    body_el = el.find(f"{{{NS_CLIENT}}}body")
    custom = None
    custom_el = el.find(f"{{{NS_CUSTOM}}}custom")
    if custom_el is not None and custom_el.text:
        try:
            loaded = json.loads(custom_el.text)
            custom = loaded if isinstance(loaded, dict) else None
        except ValueError:
            custom = None
    shown = el.find(f"{{{NS_MARKERS}}}displayed")
    delay = el.find(f"{{{NS_DELAY}}}delay")
    if stamp is None and delay is not None:
        stamp = parse_stamp(delay.get("stamp"))
    return Incoming(
        sender=sender, recipient=recipient, origin_id=origin_id,
        body=body_el.text or "" if body_el is not None else None, custom=custom,
        displayed=shown.get("id") if shown is not None else None, stanza_id=stanza_id,
        stamp=stamp, error=error_of(el) if el.get("type") == "error" else None,
        nick=nick, invite=invite,
    )


def parse_mam_result(el: ET.Element, own: str) -> tuple[str, str, Incoming] | None:
    """(queryid, archive id, message) of a MAM result `<message>`; None if it is not one."""
    result = el.find(f"{{{NS_MAM}}}result")
    if result is None:
        return None
    forwarded = result.find(f"{{{NS_FORWARD}}}forwarded")
    if forwarded is None:
        return None
    delay = forwarded.find(f"{{{NS_DELAY}}}delay")
    inner = forwarded.find(f"{{{NS_CLIENT}}}message")
    if inner is None:
        return None
    stamp = parse_stamp(delay.get("stamp")) if delay is not None else None
    parsed = parse_message(inner, own, stamp=stamp)
    archive_id = result.get("id") or ""
    parsed = Incoming(**{**parsed.__dict__, "stanza_id": archive_id})
    return result.get("queryid") or "", archive_id, parsed


def chat_message(to: str, body: str, custom: Mapping[str, Any] | None,
                 origin_id: str) -> ET.Element:
    """The `<message type='chat'>` of a send (body, origin-id, custom payload)."""
    el = ET.Element(f"{{{NS_CLIENT}}}message", {"to": to, "type": "chat", "id": origin_id})
    ET.SubElement(el, f"{{{NS_CLIENT}}}body").text = body
    ET.SubElement(el, f"{{{NS_SID}}}origin-id", {"id": origin_id})
    if custom is not None:
        ET.SubElement(el, f"{{{NS_CUSTOM}}}custom").text = json.dumps(dict(custom))
    return el


def mam_query(queryid: str, *, with_jid: str | None = None, after: str | None = None,
              ids: Sequence[str] = (), before: str | None = None, max_items: int = 250,
              start: float | None = None) -> ET.Element:
    """A MAM `<query>` (a user's or a room's archive): by peer, after an id or a time, by ids."""
    query = ET.Element(f"{{{NS_MAM}}}query", {"queryid": queryid})
    form = ET.SubElement(query, f"{{{NS_DATA}}}x", {"type": "submit"})
    fields: list[tuple[str, list[str], str | None]] = [("FORM_TYPE", [NS_MAM], "hidden")]
    if with_jid:
        fields.append(("with", [with_jid], None))
    if ids:
        fields.append(("ids", list(ids), None))
    if start is not None:
        fields.append(("start", [format_stamp(start)], None))
    for var, values, kind in fields:
        f = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": var, **({"type": kind} if kind
                                                                       else {})})
        for value in values:
            ET.SubElement(f, f"{{{NS_DATA}}}value").text = value
    rsm = ET.SubElement(query, f"{{{NS_RSM}}}set")
    ET.SubElement(rsm, f"{{{NS_RSM}}}max").text = str(max_items)
    if after:
        ET.SubElement(rsm, f"{{{NS_RSM}}}after").text = after
    if before is not None:
        ET.SubElement(rsm, f"{{{NS_RSM}}}before").text = before
    return query


def fin_of(iq: ET.Element) -> tuple[bool, str | None]:
    """(complete, last id) of a MAM query's `<fin>`."""
    fin = iq.find(f"{{{NS_MAM}}}fin")
    if fin is None:
        return True, None
    last = fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last")
    return fin.get("complete") in ("true", "1"), last.text if last is not None else None


@dataclass
class Conversation:
    """What a client knows of one conversation: message ids in its archive's order."""

    seqs: dict[str, int] = field(default_factory=dict)  # message id -> seq (1, 2, ...)
    by_seq: list[str] = field(default_factory=list)
    stamps: dict[str, float] = field(default_factory=dict)  # message id -> archive time
    archive_cursor: str | None = None  # the last archive item with the peer numbered
    origins: dict[str, str] = field(default_factory=dict)  # room: "nick/origin-id" -> id

    def place(self, message_id: str) -> int:
        """The seq of a message id: the one it got first, else the next number."""
        seq = self.seqs.get(message_id)
        if seq is None:
            self.by_seq.append(message_id)
            seq = self.seqs[message_id] = len(self.by_seq)
        return seq


@dataclass
class UserState:
    """What a user's clients keep across reconnects: the archive cursor and the numbering."""

    resource: str = field(default_factory=lambda: f"imh-{uuid.uuid4().hex[:8]}")
    cursor: str | None = None  # the last archive id this user processed
    conversations: dict[str, Conversation] = field(default_factory=dict)
    # Rooms (bare JIDs) the user is a member of, learned from invitations and its own
    # creations, each with where its reading of the room's archive got to: the last archive
    # id processed, or the time it was added (the archive is read from there on first entry).
    rooms: dict[str, str | float] = field(default_factory=dict)
    # The client ids (origin-ids) this user sent, with their conversation. Prosody stores a
    # second copy of a resent message (it keeps XEP-0359 ids but does not deduplicate on
    # them), so a send with one of these reads the archive first: an attempt stored there
    # (its ack lost, or acked) is answered with that message's ack, not sent again.
    sent: dict[str, str] = field(default_factory=dict)

    def conversation(self, conv: str) -> Conversation:
        return self.conversations.setdefault(conv, Conversation())


def as_message(conversation: str, item: Incoming, seq: int, ts: float) -> Message:
    """The contract's message of a received chat message."""
    return Message(
        message_id=message_id(item.sender, item.origin_id), conversation=conversation,
        seq=seq, sender=local(item.sender), client_id=item.origin_id,
        kind="custom" if item.custom is not None else "text",
        body=item.body or "", server_ts=ts, custom=item.custom,
    )


def history_page(conversation: str, messages: Sequence[Message], *, before: int | None,
                 after: int | None, limit: int) -> HistoryPage:
    """A page of a conversation's archive (numbered from its start, like live seqs)."""
    if after is not None:
        picked = [m for m in messages if m.seq > after]
        page, more = picked[:limit], len(picked) > limit
    else:
        picked = [m for m in messages if before is None or m.seq < before]
        page, more = (picked[-limit:] if limit else []), len(picked) > limit
    return HistoryPage(conversation, tuple(page), more)


def json_body(custom: Mapping[str, Any]) -> str:
    """The body of a custom message: its payload as JSON (clients without the payload read it)."""
    return json.dumps(dict(custom), sort_keys=True, separators=(",", ":"))
