"""The reference client's operations: send, groups, roles, mute, recall, receipts, history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from harness.adapters.base import ClientState
from harness.adapters.reference import translate
from harness.adapters.reference.transport import Connection, Expired, PendingSend, expire
from harness.contract import Ack, GroupInfo, HistoryPage, Target
from harness.errors import ConnectionLost, IMTimeout

_NOT_CONNECTED = frozenset(
    {ClientState.DROPPED, ClientState.CLOSED, ClientState.FAILED, ClientState.NEW}
)


class Operations(Connection):
    """The IMClient operations, each one request on the connection (sends: kept until acked)."""

    async def send(
        self,
        to: Target,
        body: str = "",
        *,
        custom: Mapping[str, Any] | None = None,
        client_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract's signature
    ) -> Ack:
        """Send; kept and resent with the same client id across reconnects until acked."""
        if self._status in _NOT_CONNECTED:
            raise ConnectionLost(f"{self}: send: not connected; call reconnect() first")
        cid = client_id or f"c-{uuid.uuid4().hex}"
        frame = translate.send_frame(to, body, custom, cid)
        ws = self._ws  # its loop is the running one (get_running_loop costs a getpid() in 3.11)
        loop = ws.loop if ws is not None else asyncio.get_running_loop()
        future = loop.create_future()
        pending = PendingSend(frame, future)
        key = next(self._send_keys)
        self._sends[key] = pending
        limit = self.send_timeout_s if timeout is None else timeout
        # A timer on the future, not asyncio.timeout(): cheaper on the load generator's hot path.
        timer = loop.call_later(limit, expire, future)
        try:
            self._transmit(pending)
            if ws is not None and ws._paused:
                await ws.drain()
            try:
                answer = await future
            except Expired:
                raise IMTimeout(f"{self}: send {cid}: no ack within {limit:.1f}s") from None
        finally:
            timer.cancel()
            del self._sends[key]
            for rid in pending.request_ids:
                self._send_ids.pop(rid, None)
        if not answer.get("ok"):
            raise translate.error(answer, "send")
        return translate.ack(answer, cid)

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        answer = await self._call("group.create", name=name, members=list(members))
        return translate.group(answer["group"])

    async def group_info(self, group: str) -> GroupInfo:
        return translate.group((await self._call("group.info", group=group))["group"])

    async def add_member(self, group: str, user: str) -> None:
        await self._call("group.add", group=group, user=user)

    async def remove_member(self, group: str, user: str) -> None:
        await self._call("group.remove", group=group, user=user)

    async def leave(self, group: str) -> None:
        await self._call("group.leave", group=group)

    async def set_role(self, group: str, user: str, role: str) -> None:
        await self._call("group.role", group=group, user=user, role=role)

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        await self._call("group.mute", group=group, user=user, muted=muted)

    async def mute_all(self, group: str, muted: bool = True) -> None:
        await self._call("group.mute_all", group=group, muted=muted)

    async def recall(self, conversation: str, message_id: str) -> None:
        await self._call("recall", conversation=conversation, message_id=message_id)

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        await self._call("read", conversation=conversation, seq=up_to_seq)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        answer = await self._call("history", conversation=conversation, before=before,
                                  after=after, limit=limit)
        return translate.history_page(answer, conversation)
