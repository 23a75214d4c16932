"""The defect matrix for a real HTTP endpoint: Synapse behind the harness's corrupting proxy.

One Synapse (started here by the harness's launcher) stands behind one `HttpProxy` per fault
and one clean proxy. The suites run in pytest subprocesses, as a user runs them, against a
generated im-harness.toml whose endpoint `new` is the proxy's url. Each server defect the proxy
injects (a dropped, a repeated, a swapped timeline event, a read receipt moved back) must make
some suite test fail with the oracle's explanation of that defect; the clean proxy must pass
everything. Bad input (a /sync answer that is not JSON, an event of an unknown type) must not
crash the run: it completes, its output names the endpoint and the event, and the clean
tests still pass. The matrix is written to reports/defect-matrix-synapse.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from matrix_runner import WORKERS, Run, execute, publish

from harness.errors import HarnessError
from harness.faults.httpproxy import HttpProxy, Injection, SyncFault
from harness.matrix.launcher import SynapseServer, install_synapse
from harness.timing import units

pytestmark = pytest.mark.slow
T = TypeVar("T")
VERSION = "1.163.2"
SECRET_ENV = "IM_HARNESS_MATRIX_PROXY_SECRET"
RUN_TIMEOUT_S = 240.0
# One homeserver serves two suite runs at a time on a shared machine: a send may take longer
# than the example's 5 s there, and the matrix judges what arrives, not how fast.
SEND_S = 15.0
CHAT = "suites/test_chat.py"
RECEIPTS = "suites/test_receipts.py"
OFFLINE = "suites/test_offline.py"
GROUPS = "suites/test_groups.py"
# The suites (and -k selection) that concern each fault: a small set, so the matrix stays short.
SELECTED: dict[SyncFault, tuple[list[str], str]] = {
    SyncFault.DROP: ([CHAT], "one_to_one_both"),
    SyncFault.DUPLICATE: ([RECEIPTS], "offline_sender"),
    SyncFault.SWAP: ([GROUPS], "fanout_once"),
    SyncFault.RECEIPT_BACK: ([RECEIPTS], "offline_reader"),
    # A garbled or odd answer live, and during a reconnect's catch-up.
    SyncFault.MALFORMED_JSON: ([CHAT, OFFLINE], "one_to_one_both or (missed_messages and drop)"),
    SyncFault.UNKNOWN_TYPE: ([CHAT, OFFLINE], "one_to_one_both or (missed_messages and drop)"),
}
# What the oracle says about each server defect: a catching test's failure must say it.
EXPLAINS: dict[SyncFault, re.Pattern[str]] = {
    SyncFault.DROP: re.compile(r"\[loss\] .* never received"),
    SyncFault.DUPLICATE: re.compile(r"\[(hidden_by_sdk|duplicate)\] .* saw message .* twice"),
    SyncFault.SWAP: re.compile(r"\[(causal_order|order|unexpected)\] "),
    SyncFault.RECEIPT_BACK: re.compile(r"\[(hidden_by_sdk|receipt)\] .*moved back from \d+ to"),
}
# What a bad-input run's output must say: the endpoint and the event, in one clear line.
SAYS: dict[SyncFault, re.Pattern[str]] = {
    SyncFault.MALFORMED_JSON: re.compile(
        r"endpoint 'new': GET /sync: the 200 answer is malformed \(not JSON: .*\); it begins b'"),
    SyncFault.UNKNOWN_TYPE: re.compile(
        r"endpoint 'new': \S+'s sync: event \S+ of unknown type 'im_harness\.unknown_type'"),
}
DEFECTS = [f for f in SyncFault if f in EXPLAINS]
BAD_INPUT = [f for f in SyncFault if f in SAYS]
CONFIG = """[harness]
endpoints = ["new"]

