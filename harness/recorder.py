"""Pump one client's event stream into a list (and an `Oracle`), with waits that explain timeouts.

Example::

    rec = Recorder("bob", client, oracle)
    rec.start()
    [msg] = await rec.wait_messages(1, conversation=ack.conversation)
    recall = await rec.wait_event(MessageRecalled, message_id=ack.message_id)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from harness.contract import Event, IMClient, Message, MessageReceived
from harness.errors import HarnessError
from harness.latency import EndpointLatency
from harness.oracle import Oracle, format_event
from harness.oracle.violations import render_paragraphs
from harness.timing import WaitTimeout, units

E = TypeVar("E")

SEEN_IN_TIMEOUT = 10  # the last events a timeout message shows
_MISSING = object()


def _field(event: object, name: str) -> Any:
    """`event.name`, else `event.message.name` (see `Recorder.wait_event`), else `_MISSING`."""
    if hasattr(event, name):
        return getattr(event, name)
    return getattr(getattr(event, "message", None), name, _MISSING)


def _check_fields(cls: type, fields: Mapping[str, Any]) -> None:
    """Refuse a field that no `cls` event can have: a typo must not wait out the timeout."""
    if not dataclasses.is_dataclass(cls):
        return
    known = {f.name for f in dataclasses.fields(cls)}
    if "message" in known:
        known |= {f.name for f in dataclasses.fields(Message)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise HarnessError(
            f"wait_event({cls.__name__}, {', '.join(f'{k}=' for k in unknown)}): "
            f"{cls.__name__} has no such field; known: {', '.join(sorted(known))}"
        )


class Recorder:
    """Records every event of one user's client, in arrival order, while started."""

    def __init__(
        self,
        user_id: str,
        client: IMClient,
        oracle: Oracle | None = None,
        *,
        latency: EndpointLatency | None = None,
    ) -> None:
        self.user_id = user_id
        self.client = client
        self.oracle = oracle
        self.latency = latency  # times each live message's arrival against its send's start
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._ended = False
        self._waiters: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Recorder {self.user_id} {state}, {len(self.events)} events>"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start pumping in a background task of the running event loop."""
        if self.running:
            return
        self._failure = None
        self._ended = False
        self._task = asyncio.get_running_loop().create_task(
            self._pump(self.client), name=f"recorder:{self.user_id}"
        )

    async def stop(self) -> None:
        """Stop pumping; recorded events stay. A pump failure is kept for the waits to raise."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves, not just the pump
        self._ended = True
        self._wake()

    def attach(self, client: IMClient) -> None:
        """Follow a new client object (after a reconnect that returned one); keeps the events."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.client = client
        self._task = None
        self.start()

    async def _pump(self, client: IMClient) -> None:
        try:
            async for event in client.events():
                if self.latency is not None and isinstance(event, MessageReceived) and (
                    not event.offline
                ):
                    self.latency.arrived(event.message.message_id, self.user_id, time.monotonic())
                self.events.append(event)
                if self.oracle is not None:
                    self.oracle.observe(self.user_id, event)
                self._wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            exc.add_note(f"raised in the event pump of recorder {self.user_id!r}")
            self._failure = exc
        finally:
            if self.client is client:
                self._ended = True
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- reading ---------------------------------------------------------------------------------

    def messages(self, conversation: str | None = None) -> list[Message]:
        """Messages received (live and offline) in arrival order, optionally of one conversation."""
        return [
            e.message
            for e in self.events
            if isinstance(e, MessageReceived)
            and (conversation is None or e.message.conversation == conversation)
        ]

    def of_type(self, cls: type[E]) -> list[E]:
        """Recorded events of one type, in arrival order."""
        return [e for e in self.events if isinstance(e, cls)]

    # -- waiting ---------------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        count: int = 1,
        timeout: float | None = None,  # noqa: ASYNC109 - the agreed interface; scaled by units()
        what: str = "",
    ) -> list[Event]:
        """Wait until `count` recorded events (since start) match; return all matches so far.

        Fails with `WaitTimeout` naming `what` and the last events seen; re-raises a pump failure.
        """
        if count < 1:
            raise HarnessError(f"wait_for(count={count}) must be >= 1; pass count=1 or more")
        limit = units(5) if timeout is None else timeout
        deadline = time.monotonic() + limit
        matches: list[Event] = []
        scanned = 0
        loop = asyncio.get_running_loop()
        while True:
            while scanned < len(self.events):
                event = self.events[scanned]
                scanned += 1
                if predicate(event):
                    matches.append(event)
            if len(matches) >= count:
                return matches
            if self._failure is not None:
                raise self._failure
            label = what or "matching events"
            if self._ended or self._task is None:
                state = "ended" if self._ended else "was never started"
                raise WaitTimeout(self._explain(label, count, matches, f"the stream {state}"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(self._explain(label, count, matches, f"{limit:.2f}s passed"))
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                self._waiters.discard(waiter)
                waiter.cancel()

    async def wait_event(
        self,
        cls: type[E],
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the agreed interface; scaled by units()
        **fields: Any,
    ) -> E:
        """Wait for the first recorded event of type `cls` whose fields equal `fields`; return it.

        Each keyword names a field of the event; when the event has no such field, the field of
        its `message` is compared instead. So for `MessageReceived`, `message_id=`,
        `conversation=`, `sender=`, `body=`... match `event.message.<name>`, while `offline=`
        matches the event's own flag. Values compare with `==`. A keyword that is neither a
        field of `cls` nor of its message raises `HarnessError` at once.

        Example: ``ev = await rec.wait_event(MembershipChanged, user=bob, change="removed")``
        """
        _check_fields(cls, fields)

        def match(event: Event) -> bool:
            return isinstance(event, cls) and all(
                _field(event, name) == value for name, value in fields.items()
            )

        wanted = ", ".join(f"{name}={value!r}" for name, value in fields.items())
        matches = await self.wait_for(match, timeout=timeout, what=f"{cls.__name__}({wanted})")
        return cast(E, matches[0])

    async def wait_messages(
        self,
        n: int,
        *,
        conversation: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the agreed interface
    ) -> list[Message]:
        """Wait until `n` messages (of `conversation`, if given) arrived; return them all."""
        where = f" in {conversation}" if conversation else ""
        await self.wait_for(
            lambda e: (
                isinstance(e, MessageReceived)
                and (conversation is None or e.message.conversation == conversation)
            ),
            count=n,
            timeout=timeout,
            what=f"{n} message(s){where}",
        )
        return self.messages(conversation)

    def _explain(self, label: str, count: int, matches: list[Any], why: str) -> str:
        seen = self.events[-SEEN_IN_TIMEOUT:]
        head = (
            f"recorder {self.user_id!r} waited for {label} and {why}: {len(matches)} of {count} "
            f"matched among {len(self.events)} events"
        )
        if not seen:
            return head + "; no events were seen." + self._judged()
        first = len(self.events) - len(seen) + 1
        lines = ["  " + format_event(event, first + i) for i, event in enumerate(seen)]
        tail = "last" if len(self.events) > len(seen) else "all"
        return f"{head}; {tail} seen:\n" + "\n".join(lines) + self._judged()

    def _judged(self) -> str:
        """What the oracle makes of everything seen so far, for a wait that timed out.

        A wait that runs out is often a server defect (a lost message, a receipt moved back
        instead of forward): the oracle names it, so the failure says more than "timed out".
        """
        found = self.oracle.violations() if self.oracle is not None else []
        if not found:
            return ""
        return ("\nThe oracle, judging what every participant saw so far (a message still in "
                "flight counts as lost):\n" + render_paragraphs(found))
