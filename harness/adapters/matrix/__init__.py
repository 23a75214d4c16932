"""Adapter for a Matrix homeserver (tested against Synapse) over the client-server API.

Plain aiohttp, no Matrix SDK: the harness keeps one HTTP client for every adapter and needs
no end-to-end crypto stack (test rooms are unencrypted). How the contract maps onto Matrix:

- user ids are localparts ("alice-1a2b3c4d"); users on other servers keep their full MXID.
  `Credentials.token` is the password; every client logs in as its own device.
- 1:1 = a direct room per pair, found race-free through a room alias derived from the pair;
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
- seq: Matrix has no per-room sequence number. The adapter numbers the `m.room.message`
  events of a room 1, 2, ... in the order its client sees them: from the room's creation
  (backfilled with `/messages` when the client first meets the room), then `/sync` order.
  On one homeserver both orders are the room's timeline order, so clients of the same server
  agree, but the number is derived by the adapter, not issued by the server.
- idempotent send: `PUT .../send/m.room.message/{client_id}`; Synapse deduplicates a
  transaction id per device, and a client keeps its device across drop/reconnect. A send whose
  request fails on the network is retried, like a Matrix SDK does, with the same transaction id
  (exponential backoff, full jitter) until its send timeout; an ack is `duplicate` when the
  event it names was already known to this client before that request went out.
- connection: HTTP, no persistent connection (`info.keepalive_s` is None). The `/sync`
  long-poll reconnects with the same backoff after a network error and resumes from its since
  token; it reports `Disconnected` at the first failure and `Reconnected` when a sync works.

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
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    map_error,
)

# The public home of the classes is this package (the entry point names it).
MatrixAdapter.__module__ = MatrixClient.__module__ = __name__

__all__ = [
    "CAPABILITIES",
    "CLIENT_ENFORCED",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "MatrixAdapter",
    "MatrixClient",
    "MatrixOptions",
    "map_error",
]
