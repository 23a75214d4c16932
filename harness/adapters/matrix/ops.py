"""The Matrix client's operations: send, rooms and groups, roles, mute, recall, receipts, history.

How each maps onto Matrix is in the package docstring; the two contract rules Matrix leaves
open (`CLIENT_ENFORCED`) are refused here, before any request.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from harness.adapters.base import ClientState
from harness.adapters.matrix import translate
from harness.adapters.matrix.translate import (
    KIND_KEY,
    MUTE_ALL_LEVEL,
    MUTED_LEVEL,
    PAIR_KEY,
    ROLE_LEVELS,
    UserState,
    shared_history,
)
from harness.adapters.matrix.transport import SyncConnection
from harness.contract import Ack, Credentials, GroupInfo, HistoryPage, Target
from harness.errors import BadRequest, ConnectionLost, Forbidden, IMError, IMTimeout, NotFound

if TYPE_CHECKING:
    from harness.adapters.matrix.adapter import MatrixAdapter

# How many connect timeouts a client waits for the invite to the direct room its peer made.
INVITE_WAIT_CONNECTS = 4


class MatrixOps(SyncConnection):
    """The IMClient operations of a Matrix device."""

    def __init__(self, adapter: MatrixAdapter, credentials: Credentials, state: UserState):
        super().__init__(adapter, credentials, state)
        self._making: dict[str, asyncio.Task[str]] = {}  # peer -> creating the direct room

    async def send(
        self, to: Target, body: str = "", *, custom: Mapping[str, Any] | None = None,
        client_id: str | None = None, timeout: float | None = None,  # noqa: ASYNC109 - contract
    ) -> Ack:
        if self._status is not ClientState.CONNECTED:
            raise ConnectionLost(f"{self!r}: not connected; call reconnect() first")
        limit = timeout if timeout is not None else self._adapter.send_timeout_s
        client_id = client_id or uuid.uuid4().hex
        content = translate.message_content(body, custom, client_id, repr(self))
        retries_before = len(self.send_retries)

        async def attempt() -> tuple[str, dict[str, Any], str | None]:
            known = self._state.sent.get(client_id)  # an event this request would repeat
            room_id = await self._room_for(to)
            path = f"/rooms/{quote(room_id)}/send/m.room.message/{quote(client_id, safe='')}"
            try:
                answer = await self._call("PUT", path, content, within=limit)
            except Forbidden:
                if not await self._accept_invite(room_id):
                    raise
                answer = await self._call("PUT", path, content, within=limit)
            return room_id, answer, known

        try:
            async with asyncio.timeout(limit):
                room_id, answer, known = await self._repeat(attempt)
                event_id = answer["event_id"]
                # Honest only one way: the event existed before the request that got this ack.
                duplicate = known == event_id
                self._state.sent[client_id] = event_id
                seq, ts = await self._seen(room_id, event_id)
        except TimeoutError:
            retried = len(self.send_retries) - retries_before
            raise IMTimeout(f"{self!r}: send {client_id!r} not acknowledged in {limit}s "
                            f"({retried} retries after network errors)") from None
        return Ack(client_id, event_id, room_id, seq, ts, duplicate)

    async def _seen(self, room_id: str, event_id: str) -> tuple[int, float]:
        """Wait for the sync loop to place our own event in the room's order."""
        room = self._state.rooms.get(room_id)
        if room is not None and event_id in room.stamps:
            return room.position[event_id], room.stamps[event_id]
        return await asyncio.shield(self._waiter(event_id))

    async def _membership(self, room_id: str) -> str:
        """This user's membership in a room as the server has it ("" when it has none)."""
        path = f"/rooms/{quote(room_id)}/state/m.room.member/{quote(self._mxid)}"
        try:
            return str((await self._call("GET", path)).get("membership") or "")
        except (Forbidden, NotFound):
            return ""

    async def _accept_invite(self, room_id: str) -> bool:
        """Join a room this user is invited to but has not joined yet (the sync may lag).

        An invitee may not read the room's state, so the join is simply tried: the harness's
        rooms are invite-only, and the server refuses anyone without a pending invite.
        """
        known = self._state.rooms.get(room_id)
        if known is not None and known.members.get(self._mxid) in ("join", "leave", "ban"):
            return False
        try:
            await self._join(room_id)
        except (Forbidden, NotFound):
            return False
        return True

    async def _require_member(self, room_id: str, what: str) -> None:
        """Forbidden unless this user is in the room now (joining it when only invited).

        Matrix lets a former member read the room as it was when they left; the contract's
        view is that removed members read nothing, so the adapter refuses on their behalf.
        """
        membership = await self._membership(room_id)
        if membership == "join" or (
            membership in ("", "invite") and await self._accept_invite(room_id)
        ):
            return
        raise Forbidden(f"{self!r}: {what}: not a member of {room_id!r} "
                        f"(membership {membership or 'none'})")

    async def _kind(self, room_id: str) -> str | None:
        """"direct" / "group" / None, from the room's creation content."""
        known = self._state.rooms.get(room_id)
        if known is not None and known.kind:
            return known.kind
        create = await self._call("GET", f"/rooms/{quote(room_id)}/state/m.room.create/")
        return create.get(KIND_KEY)

    async def _room_for(self, to: Target) -> str:
        if to.group is not None:
            return to.group
        assert to.user is not None
        peer = self._adapter.mxid(to.user)
        known = self._state.direct.get(peer)
        if known:
            return known
        # Concurrent first sends to one peer create one room, not one each, and a send that
        # gives up (its timeout) does not abandon the creation halfway: the room is made by a
        # task of the client that the next send to the peer awaits in turn.
        making = self._making.get(peer)
        if making is None or (making.done() and (making.cancelled() or making.exception())):
            making = self._making[peer] = self._spawn(self._create_direct(peer),
                                                      f"matrix-direct {self.user_id}")
        return await asyncio.shield(making)

    async def _create_direct(self, peer: str) -> str:
        if peer != self._mxid:
            # Synapse invites a user that does not exist without a word: ask for the peer's
            # profile first, so a send to nobody is NotFound (M_NOT_FOUND), as the contract says.
            await self._call("GET", f"/profile/{quote(peer, safe='')}")
        pair = sorted({self._mxid, peer})
        alias = "imh-dm-" + hashlib.sha256("\n".join(pair).encode()).hexdigest()[:24]
        body: dict[str, Any] = {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": [peer] if peer != self._mxid else [],
            "room_alias_name": alias,
            "creation_content": {KIND_KEY: "direct", PAIR_KEY: pair},
            "initial_state": [shared_history()],
        }
        self._adapter.room_version_into(body)
        try:
            room_id = (await self._call("POST", "/createRoom", body))["room_id"]
        except IMError as exc:
            # Both peers creating at once: the loser gets M_ROOM_IN_USE, or in a narrower race
            # M_UNKNOWN "Room alias ... already exists".
            if exc.details.get("errcode") != "M_ROOM_IN_USE" and "already exists" not in str(exc):
                raise
            room_id = await self._join_direct(f"#{alias}:{self._adapter.server_name}")
        self._state.direct[peer] = room_id
        return room_id

    async def _join_direct(self, alias: str) -> str:
        """Join the direct room the peer is creating at the same moment, once it invites us.

        The peer's server publishes the room's alias before it sends the invite, so a join in
        between is refused ("You are not invited", or "no servers that are in the room" while
        the room is still being made). So this client joins only once its own sync has seen
        the invite (the sync loop accepts it, and this join shares that request): no refused
        join, no retry. It waits at most `INVITE_WAIT_CONNECTS` connect timeouts; an invite
        that never comes is an `IMTimeout` naming the room.
        """
        found = await self._call("GET", f"/directory/room/{quote(alias)}")
        room_id = str(found["room_id"])
        known = self._state.rooms.get(room_id)
        if known is None or known.members.get(self._mxid) != "join":
            limit = self._adapter.settings.connect_timeout_s * INVITE_WAIT_CONNECTS
            try:
                async with asyncio.timeout(limit):
                    await self._invite_seen(room_id).wait()
            except TimeoutError:
                raise IMTimeout(
                    f"{self!r}: the peer made direct room {room_id} ({alias}) but its invite "
                    f"did not reach this client's sync in {limit:g}s"
                ) from None
            await self._join(room_id)
        return room_id

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        invite = [self._adapter.mxid(m) for m in members if self._adapter.mxid(m) != self._mxid]
        body: dict[str, Any] = {
            "preset": "private_chat",
            "name": name,
            "invite": invite,
            "creation_content": {KIND_KEY: "group"},
            "initial_state": [shared_history()],
            "power_level_content_override": {
                "users_default": 0, "events_default": 0, "state_default": 50,
                "invite": 50, "kick": 50, "ban": 50, "redact": 50,
            },
        }
        self._adapter.room_version_into(body)
        room_id = (await self._call("POST", "/createRoom", body))["room_id"]
        return await self.group_info(room_id)

    async def group_info(self, group: str) -> GroupInfo:
        await self._require_member(group, "group_info")
        state = await self._call("GET", f"/rooms/{quote(group)}/state")
        events: list[dict[str, Any]] = state if isinstance(state, list) else []
        return translate.group_info(group, events, self._adapter.local)

    async def add_member(self, group: str, user: str) -> None:
        await self._call("POST", f"/rooms/{quote(group)}/invite",
                         {"user_id": self._adapter.mxid(user)})

    async def remove_member(self, group: str, user: str) -> None:
        await self._call("POST", f"/rooms/{quote(group)}/kick",
                         {"user_id": self._adapter.mxid(user)})

    async def leave(self, group: str) -> None:
        info = await self.group_info(group)
        owners = [m for m, role in info.members.items() if role == "owner"]
        if owners == [self.user_id]:
            # Matrix lets anyone leave; the contract's owner hands the group over first.
            raise Forbidden(f"{self!r}: the owner cannot leave {group!r}; make another owner")
        await self._call("POST", f"/rooms/{quote(group)}/leave", {})

    async def _edit_power(self, group: str, edit: Any) -> None:
        path = f"/rooms/{quote(group)}/state/m.room.power_levels/"
        power = await self._call("GET", path)
        edit(power)
        await self._call("PUT", path, power)

    async def set_role(self, group: str, user: str, role: str) -> None:
        if role not in ROLE_LEVELS:
            raise BadRequest(f"role {role!r} is unknown; use one of {sorted(ROLE_LEVELS)}")
        mxid = self._adapter.mxid(user)

        def edit(power: dict[str, Any]) -> None:
            power.setdefault("users", {})[mxid] = ROLE_LEVELS[role]

        await self._edit_power(group, edit)

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        mxid = self._adapter.mxid(user)

        def edit(power: dict[str, Any]) -> None:
            users = power.setdefault("users", {})
            if muted:
                users[mxid] = MUTED_LEVEL
            elif users.get(mxid) == MUTED_LEVEL:
                del users[mxid]

        await self._edit_power(group, edit)

    async def mute_all(self, group: str, muted: bool = True) -> None:
        def edit(power: dict[str, Any]) -> None:
            power["events_default"] = MUTE_ALL_LEVEL if muted else 0

        await self._edit_power(group, edit)

    async def recall(self, conversation: str, message_id: str) -> None:
        room, event = quote(conversation), quote(message_id)
        known = self._state.rooms.get(conversation)
        if known is None or known.members.get(self._mxid) != "join":
            await self._accept_invite(conversation)
        # Matrix accepts redactions of unknown event ids; the contract wants NotFound.
        found = await self._call("GET", f"/rooms/{room}/event/{event}")
        if found.get("sender") != self._mxid and await self._kind(conversation) == "direct":
            # Redaction is moderation in Matrix: a DM peer with power (both, with the
            # trusted_private_chat preset; the creator, from room version 12) may redact the
            # other's messages. The contract's 1:1 recall is the sender's only.
            raise Forbidden(f"{self!r}: only the sender recalls a 1:1 message")
        await self._call("PUT", f"/rooms/{room}/redact/{event}/{uuid.uuid4().hex}", {})

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        room = self._state.rooms.get(conversation)
        if room is None or not 1 <= up_to_seq <= len(room.messages):
            raise NotFound(f"{self!r}: no message with seq {up_to_seq} in {conversation!r}")
        event_id = room.messages[up_to_seq - 1]
        await self._call(
            "POST", f"/rooms/{quote(conversation)}/receipt/m.read/{quote(event_id)}", {}
        )

    async def history(
        self, conversation: str, *, before: int | None = None, after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        await self._require_member(conversation, "history")
        # The whole room is read from its start, so seq numbers match the live ones (O(room)).
        events = await self._room_from_start(conversation)
        return translate.history_page(conversation, events, before=before, after=after,
                                      limit=limit, local=self._adapter.local)
