"""Tier limits, the admin API, bad input and the command line of the reference service."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time

import pytest
import service_client
from service_client import ROOT, Api, Client, Svc, login, service_fixture
from websockets.exceptions import ConnectionClosed

from harness import contract
from harness.reference import tiers
from harness.timing import units, until

svc = service_fixture("limits", "--log-level", "DEBUG", "--max-frame-bytes", "65536")
api, clients = service_client.api, service_client.clients


async def test_connection_cap_per_app(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await api.create_app(tier="pro", limits={"max_connections": 2})
    tokens_ = [await api.user(app, key, f"u{i}") for i in range(3)]
    first = await login(svc, tokens_[0], clients)
    assert first.login["limits"]["max_connections"] == 2
    await login(svc, tokens_[1], clients)
    third = await Client.open(svc)
    clients.append(third)
    await third.fail("login", "limit_reached", token=tokens_[2])
    await third.closed()
    assert (await api.counters())["connections_by_app"][app] == 2
    await clients[1].close()
    await until(lambda: _count(api, app, 1), timeout=units(5), what="connection released")
    await login(svc, tokens_[2], clients)


def test_service_limits_have_the_contract_fields() -> None:
    """The service keeps its own copy of TierLimits; the wire `limits` must match the contract's."""
    ours = [(f.name, f.type) for f in dataclasses.fields(tiers.TierLimits)]
    theirs = [(f.name, f.type) for f in dataclasses.fields(contract.TierLimits)]
    assert ours == theirs


async def _count(api: Api, app: str, n: int) -> bool:
    return (await api.counters())["connections_by_app"].get(app, 0) == n


async def test_send_rate_limit_with_retry_after(svc: Svc, api: Api,
                                                clients: list[Client]) -> None:
    app, key = await api.create_app(tier="free")
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await api.user(app, key, "bob")
    answers = await asyncio.gather(*(a.request("send", to={"user": "bob"}, body=str(i))
                                     for i in range(30)))
    ok = [x for x in answers if x["ok"]]
    limited = [x["error"] for x in answers if not x["ok"]]
    assert 20 <= len(ok) < 30
    assert {e["code"] for e in limited} == {"rate_limited"}
    assert all(e["retry_after"] > 0 for e in limited)
    wait = max(e["retry_after"] for e in limited)
    assert wait <= 0.101
    await asyncio.sleep(wait)  # the server told us how long
    await a.ok("send", to={"user": "bob"}, body="after the wait")


