"""A real HTTP server on 127.0.0.1 that collects the offline pushes an endpoint POSTs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from harness.errors import HarnessError
from harness.timing import WaitTimeout, units


class PushReceiver:
    """Collects JSON push POSTs on `url`; answers `status` (200 unless a test sets a failure).

    Example::

        async with PushReceiver() as push:
            app = await endpoint.with_app(webhook=push.url)
            ...
            await push.wait_for(lambda p: p["to"] == bob.id, timeout=units(5))
    """

    def __init__(self, path: str = "/push") -> None:
        self.path = path
        self.status = 200
        self.received: list[dict[str, Any]] = []
        self.invalid: list[str] = []  # bodies that were not a JSON object
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"PushReceiver({self.url or 'stopped'!r}, received={len(self.received)})"

    @property
    def url(self) -> str:
        """The webhook URL to give the endpoint ("" until started)."""
        return f"http://127.0.0.1:{self._port}{self.path}" if self._port else ""

    async def start(self) -> PushReceiver:
        """Listen on 127.0.0.1 on a port the OS picks."""
        if self._runner is not None:
            raise HarnessError(f"{self!r} is already started")
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening; what was received stays readable."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> PushReceiver:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        async with self._changed:
            if isinstance(payload, dict):
                self.received.append(payload)
            else:
                self.invalid.append(text[:500])
            self._changed.notify_all()
        if not isinstance(payload, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        return web.json_response({"ok": self.status < 300}, status=self.status)

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _push: True,
        timeout: float | None = None,  # noqa: ASYNC109 - the interface takes a timeout
        *,
        count: int = 1,
        what: str = "",
    ) -> list[dict[str, Any]]:
        """Wait until `count` received pushes match `predicate`; return the matches."""
        limit = units(5) if timeout is None else timeout

        def matches() -> list[dict[str, Any]]:
            return [p for p in self.received if predicate(p)]

        try:
            async with self._changed:
                async with asyncio.timeout(limit):
                    await self._changed.wait_for(lambda: len(matches()) >= count)
        except TimeoutError:
            got = len(matches())
            raise WaitTimeout(
                f"timed out after {limit:.2f}s waiting for {count} push(es)"
                f"{' ' + what if what else ''}: {got} matched of {len(self.received)} received"
            ) from None
        return matches()
