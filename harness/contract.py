"""The adapter contract: one async door to every IM endpoint.

Suites, fault tests, property tests and load users talk to an endpoint only through
`Adapter` (one per endpoint: provisions users, opens clients) and `IMClient` (one logged-in
connection). What crosses the door is plain frozen dataclasses; nothing outside an adapter
knows a wire format.

Conversations are opaque strings chosen by the endpoint. A 1:1 conversation is addressed by
the peer's user id (`Target.user`), a group by its group id (`Target.group`); every ack and
event names the endpoint's conversation id, so the oracle can key on it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable


class Capability(enum.StrEnum):
    """A feature an endpoint may offer; suites declare the ones they need."""

    CHAT = "chat"  # 1:1 text messages
    CUSTOM = "custom"  # 1:1 / group custom (structured) messages
    GROUPS = "groups"
    ROLES = "roles"  # owner / admin / member
    MUTE = "mute"  # mute one member of a group (and release)
    MUTE_ALL = "mute_all"  # mute every member but the owner and admins (and release)
    RECALL = "recall"
    RECEIPTS = "receipts"  # 1:1 read receipts
    GROUP_RECEIPTS = "group_receipts"
    OFFLINE = "offline"  # catch-up of what was missed while disconnected
    HISTORY = "history"  # paged history
    PUSH = "push"  # offline push to a webhook
    IDEMPOTENT_SEND = "idempotent_send"  # a resend with the same client id is deduplicated
    TIER_ADMIN = "tier_admin"  # the harness can switch tiers and features at runtime


class ServerRule(enum.StrEnum):
    """A contract rule some servers do not enforce, so their adapter enforces it client-side.

    An endpoint lists these in `EndpointInfo.client_enforced`; a suite that tests the server's
    enforcement of one skips there, since a pass would only show the adapter's own refusal.
    """

    PEER_RECALL_1TO1 = "peer_recall_1to1"  # only the sender, not the peer, recalls a 1:1 message
    FORMER_MEMBER_READS = "former_member_reads"  # a removed member reads no group info/history


class ClientHides(enum.StrEnum):
    """What a real client SDK of an endpoint hides from its app, declared as data.

    The adapter never hides it itself: what the server sent reaches the event stream as sent.
    An endpoint lists these in `EndpointInfo.client_hides`, so a report can say which of the
    server's faults a real app would not have seen.
    """

    DUPLICATE_EVENTS = "duplicate_events"  # a real SDK drops an event id it already has
    RECEIPTS_BACKWARDS = "receipts_backwards"  # a real SDK ignores a receipt that moves back


@dataclass(frozen=True)
class TierLimits:
    """A tier's limits as data; `None` means unlimited or not known."""

    max_connections: int | None = None  # concurrent connections per app
    send_rate_per_user: float | None = None  # messages per second, sustained
    send_burst: int | None = None  # messages allowed at once before the rate applies
    max_message_bytes: int | None = None  # encoded size of one message body
    max_group_members: int | None = None
    recall_window_s: float | None = None
    history_retention_s: float | None = None


@dataclass(frozen=True)
class EndpointInfo:
    """What an endpoint is and offers, as the report header and the skip reasons name it."""

    name: str  # "old" / "new" / any label from the configuration
    adapter: str  # registry name of the adapter
    url: str
    protocol: str  # protocol or SDK version, e.g. "v1", "v2", "synapse-1.141.0"
    tier: str  # "free", "pro", ...
    capabilities: frozenset[Capability]
    limits: TierLimits = field(default_factory=TierLimits)
    keepalive_s: float | None = None  # how soon a dead peer is noticed, per protocol version
    send_timeout_s: float | None = None  # the SDK's default send timeout
    # Protocol versions `Adapter.connect(protocol=...)` accepts; `protocol` is always among them.
    protocols: frozenset[str] = frozenset()
    client_enforced: frozenset[ServerRule] = frozenset()  # rules the server leaves to the adapter
    client_hides: frozenset[ClientHides] = frozenset()  # what a real SDK would hide (declared)
    # How far apart the server times of one message may be (its ack, each delivery, history):
    # 1 ms where the server stamps a message once; more where each copy is stamped on its own
    # (an XMPP server stamps the sender's and each recipient's archive copy itself).
    server_ts_spread_s: float = 0.001

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocols", frozenset(self.protocols) | {self.protocol})

    def supports(self, capability: Capability | str) -> bool:
        return Capability(capability) in self.capabilities


@dataclass(frozen=True)
class Credentials:
    """A provisioned test user: enough for `Adapter.connect` to log in."""

    user_id: str
    token: str = field(repr=False)  # a secret: never printed


@dataclass(frozen=True)
class Target:
    """Where a message goes: exactly one of a user (1:1) or a group."""

    user: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) == (self.group is None):
            raise ValueError("Target needs exactly one of user= or group=")

    @classmethod
    def to_user(cls, user_id: str) -> Target:
        return cls(user=user_id)

    @classmethod
    def to_group(cls, group_id: str) -> Target:
        return cls(group=group_id)


MessageKind = Literal["text", "custom"]


@dataclass(frozen=True)
class Ack:
    """The server's acknowledgement of a send: the message is durable from here on."""

    client_id: str
    message_id: str
    conversation: str
    seq: int  # per-conversation, strictly increasing
    server_ts: float  # seconds since the epoch, server clock
    duplicate: bool = False  # the server recognised a resend of an already stored message


