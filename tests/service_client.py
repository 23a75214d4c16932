"""A tiny raw client for the reference service's tests: process, fixtures, WebSocket, HTTP.

A test module takes the shared fixtures by name (pytest finds fixtures among module globals):

    svc = service_fixture("core", "--log-level", "DEBUG")
    api, clients = service_client.api, service_client.clients
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from harness import procs
from harness.timing import units

ROOT = Path(__file__).resolve().parent.parent


class Svc:
    """`python -m harness.reference` as a real child process on 127.0.0.1, port 0."""

    def __init__(self, db: str | Path, *args: str, admin_token: str | None = None) -> None:
        self.db = str(db)
        self.args = list(args)
        self.admin_token = admin_token if admin_token is not None else secrets.token_hex(16)
        self.proc: subprocess.Popen[str] | None = None
        self.ws_port = self.api_port = 0
        self.stderr_path = Path(tempfile.mkstemp(prefix="im-ref-stderr-")[1])

    def __repr__(self) -> str:
        return f"Svc(db={self.db!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, *, same_ports: bool = False) -> Svc:
        ports = ["--port", str(self.ws_port), "--api-port", str(self.api_port)] if same_ports \
            else ["--port", "0", "--api-port", "0"]
        env = {**os.environ, "IM_REF_ADMIN_TOKEN": self.admin_token}
        cmd = [sys.executable, "-m", "harness.reference", "--host", "127.0.0.1", "--db", self.db,
               *ports, *self.args]
        with open(self.stderr_path, "a") as err:
            # Through the harness's process registry: the service dies with this test run.
            self.child = procs.spawn(cmd, name="reference service", stdout=subprocess.PIPE,
                                     stderr=err, text=True, env=env, cwd=ROOT)
        self.proc = self.child.proc
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + units(15)
        line = ""
        while time.monotonic() < deadline and not line:
            if sel.select(timeout=0.05):
                line = self.proc.stdout.readline()
                if not line:
                    break
        sel.close()
        if not line:
            self.kill()
            raise RuntimeError(f"service did not start; stderr:\n{self.stderr()[-2000:]}")
        ready = json.loads(line)
        assert ready["event"] == "ready", line
        self.ws_port, self.api_port = ready["ws_port"], ready["api_port"]
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.child.stop()
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is None:
            return
        self.child.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start(same_ports=True)


class Api:
    """The HTTP side: admin calls with the admin token, provisioning with an app key."""

    def __init__(self, svc: Svc) -> None:
        self.svc = svc
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        headers = {}
        bearer = self.svc.admin_token if token is None else token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.http.request(method, self.svc.api_url + path, headers=headers,
                                     **kw) as resp:
            return resp.status, await resp.json()

    async def create_app(self, **body: Any) -> tuple[str, str]:
        status, data = await self.call("POST", "/admin/apps", body)
        assert status == 200, data
        return data["app_id"], data["app_key"]

    async def patch_app(self, app_id: str, **body: Any) -> dict[str, Any]:
        status, data = await self.call("PATCH", f"/admin/apps/{app_id}", body)
        assert status == 200, data
        return data

    async def user(self, app_id: str, app_key: str, user_id: str | None = None,
                   ttl_s: float = 3600) -> str:
        status, data = await self.call("POST", f"/apps/{app_id}/users",
                                       {"user_id": user_id, "ttl_s": ttl_s}, token=app_key)
        assert status == 200, data
        return data["token"]

    async def counters(self) -> dict[str, Any]:
        status, data = await self.call("GET", "/admin/counters")
        assert status == 200, data
        return data

    async def set_defects(self, **switches: bool) -> dict[str, bool]:
        status, data = await self.call("PUT", "/admin/defects", switches)
        assert status == 200, data
        return data["defects"]


async def raw_http(svc: Svc, method: str, path: str, body: bytes = b"", *,
                   authorization: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (any header, any body): status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.api_port)
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1",
            b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(),
            b"Connection: close"]
    if authorization is not None:
        head.append(b"Authorization: " + authorization)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        writer.write(body)
        with contextlib.suppress(ConnectionError):  # a server may answer before reading all
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), units(10))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


_ids = itertools.count(1)


class Client:
    """One raw WebSocket connection: `request` matches answers by id, events pile up in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.answers: dict[int | None, asyncio.Future[dict[str, Any]]] = {}
        self.unmatched: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.login: dict[str, Any] = {}

    @classmethod
    async def open(cls, svc: Svc, protocol: str = "v2", **kw: Any) -> Client:
        ws = await connect(f"{svc.ws_url}/{protocol}", open_timeout=units(5), **kw)
        return cls(ws)

    @classmethod
    async def login_as(cls, svc: Svc, token: str, protocol: str = "v2",
                       cursor: int | None = 0, **extra: Any) -> Client:
        client = await cls.open(svc, protocol)
        params: dict[str, Any] = {"token": token, **extra}
        if cursor is not None:
            params["cursor"] = cursor
        client.login = await client.ok("login", **params)
        await client.wait_event(lambda e: e["ev"] == "caught_up", what="caught_up")
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if "ev" in frame:
                    self.events.append(frame)
                elif frame.get("re") in self.answers and not self.answers[frame["re"]].done():
                    self.answers[frame["re"]].set_result(frame)
                else:
                    self.unmatched.append(frame)
                self._changed.set()
        except Exception:  # noqa: BLE001 - the connection ending is what tests observe
            pass
        finally:
            for fut in self.answers.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed before the answer"))
            self._changed.set()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def request(self, op: str, **params: Any) -> dict[str, Any]:
        rid = next(_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answers[rid] = fut
        await self.ws.send(json.dumps({"id": rid, "op": op, **params}))
        return await asyncio.wait_for(fut, units(10))

    async def ok(self, op: str, **params: Any) -> dict[str, Any]:
        answer = await self.request(op, **params)
        assert answer["ok"], answer
        return answer

    async def fail(self, op: str, code: str, **params: Any) -> dict[str, Any]:
        answer = await self.request(op, **params)
        assert not answer["ok"], answer
        assert answer["error"]["code"] == code, answer
        return answer["error"]

    async def next_unmatched(self, within: float | None = None) -> dict[str, Any]:
        await self.until(lambda: self.unmatched, within=within, what="an error frame")
        return self.unmatched.pop(0)

    async def until(self, cond: Callable[[], Any], *, within: float | None = None,
                    what: str = "condition") -> Any:
        deadline = time.monotonic() + (units(5) if within is None else within)
        while True:
            value = cond()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool], *, count: int = 1,
                         within: float | None = None, what: str = "event"
                         ) -> list[dict[str, Any]]:
        return await self.until(
            lambda: (m := [e for e in self.events if pred(e)]) and len(m) >= count and m,
            within=within, what=what)

    def messages(self) -> list[dict[str, Any]]:
        return [e["message"] for e in self.events if e["ev"] == "message"]

    @property
    def last_pos(self) -> int:
        return max((e["pos"] for e in self.events if "pos" in e), default=0)

    async def closed(self, within: float | None = None) -> None:
        await asyncio.wait_for(asyncio.shield(self._reader), units(5) if within is None
                               else within)

    async def close(self) -> None:
        # A connection the server has just dropped can leave its transport detached from the
        # loop (asyncio sets its loop to None) before websockets notices: nothing left to close.
        with contextlib.suppress(AttributeError):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def service_fixture(name: str, *args: str) -> Any:
    """A module-scoped `svc` fixture: one service started with `args`, stopped cleanly after."""

    @pytest.fixture(scope="module")
    def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
        service = Svc(tmp_path_factory.mktemp(name) / "ref.sqlite", *args).start()
        yield service
        assert service.stop() == 0

    return svc


@pytest.fixture
async def api(svc: Svc) -> AsyncIterator[Api]:
    """An `Api` on the module's `svc`, closed after the test."""
    client = Api(svc)
    yield client
    await client.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """The test's open connections (see `login`), closed after the test."""
    opened: list[Client] = []
    yield opened
    for c in opened:
        await c.close()


async def login(svc: Svc, token: str, clients: list[Client], **kw: Any) -> Client:
    """`Client.login_as`, the connection kept in `clients` to be closed after the test."""
    client = await Client.login_as(svc, token, **kw)
    clients.append(client)
    return client


@contextlib.asynccontextmanager
async def push_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook on 127.0.0.1, port 0: its URL and the push bodies it has received, in order."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    web_app = web.Application()
    web_app.router.add_post("/push", hook)
    runner = web.AppRunner(web_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/push", received
    finally:
        await runner.cleanup()
