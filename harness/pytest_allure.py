"""The thin allure-pytest layer: epics, parameters, links and failure attachments for the suites.

Registered as a second `pytest11` entry point. It does nothing unless allure-pytest is installed
and `--alluredir` is given. Every result gets the labels the sign-off reads back
(`harness.report.results`): endpoint, capabilities, the case without its endpoint, and the kind
of a failure (product, harness, unsupported). Secret values are masked in every file written.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from harness.errors import IMError
from harness.report.redact import Redactor, config_secrets, session_secrets
from harness.report.results import (
    CAPABILITY_LABEL,
    CASE_LABEL,
    ENDPOINT_LABEL,
    ENDPOINTS_FILE,
    FAILURE_LABEL,
    HARNESS,
    NOT_SUPPORTED,
    PRODUCT,
    UNSUPPORTED,
)

try:
    import allure
    import allure_commons
except ImportError:  # allure-pytest is optional
    allure = None  # type: ignore[assignment]
    allure_commons = None  # type: ignore[assignment]

# Where each area's behaviour is described: the reference protocol installed with the package
# (package data of harness.reference), or the vendor's documentation.
PROTOCOL = Path(__file__).resolve().parent / "reference" / "PROTOCOL.md"
REFERENCE_AREAS = frozenset({"Chat", "Groups", "Recall", "Receipts", "Offline", "Security",
                             "Tier", "Interop"})
MATRIX_SPEC = "https://spec.matrix.org/latest/client-server-api/"
MATRIX_DOCS = {
    "Chat": "#sending-events-to-a-room", "Groups": "#room-membership",
    "Recall": "#redactions", "Receipts": "#receipts", "Offline": "#syncing",
    "Security": "#client-authentication", "Tier": "#rate-limiting",
}
SEVERITY = {"Chat": "critical", "Groups": "critical", "Offline": "critical",
            "Security": "critical", "Recall": "normal", "Receipts": "normal"}

_KIND = pytest.StashKey[str]()
_ENDPOINT = pytest.StashKey[str]()


def active(config: pytest.Config) -> bool:
    return allure is not None and bool(getattr(config.option, "allure_report_dir", None))


def area_of(item: pytest.Item) -> str:
    """The epic: the suite module's subject, `suites/test_recall.py` -> `Recall`."""
    stem = Path(str(item.path)).stem.removeprefix("test_")
    return stem.replace("_", " ").title()


def capabilities_of(item: pytest.Item) -> list[str]:
    caps = [str(a) for m in item.iter_markers("capability") for a in m.args]
    if item.get_closest_marker("needs_admin"):
        caps.append("tier_admin")
    return list(dict.fromkeys(caps))


def endpoint_of(item: pytest.Item) -> str:
    """`old` / `new`, `old+new` for a test over every endpoint, `` when not per endpoint."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "endpoint" not in callspec.params:
        return ""
    joint = next((i for i in str(callspec.id).split("-") if "+" in i), None)
    if joint and "endpoints" in getattr(item, "fixturenames", ()):
        return joint  # one run over every endpoint, ids "old+new"
    return str(callspec.params["endpoint"])


def case_of(item: pytest.Item, endpoint: str) -> str:
    """The node id without the endpoint's part of the test id."""
    nodeid = item.nodeid
    if not endpoint:
        return nodeid
    match = re.search(r"\[(.*)\]$", nodeid)
    if not match:
        return nodeid
    rest = [p for p in match.group(1).split("-") if p != endpoint]
    base = nodeid[: match.start()]
    return base + (f"[{'-'.join(rest)}]" if rest else "")


