"""In-place upgrade of a Synapse homeserver: seed on old, start new on the same data, verify.

    python -m harness.matrix.upgrade --old 1.141.0 --new 1.163.2 [--database postgres]
        [--no-rollback]

Seeds users, a direct room and a group, messages, a redaction, read receipts, a saved login
token and a client's since-token on `old`; upgrades it in place (`SynapseEmbedded.upgrade`:
`new` on the same database, signing key, secrets and port); waits until Synapse's background
updates have finished; then checks that everything survived and that new writes work. Finally
it tries the rollback (`old` again on the upgraded data, `upgrade` back) and records what Synapse
does. Prints a verdict; exit 0 when every check passed, 1 when one failed, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from harness.adapters.matrix import MatrixAdapter, MatrixClient
from harness.contract import Credentials, Target
from harness.errors import ConfigError, HarnessError, UpgradeRefused
from harness.matrix.embedded import SynapseEmbedded, SynapseOptions, pending_background_updates
from harness.matrix.launcher import DATABASES, KNOWN_VERSIONS, Database, SynapseServer
from harness.matrix.postgres import find_bindir
from harness.servers import ServerRequest
from harness.timing import units

BG_STATUS = "/_synapse/admin/v1/background_updates/status"


@dataclass(frozen=True)
class Check:
    """One verified property: its name, whether it held, and what was seen."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class UpgradeReport:
    """The outcome of one in-place upgrade run."""

    old: str
    new: str
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rollback: str = "not tried"

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def render(self) -> str:
        """A readable verdict: one line per check, the timings, the rollback finding."""
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [f"Synapse in-place upgrade {self.old} -> {self.new}: {verdict}"]
        for c in self.checks:
            lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail
                                                                      else ""))
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines.append(f"  time: {times}")
        lines.append(f"  rollback ({self.new} data -> {self.old}): {self.rollback}")
        return "\n".join(lines)


@dataclass
class Seeded:
    """What was written on the old server, to compare with after the upgrade."""

    users: dict[str, Credentials]
    admin_token: str = field(repr=False)
    saved_tokens: dict[str, str] = field(repr=False)  # user -> an access token never logged out
    dm: str = ""
    group: str = ""
    recalled: str = ""
    timelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    receipts: dict[str, dict[str, str]] = field(default_factory=dict)  # room -> reader -> event
    since: str = field(default="", repr=False)  # carol's sync cursor
    after_since: list[str] = field(default_factory=list)  # event ids carol has not synced yet


class _Http:
    """Raw client-server calls with a given access token (errors mapped by the adapter)."""

    def __init__(self, adapter: MatrixAdapter) -> None:
        self.adapter = adapter
        self.session = aiohttp.ClientSession()

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                   token: str | None = None, params: Mapping[str, str] | None = None) -> Any:
        return await self.adapter.request(self.session, method, path, body, params=params,
                                          token=token, within=units(10))

    async def login(self, creds: Credentials, device: str) -> str:
        answer = await self.call("POST", "/login", {
            "type": "m.login.password", "device_id": device, "password": creds.token,
            "identifier": {"type": "m.id.user", "user": creds.user_id},
        })
        return str(answer["access_token"])

    async def timeline(self, room: str, token: str) -> list[dict[str, Any]]:
        """Every event of a room from its start, as the server serves it."""
        out: list[dict[str, Any]] = []
        params = {"dir": "f", "limit": "100"}
        while True:
            page = await self.call("GET", f"/rooms/{quote(room)}/messages", token=token,
                                   params=params)
            out.extend(page.get("chunk") or [])
            if not page.get("chunk") or not page.get("end"):
                return out
            params = {**params, "from": page["end"]}

    async def receipts(self, rooms: Sequence[str], token: str) -> dict[str, dict[str, str]]:
        """room -> reader mxid -> the event id of their m.read receipt, from an initial sync."""
        data = await self.call("GET", "/sync", token=token, params={"timeout": "0"})
        found: dict[str, dict[str, str]] = {}
        joined = (data.get("rooms") or {}).get("join") or {}
        for room in rooms:
            for ev in ((joined.get(room) or {}).get("ephemeral") or {}).get("events") or []:
                if ev.get("type") != "m.receipt":
                    continue
                for event_id, kinds in (ev.get("content") or {}).items():
                    for reader in (kinds.get("m.read") or {}):
                        found.setdefault(room, {})[reader] = event_id
        return found

    async def aclose(self) -> None:
        await self.session.close()


