"""The service's in-memory state: apps, users, conversations, groups (rebuilt from SQLite)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.reference import defects
from harness.reference.tiers import BASE_FEATURES, TierLimits, effective_limits, get_tier

if TYPE_CHECKING:
    from harness.reference.frontend import Conn

ROLES = ("owner", "admin", "member")


def compact(obj: Any) -> str:
    """Compact JSON, the form every frame and stored event uses."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def rest_of(obj: dict[str, Any]) -> str:
    """An event's fields as JSON without the braces, to splice `pos`/`offline` in front."""
    return compact(obj)[1:-1]


@dataclass
class UserState:
    """One user of one app: its inbox (kind, rest) by pos-1, live connections, send bucket."""

    user_id: str
    inbox: list[tuple[str, str]] = field(default_factory=list)
    alloc: int = 0  # last inbox position handed out (committed or not)
    conns: set[Conn] = field(default_factory=set)
    tokens: float | None = None
    tokens_at: float = 0.0


@dataclass
class Conversation:
    """A 1:1 or group conversation: its messages by seq-1 and per-member read cursors."""

    conv_id: str
    group: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[str, int] = field(default_factory=dict)  # message id -> seq
    reads: dict[str, int] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        return len(self.messages)


@dataclass
class Group:
    """A group: members' roles, muted members, mute-all."""

    group_id: str
    name: str
    members: dict[str, str]
    muted: set[str] = field(default_factory=set)
    muted_all: bool = False

    def wire(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "name": self.name,
            "members": dict(self.members),
            "muted_all": self.muted_all,
            "muted": sorted(self.muted),
        }

    def data(self) -> str:
        return compact(self.wire())

    @classmethod
    def from_data(cls, text: str) -> Group:
        d = json.loads(text)
        return cls(d["group_id"], d["name"], dict(d["members"]), set(d["muted"]), d["muted_all"])

    def is_manager(self, user: str) -> bool:
        return self.members.get(user) in ("owner", "admin")


@dataclass
class AppState:
    """One app: settings (with pending, delayed changes) and everything its users own."""

    app_id: str
    app_key: str
    tier: str
    limits_tier: str  # the tier whose limits apply (differs only under `tier_not_raised`)
    features: dict[str, bool]
    webhook: str | None = None
    recall_window_s: float | None = None
    limits_override: dict[str, Any] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, UserState] = field(default_factory=dict)
    convs: dict[str, Conversation] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    dedup: dict[tuple[str, str], Any] = field(default_factory=dict)  # ack dict or Future
    held: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # reorder defect
    conn_count: int = 0
    _limits: TierLimits | None = None

    def data(self) -> str:
        return compact(
            {
                "app_id": self.app_id,
                "app_key": self.app_key,
                "tier": self.tier,
                "limits_tier": self.limits_tier,
                "features": self.features,
                "webhook": self.webhook,
                "recall_window_s": self.recall_window_s,
                "limits_override": self.limits_override,
                "pending": self.pending,
            }
        )

    @classmethod
    def from_data(cls, text: str) -> AppState:
        d = json.loads(text)
        return cls(
            app_id=d["app_id"],
            app_key=d["app_key"],
            tier=d["tier"],
            limits_tier=d.get("limits_tier", d["tier"]),
            features=dict(d["features"]),
            webhook=d.get("webhook"),
            recall_window_s=d.get("recall_window_s"),
            limits_override=dict(d.get("limits_override") or {}),
            pending=list(d.get("pending") or []),
        )

    def __repr__(self) -> str:  # never show the key
        return f"AppState(app_id={self.app_id!r}, tier={self.tier!r})"

    def settle(self, now: float | None = None) -> bool:
        """Apply every pending change that is due; True when something changed."""
        if not self.pending:
            return False
        now = time.time() if now is None else now
        changed = False
        while self.pending and self.pending[0]["effective_at"] <= now:
            changes = self.pending.pop(0)["changes"]
            if defects.on("activation_stuck") and changes.get("features"):
                changes = {**changes, "features": {
                    k: v for k, v in changes["features"].items() if not v}}
            self.apply(changes)
            changed = True
        return changed

    def apply(self, changes: dict[str, Any]) -> None:
        """Apply one change set now."""
        if "tier" in changes and changes["tier"] is not None:
            old, new = self.tier, changes["tier"]
            raised = get_tier(new).rank > get_tier(old).rank
            if not (raised and defects.on("tier_not_raised")):
                self.limits_tier = new
            self.tier = new
        for name, enabled in (changes.get("features") or {}).items():
            self.features[name] = bool(enabled)
        if "webhook" in changes:
            self.webhook = changes["webhook"]
        if "recall_window_s" in changes:
            self.recall_window_s = changes["recall_window_s"]
        for name, value in (changes.get("limits") or {}).items():
            if value is None:
                self.limits_override.pop(name, None)
            else:
                self.limits_override[name] = value
        self._limits = None

    def limits(self, default_recall_window_s: float) -> TierLimits:
        self.settle()
        if self._limits is None:
            window = self.recall_window_s
            self._limits = effective_limits(
                self.limits_tier,
                self.limits_override,
                default_recall_window_s if window is None else window,
            )
        return self._limits

    def feature_error(self, name: str) -> str | None:
        """Why optional feature `name` is unusable, or None when it is on."""
        self.settle()
        if name not in get_tier(self.limits_tier).optional_features:
            return f"{name} is not available on tier {self.limits_tier}"
        if not self.features.get(name):
            return f"{name} is switched off for app {self.app_id}; enable it via the admin API"
        return None

    def feature_list(self) -> list[str]:
        feats = list(BASE_FEATURES)
        if self.feature_error("recall") is None:
            feats.append("recall")
        if self.feature_error("receipts") is None:
            feats += ["receipts", "group_receipts"]
        return feats


