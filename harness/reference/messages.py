"""Message ops: send, recall, read marks, history."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from harness.reference import defects, store
from harness.reference.common import Config, OpError, OpHandler, read_int
from harness.reference.delivery import Delivery, Fanout
from harness.reference.state import (
    AppState,
    Conversation,
    Group,
    UserState,
    World,
    ack_of,
    compact,
    dm_conversation,
    message_record,
    rest_of,
)

if TYPE_CHECKING:
    from harness.reference.frontend import Conn


class MessageOps:
    """The ops on messages and conversations of a logged-in user."""

    def __init__(self, world: World, config: Config, db: store.Store,
                 delivery: Delivery) -> None:
        self.world = world
        self.config = config
        self.db = db
        self.delivery = delivery

    def handlers(self) -> dict[str, OpHandler]:
        return {"send": self.op_send, "history": self.op_history, "recall": self.op_recall,
                "read": self.op_read}

    async def op_send(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, sender = conn.session()
        to = msg.get("to")
        if not isinstance(to, dict) or (("user" in to) == ("group" in to)):
            raise OpError("bad_request", "'to' must be {\"user\": id} or {\"group\": id}")
        kind = msg.get("kind", "text")
        if kind not in ("text", "custom"):
            raise OpError("bad_request", f"'kind' must be 'text' or 'custom', got {kind!r}")
        body = msg.get("body", "")
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise OpError("bad_request", "'body' must be a string")
        custom = msg.get("custom")
        if kind == "custom" and not isinstance(custom, dict):
            raise OpError("bad_request", "a custom message needs 'custom' as a JSON object")
        if kind == "text":
            custom = None
        client_id = msg.get("client_id")
        if client_id is None:
            client_id = f"srv-{self.world.next_message}"
        elif not isinstance(client_id, str) or not 0 < len(client_id) <= 128:
            raise OpError("bad_request", "'client_id' must be a string of 1-128 chars")
        key = (sender.user_id, client_id)
        prior: Any = app.dedup.get(key)
        if prior is not None:
            if isinstance(prior, asyncio.Future):
                prior = await asyncio.shield(prior)
            return {**prior, "duplicate": True}
        limits = app.limits(self.config.recall_window)
        size = len((compact(custom) if kind == "custom" else body).encode())
        if limits.max_message_bytes is not None and size > limits.max_message_bytes:
            raise OpError("too_large", f"message is {size} bytes; the tier allows "
                                       f"{limits.max_message_bytes}")
        group: Group | None = None
        if "user" in to:
            peer_id = to["user"]
            if not isinstance(peer_id, str) or peer_id not in app.users:
                raise OpError("not_found", f"no user {peer_id!r} in this app")
            if peer_id == sender.user_id:
                raise OpError("bad_request", "cannot send a message to yourself")
            conv_id = dm_conversation(sender.user_id, peer_id)
            recipients = [app.users[peer_id]]
        else:
            gid = to["group"]
            group = app.groups.get(gid) if isinstance(gid, str) else None
            if group is None:
                raise OpError("not_found", f"no group {gid!r}")
            role = group.members.get(sender.user_id)
            if role is None and not defects.on("nonmember_post"):
                raise OpError("forbidden", f"not a member of group {gid}")
            if sender.user_id in group.muted:
                raise OpError("forbidden", f"you are muted in group {gid}")
            if group.muted_all and role not in ("owner", "admin"):
                raise OpError("forbidden", f"group {gid} is muted for members")
            conv_id = f"g:{gid}"
            recipients = [app.users[m] for m in group.members if m != sender.user_id]
        _take_token(sender, limits.send_rate_per_user, limits.send_burst)
        conv = app.convs.get(conv_id)
        if conv is None:
            conv = app.convs[conv_id] = Conversation(conv_id, group.group_id if group else None)
        mid = f"m{self.world.next_message}"
        self.world.next_message += 1
        seq = conv.last_seq + 1
        ts = round(time.time(), 6)
        gid_ = group.group_id if group else None
        message = message_record(mid, conv_id, seq, sender.user_id, client_id, kind, body,
                                 custom, ts, gid_, False)
        conv.messages.append(message)
        conv.by_id[mid] = seq
        self.world.counters["messages"] += 1
        fanout = Fanout(app, [(store.INSERT_MESSAGE, (
            app.app_id, conv_id, seq, mid, sender.user_id, client_id, kind, body,
            compact(custom) if custom is not None else None, ts, gid_, 0))])
        rest = '"message":' + compact(message)
        for user in recipients:
            if defects.on("drop_delivery") and defects.chance():
                continue
            if group is not None:
                held = app.held.pop((user.user_id, conv_id), None)
                if held is None and defects.on("reorder_fanout") and defects.chance():
                    app.held[(user.user_id, conv_id)] = ("message", rest)
                    continue
                fanout.add(user, "message", rest)
                if held is not None:
                    fanout.add(user, held[0], held[1])
            else:
                fanout.add(user, "message", rest)
        ack = ack_of(message)
        push = {"message_id": mid, "conversation": conv_id, "sender": sender.user_id,
                "seq": seq, "ts": ts, "preview": (body if kind == "text" else compact(custom))[:32]}
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        app.dedup[key] = fut

        def committed() -> None:
            app.dedup[key] = ack
            if not fut.done():
                fut.set_result(ack)
            self.delivery.deliver(fanout, push)

        write = self.db.write(fanout.ops, committed)
        if defects.on("ack_before_persist"):
            self.db.flush_delay_s = self.config.late_flush_s
            return ack
        self.db.flush_delay_s = 0.0
        await write
        return ack

    async def op_history(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        conv_id = msg.get("conversation")
        conv, _, _ = conversation_for(app, user.user_id, conv_id)
        before = read_int(msg, "before", None)
        after = read_int(msg, "after", None)
        limit = read_int(msg, "limit", 50, minimum=1)
        if limit > 100:
            raise OpError("bad_request", f"'limit' must be 1..100, got {limit}")
        if before is not None and after is not None:
            raise OpError("bad_request", "give at most one of 'before' and 'after'")
        messages = conv.messages if conv is not None else []
        retention = app.limits(self.config.recall_window).history_retention_s
        oldest_ts = time.time() - retention if retention is not None else None
        if after is not None:
            window = [m for m in messages[after:] if oldest_ts is None or m["ts"] >= oldest_ts]
            page, has_more = window[:limit], len(window) > limit
        else:
            end = len(messages) if before is None else max(0, min(before - 1, len(messages)))
            if before is not None and defects.on("history_overlap"):
                end = min(end + 1, len(messages))
            window = [m for m in messages[:end] if oldest_ts is None or m["ts"] >= oldest_ts]
            page, has_more = window[-limit:], len(window) > limit
        return {"conversation": conv_id, "messages": page, "has_more": has_more}

    async def op_recall(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _v2_feature_session(conn, "recall", "recall")
        conv, participants, group = conversation_for(app, user.user_id, msg.get("conversation"))
        mid = msg.get("message_id")
        seq = conv.by_id.get(mid) if conv is not None and isinstance(mid, str) else None
        if conv is None or seq is None:
            raise OpError("not_found", f"no message {mid!r} in this conversation")
        message = conv.messages[seq - 1]
        if message["sender"] != user.user_id and not (group and group.is_manager(user.user_id)):
            raise OpError("forbidden", "only the sender or a group owner/admin may recall")
        if message["recalled"]:
            return {}
        window = app.limits(self.config.recall_window).recall_window_s or 0.0
        if time.time() - message["ts"] > window:
            raise OpError("recall_window_expired", f"the recall window is {window:g}s")
        message["recalled"] = True
        message["body"] = ""
        fanout = Fanout(app, [(store.RECALL_MESSAGE, (app.app_id, conv.conv_id, seq))])
        rest = rest_of({"conversation": conv.conv_id, "message_id": mid, "by": user.user_id})
        for pid in participants:
            target = app.users.get(pid)
            if target is None or pid == user.user_id:
                continue
            if defects.on("recall_not_offline") and not target.conns:
                continue
            fanout.add(target, "recall", rest)
        await self.delivery.commit(fanout)
        return {}

    async def op_read(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _v2_feature_session(conn, "receipts", "read receipts")
        conv, participants, _ = conversation_for(app, user.user_id, msg.get("conversation"))
        seq = read_int(msg, "seq", None)
        if seq is None:
            raise OpError("bad_request", "'seq' is required")
        last = conv.last_seq if conv is not None else 0
        if seq > last:
            raise OpError("bad_request", f"seq {seq} is beyond the last seq {last}")
        assert conv is not None or seq == 0
        if conv is None:
            return {"seq": 0}
        old = conv.reads.get(user.user_id, 0)
        new = seq if defects.on("read_cursor_back") else max(old, seq)
        if new == old:
            return {"seq": new}
        conv.reads[user.user_id] = new
        fanout = Fanout(app, [(store.UPSERT_READ, (app.app_id, conv.conv_id, user.user_id,
                                                   new))])
        rest = rest_of({"conversation": conv.conv_id, "reader": user.user_id, "seq": new})
        for pid in participants:
            target = app.users.get(pid)
            if target is not None and pid != user.user_id:
                fanout.add(target, "receipt", rest)
        await self.delivery.commit(fanout)
        return {"seq": new}


def _v2_feature_session(conn: Conn, feature: str, what: str) -> tuple[AppState, UserState]:
    """The session of an op that needs protocol v2 and the app's optional `feature`."""
    app, user = conn.session()
    if conn.protocol == "v1":
        raise OpError("unsupported", f"{what} is not part of protocol v1")
    why = app.feature_error(feature)
    if why:
        raise OpError("feature_disabled", why)
    return app, user