async def _register_admin(adapter: MatrixAdapter, http: _Http, shared: str) -> str:
    """Register an admin user through the shared secret; its access token."""
    path = "/_synapse/admin/v1/register"
    nonce = (await http.call("GET", path))["nonce"]
    name, password = f"upgrade-admin-{int(time.time() * 1000) % 10**8}", "x" + nonce[:16]
    mac = hmac.new(shared.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), name.encode(), password.encode(), b"admin"]))
    answer = await http.call("POST", path, {"nonce": nonce, "username": name,
                                            "password": password, "admin": True,
                                            "mac": mac.hexdigest()})
    return str(answer["access_token"])


def _messages(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in events if e.get("type") == "m.room.message"]


def _shape(events: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """What must survive of a timeline: id, type, body, redacted."""
    return [(e["event_id"], e.get("type", ""), str((e.get("content") or {}).get("body", "")),
             "redacted_because" in (e.get("unsigned") or {})) for e in events]


async def seed(server: SynapseServer) -> Seeded:
    """Write the data an upgrade must keep, on a running (old) server."""
    adapter = await MatrixAdapter.open(server.endpoint_settings("old"))
    http = _Http(adapter)
    clients: list[MatrixClient] = []
    try:
        users = {n: await adapter.provision_user(f"{n}-upg") for n in ("alice", "bob", "carol")}
        admin = await _register_admin(adapter, http, server.registration_shared_secret)
        alice, bob, carol = [await adapter.connect(users[n]) for n in ("alice", "bob", "carol")]
        clients += [alice, bob, carol]
        to_bob, to_alice = Target.to_user(users["bob"].user_id), Target.to_user("alice-upg")
        await alice.send(to_bob, "dm 1: hello bob")
        gone = await alice.send(to_bob, "dm 2: to be recalled")
        await alice.send(to_bob, "dm 3: still here ✓")
        last_dm = await bob.send(to_alice, "dm 4: hi alice")
        group = await alice.create_group("upgrade-group", ["bob-upg", "carol-upg"])
        to_group = Target.to_group(group.group_id)
        await alice.send(to_group, "group 1 from alice")
        await bob.send(to_group, "group 2 from bob")
        third = await carol.send(to_group, "group 3 from carol")
        await alice.recall(gone.conversation, gone.message_id)
        saved = {n: await http.login(users[n], f"SAVED{n.upper()}") for n in ("alice", "carol")}
        for name, room, event_id in (("alice", last_dm.conversation, last_dm.message_id),
                                     ("carol", group.group_id, third.message_id)):
            await http.call("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(event_id)}",
                            {}, token=saved[name])
        sync = await http.call("GET", "/sync", token=saved["carol"], params={"timeout": "0"})
        seeded = Seeded(users, admin, saved, dm=last_dm.conversation, group=group.group_id,
                        recalled=gone.message_id, since=str(sync["next_batch"]))
        # Sent after carol's cursor: exactly what her resumed sync must bring, nothing else.
        seeded.after_since = [
            (await bob.send(to_group, "group 4 after the since-token")).message_id,
            (await alice.send(to_group, "group 5 after the since-token")).message_id,
        ]
        await alice.send(to_bob, "dm 5: carol is not in this room")
        for room in (seeded.dm, seeded.group):
            seeded.timelines[room] = await http.timeline(room, saved["alice"])
        seeded.receipts = {
            seeded.dm: {adapter.mxid("alice-upg"): last_dm.message_id},
            seeded.group: {adapter.mxid("carol-upg"): third.message_id},
        }
        return seeded
    finally:
        await http.aclose()
        await adapter.aclose()


async def wait_background_updates(server: SynapseServer, admin_token: str) -> tuple[int, float]:
    """Poll until Synapse has no background update left; (updates seen pending, seconds)."""
    adapter = await MatrixAdapter.open(server.endpoint_settings("new"))
    http = _Http(adapter)
    start = time.monotonic()
    deadline = start + units(120)
    first = -1
    try:
        while True:
            pending = pending_background_updates(server)
            status = await http.call("GET", BG_STATUS, token=admin_token)
            running = (status.get("current_updates") or {}) if status.get("enabled", True) else {}
            first = pending if first < 0 else first
            if pending == 0 and not running:
                return first, time.monotonic() - start
            if time.monotonic() > deadline:
                raise HarnessError(f"Synapse {server.version}: {pending} background updates still "
                                   f"pending after {units(120):.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await http.aclose()
        await adapter.aclose()


async def verify(server: SynapseServer, seeded: Seeded, report: UpgradeReport, *,
                 writes: bool = True) -> None:
    """Check on a running server that the seeded data survived (and, with `writes`, new ones)."""
    adapter = await MatrixAdapter.open(server.endpoint_settings("new"))
    http = _Http(adapter)
    clients: list[MatrixClient] = []
    tag = f"on {server.version}"
    try:
        version = await http.call("GET", "/_synapse/admin/v1/server_version")
        report.check(f"{tag}: server reports its version", version.get("server_version",
                     "").startswith(server.version), str(version.get("server_version")))
        for name, token in seeded.saved_tokens.items():
            who = await _answer(http.call("GET", "/account/whoami", token=token))
            report.check(f"{tag}: {name}'s saved access token still works",
                         who.get("user_id") == adapter.mxid(f"{name}-upg"),
                         f"whoami: {who.get('user_id')} device {who.get('device_id')}"
                         if "user_id" in who else str(who.get("error")))
        for room, before in seeded.timelines.items():
            now = await http.timeline(room, seeded.saved_tokens["alice"])
            kept = _shape(now)[: len(before)] == _shape(before)
            report.check(f"{tag}: history of {_room(seeded, room)} unchanged", kept,
                         f"{len(_messages(before))} messages before, {len(_messages(now))} now")
        redacted = [e for e in await http.timeline(seeded.dm, seeded.saved_tokens["alice"])
                    if e["event_id"] == seeded.recalled]
        report.check(f"{tag}: the redaction holds (content gone, redacted_because kept)",
                     bool(redacted) and not (redacted[0].get("content") or {})
                     and "redacted_because" in (redacted[0].get("unsigned") or {}))
        receipts = await http.receipts(list(seeded.receipts), seeded.saved_tokens["alice"])
        for room, readers in seeded.receipts.items():
            got = {r: receipts.get(room, {}).get(r) for r in readers}
            report.check(f"{tag}: read receipts in {_room(seeded, room)}", got == readers,
                         f"{len(readers)} reader(s) at the seeded event" if got == readers
                         else f"expected {readers}, got {got}")
        resumed = await http.call("GET", "/sync", token=seeded.saved_tokens["carol"],
                                  params={"since": seeded.since, "timeout": "0"})
        ids = [e["event_id"] for room in ((resumed.get("rooms") or {}).get("join") or {}).values()
               for e in _messages((room.get("timeline") or {}).get("events") or [])]
        report.check(f"{tag}: carol's since-token resumes with exactly what was sent after it",
                     ids == seeded.after_since, f"{len(ids)} messages" if ids == seeded.after_since
                     else f"expected {seeded.after_since}, got {ids}")
        try:
            alice, bob = [await adapter.connect(seeded.users[n]) for n in ("alice", "bob")]
        except HarnessError as exc:
            report.check(f"{tag}: password logins work", False, str(exc))
            return
        clients += [alice, bob]
        report.check(f"{tag}: password logins work", True, "alice and bob, new devices")
        page = await alice.history(seeded.dm, limit=50)
        bodies = [(m.body if not m.recalled else "<recalled>") for m in page.messages]
        report.check(f"{tag}: the adapter reads the direct room in order", bodies[:4] == [
            "dm 1: hello bob", "<recalled>", "dm 3: still here ✓", "dm 4: hi alice"],
            ", ".join(bodies[:4]))
        if writes:
            ack = await alice.send(Target.to_group(seeded.group), f"written on {server.version}")
            delivered = await _wait_body(bob, seeded.group, ack.message_id)
            report.check(f"{tag}: new writes work and are delivered", delivered,
                         "sent to the group, received by bob")
            seeded.after_since.append(ack.message_id)  # carol's cursor now also owes this one
            newbie = await adapter.provision_user(f"new-{int(time.time() * 1000) % 10**8}")
            fresh = await adapter.connect(newbie)
            clients.append(fresh)
            report.check(f"{tag}: a new user registers and logs in",
                         fresh.user_id == newbie.user_id, newbie.user_id)
    finally:
        await http.aclose()
        await adapter.aclose()


async def _answer(call: Any) -> dict[str, Any]:
    try:
        return dict(await call)
    except HarnessError as exc:
        return {"error": str(exc)}


def _room(seeded: Seeded, room: str) -> str:
    return "the direct room" if room == seeded.dm else "the group"


async def _wait_body(client: MatrixClient, room: str, event_id: str) -> bool:
    async def seen() -> bool:
        async for event in client.events():
            message = getattr(event, "message", None)
            if message is not None and message.message_id == event_id:
                return True
        return False

    try:
        return await asyncio.wait_for(seen(), units(10))
    except TimeoutError:
        return False


def database_versions(server: SynapseServer) -> tuple[int, int | None]:
    """(schema version, compat version) written in the server's database."""
    version = int(server.query("SELECT version FROM schema_version")[0][0])
    rows = server.query("SELECT compat_version FROM schema_compat_version")
    return version, (int(rows[0][0]) if rows and rows[0][0] else None)


def code_schema_version(server: SynapseServer) -> int:
    """The newest database schema this server's Synapse code knows."""
    import subprocess

    python = server.install()
    out = subprocess.run(
        [str(python), "-c", "from synapse.storage.schema import SCHEMA_VERSION as v; print(v)"],
        capture_output=True, text=True, check=True, timeout=units(60),
    )
    return int(out.stdout.strip())


def _request(name: str, version: str, database: Database = "sqlite") -> ServerRequest:
    return ServerRequest(endpoint=name, adapter="matrix",
                         server_options=SynapseOptions(version=version, database=database))


def run_upgrade(old: str, new: str, *, rollback: bool = True,
                database: Database = "sqlite") -> UpgradeReport:
    """Seed on `old`, upgrade in place to `new`, verify, try the rollback; no process is left.

    The upgrade and the rollback are `SynapseEmbedded.upgrade(to)`, the server interface's; on
    `database="postgres"` every release uses the one cluster and database the first made.
    """
    report = UpgradeReport(old, new)
    embedded = SynapseEmbedded.for_request(_request("old", old, database))
    try:
        t0 = time.monotonic()
        embedded.start()
        report.timings["start old"] = time.monotonic() - t0
        t0 = time.monotonic()
        seeded = asyncio.run(seed(embedded.server))
        report.timings["seed"] = time.monotonic() - t0
        t0 = time.monotonic()
        before = _database_identity(embedded.server)
        embedded.upgrade(_request("new", new, database))
        report.timings["upgrade"] = time.monotonic() - t0
        second = embedded.server
        if database == "postgres":
            after = _database_identity(second)
            report.check(f"on {new}: the same PostgreSQL cluster and database serve it",
                         after == before, f"{after}" if after == before
                         else f"before {before}, after {after}")
        pending, waited = asyncio.run(wait_background_updates(second, seeded.admin_token))
        report.timings["background updates"] = waited
        schema, compat = database_versions(second)
        report.check(f"on {new}: background updates finished", True,
                     f"{pending or 'none'} pending when first polled; database schema {schema}, "
                     f"compat {compat}")
        t0 = time.monotonic()
        asyncio.run(verify(second, seeded, report))
        report.timings["verify"] = time.monotonic() - t0
        if rollback:
            report.rollback = _try_rollback(embedded, old, seeded, report, database)
    finally:
        embedded.stop()
    return report


def _database_identity(server: SynapseServer) -> str:
    """Which database a server uses: the cluster (initdb's system identifier) and database oid."""
    if server.cluster is None:
        return f"sqlite {server.data_dir}"
    system, oid = server.query(
        "SELECT (SELECT system_identifier FROM pg_control_system()), oid FROM pg_database "
        "WHERE datname = current_database()")[0]
    return f"cluster {system} in {server.cluster.data}, database oid {oid}"


def _try_rollback(embedded: SynapseEmbedded, old: str, seeded: Seeded,
                  report: UpgradeReport, database: Database) -> str:
    """Start the old release on the upgraded data; what Synapse does, as one line."""
    schema, compat = database_versions(embedded.server)
    knows = code_schema_version(SynapseServer(old))
    try:
        embedded.upgrade(_request("old", old, database))
    except UpgradeRefused as exc:
        return f"refused: {old} does not start ({exc})"
    asyncio.run(verify(embedded.server, seeded, report, writes=False))
    return (f"accepted: {old} (knows schema {knows}) starts on the upgraded database "
            f"(schema {schema}, compat {compat} <= {knows}) and reads the seeded data back")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: bad flags are one line and exit 2; a failed check exits 1."""
    parser = _Parser(prog="python -m harness.matrix.upgrade",
                     description="Synapse in-place upgrade regression (seed old, upgrade, verify)")
    parser.add_argument("--old", default="1.141.0", help="the release to seed (default 1.141.0)")
    parser.add_argument("--new", default="1.163.2", help="the release to upgrade to")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite (default) or postgres (a throwaway cluster of its own)")
    parser.add_argument("--no-rollback", action="store_true", help="skip the rollback attempt")
    try:
        args = parser.parse_args(argv)
    except _BadFlags as exc:
        print(f"error: {exc}; usage: {parser.prog} --old VERSION --new VERSION", file=sys.stderr)
        return 2
    for flag, value in (("--old", args.old), ("--new", args.new)):
        if value not in KNOWN_VERSIONS:
            print(f"error: {flag} {value!r} is not a known Synapse release; known: "
                  f"{', '.join(KNOWN_VERSIONS)}", file=sys.stderr)
            return 2
    if args.database not in DATABASES:
        print(f"error: --database {args.database!r} is unknown; use one of "
              f"{', '.join(DATABASES)}", file=sys.stderr)
        return 2
    if args.old == args.new:
        print(f"error: --old and --new are both {args.old!r}; pick two releases", file=sys.stderr)
        return 2
    if args.database == "postgres":
        try:
            find_bindir()  # before any work: a missing PostgreSQL is bad input
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        report = run_upgrade(args.old, args.new, rollback=not args.no_rollback,
                             database=args.database)
    except HarnessError as exc:
        print(f"Synapse in-place upgrade {args.old} -> {args.new}: FAILED\n  {exc}")
        return 1
    print(report.render())
    return 0 if report.ok else 1


class _BadFlags(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2 itself
        raise _BadFlags(message)


if __name__ == "__main__":
    raise SystemExit(main())