def failure_kind(report: pytest.TestReport, call: pytest.CallInfo[Any]) -> str:
    """product (the endpoint misbehaved), harness (setup, crash, bug), unsupported (skip)."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(
            report.longrepr)
        return UNSUPPORTED if NOT_SUPPORTED.search(str(reason)) else ""
    if not report.failed:
        return ""
    if report.when != "call" or call.excinfo is None:
        return HARNESS
    exc = call.excinfo.value
    return PRODUCT if isinstance(exc, AssertionError | IMError) else HARNESS


class _Redacting:
    """allure-commons hook wrappers: mask secrets before (results) or after (files) a write."""

    def __init__(self, config: pytest.Config, report_dir: Path) -> None:
        self.config = config
        self.report_dir = report_dir
        self.redactor = Redactor()

    def refresh(self) -> Redactor:
        from harness.pytest_plugin import CONFIG_KEY, SESSION_KEY

        hs = self.config.stash.get(SESSION_KEY, None)
        if hs is not None:
            self.redactor.add(session_secrets(hs))
        elif CONFIG_KEY in self.config.stash:
            self.redactor.add(config_secrets(self.config.stash[CONFIG_KEY]))
        return self.redactor

    def _scrub(self, obj: Any, depth: int = 0) -> None:
        if depth > 30 or obj is None:
            return
        fields = obj if isinstance(obj, list) else getattr(obj, "__dict__", None)
        if isinstance(fields, list):
            for i, value in enumerate(fields):
                if isinstance(value, str):
                    fields[i] = self.redactor.text(value)
                else:
                    self._scrub(value, depth + 1)
        elif isinstance(fields, dict):
            for key, value in list(fields.items()):
                if isinstance(value, str):
                    fields[key] = self.redactor.text(value)
                elif isinstance(value, list) or hasattr(value, "__dict__"):
                    self._scrub(value, depth + 1)

    def _scrub_file(self, file_name: str) -> None:
        path = self.report_dir / file_name
        if path.is_file():
            raw = path.read_bytes()
            clean = self.redactor.data(raw)
            if clean != raw:
                path.write_bytes(clean)

    if allure_commons is not None:

        @allure_commons.hookimpl(hookwrapper=True)
        def report_result(self, result: Any) -> Iterator[None]:
            if self.refresh():
                self._scrub(result)
            yield

        @allure_commons.hookimpl(hookwrapper=True)
        def report_container(self, container: Any) -> Iterator[None]:
            if self.refresh():
                self._scrub(container)
            yield

        @allure_commons.hookimpl(hookwrapper=True)
        def report_attached_data(self, body: Any, file_name: str) -> Iterator[None]:
            yield
            if self.refresh():
                self._scrub_file(file_name)

        @allure_commons.hookimpl(hookwrapper=True)
        def report_attached_file(self, source: Any, file_name: str) -> Iterator[None]:
            yield
            if self.refresh():
                self._scrub_file(file_name)


class AllureLayer:
    """The pytest hooks, registered only when Allure results are being written."""

    def __init__(self, config: pytest.Config, report_dir: Path) -> None:
        self.config = config
        self.report_dir = report_dir

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        area = area_of(item)
        caps = capabilities_of(item)
        endpoint = endpoint_of(item)
        item.stash[_ENDPOINT] = endpoint
        allure.dynamic.epic(area)
        allure.dynamic.feature(caps[0] if caps else area.lower())
        story = (getattr(item, "originalname", None) or item.name).removeprefix("test_")
        allure.dynamic.story(story.replace("_", " "))
        severity = "blocker" if item.get_closest_marker("smoke") else SEVERITY.get(area, "normal")
        allure.dynamic.severity(allure.severity_level(severity))
        for cap in caps:
            allure.dynamic.label(CAPABILITY_LABEL, cap)
        allure.dynamic.label(CASE_LABEL, case_of(item, endpoint))
        if endpoint:
            allure.dynamic.label(ENDPOINT_LABEL, endpoint)
            allure.dynamic.parameter("endpoint", endpoint)
        item.user_properties.append(("epic", area))
        item.user_properties.append((CAPABILITY_LABEL, ",".join(caps)))

    def _infos(self) -> dict[str, Any]:
        from harness.pytest_plugin import SESSION_KEY

        hs = self.config.stash.get(SESSION_KEY, None)
        return dict(hs.infos) if hs is not None else {}

    def _describe(self, item: pytest.Item) -> None:
        endpoint = item.stash.get(_ENDPOINT, "")
        infos = self._infos()
        names = [n for n in endpoint.split("+") if n]
        own = set(getattr(getattr(item, "callspec", None), "params", ()))
        for name in names:
            info = infos.get(name)
            if info is None:
                continue
            for key, value in (("adapter", info.adapter), ("protocol", info.protocol or "?"),
                               ("tier", info.tier or "?")):
                # The test's own parameter of that name (a client protocol) must stay: Allure
                # tells results apart by their parameters.
                label = f"{name} {key}" if len(names) > 1 or key in own else key
                allure.dynamic.parameter(label, value)
        adapter = infos[names[0]].adapter if names and names[0] in infos else "reference"
        area = area_of(item)
        if adapter == "matrix" and area in MATRIX_DOCS:
            allure.dynamic.link(MATRIX_SPEC + MATRIX_DOCS[area], name=f"Matrix spec: {area}")
        elif area in REFERENCE_AREAS and PROTOCOL.is_file():
            allure.dynamic.link(PROTOCOL.as_uri(), name=f"{area}: reference PROTOCOL.md")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[Any]
    ) -> Iterator[None]:
        report: Any = yield
        with contextlib.suppress(Exception):  # a report detail must never fail the test
            if report.when == "setup":
                self._describe(item)
            kind = failure_kind(report, call)
            if kind and _KIND not in item.stash:
                item.stash[_KIND] = kind
                allure.dynamic.label(FAILURE_LABEL, kind)
            if report.failed:
                self._attach_failure(item, report, call)
        return report

    def _attach_failure(self, item: pytest.Item, report: Any, call: pytest.CallInfo[Any]) -> None:
        from harness.pytest_plugin import FAULT_TIMELINE_KEY

        text = allure.attachment_type.TEXT
        oracle = getattr(item, "funcargs", {}).get("oracle")
        if oracle is not None and hasattr(oracle, "transcript"):
            found = oracle.violations(complete=False)
            explanation = "\n\n".join(v.explanation for v in found) or (
                "The oracle found no delivery violation; the failure is the assertion above.")
            allure.attach(f"{explanation}\n\n--- transcript ---\n{oracle.transcript()}",
                          name="oracle: explanation and transcript", attachment_type=text)
        timeline = item.stash.get(FAULT_TIMELINE_KEY, None)
        if timeline is not None and (timeline.faults or timeline.events):
            allure.attach(timeline.to_text(), name="fault timeline", attachment_type=text)
            allure.attach(timeline.to_json(), name="fault timeline (json)",
                          attachment_type=allure.attachment_type.JSON)
        hypothesis = [body for title, body in report.sections if "hypothesis" in title.lower()]
        exc = call.excinfo.value if call.excinfo is not None else None
        notes = [str(n) for n in getattr(exc, "__notes__", ())]
        seeded = [n for n in notes if "seed" in n.lower() or "falsifying" in n.lower()]
        if hypothesis or seeded:
            allure.attach("\n\n".join([*seeded, *hypothesis]),
                          name="hypothesis: shrunk steps and seed", attachment_type=text)

    def _write_latency(self) -> None:
        """This process's latencies as `im-latency-<xdist worker>.json` (the reader merges them)."""
        from harness.latency import FILE_PREFIX
        from harness.pytest_plugin import SESSION_KEY

        hs = self.config.stash.get(SESSION_KEY, None)
        if hs is None or hs.latency.empty():
            return
        worker = getattr(self.config, "workerinput", {}).get("workerid", "main")
        self.report_dir.mkdir(parents=True, exist_ok=True)
        (self.report_dir / f"{FILE_PREFIX}-{worker}.json").write_text(hs.latency.to_json())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Leave the endpoints' descriptions (never a secret) and the latencies by the results."""
        from harness.report.allure import endpoint_environment, write_environment
        from harness.session import describe

        self._write_latency()

        endpoints = {
            name: {
                "describe": describe(info), "adapter": info.adapter, "url": info.url,
                "protocol": info.protocol, "tier": info.tier,
                "capabilities": sorted(c.value for c in info.capabilities),
                "limits": {k: v for k, v in asdict(info.limits).items() if v is not None},
            }
            for name, info in self._infos().items()
        }
        if not endpoints:
            return
        self.report_dir.mkdir(parents=True, exist_ok=True)
        (self.report_dir / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2) + "\n")
        write_environment(self.report_dir, endpoint_environment(endpoints))


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    report_dir = Path(config.option.allure_report_dir).resolve()
    layer = AllureLayer(config, report_dir)
    config.pluginmanager.register(layer, "im_harness_allure_layer")
    redacting = _Redacting(config, report_dir)
    allure_commons.plugin_manager.register(redacting)
    config.add_cleanup(lambda: allure_commons.plugin_manager.unregister(redacting))
