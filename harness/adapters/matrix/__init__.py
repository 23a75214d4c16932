"""Adapter for a Matrix homeserver (tested against Synapse) over the client-server API.

Plain aiohttp, no Matrix SDK: the harness keeps one HTTP client for every adapter and needs
no end-to-end crypto stack (test rooms are unencrypted). How the contract maps onto Matrix:

- user ids are localparts ("alice-1a2b3c4d"); users on other servers keep their full MXID.
  `Credentials.token` is the password; every client logs in as its own device.
- 1:1 = a direct room per pair, found race-free through a room alias derived from the pair
  (a peer that loses the race to create it joins it, retrying with the backoff while the
  winner's invite is on the way);
  groups = rooms whose power levels give owner 100, admin 50, member 0; invites are
  accepted by the invitee's client as soon as its sync sees them.
- membership is the server's, with two contract rules the adapter applies itself: a former
  member's `group_info`/`history` is Forbidden (Matrix still shows what they saw), and in a 1:1
  room only the sender recalls (a Matrix peer with power may redact the other's messages).
  `info.client_enforced` declares both, so suites that test a server's enforcement skip them.
  An invited user's client joins before it sends, recalls or reads.
- recall = redaction, read receipts = `m.read` receipts, mute = power levels (a member at
  -1, or `events_default` 50 for mute-all), offline = `/sync` with the client's since token:
  everything in the first sync after (re)connecting is marked `offline=True`.
- what the server sent reaches the client's event stream as sent: nothing is de-duplicated,
  re-numbered or filtered. An event the server delivers twice (twice in a timeline, or again
  after a replayed since token) is a second `MessageReceived` with the same message id and
  seq; a read receipt that moves back is a `ReceiptUpdated` with the lower seq. Real Matrix
  SDKs (matrix-js-sdk, matrix-rust-sdk) hide both from their app; `info.client_hides` declares
  that as data (`CLIENT_HIDES`), the adapter does not do it.
- seq: Matrix has no per-room sequence number visible to clients (Synapse's stream ordering
  is not exposed). The adapter numbers the `m.room.message` events of a room 1, 2, ... in the
  order the server lists them: from the room's creation (its `/messages` backlog, paged back
  from the first sync timeline that brings the room), then `/sync` order. A message keeps the
  number its event id got the first time it came: an event the server sends again is passed
  on again with that number (looked up by event id), so a repeat is neither dropped nor given
  a new seq. On one homeserver this is the room's timeline order, so clients of the same
  server agree, but the number is derived by the adapter from the server's order.
- what the adapter adds of its own: nothing twice. A sync batch is applied only once every
  follow-up request it needs (backlog, gap) has succeeded, so a batch fetched again after a
  failed request was not applied the first time.
- idempotent send: `PUT .../send/m.room.message/{client_id}`; Synapse deduplicates a
  transaction id per device, and a client keeps its device across drop/reconnect. A send whose
  request fails on the network is retried, like a Matrix SDK does, with the same transaction id
  (exponential backoff, full jitter) until its send timeout; an ack is `duplicate` when the
  event it names was already known to this client before that request went out.
- connection: HTTP, no persistent connection (`info.keepalive_s` is None). The `/sync`
  long-poll reconnects with the same backoff after a network error and resumes from its since
  token; it reports `Disconnected` at the first failure and `Reconnected` when a sync works.
  An error it does not retry (a server error) ends it with `Disconnected` naming the error and
  the client FAILED; every background task's outcome is retrieved, on close too.

The package along its seams: `transport` (HTTP calls, login, the `/sync` loop and its
reconnects, retried requests), `translate` (Matrix events and answers <-> contract objects, no
I/O), `ops` (the IMClient operations), `adapter` (`MatrixAdapter`, `MatrixClient`) and
`options` (`MatrixOptions`: the keys of `[endpoints.X.options]`, with defaults).

Secrets: `registration_shared_secret` (register through the admin API; without it, open
registration with a dummy auth stage is used).
"""

from harness.adapters.matrix.adapter import MatrixAdapter, MatrixClient
from harness.adapters.matrix.options import MatrixOptions
from harness.adapters.matrix.translate import (
    CAPABILITIES,
    CLIENT_ENFORCED,
    CLIENT_HIDES,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    map_error,
)

# The public home of the classes is this package (the entry point names it).
MatrixAdapter.__module__ = MatrixClient.__module__ = __name__

__all__ = [
    "CAPABILITIES",
    "CLIENT_ENFORCED",
    "CLIENT_HIDES",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "MatrixAdapter",
    "MatrixClient",
    "MatrixOptions",
    "map_error",
]