async def test_message_size_per_tier(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await api.create_app(tier="free")
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await api.user(app, key, "bob")
    await a.ok("send", to={"user": "bob"}, body="é" * 2560)  # 5120 bytes
    await a.fail("send", "too_large", to={"user": "bob"}, body="é" * 2560 + "x")
    await a.fail("send", "too_large", to={"user": "bob"}, kind="custom",
                 custom={"blob": "x" * 5120})
    pro, pro_key = await api.create_app(tier="pro")
    p = await login(svc, await api.user(pro, pro_key, "alice"), clients)
    await api.user(pro, pro_key, "bob")
    await p.ok("send", to={"user": "bob"}, kind="custom", custom={"blob": "x" * 5120})


async def test_group_member_limit(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await api.create_app(tier="pro", limits={"max_group_members": 3})
    a = await login(svc, await api.user(app, key, "alice"), clients)
    for name in ("bob", "carol", "dave"):
        await api.user(app, key, name)
    await a.fail("group.create", "limit_reached", members=["bob", "carol", "dave"])
    gid = (await a.ok("group.create", members=["bob", "carol"]))["group"]["group_id"]
    await a.fail("group.add", "limit_reached", group=gid, user="dave")
    await a.ok("group.remove", group=gid, user="carol")
    await a.ok("group.add", group=gid, user="dave")


async def test_history_retention_filter(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await api.create_app(tier="free", limits={"history_retention_s": 0.5})
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await api.user(app, key, "bob")
    ack = await a.ok("send", to={"user": "bob"}, body="soon gone")
    page = await a.ok("history", conversation=ack["conversation"])
    assert [m["seq"] for m in page["messages"]] == [1]

    async def gone() -> bool:
        return not (await a.ok("history", conversation=ack["conversation"]))["messages"]

    await until(gone, timeout=units(5), what="the message to age out of history")


async def test_admin_api_auth_and_errors(svc: Svc, api: Api) -> None:
    status, body = await api.call("POST", "/admin/apps", {}, token="wrong")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await api.call("GET", "/admin/counters", token="")
    assert status == 401
    status, body = await api.call("GET", "/admin/nowhere")
    assert status == 404
    status, body = await api.call("POST", "/admin/apps", raw=b"{nope")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await api.call("POST", "/admin/apps", {"tier": "gold"})
    assert status == 400
    assert "'gold'" in body["error"]["message"]
    status, body = await api.call("POST", "/admin/apps", {"limits": {"max_cats": 1}})
    assert "max_cats" in body["error"]["message"]
    status, body = await api.call("PUT", "/admin/defects", {"drop_everything": True})
    assert status == 400
    assert "drop_everything" in body["error"]["message"]
    app, key = await api.create_app(app_id="named-app", tier="free",
                                    limits={"max_connections": 7})
    status, body = await api.call("POST", "/admin/apps", {"app_id": "named-app"})
    assert status == 409
    status, info = await api.call("GET", "/admin/apps/named-app")
    assert status == 200
    assert key not in json.dumps(info)
    assert info["effective"]["limits"]["max_connections"] == 7
    status, body = await api.call("GET", "/admin/apps/missing")
    assert status == 404
    status, body = await api.call("POST", "/apps/named-app/users", {"user_id": "bad:id"},
                                  token=key)
    assert status == 400
    status, body = await api.call("POST", "/apps/named-app/users", {"user_id": None}, token=key)
    assert status == 200
    assert body["user_id"]


async def test_admin_disabled_without_token(tmp_path: object) -> None:
    svc = Svc(f"{tmp_path}/noadmin.sqlite", admin_token="").start()
    api = Api(svc)
    try:
        status, body = await api.call("GET", "/admin/counters", token="anything")
        assert (status, body["error"]["code"]) == (503, "admin_disabled")
    finally:
        await api.close()
        svc.stop()


async def test_tier_change_lags_by_propagation_delay(svc: Svc, api: Api,
                                                     clients: list[Client]) -> None:
    app, key = await api.create_app(tier="free", features={"recall": True})
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await api.user(app, key, "bob")
    ack = await a.ok("send", to={"user": "bob"}, body="x")
    delay = units(1)
    before = time.time()
    effective_at = (await api.patch_app(app, tier="pro", delay_s=delay))["effective_at"]
    assert effective_at >= before + delay
    status, info = await api.call("GET", f"/admin/apps/{app}")
    if time.time() < effective_at:  # a very slow machine may already be past it
        assert info["effective"]["tier"] == "free"
        assert info["effective"]["limits"]["max_message_bytes"] == 5120
        await a.fail("recall", "feature_disabled", conversation=ack["conversation"],
                     message_id=ack["message_id"])

    async def upgraded() -> bool:
        _, data = await api.call("GET", f"/admin/apps/{app}")
        return data["effective"]["tier"] == "pro"

    await until(upgraded, timeout=delay + units(5), what="the upgrade to take effect")
    assert time.time() >= effective_at
    await a.ok("recall", conversation=ack["conversation"], message_id=ack["message_id"])
    b = await login(svc, await api.user(app, key, "bob"), clients)
    assert b.login["tier"] == "pro"
    assert b.login["limits"]["max_message_bytes"] == 65536


async def test_bad_frames_get_errors_and_the_connection_stays(svc: Svc, api: Api,
                                                              clients: list[Client]) -> None:
    app, key = await api.create_app(tier="pro")
    await api.user(app, key, "bob")
    a = await login(svc, await api.user(app, key, "alice"), clients)
    for raw in ("not json", "[1,2]", '{"id": 5}', '{"id": 6, "op": "explode"}', b"\x00\x01"):
        await a.send_raw(raw)
        err = await a.next_unmatched()
        assert (err["ok"], err["error"]["code"]) == (False, "bad_request"), (raw, err)
    assert err["re"] is None
    answer = await a.request("explode")
    assert answer["error"]["code"] == "bad_request"
    assert "explode" in answer["error"]["message"]
    await a.fail("send", "bad_request", body="no target")
    await a.fail("send", "bad_request", to={"user": "bob"}, kind="video")
    await a.fail("send", "not_found", to={"user": "nobody"}, body="x")
    await a.fail("history", "bad_request", conversation="d:alice:bob", before=-1)
    await a.fail("login", "bad_request", token="again")
    await a.send_raw(json.dumps({"id": 9, "op": "send", "body": "x" * 70000}))
    err = await a.next_unmatched()
    assert err["error"]["code"] == "too_large"
    await a.ok("ping")
    try:
        await a.send_raw("x" * (4 * 1024 * 1024 + 1))
    except ConnectionClosed:
        pass
    await a.closed()
    assert a.ws.close_code == 1009
    fresh = await Client.open(svc)
    clients.append(fresh)
    await fresh.fail("ping", "unauthorized")
    status = await fresh.request("ping")
    assert status["error"]["code"] == "unauthorized"


async def test_logout_closes_and_unknown_path_is_refused(svc: Svc, api: Api,
                                                         clients: list[Client]) -> None:
    app, key = await api.create_app(tier="pro")
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await a.ok("logout")
    await a.closed()
    with pytest.raises(Exception, match="404"):
        await Client.open(svc, protocol="v3")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.reference", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=units(20), check=False)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "abc"], "--port"),
        (["--host", "10.1.2.3"], "--host"),
        (["--defect", "bogus"], "bogus"),
        (["--keepalive-v2", "0"], "--keepalive-v2"),
        (["--defect-rate", "2"], "--defect-rate"),
        (["--frobnicate"], "--frobnicate"),
        (["--db", "/no/such/dir/x.sqlite"], "--db"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], named: str) -> None:
    result = _run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "--help" in lines[0] or "use" in lines[0]
    assert result.stdout == ""


def test_help_lists_tiers_protocols_and_defects() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    for word in ("free", "pro", "/v1", "/v2", "drop_delivery", "no_push", "keepalive_dead",
                 "--propagation-delay", "--keepalive-v1", "--defect-rate"):
        assert word in result.stdout


async def test_logs_never_contain_secrets(svc: Svc, api: Api, clients: list[Client]) -> None:
    app, key = await api.create_app(tier="pro")
    token = await api.user(app, key, "alice")
    a = await login(svc, token, clients)
    await api.user(app, key, "bob")
    await a.ok("send", to={"user": "bob"}, body="hello")
    await a.request("explode", token=token)
    await api.call("POST", f"/apps/{app}/users", {"user_id": "x"}, token=key + "x")
    log = svc.stderr()
    assert "login app=" in log  # the DEBUG log is on, so something was written
    for secret in (key, token, svc.admin_token):
        assert secret not in log