[endpoints.new]
adapter = "matrix"
url = "{url}"
protocol = "synapse-{version}"
tier = "relaxed"
timeouts = {{ send = {send_s}, connect = {send_s} }}
registration_shared_secret_env = "{secret_env}"
options = {{ server_name = "{server_name}", sync_timeout_s = 20, send_rate_per_user = 5.0, \
send_burst = 30 }}
"""


@dataclass
class ProxyRun(Run):
    """The selected suites through one proxy (fault None: the clean one)."""

    fault: SyncFault | None = None
    keyword: str = ""
    failures: dict[str, str] = field(default_factory=dict)  # test id -> its failure's text
    injections: list[Injection] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.fault) if self.fault else "clean"


class ProxyHost:
    """HttpProxies in one event loop of their own thread, beside the test's subprocesses."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxies",
                                        daemon=True)
        self._thread.start()
        self.proxies: list[HttpProxy] = []

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=units(60))

    def proxy(self, upstream: str, fault: SyncFault | None) -> HttpProxy:
        async def start() -> HttpProxy:
            proxy = await HttpProxy(upstream, name=str(fault or "clean")).start()
            proxy.fault = fault
            return proxy

        proxy = self._run(start())
        self.proxies.append(proxy)
        return proxy

    def injections(self, proxy: HttpProxy) -> list[Injection]:
        async def copy() -> list[Injection]:
            return list(proxy.injections)

        return self._run(copy())

    def close(self) -> None:
        for proxy in self.proxies:
            self._run(proxy.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def synapse() -> Iterator[SynapseServer]:
    try:
        install_synapse(VERSION)
    except HarnessError as exc:
        pytest.skip(f"Synapse {VERSION} cannot be installed here: {str(exc).splitlines()[0]}")
    with SynapseServer(VERSION) as server:
        yield server


def failure_texts(junit: Path) -> dict[str, str]:
    """Failed test id -> its failure message and text, from a JUnit XML file."""
    out: dict[str, str] = {}
    if not junit.exists():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is not None:
            test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            out[test] = f"{failure.get('message', '')}\n{failure.text or ''}"
    return out


@pytest.fixture(scope="module")
def matrix(synapse: SynapseServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyRun]]:
    """Every fault's run and the clean run, two at a time; label -> ProxyRun."""
    workdir = tmp_path_factory.mktemp("defect-matrix-synapse")
    host = ProxyHost()
    saved = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = synapse.registration_shared_secret
    clean_suites = sorted({s for suites, _ in SELECTED.values() for s in suites})
    clean_keyword = " or ".join(f"({k})" for _, k in SELECTED.values())
    runs = [ProxyRun(None, clean_suites, keyword=clean_keyword)]
    runs += [ProxyRun(None, suites, fault=fault, keyword=keyword)
             for fault, (suites, keyword) in SELECTED.items()]

    def one(run: ProxyRun) -> ProxyRun:
        proxy = host.proxy(synapse.base_url, run.fault)
        config = workdir / f"{run.label}.toml"
        config.write_text(CONFIG.format(url=proxy.url, version=VERSION, secret_env=SECRET_ENV,
                                        server_name=synapse.server_name, send_s=SEND_S))
        junit = workdir / f"{run.label}.xml"
        execute(run, junit=junit, config=config, timeout_s=RUN_TIMEOUT_S,
                extra_args=["-k", run.keyword, "-o", "log_cli=true",
                            "--log-cli-level=WARNING"],
                drop_env=("IM_HARNESS_DEFECTS",))
        run.failures = failure_texts(junit)
        run.injections = host.injections(proxy)
        return run

    try:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            done = list(pool.map(one, runs))
        yield {r.label: r for r in done}
    finally:
        host.close()
        if saved is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = saved


def test_the_clean_proxy_passes_every_selected_test(matrix: dict[str, ProxyRun]) -> None:
    clean = matrix["clean"]
    broken = clean.failed + clean.errors
    assert not broken, f"the suites fail through a clean proxy: {broken}\n{clean.tail()}"
    assert clean.returncode == 0, f"the clean run exited {clean.returncode}:\n{clean.tail()}"
    # One test per server defect and a reconnect's catch-up: the tests the faults run.
    assert len(clean.passed) >= 5, f"too few tests ran:\n{clean.tail()}"


@pytest.mark.parametrize("fault", DEFECTS)
def test_each_server_defect_is_caught_with_the_oracles_explanation(
    matrix: dict[str, ProxyRun], fault: SyncFault,
) -> None:
    run = matrix[str(fault)]
    assert run.returncode in (0, 1), (
        f"the run through {fault} did not complete (exit {run.returncode}):\n{run.tail()}")
    assert run.injections, f"the proxy injected no {fault}: nothing to catch\n{run.tail()}"
    assert run.failed, f"no selected test catches {fault}; {len(run.passed)} passed"
    explained = [t for t, text in run.failures.items() if EXPLAINS[fault].search(text)]
    assert explained, (
        f"{fault} made {run.failed} fail, but none with the oracle's explanation "
        f"/{EXPLAINS[fault].pattern}/:\n" + "\n".join(run.failures.values())[-3000:])


