"""Command line: `python -m harness.reference --port 0 --api-port 0 --db PATH`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import resource
import signal
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web
from websockets.asyncio.server import serve

from harness.reference import defects, releases
from harness.reference.api import build_app
from harness.reference.common import Config
from harness.reference.frontend import HARD_MAX_FRAME
from harness.reference.server import Service
from harness.reference.store import Store
from harness.reference.tiers import TIERS

LOOPBACK = ("127.0.0.1", "::1", "localhost")
ADMIN_ENV = "IM_REF_ADMIN_TOKEN"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DAY_S = 86400
SQLITE_MAGIC = b"SQLite format 3\x00"
_HIDDEN = object()  # a value never printed (a secret)


class UsageError(Exception):
    """A bad setting, reported as one line: `im-ref: FLAG = VALUE: why; fix`, exit 2."""

    def __init__(self, flag: str, value: object, why: str, fix: str) -> None:
        super().__init__(f"{flag}: {why}")
        self.flag, self.value, self.why, self.fix = flag, value, why, fix

    def line(self) -> str:
        if self.value is None:
            shown = ""
        elif self.value is _HIDDEN:
            shown = " = (not shown)"
        else:
            shown = f" = {_shown(str(self.value))}"
        return f"im-ref: {self.flag}{shown}: {self.why}; {self.fix}"


def _shown(text: str, limit: int = 80) -> str:
    """A value as it can go on one line of a terminal: escaped, cut short."""
    if not text:
        return "''"
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class _Range:
    """A numeric flag: its type and the closed range it accepts."""

    kind: type[int] | type[float]
    low: float
    high: float
    what: str  # "seconds", "bytes", ...

    def accepted(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        return f"use {noun} in {self.span()}" + (f" {self.what}" if self.what else "")

    def span(self) -> str:
        return f"{_plain(self.low)}..{_plain(self.high)}"


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


# dest -> what the flag accepts; every numeric flag is here (checked before anything starts)
RANGES: dict[str, _Range] = {
    "port": _Range(int, 0, 65535, "(0: any free port)"),
    "api_port": _Range(int, 0, 65535, "(0: any free port)"),
    "defect_rate": _Range(float, 0.0, 1.0, "(a probability)"),
    "keepalive_v1": _Range(float, 0.01, DAY_S, "seconds"),
    "keepalive_v2": _Range(float, 0.01, DAY_S, "seconds"),
    "propagation_delay": _Range(float, 0.0, DAY_S, "seconds"),
    "recall_window": _Range(float, 0.0, 365 * DAY_S, "seconds"),
    "max_frame_bytes": _Range(int, 1, HARD_MAX_FRAME, "bytes"),
    "release": _Range(int, releases.RELEASES[0], releases.RELEASES[-1], "(the service release)"),
    "token_window": _Range(float, 0.0, 365 * DAY_S, "seconds"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors become a `UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        match = re.match(r"argument (--[\w-]+)(?:/\S+)?: (.*)", message)
        if match and match.group(2).startswith("expected one argument"):
            raise UsageError(match.group(1), None, "needs a value",
                             f"use {match.group(1)}=VALUE or {match.group(1)} VALUE; see --help")
        if match and match.group(2).startswith("ignored explicit argument"):
            raise UsageError(match.group(1), None, "takes no value", "use the flag alone")
        # argparse's other messages may quote what was typed: never echo it (a secret?)
        raise UsageError("arguments", None, "not understood", "run with --help for the flags")


def _epilog() -> str:
    lines = ["tiers (per app, set through the admin API):"]
    for tier in TIERS.values():
        lim = tier.limits
        extra = ", ".join(sorted(tier.optional_features)) or "none"
        lines.append(
            f"  {tier.name}: {lim.max_connections} connections, {lim.max_group_members} group "
            f"members, {lim.max_message_bytes} bytes/message, {lim.send_rate_per_user:g}/s burst "
            f"{lim.send_burst}, retention {(lim.history_retention_s or 0) / 86400:g} days, "
            f"optional features: {extra}")
    lines.append("protocols: /v1 (old SDK: no recall/read ops) and /v2 (all ops)")
    lines.append("seeded defects (--defect NAME, repeatable; all off by default):")
    lines += [f"  {name}: {what}" for name, what in defects.DEFECTS.items()]
    lines.append(f"admin API token: environment variable {ADMIN_ENV}")
    lines.append("bad values: one line on stderr naming the flag, the value and the fix; exit 2")
    return "\n".join(lines)


def _parser() -> _Parser:
    def rng(dest: str) -> str:
        return RANGES[dest].span()

    p = _Parser(prog="python -m harness.reference", description="The reference IM service.",
                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    p.add_argument("--port", default="0", help=f"WebSocket port, {rng('port')} (0: any free)")
    p.add_argument("--api-port", default="0",
                   help=f"HTTP API port, {rng('api_port')} (0: any free port)")
    p.add_argument("--db", default=None, help="SQLite file (default: a temporary file)")
    p.add_argument("--defect", action="append", default=[], metavar="NAME",
                   help=f"switch on a seeded defect; one of: {', '.join(defects.DEFECTS)}")
    p.add_argument("--defect-rate", default=str(defects.DEFAULT_RATE),
                   help=f"probability for random defects, {rng('defect_rate')} "
                        f"(default {defects.DEFAULT_RATE})")
    p.add_argument("--seed", default="0", help="seed of the defects' random source (an integer)")
    p.add_argument("--keepalive-v1", default="30",
                   help=f"v1 ping interval, seconds, {rng('keepalive_v1')} (default 30)")
    p.add_argument("--keepalive-v2", default="15",
                   help=f"v2 ping interval, seconds, {rng('keepalive_v2')} (default 15)")
    p.add_argument("--propagation-delay", default="0",
                   help="seconds before an admin tier/feature change takes effect, "
                        f"{rng('propagation_delay')}")
    p.add_argument("--recall-window", default="120",
                   help="default recall window in seconds (an app may set its own), "
                        f"{rng('recall_window')}")
    p.add_argument("--max-frame-bytes", default=str(1024 * 1024),
                   help=f"frames above this get too_large, {rng('max_frame_bytes')} (frames "
                        "above the hard cap of 4 MiB are closed with 1009)")
    p.add_argument("--release", default=str(releases.CURRENT),
                   help=f"the service release to run as, {rng('release')} (default "
                        f"{releases.CURRENT}); a newer release upgrades the data in place, an "
                        "older one refuses data a newer one migrated")
    p.add_argument("--token-window", default="600",
                   help="seconds tokens minted before an upgrade stay valid after it, "
                        f"{rng('token_window')} (default 600)")
    p.add_argument("--log-level", default="INFO", help=f"stderr log level: {', '.join(LOG_LEVELS)}")
    return p


def _number(dest: str, text: str) -> int | float:
    flag, spec = "--" + dest.replace("_", "-"), RANGES[dest]
    try:
        value: int | float = int(text) if spec.kind is int else float(text)
    except ValueError:
        why = "not an integer" if spec.kind is int else "not a number"
        raise UsageError(flag, text, why, spec.accepted()) from None
    if not math.isfinite(value):
        raise UsageError(flag, text, "not a finite number", spec.accepted())
    if not spec.low <= value <= spec.high:
        raise UsageError(flag, text, "out of range", spec.accepted())
    return value


def _settings(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed and checked; `UsageError` for the first bad flag."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    for word in extra:
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            fix = (f"the admin token comes from the environment variable {ADMIN_ENV}, never a "
                   "flag; run with --help for the flags" if "token" in name
                   else "run with --help for the flags")
            raise UsageError(name, None, "unknown flag", fix)
        raise UsageError("arguments", None, "a stray value (not shown) that no flag takes",
                         "every setting is a --flag; run with --help")
    if args.host not in LOOPBACK:
        raise UsageError("--host", args.host, "not a loopback address",
                         "use 127.0.0.1, ::1 or localhost")
    for dest in RANGES:
        setattr(args, dest, _number(dest, getattr(args, dest)))
    try:
        args.seed = int(args.seed)
    except ValueError:
        raise UsageError("--seed", args.seed, "not an integer", "use an integer, e.g. 0") \
            from None
    for name in args.defect:
        if name not in defects.DEFECTS:
            raise UsageError("--defect", name, "unknown defect",
                             f"use one of {', '.join(defects.DEFECTS)}")
    level = args.log_level.upper()
    if level not in LOG_LEVELS:
        raise UsageError("--log-level", args.log_level, "unknown level",
                         f"use one of {', '.join(LOG_LEVELS)}")
    args.log_level = level
    if args.db is not None:
        _check_db(args.db)
    _check_admin_token(os.environ.get(ADMIN_ENV))
    return args


def _check_db(path: str) -> None:
    """Refuse a `--db` that cannot be an SQLite file this service can write."""
    def bad(why: str, fix: str) -> UsageError:
        return UsageError("--db", path, why, fix)

    if not path:
        raise bad("an empty path", "use a file path, e.g. ./reference.sqlite")
    if os.path.isdir(path):
        raise bad("is a directory", f"use a file inside it, e.g. "
                                    f"{os.path.join(path, 'reference.sqlite')}")
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise bad("is not a regular file", "use a regular file or a new path")
        if not os.access(path, os.R_OK | os.W_OK):
            raise bad("cannot be read and written by this user",
                      "fix its permissions or use another file")
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise bad(f"cannot be read ({exc.strerror})", "use another file") from None
        if head and head != SQLITE_MAGIC:
            raise bad("is not an SQLite database",
                      "use a new path, or a file this service wrote before")
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise bad(f"directory {parent} does not exist", "create it first or use another path")
    if not os.path.isdir(parent):
        raise bad(f"{parent} is not a directory", "use a path inside a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise bad(f"directory {parent} is not writable", "use a writable directory")


def _check_admin_token(token: str | None) -> None:
    """An admin token an HTTP client can send: printable ASCII, no spaces (never shown)."""
    if token and not all(33 <= ord(c) <= 126 for c in token):
        raise UsageError(
            ADMIN_ENV, _HIDDEN,
            "holds a space, a control or a non-ASCII character that an Authorization header "
            "cannot carry",
            "use printable ASCII without spaces, e.g. from python -c \"import secrets; "
            "print(secrets.token_urlsafe(32))\"")


def _open_db(path: str, *, named: bool) -> tuple[Store, dict[str, list[tuple[object, ...]]]]:
    """The store on `path` and its rows; `UsageError` when SQLite refuses it."""
    flag, value = ("--db", path) if named else ("--db (a temporary file)", None)
    try:
        db = Store(path)
    except (sqlite3.OperationalError, OSError) as exc:  # cannot open or write there
        raise UsageError(flag, value, f"SQLite cannot open it ({exc})",
                         "use a new file in a writable directory") from None
    except sqlite3.Error as exc:  # opened, but not a database of ours
        raise UsageError(flag, value, f"SQLite cannot use it ({exc})",
                         "use a new path, or a file this service wrote before") from None
    try:
        return db, db.load()
    except sqlite3.Error as exc:
        db.abandon()
        raise UsageError(flag, value, f"SQLite cannot read it ({exc})",
                         "use a new path, or a file this service wrote before") from None


def _service(args: argparse.Namespace, db_path: str) -> Service:
    """The service on its database, state loaded; `UsageError` when the database is unusable.

    The rows are checked before anything is written; then the data moves to this release.
    """
    store, rows = _open_db(db_path, named=args.db is not None)
    try:
        releases.check_release(store, args.release)
    except releases.ReleaseError as exc:
        store.abandon()
        raise UsageError("--release", args.release, str(exc), "see the upgrade notes in "
                         "harness/reference/PROTOCOL.md") from None
    config = Config(keepalive_v1=args.keepalive_v1, keepalive_v2=args.keepalive_v2,
                    propagation_delay=args.propagation_delay, recall_window=args.recall_window,
                    max_frame_bytes=args.max_frame_bytes, release=args.release,
                    token_window_s=args.token_window)
    service = Service(store, config)
    try:
        service.world.load(rows)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        store.abandon()
        raise UsageError("--db", db_path, f"holds rows this service cannot read "
                         f"({type(exc).__name__}: {_shown(str(exc), 60)})",
                         "use a new path, or a file this service wrote before") from None
    state = releases.open_release(store, args.release)
    config.upgraded_at = state.upgraded_at
    if state.migrated:
        logging.getLogger("harness.reference").info(
            "upgraded the data from release %s to %s", state.upgraded_from, state.release)
        service = Service(store, config)  # the state as the migration left it
        service.world.load(store.load())
    return service


def _listen_error(flag: str, host: str, port: int, exc: OSError) -> UsageError:
    return UsageError(flag, port, f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                      "use a free port, or 0 for any free port")


async def _serve(args: argparse.Namespace, service: Service) -> None:
    store = service.db
    store.start()
    await service.start()
    runner = web.AppRunner(build_app(service, os.environ.get(ADMIN_ENV) or None),
                           access_log=None, handle_signals=False)
    ws_server = None
    try:
        try:
            ws_server = await serve(service.handle, args.host, args.port,
                                    process_request=service.process_request,
                                    max_size=HARD_MAX_FRAME, ping_interval=None,
                                    compression=None, max_queue=64)
        except OSError as exc:
            raise _listen_error("--port", args.host, args.port, exc) from None
        await runner.setup()
        try:
            await web.TCPSite(runner, args.host, args.api_port).start()
        except OSError as exc:
            raise _listen_error("--api-port", args.host, args.api_port, exc) from None
        ws_port = next(iter(ws_server.sockets)).getsockname()[1]
        api_port = runner.addresses[0][1]
        print(json.dumps({"event": "ready", "ws_port": ws_port, "api_port": api_port,
                          "pid": os.getpid()}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logging.getLogger("harness.reference").info("shutting down")
    finally:
        if ws_server is not None:
            ws_server.close()
            try:  # a peer that never answers the close handshake must not hold up the exit
                await asyncio.wait_for(ws_server.wait_closed(), 2.0)
            except TimeoutError:
                for conn in list(service.conns):
                    if conn.ws.transport is not None:
                        conn.ws.transport.abort()
                await ws_server.wait_closed()
        await runner.cleanup()
        await service.close()
        await store.close()


def _raise_fd_limit() -> None:
    """Each session is a socket: let the service hold as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    try:
        args = _settings(argv)
    except UsageError as err:
        print(err.line(), file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.log_level != "DEBUG":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    defects.configure(args.defect, seed=args.seed, rate=args.defect_rate)
    _raise_fd_limit()
    tmpdir = None
    db_path = args.db
    if db_path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="im-ref-")
        db_path = os.path.join(tmpdir.name, "reference.sqlite")
    try:
        asyncio.run(_serve(args, _service(args, db_path)))
    except UsageError as err:
        print(err.line(), file=sys.stderr)
        return 2
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
