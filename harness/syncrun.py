"""Synchronous code awaiting a coroutine: one helper, safe under a running loop and under gevent.

`run_sync(coro)` runs `coro` in a private event loop on a worker thread, so it also works when
the caller's thread already runs a loop. `threads_are_real()` says whether "a thread" is an OS
thread here: after gevent patched `threading` (a locust process), threads are greenlets in one
OS thread, and two private loops at once collide ("asyncio.run() cannot be called from a
running event loop"), so callers that would start several in parallel go one at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def threads_are_real() -> bool:
    """False once gevent has patched `threading` in this process (read, never imported here)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is None or not monkey.is_module_patched("threading")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` in a private event loop on a worker thread and return its result."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