@pytest.mark.parametrize("fault", BAD_INPUT)
def test_bad_input_is_named_and_the_run_goes_on(
    matrix: dict[str, ProxyRun], fault: SyncFault,
) -> None:
    run = matrix[str(fault)]
    assert run.returncode in (0, 1), (
        f"bad input ({fault}) crashed the run (exit {run.returncode}):\n{run.tail()}")
    assert not run.errors, f"bad input ({fault}) broke test setup: {run.errors}\n{run.tail()}"
    assert run.injections, f"the proxy injected no {fault}\n{run.tail()}"
    assert SAYS[fault].search(run.output), (
        f"no line names the endpoint and the event /{SAYS[fault].pattern}/:\n{run.tail()}")
    assert run.passed, f"no test passed through {fault}: the run did not go on\n{run.tail()}"
    assert "Traceback" not in run.output.split("= FAILURES =")[0], run.tail()


def first_paragraph(text: str, pattern: re.Pattern[str]) -> str:
    """The line the pattern found, for the report: one line, ids shortened by first mention."""
    match = pattern.search(text)
    if match is None:
        return "-"
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start:end if end >= 0 else None].strip()
    line = re.sub(r"^(E\s+)+|^[A-Z]+\s+[\w.]+:\w+\.py:\d+\s+", "", line)  # pytest's, log's
    names: dict[str, str] = {}

    def short(found: re.Match[str]) -> str:
        sigil = found.group(0)[0]
        kind = "room" if sigil == "!" else "event"
        known = sum(1 for v in names.values() if v.startswith(sigil))
        return names.setdefault(found.group(0), f"{sigil}{kind}{known + 1}")

    line = re.sub(r"![\w-]{20,}(:localhost)?|\$[\w-]{20,}", short, line)
    line = re.sub(r"@?(\w+)-[0-9a-f]{8}(:localhost)?", r"\1", line)
    line = re.sub(r"\s+", " ", line).replace("|", "\\|")
    return line[:500]


def render(matrix: dict[str, ProxyRun]) -> str:
    lines = [
        "# Defect matrix: Synapse behind the harness's HTTP proxy",
        "",
        f"Synapse {VERSION} on loopback, one `harness.faults.httpproxy.HttpProxy` per fault "
        "between the matrix adapter and it; `pytest suites -k ...` through each. Written by "
        "`tests/test_defect_matrix_synapse.py`.",
        "",
        "| fault | injected | caught | catching tests | the oracle's explanation | s |",
        "|---|---|---|---|---|---|",
    ]
    for fault in DEFECTS:
        run = matrix[str(fault)]
        explained = {t: text for t, text in run.failures.items()
                     if EXPLAINS[fault].search(text)}
        caught = f"yes ({len(explained)} of {len(run.failed)} failed)" if explained \
            else "**NO**"
        tests = "<br>".join(t.split("::", 1)[1] for t in explained) or "-"
        why = first_paragraph(next(iter(explained.values()), ""), EXPLAINS[fault])
        lines.append(f"| `{fault}` | {len(run.injections)} | {caught} | {tests} | {why} | "
                     f"{run.seconds:.0f} |")
    lines += ["", "Bad input: the run completes, the endpoint and the event are named.", "",
              "| input | injected | passed | failed | errors | the line | s |",
              "|---|---|---|---|---|---|---|"]
    for fault in BAD_INPUT:
        run = matrix[str(fault)]
        said = first_paragraph(run.output, SAYS[fault])
        lines.append(f"| `{fault}` | {len(run.injections)} | {len(run.passed)} | "
                     f"{len(run.failed)} | {len(run.errors)} | {said} | {run.seconds:.0f} |")
    clean = matrix["clean"]
    lines += ["", f"Clean proxy: {len(clean.passed)} passed, {len(clean.failed)} failed, "
              f"{len(clean.errors)} errors, {clean.skipped} skipped in {clean.seconds:.0f}s."]
    return "\n".join(lines) + "\n"


def test_write_and_print_matrix(matrix: dict[str, ProxyRun],
                                capsys: pytest.CaptureFixture[str]) -> None:
    text = render(matrix)
    publish(text, "defect-matrix-synapse.md", capsys)
    assert all(f"`{fault}`" in text for fault in SyncFault)