def dm_conversation(a: str, b: str) -> str:
    """The 1:1 conversation id of two users."""
    x, y = sorted((a, b))
    return f"d:{x}:{y}"


def message_record(mid: str, conv: str, seq: int, sender: str, client_id: str, kind: str,
                   body: str, custom: Any, ts: float, group: str | None,
                   recalled: bool) -> dict[str, Any]:
    """A stored message as history and the `message` event carry it."""
    return {"message_id": mid, "conversation": conv, "seq": seq, "sender": sender,
            "client_id": client_id, "kind": kind, "body": "" if recalled else body,
            "custom": custom, "ts": ts, "group": group, "recalled": recalled}


def ack_of(message: dict[str, Any]) -> dict[str, Any]:
    """The `send` answer for `message` (a repeat of the send marks it a duplicate)."""
    return {"message_id": message["message_id"], "conversation": message["conversation"],
            "seq": message["seq"], "ts": message["ts"], "duplicate": False}


def _num(ident: str, prefix: str) -> int:
    tail = ident[len(prefix):] if ident.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else 0


@dataclass
class World:
    """Everything the service holds in memory: the apps, the next free ids, the counters."""

    apps: dict[str, AppState] = field(default_factory=dict)
    next_message: int = 1
    next_group: int = 1
    next_app: int = 1
    counters: dict[str, int] = field(default_factory=lambda: {
        "messages": 0, "deliveries": 0, "pushes": 0, "push_failures": 0})

    def load(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        """Rebuild the state from the rows of `Store.load()`."""
        for _app_id, data in rows["apps"]:
            app = AppState.from_data(data)
            self.apps[app.app_id] = app
            self.next_app = max(self.next_app, _num(app.app_id, "app") + 1)
        for app_id, user_id in rows["users"]:
            self.apps[app_id].users[user_id] = UserState(user_id)
        for app_id, group_id, data in rows["groups"]:
            group = Group.from_data(data)
            app = self.apps[app_id]
            app.groups[group_id] = group
            app.convs[f"g:{group_id}"] = Conversation(f"g:{group_id}", group_id)
            self.next_group = max(self.next_group, _num(group_id, "g") + 1)
        for row in rows["messages"]:
            app_id, conv_id, seq, mid, sender, client_id, kind, body, custom, ts, grp, rec = row
            app = self.apps[app_id]
            conv = app.convs.get(conv_id)
            if conv is None:
                conv = app.convs[conv_id] = Conversation(conv_id, grp)
            msg = message_record(mid, conv_id, seq, sender, client_id, kind, body,
                                 json.loads(custom) if custom else None, ts, grp, bool(rec))
            conv.messages.append(msg)
            conv.by_id[mid] = seq
            app.dedup[(sender, client_id)] = ack_of(msg)
            self.next_message = max(self.next_message, _num(mid, "m") + 1)
            self.counters["messages"] += 1
        for app_id, user_id, _pos, kind, rest in rows["inbox"]:
            user = self.apps[app_id].users[user_id]
            user.inbox.append((kind, rest))
            user.alloc = len(user.inbox)
        for app_id, conv_id, user_id, seq in rows["reads"]:
            conv = self.apps[app_id].convs.get(conv_id)
            if conv is not None:
                conv.reads[user_id] = seq


