"""Test outcomes read back from Allure result files (or, failing those, JUnit XML)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Label names the allure layer (harness/pytest_allure.py) puts on every suite result.
ENDPOINT_LABEL = "im_endpoint"
CAPABILITY_LABEL = "im_capability"
CASE_LABEL = "im_case"
FAILURE_LABEL = "im_failure"  # product | harness | unsupported | budget
ENDPOINTS_FILE = "im-endpoints.json"  # what the sign-off reads the promised capabilities from

PRODUCT, HARNESS, UNSUPPORTED, BUDGET = "product", "harness", "unsupported", "budget"
# A skip that means "the endpoint does not offer this" (the plugin's reasons), not a harness gap.
NOT_SUPPORTED = re.compile(
    r"does not offer (capability|protocol)|has no admin API|declares no |not supported"
)


@dataclass(frozen=True)
class Outcome:
    """One test on one endpoint: its status and what it covers."""

    case: str  # the test without its endpoint: the same case on old and new shares it
    name: str
    endpoint: str  # "" when the test is not per endpoint
    status: str  # passed | failed | broken | skipped | unknown
    area: str = ""  # the epic: Chat, Groups, ...
    capabilities: tuple[str, ...] = ()
    kind: str = ""  # the failure kind (see FAILURE_LABEL), "" when it passed
    message: str = ""
    source: str = "allure"

    @property
    def bad(self) -> bool:
        return self.status in ("failed", "broken")

    @property
    def endpoints(self) -> tuple[str, ...]:
        """`("old",)`, or `("old", "new")` for a test that ran over both at once."""
        return tuple(e for e in self.endpoint.split("+") if e)

    @property
    def not_supported(self) -> bool:
        return self.status == "skipped" and (
            self.kind == UNSUPPORTED or bool(NOT_SUPPORTED.search(self.message))
        )

    @property
    def rows(self) -> tuple[str, ...]:
        """The parity rows this outcome counts in: its capabilities, else its area."""
        return self.capabilities or ((self.area.lower(),) if self.area else ("other",))


@dataclass
class Results:
    """Every outcome of a run, and where they were read from."""

    outcomes: list[Outcome] = field(default_factory=list)
    source: str = "none"  # allure | junit | none
    junit_total: int | None = None  # tests the JUnit XML counted, when there is one

    def on(self, endpoint: str) -> list[Outcome]:
        return [o for o in self.outcomes if endpoint in o.endpoints]


def classify(status: str, message: str, trace: str = "") -> str:
    """The failure kind of a result without our label (e.g. read from JUnit)."""
    if status == "passed":
        return ""
    if status == "skipped":
        return UNSUPPORTED if NOT_SUPPORTED.search(message) else ""
    if status == "broken":
        return HARNESS
    return PRODUCT


def _labels(data: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in data.get("labels") or ():
        out.setdefault(str(label.get("name")), []).append(str(label.get("value", "")))
    return out


def read_allure(results_dir: str | Path) -> list[Outcome]:
    """Outcomes of the suite results in an Allure results directory (load/sign-off excluded)."""
    outcomes: list[Outcome] = []
    folder = Path(results_dir)
    if not folder.is_dir():
        return outcomes
    for path in sorted(folder.glob("*-result.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a half-written file of a crashed run: the verdict counts the crash
        labels = _labels(data)
        if "im_generated" in labels:
            continue
        details = data.get("statusDetails") or {}
        status = str(data.get("status") or "unknown")
        message = str(details.get("message") or "")
        kind = (labels.get(FAILURE_LABEL) or [""])[0] or classify(status, message)
        outcomes.append(Outcome(
            case=(labels.get(CASE_LABEL) or [str(data.get("fullName") or data.get("name"))])[0],
            name=str(data.get("name", "")),
            endpoint=(labels.get(ENDPOINT_LABEL) or [""])[0],
            status=status,
            area=(labels.get("epic") or [""])[0],
            capabilities=tuple(dict.fromkeys(labels.get(CAPABILITY_LABEL, ()))),
            kind=kind if status != "passed" else "",
            message=message,
        ))
    return outcomes


_PARAM = re.compile(r"\[(.*)\]$")


def read_junit(path: str | Path, endpoints: Iterable[str] = ("old", "new")) -> list[Outcome]:
    """Outcomes from pytest's JUnit XML; the endpoint is the test id part naming one."""
    known = set(endpoints)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    outcomes: list[Outcome] = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        module = case.get("classname", "")
        match = _PARAM.search(name)
        ids = match.group(1).split("-") if match else []
        endpoint = next((i for i in ids if i in known), "")
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed", "error": "broken", "skipped": "skipped"}[child.tag]
                message = child.get("message", "") or (child.text or "")
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        caps = tuple(c for c in (props.get(CAPABILITY_LABEL) or "").split(",") if c)
        stem = module.rsplit(".", 1)[-1].removeprefix("test_")
        base = _PARAM.sub("", name)
        rest = [i for i in ids if i != endpoint]
        outcomes.append(Outcome(
            case=f"{module}::{base}" + (f"[{'-'.join(rest)}]" if rest else ""),
            name=name, endpoint=endpoint, status=status,
            area=props.get("epic") or stem.replace("_", " ").title(),
            capabilities=caps, kind=props.get(FAILURE_LABEL) or classify(status, message),
            message=message, source="junit",
        ))
    return outcomes


def junit_total(path: str | Path) -> int | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    return sum(1 for _ in root.iter("testcase"))


def read_results(results_dir: str | Path, junit: str | Path | None = None,
                 endpoints: Iterable[str] = ("old", "new")) -> Results:
    """Allure results when there are any, else JUnit; both may be partial after a crash."""
    total = junit_total(junit) if junit else None
    outcomes = read_allure(results_dir)
    if outcomes:
        return Results(outcomes, "allure", total)
    if junit:
        outcomes = read_junit(junit, endpoints)
        if outcomes:
            return Results(outcomes, "junit", total)
    return Results([], "none", total)