def _take_token(user: UserState, rate: float | None, burst: int | None) -> None:
    """Take one send from the user's token bucket; `rate_limited` when it is empty."""
    if rate is None or burst is None or rate <= 0:
        return
    now = time.monotonic()
    if user.tokens is None:
        user.tokens = float(burst)
    else:
        user.tokens = min(float(burst), user.tokens + (now - user.tokens_at) * rate)
    user.tokens_at = now
    if user.tokens < 1.0:
        raise OpError("rate_limited", f"send rate above {rate:g}/s (burst {burst})",
                      retry_after=(1.0 - user.tokens) / rate)
    user.tokens -= 1.0


def conversation_for(app: AppState, user_id: str, conv_id: Any) -> tuple[
        Conversation | None, list[str], Group | None]:
    """The conversation, its current participants, and its group; checks membership."""
    if not isinstance(conv_id, str):
        raise OpError("bad_request", "'conversation' must be a string")
    if conv_id.startswith("d:"):
        parts = conv_id.split(":")
        if len(parts) != 3:
            raise OpError("not_found", f"no conversation {conv_id!r}")
        participants = parts[1:]
        if user_id not in participants:
            raise OpError("forbidden", f"not a participant of {conv_id}")
        return app.convs.get(conv_id), participants, None
    if conv_id.startswith("g:"):
        group = app.groups.get(conv_id[2:])
        if group is None:
            raise OpError("not_found", f"no conversation {conv_id!r}")
        if user_id not in group.members:
            raise OpError("forbidden", f"not a member of group {group.group_id}")
        return app.convs.get(conv_id), list(group.members), group
    raise OpError("not_found", f"no conversation {conv_id!r}")
