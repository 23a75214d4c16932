"""Greenlets await asyncio coroutines: one asyncio loop in a real OS thread per locust process.

Only load-test modules import this (it imports gevent). The loop thread and its selector come
from gevent's unpatched originals, so the loop really blocks in its own thread; results come back
to the gevent hub through one thread-safe `async_` watcher, never through `concurrent.futures`
(its patched Condition fails across OS threads under load).

Example::

    bridge = AsyncBridge.get()
    ack = bridge.run(client.send(target, "hi"), timeout=5)   # from any greenlet
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import gevent
import gevent.event
from gevent import monkey

from harness.errors import HarnessError, IMTimeout

try:  # libuv's loop: its sockets and timers are native, not gevent's patched Python ones
    import uvloop
except ImportError:  # pragma: no cover - the load extra installs it
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_DefaultSelector = monkey.get_original("selectors", "DefaultSelector")


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed, else asyncio's on the unpatched selector."""
    if uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop(_DefaultSelector())


class Pending(gevent.event.AsyncResult):
    """A coroutine's result as a greenlet awaits it; `task` is set once the loop started it."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        super().__init__()
        self.task: asyncio.Task[Any] | None = None


class AsyncBridge:
    """An asyncio loop in a real OS thread, awaited cooperatively from greenlets."""

    _instance: ClassVar[AsyncBridge | None] = None

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self._done: collections.deque[tuple[Pending, Any, BaseException | None]]
        self._done = collections.deque()
        self._watcher = self._hub.loop.async_()
        self._watcher.start(self._deliver)
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        ready = _allocate_lock()
        ready.acquire()
        self.loop: asyncio.AbstractEventLoop | None = None

        def main() -> None:
            loop = new_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.release()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.close()

        _start_new_thread(main, ())
        # The real lock blocks this OS thread briefly; the loop thread releases it at once.
        ready.acquire()

    @classmethod
    def get(cls) -> AsyncBridge:
        """The process's bridge, started on first use."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _deliver(self) -> None:
        """Hub side: wake every greenlet whose coroutine finished, and run posted callbacks."""
        while self._done:
            result, value, exc = self._done.popleft()
            if exc is None:
                result.set(value)
            else:
                result.set_exception(exc)
        while self._posted:
            self._posted.popleft()()

    def post(self, fn: Callable[[], None]) -> None:
        """From the loop thread: run `fn` in the gevent hub (thread-safe)."""
        self._posted.append(fn)
        self._watcher.send()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Pending:
        """Start `coro` on the loop; the returned `Pending` is set in the gevent thread."""
        result = Pending()
        loop = self.loop
        assert loop is not None

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                self._done.append((result, None, asyncio.CancelledError()))
            else:
                self._done.append((result, task.result() if task.exception() is None else None,
                                   task.exception()))
            self._watcher.send()

        def begin() -> None:
            task = loop.create_task(coro)
            result.task = task
            task.add_done_callback(finished)

        loop.call_soon_threadsafe(begin)
        return result

    def cancel(self, result: Pending) -> None:
        """Cancel the coroutine behind `result` (a no-op once it finished)."""
        loop = self.loop
        if loop is None:
            return

        def stop() -> None:
            task = result.task
            if task is not None:
                task.cancel()

        loop.call_soon_threadsafe(stop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Await `coro` from the current greenlet; a killed greenlet cancels the coroutine."""
        result = self.spawn(coro)
        try:
            return result.get(timeout=timeout)  # type: ignore[no-any-return]
        except gevent.Timeout:
            self.cancel(result)
            raise IMTimeout(f"no result within {timeout:.1f}s") from None
        except BaseException:
            if not result.ready():
                self.cancel(result)
            raise

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a plain function in the loop thread (for state only that thread touches)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout=timeout)

    def close(self) -> None:
        """Stop the loop thread (the bridge cannot be used again)."""
        loop, self.loop = self.loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        self._watcher.stop()
        if AsyncBridge._instance is self:
            AsyncBridge._instance = None


def require_bridge() -> AsyncBridge:
    """The process's bridge; a clear error when called outside a gevent process."""
    if not monkey.is_module_patched("socket"):
        raise HarnessError("the load bridge needs gevent monkey-patching; import locust first")
    return AsyncBridge.get()
