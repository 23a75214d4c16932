"""Prosody 0.12 -> 13 in place on the same data, and the rollback drill (real servers).

Seeds users, a conversation and an offline message on 0.12, upgrades the embedded server to 13
(`Upgradable.upgrade`), and checks that logins, history and the offline catch-up survived and
that new writes work; then rolls back to 0.12, which starts but cannot serve the archive items
13 wrote (the drill's finding, pinned here). The survival check is shown to fail on an
"upgrade" that loses the data (13 started on a fresh directory).
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from harness.contract import Credentials, EndpointSettings, MessageReceived, Target
from harness.errors import UpgradeRefused
from harness.servers import ServerRequest, can_upgrade
from harness.timing import units
from harness.xmpp.adapter import XmppAdapter
from harness.xmpp.embedded import ProsodyEmbedded, ProsodyOptions
from harness.xmpp.launcher import DEFAULT_BINARIES

pytestmark = pytest.mark.slow

OLD = ServerRequest("old", "xmpp", protocol="prosody-0.12",
                    server_options=ProsodyOptions(version="0.12"))
NEW = ServerRequest("new", "xmpp", protocol="prosody-13",
                    server_options=ProsodyOptions(version="13"))


@pytest.fixture(autouse=True)
def _installed() -> None:
    missing = [b for b in DEFAULT_BINARIES.values() if not Path(b).exists()]
    if missing:
        pytest.skip(f"Prosody is not installed here ({', '.join(missing)}); .ci/run installs it")


class Seed:
    """What was written on the old server, to look for after the upgrade."""

    def __init__(self) -> None:
        self.alice: Credentials | None = None
        self.bob: Credentials | None = None
        self.conversation = ""
        self.bodies: list[str] = []
        self.offline = ""


async def seed(settings: EndpointSettings) -> Seed:
    s = Seed()
    adapter = await XmppAdapter.open(settings)
    try:
        s.alice, s.bob = await adapter.provision_user(), await adapter.provision_user()
        alice = await adapter.connect(s.alice)
        bob = await adapter.connect(s.bob)
        for body in ("before the upgrade", "ünïcödé ✓"):
            ack = await alice.send(Target.to_user(s.bob.user_id), body)
            s.conversation = ack.conversation
            s.bodies.append(body)
        await bob.close()
        s.offline = "sent while bob was away"
        await alice.send(Target.to_user(s.bob.user_id), s.offline)
        s.bodies.append(s.offline)
    finally:
        await adapter.aclose()
    return s


async def survived(settings: EndpointSettings, s: Seed) -> list[str]:
    """What of the seed is missing on the server at `settings` (empty: everything survived)."""
    assert s.alice is not None
    assert s.bob is not None
    problems: list[str] = []
    adapter = await XmppAdapter.open(settings)
    try:
        try:
            bob = await adapter.connect(s.bob)  # a fresh adapter: no cursor, the whole archive
        except Exception as exc:
            return [f"bob cannot log in: {type(exc).__name__}: {exc}"]
        got: list[str] = []

        async def read() -> None:
            async for event in bob.events():
                if isinstance(event, MessageReceived) and event.offline:
                    got.append(event.message.body)
                    if len(got) == len(s.bodies):
                        return

        try:
            await asyncio.wait_for(read(), units(5))
        except TimeoutError:
            pass
        if got != s.bodies:
            problems.append(f"offline catch-up gave {got}, expected {s.bodies}")
        page = await bob.history(s.conversation)
        if [m.body for m in page.messages] != s.bodies:
            problems.append(f"history is {[m.body for m in page.messages]}, expected {s.bodies}")
        alice = await adapter.connect(s.alice)
        ack = await alice.send(Target.to_user(s.bob.user_id), "written after")
        if ack.seq != len(s.bodies) + 1:
            problems.append(f"a new message got seq {ack.seq}, expected {len(s.bodies) + 1}")
        s.bodies.append("written after")
    finally:
        await adapter.aclose()
    return problems


async def test_upgrade_keeps_the_data_and_rollback_breaks_mam() -> None:
    server = ProsodyEmbedded.for_request(OLD)
    assert can_upgrade(server)
    try:
        settings = await asyncio.to_thread(server.start)
        assert server.describe().startswith("Prosody 0.12")
        s = await seed(settings)
        old_pid = server.pid

        settings = await asyncio.to_thread(server.upgrade, NEW)
        assert server.describe().startswith("Prosody 13"), server.describe()
        assert server.pid != old_pid
        assert settings.protocol == "prosody-13"
        assert await survived(settings, s) == []

        # The rollback drill: 0.12 starts on what 13 wrote, but it is not safe: 13 stamps
        # archive items with fractions of a second and 0.12's MAM cannot format those
        # ("number has no integer representation" in util.datetime), so every archive query
        # that reaches a message written on 13 dies in the server and is never answered.
        settings = await asyncio.to_thread(server.upgrade, OLD)
        assert server.describe().startswith("Prosody 0.12")
        problems = await survived(settings, s)
        assert problems, "0.12 served 13's archive: the rollback became safe, update the drill"
        assert "no answer to an iq" in problems[0], problems
        assert "no integer representation" in server.server.log_tail(60)
    finally:
        server.stop()


async def test_the_survival_check_fails_when_the_upgrade_loses_the_data() -> None:
    """The negative control: 13 on a fresh data directory is an upgrade that lost everything."""
    old = ProsodyEmbedded.for_request(OLD)
    fresh = ProsodyEmbedded.for_request(NEW)
    try:
        s = await seed(await asyncio.to_thread(old.start))
        problems = await survived(await asyncio.to_thread(fresh.start), s)
        assert problems, "the check passed on a server that has none of the data"
        assert "cannot log in" in problems[0], problems
    finally:
        old.stop()
        fresh.stop()


async def test_a_refused_upgrade_carries_prosodys_words_and_keeps_serving(tmp_path: Path
                                                                         ) -> None:
    """A target that refuses to start: UpgradeRefused with what Prosody said; old still runs."""
    refusing = tmp_path / "prosody-refusing"
    # The real 0.12 binary, pointed at a config that is not there: Prosody refuses, in its words.
    refusing.write_text(f"#!/bin/sh\nexec {DEFAULT_BINARIES['0.12']} -F "
                        f"--config {tmp_path}/missing.cfg.lua\n")
    refusing.chmod(refusing.stat().st_mode | stat.S_IXUSR)
    target = ServerRequest("new", "xmpp", protocol="prosody-13",
                           server_options=ProsodyOptions(version="13", binary=str(refusing)))
    server = ProsodyEmbedded.for_request(OLD)
    try:
        settings = await asyncio.to_thread(server.start)
        s = await seed(settings)
        with pytest.raises(UpgradeRefused, match="unable to find the configuration file"):
            await asyncio.to_thread(server.upgrade, target)
        assert server.pid is not None
        assert server.describe().startswith("Prosody 0.12")
        assert await survived(server.settings, s) == []
    finally:
        server.stop()
