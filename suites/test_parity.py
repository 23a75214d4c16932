"""Parity: one scripted conversation on the old and on the new endpoint reads the same.

The transcripts name users by role and conversations by order of appearance, and leave out ids
and clocks. Where the two profiles declare a difference (message size, recall, receipts) a line
says whether the endpoint behaved *as its profile declares*, so only undeclared differences
show in the diff.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Awaitable, Callable

import pytest

from harness.contract import Ack, Event, MembershipChanged, MessageReceived, Target
from harness.errors import FeatureDisabled, IMError, Unsupported
from harness.testkit import Endpoint, Oracle, User, new_user

ROLES = ("alice", "bob", "carol", "dave")


class Script:
    """Runs the conversation on one endpoint and writes what each user observed."""

    def __init__(self, endpoint: Endpoint, oracle: Oracle, size: int) -> None:
        self.ep = endpoint
        self.oracle = oracle
        self.size = size  # a body size both profiles accept
        self.users: dict[str, User] = {}
        self.lines: list[str] = []
        self._convs: dict[str, str] = {}

    def role(self, user_id: str) -> str:
        return next((r for r, u in self.users.items() if u.id == user_id), "?")

    def conv(self, conversation: str) -> str:
        return self._convs.setdefault(conversation, f"conv{len(self._convs) + 1}")

    def note(self, step: str, ack: Ack) -> None:
        self.lines.append(
            f"{step}: ack seq={ack.seq} in {self.conv(ack.conversation)} duplicate={ack.duplicate}"
        )

    async def outcome(self, op: Awaitable[object]) -> str:
        try:
            await op
        except IMError as exc:
            return f"refused {type(exc).__name__}"
        return "ok"

    def declared(self, what: str, outcome: str, expected: str) -> None:
        verdict = "as declared" if outcome == expected else f"{outcome}, declared {expected}"
        self.lines.append(f"{what}: {verdict}")

    async def run(
        self, units: Callable[[float], float], until: Callable[..., Awaitable[object]]
    ) -> list[str]:
        for role in ROLES:
            self.users[role] = await new_user(self.ep, self.oracle, role)
        alice, bob, carol, dave = (self.users[r] for r in ROLES)

        self.note("alice->bob hello", await alice.send(bob, "hello bob 👋"))
        self.note("bob->alice reply", await bob.send(alice, "hi alice — ça va?"))
        for i in range(5):
            self.note(f"alice->bob burst {i}", await alice.send(bob, f"burst {i}"))
        cid = f"c-{uuid.uuid4().hex}"
        self.note("alice->bob once", await alice.send(bob, "only once", client_id=cid))
        self.note("alice->bob resend", await alice.send(bob, "only once", client_id=cid))

        group = await alice.client.create_group("parity", [bob.id, carol.id])
        roles = ", ".join(f"{self.role(u)}={r}" for u, r in sorted(group.members.items(),
                                                                  key=lambda i: self.role(i[0])))
        self.lines.append(f"group created: {roles}")
        for sender in (alice, bob, carol):
            self.note(f"{self.role(sender.id)}->group", await sender.send(group, "hi all"))
        await carol.close()
        for i in range(2):
            self.note(f"alice->group while carol away {i}", await alice.send(group, f"away {i}"))
        await carol.reconnect()
        outsider = dave.client.send(Target.to_group(group.group_id), "let me in")
        self.lines.append(f"dave->group (not a member): {await self.outcome(outsider)}")

        self.note(f"alice->bob {self.size} bytes", await alice.send(bob, "s" * self.size))

        mine = [u.id for u in self.users.values()]
        await until(lambda: not any(self.oracle.missing().get(u) for u in mine),
                    timeout=units(5), what="every message of the script to arrive")
        for role, user in self.users.items():
            for event in user.recorder.events:
                self.lines.append(f"{role} saw {self._render(event)}")

        # Declared differences come after the snapshot, so they show only as verdicts.
        limit = self.ep.info.limits.max_message_bytes
        over = "refused TooLarge" if limit is not None and self.size + 1 > limit else "ok"
        big = alice.send(bob, "s" * (self.size + 1))
        self.declared(f"alice->bob {self.size}+1 bytes", await self.outcome(big), over)
        last = await alice.send(bob, "the last word")
        await bob.recorder.wait_messages(1, conversation=last.conversation, timeout=units(5))
        for feature, op in (
            ("recall", lambda: alice.recall(last)),
            ("receipts", lambda: bob.client.mark_read(last.conversation, last.seq)),
        ):
            result = await self.outcome(op())
            if result in (f"refused {FeatureDisabled.__name__}", f"refused {Unsupported.__name__}"):
                result = "refused"
            self.declared(feature, result, "ok" if self.ep.info.supports(feature) else "refused")
        return self.lines

    def _render(self, event: Event) -> str:
        if isinstance(event, MessageReceived):
            m = event.message
            body = m.body if len(m.body) <= 40 else f"<{len(m.body.encode())} bytes>"
            flag = " (offline)" if event.offline else ""
            return f"{self.role(m.sender)} in {self.conv(m.conversation)} #{m.seq}: {body!r}{flag}"
        if isinstance(event, MembershipChanged):
            return f"membership {event.change} {self.role(event.user)} by {self.role(event.by)}"
        return type(event).__name__

    async def close(self) -> None:
        for user in self.users.values():
            await user.close()


@pytest.mark.capability("groups")  # the script has a group conversation
async def test_same_conversation_reads_the_same_on_old_and_new(endpoints, units, until):
    """The same conversation gives the same transcript on old and new, but for declared tiers."""
    if len(endpoints) < 2:
        pytest.skip(f"parity needs two endpoints; selected: {', '.join(endpoints)}")
    (old_name, old), (new_name, new) = list(endpoints.items())[:2]
    sizes = [ep.info.limits.max_message_bytes for ep in (old, new)]
    size = min(s for s in sizes if s is not None) if any(sizes) else 4096

    transcripts: dict[str, list[str]] = {}
    oracles: dict[str, Oracle] = {}
    for name, ep in ((old_name, old), (new_name, new)):
        # One oracle per endpoint: message ids are only unique within one service.
        script = Script(ep, oracles.setdefault(name, Oracle()), size)
        try:
            transcripts[name] = await script.run(units, until)
        finally:
            await script.close()

    a, b = transcripts[old_name], transcripts[new_name]
    if a != b:
        diff = "\n".join(difflib.unified_diff(a, b, old_name, new_name, lineterm=""))
        pytest.fail(f"the transcripts of {old_name!r} and {new_name!r} differ:\n{diff}")
    for checked in oracles.values():
        checked.assert_ok()
    assert any(line.startswith("bob saw alice") for line in a), "the transcript is empty"

