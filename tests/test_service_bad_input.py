"""Every bad input to the reference service, one row each: the answer PROTOCOL.md promises.

Three tables: WebSocket frames (the documented error, the connection stays open: a ping after
the bad frame is answered), the HTTP APIs (a 4xx with the documented error body, never a 500)
and the command line (exit 2, one line `im-ref: FLAG = VALUE: why; fix`). Throughout: no
traceback in the service's stderr and no secret in anything it says.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import service_client
from service_client import ROOT, Api, Client, Svc, login, raw_http

from harness.reference.strictjson import MAX_DEPTH, SAFE_INT, depth
from harness.timing import units

api, clients = service_client.api, service_client.clients

ADMIN_SECRET = "adm1n-s3cret-for-bad-input-tests"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
    """The service with the default 1 MiB frame cap (room for very deep nesting)."""
    service = Svc(tmp_path_factory.mktemp("bad-input") / "ref.sqlite", "--log-level", "DEBUG",
                  admin_token=ADMIN_SECRET).start()
    yield service
    assert service.stop() == 0
    assert "Traceback" not in service.stderr()
    assert ADMIN_SECRET not in service.stderr()


@dataclass
class Session:
    """A logged-in alice with a peer bob in a pro app with receipts on."""

    client: Client
    app: str
    key: str
    token: str


@pytest.fixture
async def alice(svc: Svc, api: Api, clients: list[Client]) -> Session:
    app, key = await api.create_app(tier="pro", features={"recall": True, "receipts": True})
    await api.user(app, key, "bob")
    token = await api.user(app, key, "alice")
    return Session(await login(svc, token, clients), app, key, token)


# ---- the wire ------------------------------------------------------------------------------


def nested(levels: int, inner: str = "") -> str:
    """`levels` arrays inside one another."""
    return "[" * levels + inner + "]" * levels


@dataclass(frozen=True)
class Frame:
    """A raw frame and the error PROTOCOL.md promises for it (`None`: it succeeds)."""

    raw: str | bytes
    code: str | None
    re_none: bool = True  # the answer carries `re: null` (no usable id)
    says: str = ""  # a fragment the error message must contain
    unsent: str = ""  # a body that must not have been sent (the op was not run)


DM = "d:alice:bob"
FRAMES: dict[str, Frame] = {
    "not json": Frame('{"id": 1, "op": "ping",', "bad_request", says="not valid JSON"),
    "top-level array": Frame("[1, 2]", "bad_request", says="an array"),
    "top-level number": Frame("42", "bad_request", says="a number"),
    "top-level string": Frame('"ping"', "bad_request", says="a string"),
    "top-level null": Frame("null", "bad_request", says="null"),
    "binary frame": Frame(b"\xff\xfe\x00", "bad_request", says="binary"),
    "nested 33 deep": Frame('{"id": 900001, "op": "ping", "x": ' + nested(MAX_DEPTH) + "}",
                            "bad_request", says=str(MAX_DEPTH)),
    "nested 32 deep is fine": Frame(
        '{"id": 900002, "op": "ping", "x": ' + nested(MAX_DEPTH - 1) + "}", None, re_none=False),
    "brackets inside a string do not nest": Frame(json.dumps({
        "id": 900016, "op": "send", "to": {"user": "bob"}, "body": '[{"\\' * 300}),
        None, re_none=False),
    "id at the top of the range": Frame(json.dumps({"id": SAFE_INT, "op": "ping"}), None,
                                        re_none=False),
    "id negative is fine": Frame('{"id": -5, "op": "ping"}', None, re_none=False),
    # 200000 levels raised RecursionError and closed the connection with 1011
    "nested 200000 deep": Frame(nested(200_000), "bad_request", says=str(MAX_DEPTH)),
    "deep object in custom": Frame(json.dumps({"id": 900003, "op": "send", "to": {"user": "bob"},
                                               "kind": "custom", "custom": {"a": 1}})
                                   .replace('{"a": 1}', '{"a":' * 40 + "1" + "}" * 40),
                                   "bad_request", says=str(MAX_DEPTH)),
    "NaN literal": Frame('{"id": 900004, "op": "ping", "x": NaN}', "bad_request", says="NaN"),
    "Infinity literal": Frame('{"id": 900005, "op": "history", "conversation": "d:alice:bob", '
                              '"limit": Infinity}', "bad_request", says="Infinity"),
    "-Infinity literal": Frame('{"id": -Infinity, "op": "ping"}', "bad_request",
                               says="-Infinity"),
    "1e400 overflows to inf": Frame('{"id": 900006, "op": "history", "conversation": '
                                    '"d:alice:bob", "limit": 1e400}', "bad_request", re_none=False,
                                    says="'limit'"),
    "integer of 5000 digits": Frame('{"id": 1' + "0" * 5000 + ', "op": "ping"}', "bad_request",
                                    says="more than 4300 digits"),
    "huge cursor-like integer": Frame(
        '{"id": 900007, "op": "history", "conversation": "d:alice:bob", "before": 1'
        + "0" * 30 + "}",
        "bad_request", re_none=False, says=str(SAFE_INT)),
    "lone surrogate": Frame('{"id": 900008, "op": "send", "to": {"user": "bob"}, '
                            '"body": "\\ud800"}', "bad_request", says="surrogate"),
    "id absent": Frame('{"op": "ping"}', "bad_request", says="'id'"),
    "id a string": Frame('{"id": "7", "op": "ping"}', "bad_request", says="'id'"),
    "id a float": Frame('{"id": 7.5, "op": "ping"}', "bad_request", says="'id'"),
    "id a boolean": Frame('{"id": true, "op": "ping"}', "bad_request", says="'id'"),
    "id null": Frame('{"id": null, "op": "ping"}', "bad_request", says="'id'"),
    "id beyond 2**53-1": Frame(json.dumps({"id": SAFE_INT + 1, "op": "ping"}), "bad_request",
                               says="'id'"),
    "id an object, op not run": Frame(json.dumps({
        "id": {"n": 1}, "op": "send", "to": {"user": "bob"}, "body": "never-sent-1"}),
        "bad_request", says="not run", unsent="never-sent-1"),
    "id a string, op not run": Frame(json.dumps({
        "id": "12", "op": "send", "to": {"user": "bob"}, "body": "never-sent-2"}),
        "bad_request", says="not run", unsent="never-sent-2"),
    "op missing": Frame('{"id": 900009}', "bad_request", re_none=False, says="'op'"),
    "op a number": Frame('{"id": 900010, "op": 5}', "bad_request", re_none=False,
                         says="unknown op"),
    "op unknown": Frame('{"id": 900011, "op": "explode"}', "bad_request", re_none=False,
                        says="explode"),
    "to a string": Frame('{"id": 900012, "op": "send", "to": "bob", "body": "x"}',
                         "bad_request", re_none=False, says="'to'"),
    "to.user a list": Frame('{"id": 900013, "op": "send", "to": {"user": ["bob"]}, '
                            '"body": "x"}', "not_found", re_none=False),
    "members a string": Frame('{"id": 900014, "op": "group.create", "members": "bob"}',
                              "bad_request", re_none=False, says="'members'"),
    "seq a string": Frame('{"id": 900015, "op": "read", "conversation": "d:alice:bob", '
                          '"seq": "1"}',
                          "bad_request", re_none=False, says="'seq'"),
}


@pytest.mark.parametrize("name", FRAMES)
async def test_bad_frame_gets_its_error_and_the_connection_stays(
        name: str, svc: Svc, alice: Session) -> None:
    row, a = FRAMES[name], alice.client
    log_from = len(svc.stderr())
    await a.send_raw(row.raw)
    answer = await a.next_unmatched()
    if row.code is None:
        assert answer["ok"], answer
    else:
        assert answer["ok"] is False, answer
        assert answer["error"]["code"] == row.code, answer
        assert row.says in answer["error"]["message"], answer
        assert len(answer["error"]["message"]) < 300, answer  # junk is not echoed in full
    assert (answer["re"] is None) == row.re_none, answer
    assert alice.token not in json.dumps(answer)
    pong = await a.ok("ping")  # the connection is still open and in order
    assert pong["ts"] > 0
    if row.unsent:
        history = await a.ok("history", conversation=DM)
        assert row.unsent not in json.dumps(history), history
    assert "Traceback" not in svc.stderr()[log_from:]


@pytest.mark.parametrize(
    ("text", "levels"),
    [("[]", 1), ('{"a": [[1], {"b": []}]}', 4), ('"[[[["', 0), ('["]]]", ["\\"[["]]', 2),
     ('{"a": "\\\\", "b": [[]]}', 3), ("", 0)],
)
def test_depth_counts_brackets_outside_strings(text: str, levels: int) -> None:
    assert depth(text) == levels


def _deep_claims() -> str:
    return base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=") + ".x"


@pytest.mark.parametrize(
    "forge",
    [
        # compare_digest refused a non-ASCII str with TypeError: an `internal` answer
        pytest.param(lambda good: good.split(".")[0] + ".sig\u00e9", id="signature non-ASCII"),
        pytest.param(lambda good: _deep_claims(), id="claims nested 100000 deep"),
        pytest.param(lambda good: "%%%.x", id="claims not base64"),
        pytest.param(lambda good: 12345, id="a number"),
    ],
)
async def test_bad_login_token_is_unauthorized_not_internal(
        forge: Any, svc: Svc, alice: Session, clients: list[Client]) -> None:
    log_from = len(svc.stderr())
    fresh = await Client.open(svc)
    clients.append(fresh)
    await fresh.fail("login", "unauthorized", token=forge(alice.token))
    await fresh.fail("ping", "unauthorized")  # still open, still logged out
    assert "Traceback" not in svc.stderr()[log_from:]


async def test_text_frame_of_invalid_utf8_is_closed_1007(svc: Svc, alice: Session) -> None:
    """RFC 6455 makes invalid UTF-8 in a text frame a protocol error: close 1007, documented."""
    log_from = len(svc.stderr())
    await alice.client.ws.send(b'{"id": 1, "op": "ping", "x": "\xff"}', text=True)
    await alice.client.closed()
    assert alice.client.ws.close_code == 1007
    assert "Traceback" not in svc.stderr()[log_from:]


async def test_after_the_bad_input_nothing_is_lost(svc: Svc, api: Api,
                                                   clients: list[Client]) -> None:
    """A good send before and after a burst of every bad frame: both are stored, in order."""
    app, key = await api.create_app(tier="pro")
    await api.user(app, key, "bob")
    a = await login(svc, await api.user(app, key, "alice"), clients)
    await a.ok("send", to={"user": "bob"}, body="before")
    for row in FRAMES.values():
        if row.code is not None:
            await a.send_raw(row.raw)
    await a.ok("send", to={"user": "bob"}, body="after")
    b = await login(svc, await api.user(app, key, "bob"), clients)
    bodies = [m["body"] for m in (await b.ok("history", conversation=DM))["messages"]]
    assert bodies == ["before", "after"]


# ---- the HTTP APIs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """A raw HTTP request and the status and error code PROTOCOL.md promises for it."""

    method: str
    path: str
    body: bytes
    status: int
    code: str
    auth: str = "admin"  # "admin", "app", or raw header bytes after "Bearer "
    says: str = ""
    raw_auth: bytes = b""


def _deep_body(levels: int) -> bytes:
    return ('{"tier": "pro", "limits": {"max_connections": 1}, "x": ' + nested(levels)
            + "}").encode()


HTTP: dict[str, Http] = {
    "admin: nested 33 deep": Http("POST", "/admin/apps", _deep_body(MAX_DEPTH), 400,
                                  "bad_request", says=str(MAX_DEPTH)),
    "admin: nested 200000 deep": Http("POST", "/admin/apps", nested(200_000).encode(), 400,
                                      "bad_request", says=str(MAX_DEPTH)),
    "admin: body over 1 MiB": Http("POST", "/admin/apps", b'{"x": "' + b"a" * (2 << 20) + b'"}',
                                   413, "too_large", says="1048576"),
    "admin: top-level array": Http("POST", "/admin/apps", b'["pro"]', 400, "bad_request",
                                   says="JSON object"),
    "admin: top-level number": Http("PUT", "/admin/defects", b"7", 400, "bad_request",
                                    says="JSON object"),
    "admin: not UTF-8": Http("POST", "/admin/apps", b'{"tier": "\xff"}', 400, "bad_request",
                             says="UTF-8"),
    "admin: not JSON": Http("POST", "/admin/apps", b"{nope", 400, "bad_request",
                            says="not valid JSON"),
    "admin: NaN": Http("POST", "/admin/apps", b'{"recall_window_s": NaN}', 400, "bad_request",
                       says="NaN"),
    "admin: integer beyond a float": Http("POST", "/admin/apps",
                                          b'{"recall_window_s": 1%s}' % (b"0" * 400), 400,
                                          "bad_request", says="recall_window_s"),
    "admin: 1e400 limit": Http("POST", "/admin/apps", b'{"limits": {"send_burst": 1e400}}', 400,
                               "bad_request", says="send_burst"),
    "admin: tier a list": Http("POST", "/admin/apps", b'{"tier": ["pro"]}', 400, "bad_request",
                               says="tier"),
    "admin: lone surrogate": Http("POST", "/admin/apps",
                                  b'{"webhook": "http://127.0.0.1:9/\\udc00"}', 400,
                                  "bad_request", says="surrogate"),
    "admin: features not booleans": Http("POST", "/admin/apps",
                                         b'{"tier": "pro", "features": {"recall": "yes"}}',
                                         400, "bad_request", says="recall"),
    "admin: patch delay Infinity": Http("PATCH", "/admin/apps/{app}", b'{"delay_s": Infinity}',
                                        400, "bad_request", says="Infinity"),
    "admin: patch delay huge": Http("PATCH", "/admin/apps/{app}",
                                    b'{"delay_s": 1%s}' % (b"0" * 400), 400, "bad_request",
                                    says="delay_s"),
    "admin: defects not a map of booleans": Http("PUT", "/admin/defects",
                                                 b'{"no_push": 1}', 400, "bad_request",
                                                 says="no_push"),
    "admin: token not UTF-8": Http("GET", "/admin/counters", b"", 401, "unauthorized",
                                   auth="raw", raw_auth=b"Bearer \xff\xfe"),
    "admin: token non-ASCII": Http("GET", "/admin/counters", b"", 401, "unauthorized",
                                   auth="raw", raw_auth="Bearer é".encode()),
    "admin: unknown path": Http("GET", "/admin/nowhere", b"", 404, "not_found"),
    "admin: wrong method": Http("DELETE", "/admin/counters", b"", 405, "bad_request"),
    "app: ttl NaN": Http("POST", "/apps/{app}/users", b'{"ttl_s": NaN}', 400, "bad_request",
                         auth="app", says="NaN"),
    "app: ttl 1e999": Http("POST", "/apps/{app}/users", b'{"ttl_s": 1e999}', 400, "bad_request",
                           auth="app", says="ttl_s"),
    "app: user_id a number": Http("POST", "/apps/{app}/users", b'{"user_id": 5}', 400,
                                  "bad_request", auth="app", says="user_id"),
    "app: nested 200000 deep": Http("POST", "/apps/{app}/users", nested(200_000).encode(), 400,
                                    "bad_request", auth="app", says=str(MAX_DEPTH)),
    "app: body over 1 MiB": Http("POST", "/apps/{app}/users", b"[" + b"0," * (1 << 20) + b"0]",
                                 413, "too_large", auth="app"),
    "app: key not UTF-8": Http("POST", "/apps/{app}/users", b"{}", 401, "unauthorized",
                               auth="raw", raw_auth=b"Bearer \xc3\x28"),
}


@pytest.fixture(scope="module")
def http_app() -> dict[str, str]:
    """The app the HTTP rows talk about, created by the first row that needs it."""
    return {}


@pytest.mark.parametrize("name", HTTP)
async def test_bad_http_request_gets_4xx_with_the_error_body(
        name: str, svc: Svc, api: Api, http_app: dict[str, str]) -> None:
    row = HTTP[name]
    log_from = len(svc.stderr())
    if not http_app:
        http_app["app"], http_app["key"] = await api.create_app(tier="pro")
    auth = {"admin": b"Bearer " + ADMIN_SECRET.encode(),
            "app": b"Bearer " + http_app["key"].encode(), "raw": row.raw_auth}[row.auth]
    status, payload = await raw_http(svc, row.method, row.path.format(**http_app), row.body,
                                     authorization=auth)
    error = json.loads(payload)["error"]
    assert (status, error["code"]) == (row.status, row.code), (status, payload[:300])
    assert row.says in error["message"], error
    assert len(payload) < 1000  # the request is not echoed back
    for secret in (ADMIN_SECRET, http_app["key"]):
        assert secret.encode() not in payload
    assert "Traceback" not in svc.stderr()[log_from:]
    assert (await api.counters())["messages"] >= 0  # and the service still answers


# ---- the command line ----------------------------------------------------------------------

LINE = re.compile(r"^im-ref: (?P<flag>[\w-]+)(?: = (?P<value>.+?))?: (?P<why>[^;]+); (?P<fix>.+)$")


@dataclass(frozen=True)
class Cli:
    """Arguments (with `{tmp}` for a scratch directory) and what the one-line answer names."""

    args: tuple[str, ...]
    flag: str
    value: str | None  # the value the line shows; None: none shown
    fix: str  # a fragment of the fix
    env: dict[str, str] = field(default_factory=dict)
    secret: str = ""  # must not appear anywhere in the output


CLI: dict[str, Cli] = {
    "keepalive nan": Cli(("--keepalive-v2", "nan"), "--keepalive-v2", "nan", "0.01..86400"),
    "keepalive inf": Cli(("--keepalive-v1", "inf"), "--keepalive-v1", "inf", "0.01..86400"),
    "keepalive negative": Cli(("--keepalive-v2=-1",), "--keepalive-v2", "-1", "0.01..86400"),
    "keepalive zero": Cli(("--keepalive-v1", "0"), "--keepalive-v1", "0", "0.01..86400"),
    "propagation delay negative": Cli(("--propagation-delay=-0.5",), "--propagation-delay",
                                      "-0.5", "0..86400"),
    "propagation delay nan": Cli(("--propagation-delay", "NaN"), "--propagation-delay", "NaN",
                                 "0..86400"),
    "recall window inf": Cli(("--recall-window", "inf"), "--recall-window", "inf",
                             "0..31536000"),
    "recall window negative": Cli(("--recall-window=-1",), "--recall-window", "-1",
                                  "0..31536000"),
    "defect rate nan": Cli(("--defect-rate", "nan"), "--defect-rate", "nan", "0..1"),
    "defect rate 1e400": Cli(("--defect-rate", "1e400"), "--defect-rate", "1e400", "0..1"),
    "port out of range": Cli(("--port", "70000"), "--port", "70000", "0..65535"),
    "api port negative": Cli(("--api-port=-1",), "--api-port", "-1", "0..65535"),
    "port not a number": Cli(("--port", "http"), "--port", "http", "0..65535"),
    "frame cap zero": Cli(("--max-frame-bytes", "0"), "--max-frame-bytes", "0", "1..4194304"),
    "frame cap above the hard cap": Cli(("--max-frame-bytes", "5000000"), "--max-frame-bytes",
                                        "5000000", "1..4194304"),
    "seed not an integer": Cli(("--seed", "1.5"), "--seed", "1.5", "integer"),
    "log level unknown": Cli(("--log-level", "LOUD"), "--log-level", "LOUD", "INFO"),
    "host not loopback": Cli(("--host", "0.0.0.0"), "--host", "0.0.0.0", "127.0.0.1"),
    "db a directory": Cli(("--db", "{tmp}"), "--db", "{tmp}", "reference.sqlite"),
    "db not SQLite": Cli(("--db", "{tmp}/notes.txt"), "--db", "{tmp}/notes.txt", "new path"),
    "db unwritable place": Cli(("--db", "/proc/im-ref-bad-input.sqlite"), "--db",
                               "/proc/im-ref-bad-input.sqlite", "writable"),
    "db a device": Cli(("--db", "/dev/null"), "--db", "/dev/null", "regular file"),
    "db under a file": Cli(("--db", "{tmp}/notes.txt/x.sqlite"), "--db",
                           "{tmp}/notes.txt/x.sqlite", "directory"),
    "db of another schema": Cli(("--db", "{tmp}/other.sqlite"), "--db", "{tmp}/other.sqlite",
                                "new path"),
    "db with unreadable rows": Cli(("--db", "{tmp}/broken.sqlite"), "--db",
                                   "{tmp}/broken.sqlite", "new path"),
    "db parent missing": Cli(("--db", "{tmp}/no/such/x.sqlite"), "--db",
                             "{tmp}/no/such/x.sqlite", "create it"),
    "admin token as a flag": Cli(("--admin-token", "hunter2-flag-secret"), "--admin-token",
                                 None, "IM_REF_ADMIN_TOKEN", secret="hunter2-flag-secret"),
    "admin token as flag=value": Cli(("--admin-token=hunter3-flag-secret",), "--admin-token",
                                     None, "IM_REF_ADMIN_TOKEN", secret="hunter3-flag-secret"),
    "a stray value": Cli(("hunter4-stray-secret",), "arguments", None, "--help",
                         secret="hunter4-stray-secret"),
    "unknown flag": Cli(("--frobnicate",), "--frobnicate", None, "--help"),
    "flag without its value": Cli(("--port",), "--port", None, "--port=VALUE"),
    "admin token with a space": Cli((), "IM_REF_ADMIN_TOKEN", "(not shown)", "printable ASCII",
                                    env={"IM_REF_ADMIN_TOKEN": "s3cret with-space"},
                                    secret="s3cret with-space"),
    "admin token with a newline": Cli((), "IM_REF_ADMIN_TOKEN", "(not shown)", "printable",
                                      env={"IM_REF_ADMIN_TOKEN": "s3cret\nline"},
                                      secret="s3cret"),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a text file, an SQLite file of another schema and one of bad rows."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "notes.txt").write_text("not a database\n")
    with sqlite3.connect(tmp / "other.sqlite") as db:
        db.execute("CREATE TABLE apps (name TEXT)")
    with sqlite3.connect(tmp / "broken.sqlite") as db:
        db.execute("CREATE TABLE apps (app_id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        db.execute("INSERT INTO apps VALUES ('a', 'this is not json')")
    return tmp


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "IM_REF_ADMIN_TOKEN": ADMIN_SECRET, **env}
    return subprocess.run([sys.executable, "-m", "harness.reference",
                           *args], cwd=ROOT, capture_output=True, text=True, env=full_env,
                          timeout=units(20), check=False)


def _assert_one_line(result: subprocess.CompletedProcess[str], flag: str, value: str | None,
                     fix: str, secrets: tuple[str, ...]) -> re.Match[str]:
    assert result.returncode == 2, result
    assert result.stdout == "", result.stdout  # no ready line: nothing started
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match["flag"] == flag, lines[0]
    assert match["value"] == value, lines[0]
    assert fix in match["fix"], lines[0]
    for secret in (ADMIN_SECRET, *secrets):
        assert secret not in result.stderr
    return match


@pytest.mark.parametrize("name", CLI)
def test_bad_flag_is_one_line_and_exit_2(name: str, scratch: Path) -> None:
    row = CLI[name]
    args = [a.format(tmp=scratch) for a in row.args]
    value = row.value.format(tmp=scratch) if row.value is not None else None
    result = _run(args, row.env)
    _assert_one_line(result, row.flag, value, row.fix, (row.secret,) if row.secret else ())
    if name == "db of another schema":  # another program's file is left as it was found
        with sqlite3.connect(scratch / "other.sqlite") as db:
            tables = db.execute("SELECT name FROM sqlite_master").fetchall()
            assert tables == [("apps",)]
            assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    if name == "db parent missing":
        assert not (scratch / "no").exists()  # nothing created


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(["--api-port", str(port)], {})
    match = _assert_one_line(result, "--api-port", str(port), "free port", ())
    assert "cannot listen" in match["why"]
