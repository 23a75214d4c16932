"""Every seeded defect: off, the service behaves; on, the behaviour observably changes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import service_client
from service_client import Api, Client, Svc, login, push_receiver, service_fixture

from harness.reference import tokens
from harness.reference.defects import DEFECTS
from harness.timing import units, until

KEEPALIVE = 0.3


svc = service_fixture("defects", "--defect-rate", "0.5", "--seed", "7", "--keepalive-v1",
                      str(KEEPALIVE), "--keepalive-v2", str(KEEPALIVE))
clients = service_client.clients


@pytest.fixture
async def api(svc: Svc) -> AsyncIterator[Api]:
    client = Api(svc)
    assert not any((await client.set_defects()).values())
    yield client
    await client.set_defects(**dict.fromkeys(DEFECTS, False))
    await client.close()


@contextlib.asynccontextmanager
async def defect(api: Api, name: str) -> AsyncIterator[None]:
    assert (await api.set_defects(**{name: True}))[name] is True
    try:
        yield
    finally:
        await api.set_defects(**{name: False})


async def setup(api: Api, *names: str, **app: object) -> tuple[str, str, list[str]]:
    app_id, key = await api.create_app(**({"tier": "pro", "features": {"recall": True,
                                                                      "receipts": True}} | app))
    return app_id, key, [await api.user(app_id, key, n) for n in names]


def test_every_defect_has_a_test_here() -> None:
    from test_journey_defects import EXPECTED  # the upgrade defects: tested through the journey

    missing = [d for d in DEFECTS if f"test_{d}" not in globals() and d not in EXPECTED]
    assert not missing


async def _replayed_bodies(svc: Svc, token: str, clients: list[Client]) -> list[str]:
    c = await login(svc, token, clients, cursor=0)
    return [m["body"] for m in c.messages()]


async def test_drop_delivery(svc: Svc, api: Api, clients: list[Client]) -> None:
    for on in (False, True):
        _, _, (ta, tb) = await setup(api, "alice", "bob")
        a = await login(svc, ta, clients)
        async with defect(api, "drop_delivery") if on else contextlib.nullcontext():
            for i in range(20):
                await a.ok("send", to={"user": "bob"}, body=str(i))
        got = await _replayed_bodies(svc, tb, clients)
        if on:
            assert len(got) < 20
            assert got == sorted(got, key=int)
        else:
            assert got == [str(i) for i in range(20)]


async def test_reorder_fanout(svc: Svc, api: Api, clients: list[Client]) -> None:
    for on in (False, True):
        _, _, (ta, tb, tc) = await setup(api, "alice", "bob", "carol")
        a = await login(svc, ta, clients)
        gid = (await a.ok("group.create", members=["bob", "carol"]))["group"]["group_id"]
        async with defect(api, "reorder_fanout") if on else contextlib.nullcontext():
            for i in range(20):
                await a.ok("send", to={"group": gid}, body=str(i))
        orders = [[int(b) for b in await _replayed_bodies(svc, t, clients)] for t in (tb, tc)]
        if on:
            assert any(o != sorted(o) for o in orders), orders
        else:
            assert orders == [list(range(20))] * 2


async def test_duplicate_on_reconnect(svc: Svc, api: Api, clients: list[Client]) -> None:
    _, _, (ta, tb) = await setup(api, "alice", "bob")
    a = await login(svc, ta, clients)
    for i in range(5):
        await a.ok("send", to={"user": "bob"}, body=str(i))
    fine = await login(svc, tb, clients, cursor=3)
    assert [e["pos"] for e in fine.events if e["ev"] == "message"] == [4, 5]
    async with defect(api, "duplicate_on_reconnect"):
        bad = await login(svc, tb, clients, cursor=3)
    assert [e["pos"] for e in bad.events if e["ev"] == "message"] == [3, 4, 5]


async def test_ack_before_persist(tmp_path: Path) -> None:
    for on in (False, True):
        svc = Svc(tmp_path / f"abp-{on}.sqlite", *(["--defect", "ack_before_persist"] if on
                                                   else []))
        svc.start()
        api = Api(svc)
        try:
            app, key = await api.create_app(tier="pro")
            ta, tb = await api.user(app, key, "alice"), await api.user(app, key, "bob")
            a = await Client.login_as(svc, ta)
            acks = await asyncio.gather(*(a.ok("send", to={"user": "bob"}, body=str(i))
                                          for i in range(20)))
            assert len(acks) == 20
            svc.restart(kill=True)
            got = await _replayed_bodies(svc, tb, [])
            if on:
                assert len(got) < 20
            else:
                assert got == [str(i) for i in range(20)]
            await a.close()
        finally:
            await api.close()
            svc.kill()


async def test_recall_not_offline(svc: Svc, api: Api, clients: list[Client]) -> None:
    for on in (False, True):
        _, _, (ta, tb) = await setup(api, "alice", "bob")
        a = await login(svc, ta, clients)
        ack = await a.ok("send", to={"user": "bob"}, body="oops")
        async with defect(api, "recall_not_offline") if on else contextlib.nullcontext():
            await a.ok("recall", conversation=ack["conversation"], message_id=ack["message_id"])
        b = await login(svc, tb, clients, cursor=0)
        recalls = [e for e in b.events if e["ev"] == "recall"]
        assert len(recalls) == (0 if on else 1)
        page = await b.ok("history", conversation=ack["conversation"])
        assert page["messages"][0]["recalled"] is True


async def test_read_cursor_back(svc: Svc, api: Api, clients: list[Client]) -> None:
    _, _, (ta, tb) = await setup(api, "alice", "bob")
    a = await login(svc, ta, clients)
    b = await login(svc, tb, clients)
    for i in range(4):
        ack = await a.ok("send", to={"user": "bob"}, body=str(i))
    conv = ack["conversation"]
    await b.ok("read", conversation=conv, seq=3)
    assert (await b.ok("read", conversation=conv, seq=1))["seq"] == 3
    async with defect(api, "read_cursor_back"):
        assert (await b.ok("read", conversation=conv, seq=1))["seq"] == 1
    receipts = await a.wait_event(lambda e: e["ev"] == "receipt", count=2)
    assert [r["seq"] for r in receipts] == [3, 1]


async def test_history_overlap(svc: Svc, api: Api, clients: list[Client]) -> None:
    _, _, (ta, _tb) = await setup(api, "alice", "bob")
    a = await login(svc, ta, clients)
    for i in range(10):
        ack = await a.ok("send", to={"user": "bob"}, body=str(i))
    conv = ack["conversation"]
    page = await a.ok("history", conversation=conv, before=6, limit=5)
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4, 5]
    async with defect(api, "history_overlap"):
        page = await a.ok("history", conversation=conv, before=6, limit=5)
    assert 6 in [m["seq"] for m in page["messages"]]


async def test_nonmember_post(svc: Svc, api: Api, clients: list[Client]) -> None:
    _, _, (ta, _tb, tc) = await setup(api, "alice", "bob", "mallory")
    a = await login(svc, ta, clients)
    m = await login(svc, tc, clients)
    gid = (await a.ok("group.create", members=["bob"]))["group"]["group_id"]
    await m.fail("send", "forbidden", to={"group": gid}, body="spam")
    async with defect(api, "nonmember_post"):
        await m.ok("send", to={"group": gid}, body="spam")
    await a.wait_event(lambda e: e.get("message", {}).get("sender") == "mallory")


async def test_cross_app_token(svc: Svc, api: Api, clients: list[Client]) -> None:
    app_a, key_a, _ = await setup(api)
    app_b, _, _ = await setup(api, "bob")
    foreign = tokens.mint(app_a, key_a, "bob")
    c = await Client.open(svc)
    clients.append(c)
    await c.fail("login", "unauthorized", token=foreign, app=app_b)
    async with defect(api, "cross_app_token"):
        answer = await c.ok("login", token=foreign, app=app_b)
    assert answer["app"] == app_b


async def test_tier_not_raised(svc: Svc, api: Api, clients: list[Client]) -> None:
    for on in (False, True):
        app, key, _ = await setup(api, tier="free", features={})
        async with defect(api, "tier_not_raised") if on else contextlib.nullcontext():
            await api.patch_app(app, tier="pro", delay_s=0)
        c = await login(svc, await api.user(app, key, "alice"), clients)
        assert c.login["tier"] == "pro"
        assert c.login["limits"]["max_message_bytes"] == (5120 if on else 65536)


async def _connections(api: Api, app: str) -> int:
    return int((await api.counters())["connections_by_app"].get(app, 0))


async def test_keepalive_dead(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, _, (ta, tb) = await setup(api, "alice", "bob")
    live = await login(svc, ta, clients)
    mute = await login(svc, tb, clients)
    mute.ws.transport.pause_reading()  # a dead peer: pings are never read, never answered

    async def only_live_left() -> bool:
        return await _connections(api, app) == 1

    async with defect(api, "keepalive_dead"):
        await asyncio.sleep(KEEPALIVE * 6)  # three full keepalive periods, in service time
        assert await _connections(api, app) == 2
    await until(only_live_left, timeout=units(2) + KEEPALIVE * 4, what="the dead peer dropped")
    mute.ws.transport.resume_reading()
    await mute.closed()
    await live.ok("ping")


async def test_no_push(svc: Svc, api: Api, clients: list[Client]) -> None:
    async with push_receiver() as (url, received):
        _, _, (ta, _tb) = await setup(api, "alice", "bob", webhook=url)
        a = await login(svc, ta, clients)
        async with defect(api, "no_push"):
            lost = await a.ok("send", to={"user": "bob"}, body="never pushed")
        kept = await a.ok("send", to={"user": "bob"}, body="pushed")
        await until(lambda: received, timeout=units(5), what="a push")
        assert [p["message_id"] for p in received] == [kept["message_id"]]
        assert lost["message_id"] != kept["message_id"]


async def test_slow_delivery(svc: Svc, api: Api, clients: list[Client]) -> None:
    from harness.reference.defects import SLOW_DELIVERY_S

    _, _, (ta, tb) = await setup(api, "alice", "bob")
    a = await login(svc, ta, clients)
    b = await login(svc, tb, clients)
    async with defect(api, "slow_delivery"):
        acked = []
        for i in range(5):
            await a.ok("send", to={"user": "bob"}, body=str(i))
            acked.append(time.monotonic())
        await b.until(lambda: len(b.messages()) == 5, within=units(5), what="5 slow deliveries")
        arrived = time.monotonic()
    # the last one left at least the defect's delay after its ack, and none overtook another
    assert arrived - acked[-1] >= SLOW_DELIVERY_S * 0.9
    assert [m["body"] for m in b.messages()] == [str(i) for i in range(5)]
    await a.ok("send", to={"user": "bob"}, body="on time")
    await b.until(lambda: len(b.messages()) == 6, within=units(5), what="the next delivery")
