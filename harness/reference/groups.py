"""Group ops: create, info, add, remove, leave, roles, mute."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.reference import store
from harness.reference.common import Config, OpError, OpHandler
from harness.reference.delivery import Delivery, Fanout
from harness.reference.state import AppState, Conversation, Group, World, rest_of

if TYPE_CHECKING:
    from harness.reference.frontend import Conn


class GroupOps:
    """The ops on groups, their members, roles and mutes."""

    def __init__(self, world: World, config: Config, delivery: Delivery) -> None:
        self.world = world
        self.config = config
        self.delivery = delivery

    def handlers(self) -> dict[str, OpHandler]:
        return {
            "group.create": self.op_group_create,
            "group.info": self.op_group_info,
            "group.add": self.op_group_add,
            "group.remove": self.op_group_remove,
            "group.leave": self.op_group_leave,
            "group.role": self.op_group_role,
            "group.mute": self.op_group_mute,
            "group.mute_all": self.op_group_mute_all,
        }

    def _group(self, app: AppState, msg: dict[str, Any], user_id: str) -> Group:
        gid = msg.get("group")
        group = app.groups.get(gid) if isinstance(gid, str) else None
        if group is None:
            raise OpError("not_found", f"no group {gid!r}")
        if user_id not in group.members:
            raise OpError("forbidden", f"not a member of group {gid}")
        return group

    async def _group_event(self, app: AppState, group: Group, kind: str, event: dict[str, Any],
                           extra: str | None = None) -> None:
        fanout = Fanout(app, [(store.UPSERT_GROUP, (app.app_id, group.group_id, group.data()))])
        rest = rest_of(event)
        targets = list(group.members)
        if extra is not None and extra not in group.members:
            targets.append(extra)
        for uid in targets:
            fanout.add(app.users[uid], kind, rest)
        await self.delivery.commit(fanout)

    def _member_limit(self, app: AppState, count: int) -> None:
        cap = app.limits(self.config.recall_window).max_group_members
        if cap is not None and count > cap:
            raise OpError("limit_reached", f"a group of {count} members exceeds the tier's "
                                           f"{cap}")

    async def op_group_create(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        name = msg.get("name") or "group"
        members = msg.get("members") or []
        if not isinstance(name, str) or not isinstance(members, list):
            raise OpError("bad_request", "'name' must be a string and 'members' a list of ids")
        invited: list[str] = []
        for m in members:
            if not isinstance(m, str) or m not in app.users:
                raise OpError("not_found", f"no user {m!r} in this app")
            if m != user.user_id and m not in invited:
                invited.append(m)
        self._member_limit(app, 1 + len(invited))
        gid = f"g{self.world.next_group}"
        self.world.next_group += 1
        group = Group(gid, name, {user.user_id: "owner", **{m: "member" for m in invited}})
        app.groups[gid] = group
        app.convs[f"g:{gid}"] = Conversation(f"g:{gid}", gid)
        fanout = Fanout(app, [(store.UPSERT_GROUP, (app.app_id, gid, group.data()))])
        for m in invited:
            rest = rest_of({"group": gid, "user": m, "change": "added", "by": user.user_id,
                            "role": "member"})
            fanout.add(app.users[m], "membership", rest)
        await self.delivery.commit(fanout)
        return {"group": group.wire()}

    async def op_group_info(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        return {"group": self._group(app, msg, user.user_id).wire()}

    def _target(self, app: AppState, msg: dict[str, Any]) -> str:
        target = msg.get("user")
        if not isinstance(target, str) or target not in app.users:
            raise OpError("not_found", f"no user {target!r} in this app")
        return target

    def _need_manager(self, group: Group, user_id: str) -> None:
        if not group.is_manager(user_id):
            raise OpError("forbidden",
                          f"only the owner or an admin of {group.group_id} may do this")

    async def op_group_add(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        if target in group.members:
            return {"group": group.wire()}
        self._member_limit(app, len(group.members) + 1)
        group.members[target] = "member"
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "added", "by": user.user_id,
            "role": "member"})
        return {"group": group.wire()}

    async def op_group_remove(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        role = group.members.get(target)
        if role is None:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if role == "owner":
            raise OpError("forbidden", "the owner cannot be removed")
        if role == "admin" and group.members[user.user_id] != "owner":
            raise OpError("forbidden", "only the owner may remove an admin")
        del group.members[target]
        group.muted.discard(target)
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "removed", "by": user.user_id,
            "role": None}, extra=target)
        return {"group": group.wire()}

    async def op_group_leave(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        if group.members[user.user_id] == "owner":
            raise OpError("forbidden", "the owner cannot leave the group")
        del group.members[user.user_id]
        group.muted.discard(user.user_id)
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": user.user_id, "change": "left",
            "by": user.user_id, "role": None}, extra=user.user_id)
        return {"group": group.wire()}

    async def op_group_role(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        if group.members[user.user_id] != "owner":
            raise OpError("forbidden", "only the owner may change roles")
        target = self._target(app, msg)
        role = msg.get("role")
        if role not in ("admin", "member"):
            raise OpError("bad_request", f"'role' must be 'admin' or 'member', got {role!r}")
        if target not in group.members:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if group.members[target] == "owner":
            raise OpError("forbidden", "the owner's role cannot change")
        group.members[target] = role
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "role", "by": user.user_id,
            "role": role})
        return {"group": group.wire()}

    async def op_group_mute(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        muted = msg.get("muted", True)
        if not isinstance(muted, bool):
            raise OpError("bad_request", "'muted' must be true or false")
        if target not in group.members:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if group.members[target] == "owner":
            raise OpError("forbidden", "the owner cannot be muted")
        (group.muted.add if muted else group.muted.discard)(target)
        await self._group_event(app, group, "mute", {
            "group": group.group_id, "user": target, "muted": muted, "by": user.user_id})
        return {"group": group.wire()}

    async def op_group_mute_all(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = conn.session()
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        muted = msg.get("muted", True)
        if not isinstance(muted, bool):
            raise OpError("bad_request", "'muted' must be true or false")
        group.muted_all = muted
        await self._group_event(app, group, "mute", {
            "group": group.group_id, "user": None, "muted": muted, "by": user.user_id})
        return {"group": group.wire()}
