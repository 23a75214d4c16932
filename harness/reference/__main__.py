"""Command line: `python -m harness.reference --port 0 --api-port 0 --db PATH`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import tempfile
from typing import NoReturn

from aiohttp import web
from websockets.asyncio.server import serve

from harness.reference import defects
from harness.reference.api import build_app
from harness.reference.common import Config
from harness.reference.frontend import HARD_MAX_FRAME
from harness.reference.server import Service
from harness.reference.store import Store
from harness.reference.tiers import TIERS

LOOPBACK = ("127.0.0.1", "::1", "localhost")
ADMIN_ENV = "IM_REF_ADMIN_TOKEN"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag and the fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"harness.reference: error: {message}; run with --help for valid values\n")


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
    return "\n".join(lines)


def _parser() -> _Parser:
    p = _Parser(prog="python -m harness.reference", description="The reference IM service.",
                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    p.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    p.add_argument("--api-port", type=int, default=0, help="HTTP API port (0: any free port)")
    p.add_argument("--db", default=None, help="SQLite file (default: a temporary file)")
    p.add_argument("--defect", action="append", default=[], metavar="NAME",
                   help=f"switch on a seeded defect; one of: {', '.join(defects.DEFECTS)}")
    p.add_argument("--defect-rate", type=float, default=defects.DEFAULT_RATE,
                   help=f"probability for random defects (default {defects.DEFAULT_RATE})")
    p.add_argument("--seed", type=int, default=0, help="seed of the defects' random source")
    p.add_argument("--keepalive-v1", type=float, default=30.0, help="v1 ping interval, seconds")
    p.add_argument("--keepalive-v2", type=float, default=15.0, help="v2 ping interval, seconds")
    p.add_argument("--propagation-delay", type=float, default=0.0,
                   help="seconds before an admin tier/feature change takes effect")
    p.add_argument("--recall-window", type=float, default=120.0,
                   help="default recall window in seconds (an app may set its own)")
    p.add_argument("--max-frame-bytes", type=int, default=1024 * 1024,
                   help="frames above this get too_large (hard cap 4 MiB closes with 1009)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="shut down when the process that started this one goes away (a crashed "
                        "test run must not leave a service behind)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level")
    return p


def _check(p: _Parser, args: argparse.Namespace) -> None:
    if args.host not in LOOPBACK:
        p.error(f"--host {args.host!r} is not loopback; use 127.0.0.1, ::1 or localhost")
    for flag in ("port", "api_port"):
        value = getattr(args, flag)
        if not 0 <= value <= 65535:
            p.error(f"--{flag.replace('_', '-')} {value} is out of range; use 0..65535")
    for name in args.defect:
        if name not in defects.DEFECTS:
            p.error(f"--defect {name!r} is unknown; use one of {', '.join(defects.DEFECTS)}")
    if not 0.0 <= args.defect_rate <= 1.0:
        p.error(f"--defect-rate {args.defect_rate} must be within 0..1")
    for flag in ("keepalive_v1", "keepalive_v2"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be > 0 seconds")
    for flag in ("propagation_delay", "recall_window"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0 seconds")
    if not 1 <= args.max_frame_bytes <= HARD_MAX_FRAME:
        p.error(f"--max-frame-bytes must be within 1..{HARD_MAX_FRAME}")
    if args.db is not None:
        parent = os.path.dirname(os.path.abspath(args.db))
        if not os.path.isdir(parent):
            p.error(f"--db {args.db!r}: directory {parent!r} does not exist; create it first")


async def _watch_parent(stop: asyncio.Event, parent: int, interval: float = 0.5) -> None:
    """Set `stop` once this process is re-parented: its starter died (even by kill -9)."""
    while not stop.is_set():
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            log = logging.getLogger("harness.reference")
            log.warning("parent %d is gone; shutting down", parent)
            stop.set()


async def _serve(args: argparse.Namespace, db_path: str) -> None:
    store = Store(db_path)
    config = Config(keepalive_v1=args.keepalive_v1, keepalive_v2=args.keepalive_v2,
                    propagation_delay=args.propagation_delay, recall_window=args.recall_window,
                    max_frame_bytes=args.max_frame_bytes)
    service = Service(store, config)
    service.load()
    store.start()
    await service.start()
    runner = web.AppRunner(build_app(service, os.environ.get(ADMIN_ENV) or None),
                           access_log=None, handle_signals=False)
    ws_server = None
    try:
        ws_server = await serve(service.handle, args.host, args.port,
                                process_request=service.process_request,
                                max_size=HARD_MAX_FRAME, ping_interval=None, compression=None,
                                max_queue=64)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.api_port).start()
        ws_port = next(iter(ws_server.sockets)).getsockname()[1]
        api_port = runner.addresses[0][1]
        print(json.dumps({"event": "ready", "ws_port": ws_port, "api_port": api_port,
                          "pid": os.getpid()}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watchdog = (asyncio.create_task(_watch_parent(stop, args.parent_pid))
                    if args.exit_with_parent else None)
        await stop.wait()
        if watchdog is not None:
            watchdog.cancel()
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
    parser = _parser()
    args = parser.parse_args(argv)
    args.parent_pid = os.getppid()  # read first: the parent may die while we start
    _check(parser, args)
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
        asyncio.run(_serve(args, db_path))
    except OSError as exc:
        print(f"harness.reference: error: cannot listen: {exc}; pick free ports or use 0",
              file=sys.stderr)
        return 2
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
