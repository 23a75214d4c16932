"""An op that fails unexpectedly answers `internal`, logs one line, and the service carries on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from service_client import Client
from websockets.asyncio.server import serve

from harness.reference import tokens
from harness.reference.frontend import Conn
from harness.reference.server import Config, Service
from harness.reference.state import AppState
from harness.reference.store import Store


class _Addr:
    def __init__(self, port: int) -> None:
        self.ws_url = f"ws://127.0.0.1:{port}"


async def test_unexpected_exception_becomes_internal_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(str(tmp_path / "internal.sqlite"))
    service = Service(store, Config())
    store.start()
    await service.start()

    async def boom(conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug in an op handler")

    service.ops["boom"] = boom
    app = AppState(app_id="a1", app_key="k" * 32, tier="pro", limits_tier="pro", features={})
    await service.create_app(app)
    async with serve(service.handle, "127.0.0.1", 0, process_request=service.process_request,
                     ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await Client.login_as(_Addr(port),  # type: ignore[arg-type]
                                       tokens.mint("a1", app.app_key, "alice"))
        with caplog.at_level(logging.ERROR, logger="harness.reference"):
            err = await client.fail("boom", "internal")
        assert "see the service log" in err["message"]
        assert "internal error in op 'boom'" in caplog.text
        assert "RuntimeError" in caplog.text
        pong = await client.ok("ping")
        assert pong["ts"] > 0
        await client.close()
    await service.close()
    await store.close()
