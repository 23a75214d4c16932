"""Adapter for an XMPP server (tested against Prosody 0.12 and 13) over c2s, with slixmpp.

How the contract maps onto XMPP:

- user ids are localparts on the adapter's domain; `Credentials.token` is the password
  (SCRAM-SHA-1 on loopback); users are made by in-band registration (XEP-0077), and every
  client logs in as its own resource.
- 1:1 = `<message type='chat'>`; the conversation id names the pair of bare JIDs. The client
  id is the XEP-0359 origin-id the sender stamps; the message id is the sender's bare JID and
  that origin-id (the two archives give one message two different stanza-ids, so the server
  has no id both sides share; Prosody stamps `from` itself, so nobody sends as another).
- ack: after the message the client asks the server's time (XEP-0202); Prosody handles a
  stream's stanzas in order, so the answer means the message was routed and archived, and a
  bounce (an unknown user: service-unavailable) came before it. `server_ts` is the time of
  the message in the user's own archive (XEP-0313 `<delay>`): XMPP keeps two copies of a 1:1
  message, the sender's and the recipient's, written a moment apart (0.12 stamps them in
  whole seconds, 13 in microseconds), so the two sides' times can differ by that moment.
- seq: XMPP numbers nothing per conversation. The adapter numbers a conversation's messages
  1, 2, ... in the order the server delivered them (acks for one's own); a message the server
  sends again keeps the number it got first. History numbers the user's archive with the peer
  from its start, the server's order.
- offline = MAM (XEP-0313) after the last archive id the user processed, before the initial
  presence (so mod_offline's flood is not sent: Prosody skips it for MAM clients), and once
  more after presence for what was archived in between; all of it is marked `offline=True`.
- receipts: not offered. Prosody relays and archives XEP-0333 markers but keeps no read
  cursor, so the contract's "a read mark never moves back" is nobody's to keep.
- groups = XEP-0045 rooms on the MUC service (`muc`): members-only, moderated, non-anonymous,
  persistent, archived (muc_mam). Roles are affiliations (owner, admin, member); adding a
  member sets its affiliation and sends the room's invitation, on which the member's client
  enters and reads the room archive from the invitation's time; removing one sets it to none
  (the server ends its visit: status 321); leaving cancels one's registration with the room
  (the last owner is refused: conflict). Group messages are numbered by the room archive,
  whose stanza-id every occupant shares; the room's reflection of a send is its ack.
- resends: Prosody does not deduplicate on origin-id, so a send with a client id this user
  sent before first reads the archive; an attempt stored there (its ack lost to a restart, or
  acked) is answered with its ack and not sent again (see `UserState.sent`).
- mute = voice (XEP-0045 §8.4 revoke, §8.3 grant): a moderator sets the occupant's role to
  visitor, and back to participant; the server refuses a visitor's groupchat message
  (forbidden) and a plain member's role change (not-allowed). A role is the occupant's, so it
  lasts while the member is in the room (`translate.VOICE_LASTS_WHILE_PRESENT`).
- what Prosody 0.12 and 13 do not offer is absent from the capabilities, named in
  `translate.ABSENT_BECAUSE` (recall: XEP-0424/0425; mute-all: XEP-0045 has no room-wide
  voice switch for members).

The package along its seams: `translate` (stanzas <-> contract, no I/O), `muc` (the room
stanzas, no I/O), `speedups` (slixmpp's login costs), `client` (one
connection: the pump, catch-up, operations), `adapter` (`XmppAdapter`: registration, connect),
`options` (`XmppOptions`).
"""

from harness.xmpp.adapter.adapter import XmppAdapter
from harness.xmpp.adapter.options import XmppOptions

# The public home of the class is this package (the entry point names it). The client module
# (slixmpp) is imported when a client connects, so the entry point loads without the extra.
XmppAdapter.__module__ = __name__

__all__ = ["XmppAdapter", "XmppOptions"]
