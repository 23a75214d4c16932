"""The reference service's IM guarantees, over real sockets against a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

import service_client
from service_client import Api, Client, Svc, login, push_receiver, service_fixture

from harness.reference import tokens
from harness.timing import units

_n = itertools.count()


def uid(name: str) -> str:
    return f"{name}{next(_n)}"


svc = service_fixture("core")
api, clients = service_client.api, service_client.clients


async def pro_app(api: Api, **kw: object) -> tuple[str, str]:
    return await api.create_app(tier="pro", features={"recall": True, "receipts": True}, **kw)


async def test_acked_messages_survive_kill_9(tmp_path: Path) -> None:
    svc = Svc(tmp_path / "crash.sqlite").start()
    api = Api(svc)
    try:
        app, key = await pro_app(api)
        ta, tb = await api.user(app, key, "alice"), await api.user(app, key, "bob")
        alice = await Client.login_as(svc, ta)
        group = (await alice.ok("group.create", name="g", members=["bob"]))["group"]
        sends = [alice.request("send", to={"user": "bob"}, body=f"m{i}", client_id=f"c{i}")
                 for i in range(40)]
        sends += [alice.request("send", to={"group": group["group_id"]}, body=f"g{i}",
                                client_id=f"gc{i}") for i in range(10)]
        acks = await asyncio.gather(*sends)
        assert all(a["ok"] for a in acks)
        await alice.close()
        svc.restart(kill=True)
        await api.close()
        api = Api(svc)
        bob = await Client.login_as(svc, tb, cursor=0)
        got = [m["message_id"] for m in bob.messages()]
        assert got == [a["message_id"] for a in acks]
        assert all(e["offline"] for e in bob.events if e["ev"] == "message")
        page = await bob.ok("history", conversation="d:alice:bob", limit=100)
        assert [m["seq"] for m in page["messages"]] == list(range(1, 41))
        info = await bob.ok("group.info", group=group["group_id"])
        assert info["group"]["members"] == {"alice": "owner", "bob": "member"}
        again = await Client.login_as(svc, ta)
        dup = await again.ok("send", to={"user": "bob"}, body="m0", client_id="c0")
        assert dup["duplicate"] is True
        assert dup["message_id"] == acks[0]["message_id"]
        late = asyncio.ensure_future(
            again.request("send", to={"user": "bob"}, body="during shutdown", client_id="z"))
        await asyncio.sleep(0)
        # SIGTERM with clients connected: flush, close, exit 0
        assert await asyncio.to_thread(svc.stop) == 0
        svc.start(same_ports=True)
        with contextlib.suppress(Exception):
            await late
        bob2 = await Client.login_as(svc, tb, cursor=bob.last_pos)
        assert [m["client_id"] for m in bob2.messages()] in ([], ["z"])
        await bob2.close()
        await bob.close()
        await again.close()
    finally:
        await api.close()
        svc.kill()


async def test_bad_expired_and_cross_app_tokens(svc: Svc, api: Api,
                                                clients: list[Client]) -> None:
    app_a, key_a = await pro_app(api)
    app_b, key_b = await pro_app(api)
    await api.user(app_b, key_b, "bob")
    c = await Client.open(svc)
    clients.append(c)
    await c.fail("login", "unauthorized", token="not-a-token")
    expired = tokens.mint(app_a, key_a, "alice", ttl_s=-1)
    err = await c.fail("login", "unauthorized", token=expired)
    assert "expired" in err["message"]
    good_a = tokens.mint(app_a, key_a, "alice")
    await c.fail("login", "unauthorized", token=good_a, app=app_b)
    forged = tokens.mint(app_b, key_a, "bob")  # claims app B, signed with A's key
    await c.fail("login", "unauthorized", token=forged)
    await c.fail("send", "unauthorized", to={"user": "bob"}, body="x")
    answer = await c.ok("login", token=good_a)  # the connection stayed usable
    assert (answer["user"], answer["app"]) == ("alice", app_a)
    status, _ = await api.call("POST", f"/apps/{app_a}/users", {"user_id": "x"}, token=key_b)
    assert status == 401


async def test_members_only_and_recall_of_anothers_message(svc: Svc, api: Api,
                                                            clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a, b, c, d = [await login(svc, await api.user(app, key, n), clients)
                  for n in ("alice", "bob", "carol", "dave")]
    group = (await a.ok("group.create", name="g", members=["bob", "carol"]))["group"]["group_id"]
    await d.fail("send", "forbidden", to={"group": group}, body="let me in")
    await d.fail("history", "forbidden", conversation=f"g:{group}")
    await d.fail("group.info", "forbidden", group=group)
    await d.fail("history", "forbidden", conversation="d:alice:bob")
    ack = await b.ok("send", to={"user": "alice"}, body="private")
    await c.fail("recall", "forbidden", conversation=ack["conversation"],
                 message_id=ack["message_id"])
    gack = await b.ok("send", to={"group": group}, body="in group")
    await c.fail("recall", "forbidden", conversation=f"g:{group}", message_id=gack["message_id"])
    await a.ok("recall", conversation=f"g:{group}", message_id=gack["message_id"])  # the owner
    await c.fail("recall", "not_found", conversation=f"g:{group}", message_id="m999999")


async def test_resend_with_same_client_id_is_one_message(svc: Svc, api: Api,
                                                         clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a = await login(svc, await api.user(app, key, "alice"), clients)
    b = await login(svc, await api.user(app, key, "bob"), clients)
    first, *retries = await asyncio.gather(*(
        a.ok("send", to={"user": "bob"}, body="once", client_id="same") for _ in range(4)))
    late = await a.ok("send", to={"user": "bob"}, body="once", client_id="same")
    assert first["duplicate"] is False
    assert all(r["duplicate"] for r in [*retries, late])
    assert {r["message_id"] for r in [first, *retries, late]} == {first["message_id"]}
    marker = await a.ok("send", to={"user": "bob"}, body="marker", client_id="other")
    await b.wait_event(lambda e: e.get("message", {}).get("message_id") == marker["message_id"])
    assert [m["body"] for m in b.messages()] == ["once", "marker"]


async def test_offline_catch_up_exactly_once_in_order(svc: Svc, api: Api,
                                                      clients: list[Client]) -> None:
    app, key = await pro_app(api)
    ta, tb = await api.user(app, key, "alice"), await api.user(app, key, "bob")
    a = await login(svc, ta, clients)
    b = await Client.login_as(svc, tb)
    for i in range(5):
        await a.ok("send", to={"user": "bob"}, body=f"live{i}")
    await b.wait_event(lambda e: e["ev"] == "message", count=5)
    cursor = b.last_pos
    await b.close()
    await asyncio.gather(*(a.ok("send", to={"user": "bob"}, body=f"off{i}") for i in range(30)))
    b2 = await login(svc, tb, clients, cursor=cursor)
    replay = [e for e in b2.events if e["ev"] == "message"]
    assert [e["message"]["body"] for e in replay] == [f"off{i}" for i in range(30)]
    assert [e["pos"] for e in replay] == list(range(cursor + 1, cursor + 31))
    assert all(e["offline"] for e in replay)
    caught = [e for e in b2.events if e["ev"] == "caught_up"]
    assert caught == [{"ev": "caught_up", "pos": cursor + 30}]
    await a.ok("send", to={"user": "bob"}, body="after")
    ev = (await b2.wait_event(lambda e: e["ev"] == "message" and not e["offline"]))[0]
    assert ev["pos"] == cursor + 31
    b3 = await login(svc, tb, clients, cursor=cursor + 31)
    assert [e["ev"] for e in b3.events] == ["caught_up"]
    b4 = await login(svc, tb, clients, cursor=None)  # default: no replay
    assert b4.login["cursor"] == cursor + 31
    assert [e["ev"] for e in b4.events] == ["caught_up"]


async def test_history_pages_agree_with_live_delivery(svc: Svc, api: Api,
                                                      clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a = await login(svc, await api.user(app, key, "alice"), clients)
    b = await login(svc, await api.user(app, key, "bob"), clients)
    for i in range(25):
        await a.ok("send", to={"user": "bob"}, body=f"h{i}", custom=None)
    live = (await b.wait_event(lambda e: e["ev"] == "message", count=25))
    pages, before = [], None
    while True:
        page = await b.ok("history", conversation="d:alice:bob", before=before, limit=10)
        pages = page["messages"] + pages
        if not page["has_more"]:
            break
        before = page["messages"][0]["seq"]
    assert pages == [e["message"] for e in live]
    fwd = await b.ok("history", conversation="d:alice:bob", after=20, limit=10)
    assert [m["seq"] for m in fwd["messages"]] == [21, 22, 23, 24, 25]
    assert fwd["has_more"] is False
    await b.fail("history", "bad_request", conversation="d:alice:bob", limit=101)


async def test_push_goes_to_webhook_for_offline_recipients_only(
        svc: Svc, api: Api, clients: list[Client]) -> None:
    async with push_receiver() as (url, received):
        app, key = await pro_app(api, webhook=url)
        a = await login(svc, await api.user(app, key, "alice"), clients)
        tb = await api.user(app, key, "bob")
        ack = await a.ok("send", to={"user": "bob"}, body="you are offline, " + "x" * 40)
        b = await login(svc, tb, clients)
        ack2 = await a.ok("send", to={"user": "bob"}, body="you are online")
        await b.wait_event(lambda e: e.get("message", {}).get("seq") == ack2["seq"])
        ack3 = await a.ok("send", to={"user": "bob"}, body="z")
        await b.wait_event(lambda e: e.get("message", {}).get("seq") == ack3["seq"])
        await b.close()
        ack4 = await a.ok("send", to={"user": "bob"}, body="gone again")
        await b.until(lambda: len(received) >= 2, what="two pushes")
        assert [p["message_id"] for p in received] == [ack["message_id"], ack4["message_id"]]
        first = received[0]
        assert first["app"] == app
        assert first["to"] == "bob"
        assert first["sender"] == "alice"
        assert first["conversation"] == ack["conversation"]
        assert first["seq"] == ack["seq"]
        assert first["preview"] == ("you are offline, " + "x" * 40)[:32]


async def test_groups_roles_and_mutes(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a, b, c, d = [await login(svc, await api.user(app, key, n), clients)
                  for n in ("alice", "bob", "carol", "dave")]
    g = (await a.ok("group.create", name="team", members=["bob", "carol"]))["group"]
    gid = g["group_id"]
    assert g["members"] == {"alice": "owner", "bob": "member", "carol": "member"}
    await b.wait_event(lambda e: e["ev"] == "membership" and e["user"] == "bob")
    await b.fail("group.add", "forbidden", group=gid, user="dave")
    await b.fail("group.role", "forbidden", group=gid, user="carol", role="admin")
    await a.ok("group.role", group=gid, user="bob", role="admin")
    await b.ok("group.add", group=gid, user="dave")
    await d.wait_event(lambda e: e["ev"] == "membership" and e["change"] == "added")
    await b.fail("group.remove", "forbidden", group=gid, user="alice")
    await b.ok("group.mute", group=gid, user="carol", muted=True)
    await c.fail("send", "forbidden", to={"group": gid}, body="muted")
    await b.ok("group.mute", group=gid, user="carol", muted=False)
    await c.ok("send", to={"group": gid}, body="unmuted")
    await a.ok("group.mute_all", group=gid, muted=True)
    await d.fail("send", "forbidden", to={"group": gid}, body="all muted")
    await b.ok("send", to={"group": gid}, body="admins may post")
    await d.wait_event(lambda e: e["ev"] == "mute" and e["user"] is None and e["muted"])
    await a.ok("group.mute_all", group=gid, muted=False)
    await a.fail("group.leave", "forbidden", group=gid)
    await d.ok("group.leave", group=gid)
    await d.wait_event(lambda e: e["ev"] == "membership" and e["change"] == "left")
    await b.ok("group.remove", group=gid, user="carol")
    await c.wait_event(lambda e: e["ev"] == "membership" and e["change"] == "removed")
    await c.fail("send", "forbidden", to={"group": gid}, body="removed")
    ack = await a.ok("send", to={"group": gid}, body="to the rest")
    await b.wait_event(lambda e: e.get("message", {}).get("message_id") == ack["message_id"])
    info = (await a.ok("group.info", group=gid))["group"]
    assert info["members"] == {"alice": "owner", "bob": "admin"}
    await a.fail("group.create", "not_found", name="x", members=["nobody-here"])


async def test_recall_live_offline_and_in_history(svc: Svc, api: Api,
                                                  clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a = await login(svc, await api.user(app, key, "alice"), clients)
    b = await login(svc, await api.user(app, key, "bob"), clients)
    tc = await api.user(app, key, "carol")
    gid = (await a.ok("group.create", name="g", members=["bob", "carol"]))["group"]["group_id"]
    ack = await a.ok("send", to={"group": gid}, body="oops")
    await a.ok("recall", conversation=f"g:{gid}", message_id=ack["message_id"])
    await a.ok("recall", conversation=f"g:{gid}", message_id=ack["message_id"])  # no-op
    ev = (await b.wait_event(lambda e: e["ev"] == "recall"))[0]
    assert (ev["message_id"], ev["by"], ev["offline"]) == (ack["message_id"], "alice", False)
    c = await login(svc, tc, clients)
    recalls = [e for e in c.events if e["ev"] == "recall"]
    assert len(recalls) == 1
    assert recalls[0]["offline"] is True
    page = await c.ok("history", conversation=f"g:{gid}")
    assert page["messages"][0]["recalled"] is True
    assert page["messages"][0]["body"] == ""
    assert not [e for e in a.events if e["ev"] == "recall"]
    short, short_key = await pro_app(api, recall_window_s=0)
    s = await login(svc, await api.user(short, short_key, "alice"), clients)
    await api.user(short, short_key, "bob")
    late = await s.ok("send", to={"user": "bob"}, body="too late")
    await s.fail("recall", "recall_window_expired", conversation=late["conversation"],
                 message_id=late["message_id"])


async def test_read_receipts_never_move_back(svc: Svc, api: Api,
                                             clients: list[Client]) -> None:
    app, key = await pro_app(api)
    a = await login(svc, await api.user(app, key, "alice"), clients)
    b = await login(svc, await api.user(app, key, "bob"), clients)
    for i in range(4):
        ack = await a.ok("send", to={"user": "bob"}, body=f"r{i}")
    conv = ack["conversation"]
    assert (await b.ok("read", conversation=conv, seq=3))["seq"] == 3
    assert (await b.ok("read", conversation=conv, seq=1))["seq"] == 3
    await b.fail("read", "bad_request", conversation=conv, seq=99)
    assert (await b.ok("read", conversation=conv, seq=4))["seq"] == 4
    receipts = await a.wait_event(lambda e: e["ev"] == "receipt", count=2)
    assert [(r["reader"], r["seq"]) for r in receipts] == [("bob", 3), ("bob", 4)]
    gid = (await a.ok("group.create", name="g", members=["bob"]))["group"]["group_id"]
    await a.ok("send", to={"group": gid}, body="group read")
    assert (await b.ok("read", conversation=f"g:{gid}", seq=1))["seq"] == 1
    await a.wait_event(lambda e: e["ev"] == "receipt" and e["conversation"] == f"g:{gid}")


async def test_v1_and_v2_clients_share_conversations(svc: Svc, api: Api,
                                                     clients: list[Client]) -> None:
    app, key = await pro_app(api)
    old = await login(svc, await api.user(app, key, "alice"), clients, protocol="v1")
    new = await login(svc, await api.user(app, key, "bob"), clients, protocol="v2")
    assert (old.login["protocol"], old.login["keepalive_s"]) == ("v1", 30.0)
    assert (new.login["protocol"], new.login["keepalive_s"]) == ("v2", 15.0)
    a1 = await old.ok("send", to={"user": "bob"}, body="from v1")
    await new.wait_event(lambda e: e.get("message", {}).get("body") == "from v1")
    b1 = await new.ok("send", to={"user": "alice"}, body="from v2")
    await old.wait_event(lambda e: e.get("message", {}).get("body") == "from v2")
    await old.fail("recall", "unsupported", conversation=a1["conversation"],
                   message_id=a1["message_id"])
    await old.fail("read", "unsupported", conversation=a1["conversation"], seq=1)
    await new.ok("recall", conversation=b1["conversation"], message_id=b1["message_id"])
    await new.ok("read", conversation=b1["conversation"], seq=2)
    marker = await new.ok("send", to={"user": "alice"}, body="marker")
    await old.wait_event(lambda e: e.get("message", {}).get("seq") == marker["seq"])
    assert not [e for e in old.events if e["ev"] in ("recall", "receipt")]
    page = await old.ok("history", conversation=b1["conversation"])
    assert [m["recalled"] for m in page["messages"]] == [False, True, False]


async def test_features_follow_tier_and_switches(svc: Svc, api: Api,
                                                 clients: list[Client]) -> None:
    free, free_key = await api.create_app(tier="free", features={"recall": True})
    f = await login(svc, await api.user(free, free_key, "alice"), clients)
    await api.user(free, free_key, "bob")
    ack = await f.ok("send", to={"user": "bob"}, body="x")
    err = await f.fail("recall", "feature_disabled", conversation=ack["conversation"],
                       message_id=ack["message_id"])
    assert err["message"] == "recall is not available on tier free"
    await f.fail("read", "feature_disabled", conversation=ack["conversation"], seq=1)
    pro, pro_key = await api.create_app(tier="pro")
    p = await login(svc, await api.user(pro, pro_key, "alice"), clients)
    await api.user(pro, pro_key, "bob")
    assert "recall" not in p.login["features"]
    ack = await p.ok("send", to={"user": "bob"}, body="x")
    await p.fail("recall", "feature_disabled", conversation=ack["conversation"],
                 message_id=ack["message_id"])
    await api.patch_app(pro, features={"recall": True}, delay_s=0)
    await p.ok("recall", conversation=ack["conversation"], message_id=ack["message_id"])
    await asyncio.wait_for(p.ok("ping"), units(5))
