"""The built-in load scenarios, each registered once with its defaults and budgets.

Rates are per sender, per second. A unit runs in the process's asyncio loop until the run stops
sending (or cancels it); `LoadRun` times, counts and judges everything it sends and receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence

from harness.contract import Credentials, IMClient, Target
from harness.errors import IMError
from harness.load.driver import LoadRun, ms
from harness.load.scenarios import packaged_budgets, scenario

Params = Mapping[str, float]


def _pair(params: Params) -> tuple[float, float]:
    return 2.0, 1.0  # both ends send, each to the other


def _fan_out(params: Params) -> tuple[float, float]:
    return 1.0, max(2.0, float(params.get("group_size", 5))) - 1.0


def _silent(params: Params) -> tuple[float, float]:
    return 0.0, 0.0  # no messages (connects or history pages only)


def _single(params: Params) -> tuple[float, float]:
    return 1.0, 1.0  # one sender, one recipient a send


@scenario("chat", defaults={"weight": 3, "rate": 2.0}, budgets=packaged_budgets("chat.toml"),
          shape=_pair,
          description="1:1 chat between two peers in one process, both sending on a fixed "
                      "schedule")
async def chat(run: LoadRun, params: Params, index: int) -> None:
    ends = await run.setup(lambda: run.pair("chat"))
    if ends is not None:
        await run.chat(params["rate"], ends)


@scenario("group", defaults={"rate": 1.0, "group_size": 5},
          budgets=packaged_budgets("group.toml"), shape=_fan_out,
          description="group fan-out: the owner sends to a group of group_size members")
async def group(run: LoadRun, params: Params, index: int) -> None:
    size = max(2, int(params["group_size"]))

    async def make() -> tuple[str, IMClient, str, list[str]]:
        creds = await asyncio.gather(*(run.provision("group") for _ in range(size)))
        # All members log in at once: one after another, a group's setup on a real homeserver
        # under load took longer than a short run (each connect is a login and a first /sync).
        clients = await _connect_all(run, creds)
        try:
            members = [c.user_id for c in creds[1:]]
            info = await clients[0].create_group(f"load-{index}", members)
        except IMError:
            await asyncio.gather(*(run.close_client(c) for c in clients))
            raise
        return creds[0].user_id, clients[0], info.group_id, members

    made = await run.setup(make)
    if made is None:
        return
    owner, client, group_id, members = made
    target = Target.to_group(group_id)
    await run.schedule(params["rate"],
                       lambda intended, n: run.send(owner, client, target, members, intended, n))


async def _connect_all(run: LoadRun, creds: Sequence[Credentials]) -> list[IMClient]:
    """Connect every user concurrently; on a failure close the others and raise the first."""
    outcomes = await asyncio.gather(*(run.connect(c) for c in creds), return_exceptions=True)
    clients = [o for o in outcomes if not isinstance(o, BaseException)]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        await asyncio.gather(*(run.close_client(c) for c in clients))
        raise failed[0]
    return clients


@scenario("churn", defaults={"rate": 1.0, "hold_s": 0.5}, budgets=packaged_budgets("churn.toml"),
          shape=_silent,
          description="connect/login churn: log in, hold hold_s, log out, on a fixed schedule "
                      "(rate: connects/s per user)")
async def churn(run: LoadRun, params: Params, index: int) -> None:
    creds = await run.setup(lambda: run.provision("churn"))
    if creds is None:
        return
    hold = params["hold_s"]

    async def cycle(intended: float, n: int) -> None:
        run.behind(intended)
        with contextlib.suppress(IMError):
            client = await run.connect(creds, intended=intended)
            run.background(run.hold_and_close(client, hold))

    await run.schedule(params["rate"], cycle)


@scenario("history", defaults={"rate": 2.0, "prefill": 30, "page": 10},
          budgets=packaged_budgets("history.toml"), shape=_silent,
          description="history paging through prefill messages, page messages a page")
async def history(run: LoadRun, params: Params, index: int) -> None:
    ends = await run.setup(lambda: run.pair("history"))
    if ends is None:
        return
    (a, ca), (b, cb) = ends
    conversation = ""
    for n in range(int(params["prefill"])):
        try:
            ack = await ca.send(Target.to_user(b), f"prefill {n}", client_id=f"{a}:p{n}")
        except IMError as exc:
            run.metrics.error(exc)
            continue
        run.oracle.sent(a, ack, recipients=(b,))
        conversation = ack.conversation
    if not conversation:
        return
    page = max(1, min(100, int(params["page"])))
    cursor: list[int | None] = [None]

    async def fetch(intended: float, n: int) -> None:
        run.behind(intended)
        try:
            result = await cb.history(conversation, before=cursor[0], limit=page)
        except IMError as exc:
            run.metrics.count("history_errors")
            run.metrics.error(exc)
            run.emit("history", ms(time.monotonic() - intended), exc)
            return
        elapsed = time.monotonic() - intended
        run.metrics.count("history_pages")
        run.metrics.record("history", elapsed)
        run.emit("history", ms(elapsed), None)
        run.oracle.observe_history(b, result)
        more = result.has_more and result.messages
        cursor[0] = result.messages[0].seq if more else None

    await run.schedule(params["rate"], fetch)


@scenario("storm", defaults={"rate": 4.0, "receivers": 8, "every_s": 3.0, "offline_s": 0.5},
          budgets=packaged_budgets("storm.toml"), shape=_single,
          description="offline-reconnect storm: receivers drop and return together every "
                      "every_s")
async def storm(run: LoadRun, params: Params, index: int) -> None:
    count = max(1, int(params["receivers"]))

    async def make() -> tuple[str, IMClient, list[tuple[str, IMClient]]]:
        creds = await asyncio.gather(*(run.provision("storm") for _ in range(count + 1)))
        clients: list[IMClient] = []
        try:
            for c in creds:
                clients.append(await run.connect(c))
        except IMError:
            await asyncio.gather(*(run.close_client(c) for c in clients))
            raise
        receivers = [(c.user_id, cl) for c, cl in zip(creds[1:], clients[1:], strict=True)]
        return creds[0].user_id, clients[0], receivers

    made = await run.setup(make)
    if made is None:
        return
    sender, client, receivers = made
    targets = [(Target.to_user(uid), (uid,)) for uid, _ in receivers]

    def op(intended: float, n: int) -> None:
        target, recipients = targets[n % len(targets)]
        run.send(sender, client, target, recipients, intended, n)

    async def storms() -> None:
        every, offline = params["every_s"], params["offline_s"]
        while run.sending:
            await asyncio.sleep(every)
            await asyncio.gather(*(cl.drop() for _, cl in receivers), return_exceptions=True)
            await asyncio.sleep(offline)
            intended = time.monotonic()
            await asyncio.gather(*(run.reconnect(cl, intended) for _, cl in receivers))

    task = asyncio.ensure_future(storms())
    try:
        await run.schedule(params["rate"], op)
    finally:
        task.cancel()


@scenario("canary", defaults={"rate": 2.0, "cohort": 20}, budgets=packaged_budgets("canary.toml"),
          shape=_pair,
          description="mixed old/new clients: cohort % of clients on v2, the rest on v1, "
                      "chatting")
async def canary(run: LoadRun, params: Params, index: int) -> None:
    cohort = params["cohort"]
    counter = run.state.setdefault("canary", itertools.count())

    def proto() -> str:
        i = next(counter)  # exactly cohort % of clients, spread evenly, are on v2
        on_v2 = int((i + 1) * cohort // 100) > int(i * cohort // 100)
        run.cohorts["v2" if on_v2 else "v1"] += 1
        return "v2" if on_v2 else "v1"

    ends = await run.setup(lambda: run.pair("canary", (proto(), proto())))
    if ends is not None:
        await run.chat(params["rate"], ends)


@scenario("idle", defaults={"sessions": 10}, budgets=packaged_budgets("idle.toml"),
          shape=_silent,
          description="idle connected sessions that only listen (capacity)")
async def idle(run: LoadRun, params: Params, index: int) -> None:
    for _ in range(int(params["sessions"])):
        with contextlib.suppress(IMError):
            await run.connect(await run.provision("idle"))
    await asyncio.Event().wait()