@dataclass(frozen=True)
class Message:
    """A stored message as a participant sees it, live, caught up or in history."""

    message_id: str
    conversation: str
    seq: int
    sender: str
    client_id: str
    kind: MessageKind
    body: str  # text, or the JSON of a custom message
    server_ts: float
    group: str | None = None  # set for group messages
    recalled: bool = False  # in history: the message was recalled (body is then empty)
    custom: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MessageReceived:
    """A message arrived; `offline` marks one caught up after the client was disconnected."""

    message: Message
    offline: bool = False
    type: ClassVar[str] = "message"


@dataclass(frozen=True)
class MessageRecalled:
    """A message was recalled by `by`."""

    conversation: str
    message_id: str
    by: str
    offline: bool = False
    type: ClassVar[str] = "recall"


@dataclass(frozen=True)
class ReceiptUpdated:
    """`reader` has read `conversation` up to and including `up_to_seq`."""

    conversation: str
    reader: str
    up_to_seq: int
    offline: bool = False
    type: ClassVar[str] = "receipt"


MembershipChange = Literal["added", "removed", "left", "role"]


@dataclass(frozen=True)
class MembershipChanged:
    """A group's membership changed: `user` was added, removed, left, or got a new role."""

    group: str
    user: str
    change: MembershipChange
    by: str
    role: str | None = None
    type: ClassVar[str] = "membership"


@dataclass(frozen=True)
class MuteChanged:
    """`user` (or everyone but admins, when `user` is None) was muted or unmuted in `group`."""

    group: str
    user: str | None
    muted: bool
    by: str
    type: ClassVar[str] = "mute"


@dataclass(frozen=True)
class Disconnected:
    """The client lost its connection (it may be reconnecting on its own)."""

    reason: str
    type: ClassVar[str] = "disconnected"


@dataclass(frozen=True)
class Reconnected:
    """The client is connected again and has resumed from its cursor."""

    attempts: int
    type: ClassVar[str] = "reconnected"


Event = (
    MessageReceived
    | MessageRecalled
    | ReceiptUpdated
    | MembershipChanged
    | MuteChanged
    | Disconnected
    | Reconnected
)


@dataclass(frozen=True)
class HistoryPage:
    """One page of a conversation's history, oldest first."""

    conversation: str
    messages: tuple[Message, ...]
    has_more: bool  # more messages exist beyond this page in the paging direction


@dataclass(frozen=True)
class GroupInfo:
    """A group and its members' roles ("owner", "admin", "member")."""

    group_id: str
    name: str
    members: Mapping[str, str]
    muted_all: bool = False
    muted: frozenset[str] = frozenset()


@runtime_checkable
class IMClient(Protocol):
    """One logged-in connection of one user to an endpoint."""

    @property
    def user_id(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this connection offers: its protocol version may offer less than the endpoint."""
        ...

    async def send(
        self,
        to: Target,
        body: str = "",
        *,
        custom: Mapping[str, Any] | None = None,
        client_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's send timeout is under test
    ) -> Ack:
        """Send a text (or, with `custom`, a custom) message; idempotent per `client_id`."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """The stream of events this client receives, in arrival order (one consumer)."""
        ...

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo: ...

    async def group_info(self, group: str) -> GroupInfo: ...

    async def add_member(self, group: str, user: str) -> None: ...

    async def remove_member(self, group: str, user: str) -> None: ...

    async def leave(self, group: str) -> None: ...

    async def set_role(self, group: str, user: str, role: str) -> None: ...

    async def mute(self, group: str, user: str, muted: bool = True) -> None: ...

    async def mute_all(self, group: str, muted: bool = True) -> None: ...

    async def recall(self, conversation: str, message_id: str) -> None: ...

    async def mark_read(self, conversation: str, up_to_seq: int) -> None: ...

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """Messages with seq < `before` (newest page first) or seq > `after`, oldest first."""
        ...

    async def close(self) -> None:
        """Log out and close cleanly; the server knows the client is gone at once."""
        ...

    async def drop(self) -> None:
        """Vanish abruptly (no close handshake), as a phone losing signal would."""
        ...

    async def reconnect(self) -> None:
        """Connect again after `drop`/`close` and resume from the client's cursor."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """One endpoint: provisions test users and opens `IMClient`s for them."""

    name: ClassVar[str]  # registry name

    @property
    def info(self) -> EndpointInfo: ...

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        """Create (or register) a test user; a fresh unique id when `user_id` is None."""
        ...

    async def connect(self, credentials: Credentials, *, protocol: str | None = None) -> IMClient:
        """Log in and return a connected client (optionally of another protocol version)."""
        ...

    async def aclose(self) -> None:
        """Release whatever the adapter holds (HTTP sessions, ...)."""
        ...


@dataclass(frozen=True)
class EndpointSettings:
    """An endpoint's validated configuration, as an adapter class receives it.

    Secrets are already resolved from the environment; they sit in `secrets` (never printed).
    """

    name: str
    adapter: str
    url: str
    app_id: str = ""
    protocol: str = ""
    tier: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    send_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    options: Mapping[str, Any] = field(default_factory=dict)  # adapter-specific keys


class AdapterFactory(Protocol):
    """What the registry holds: an adapter class that opens itself from settings."""

    name: ClassVar[str]

    @classmethod
    async def open(cls, settings: EndpointSettings) -> Adapter: ...
