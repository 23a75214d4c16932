"""Parts of the sign-off beyond the suites' pass/fail and the load budgets.

A *section* is one question the sign-off answers with numbers: did latency regress in the suites,
did the upgrade journey hold, is new slower than old under load beyond the noise. Each comes
from a *reader*: a function that looks at what the run left on disk (files the suites wrote into
the Allure results folder, `im-*.json`; the load runs' summaries) and returns a `Section`, or None
when the run produced nothing for it (the sign-off's readers are listed once, in
`harness.report.readers`). The verdict turns a section's blocking findings into NO-GO
reasons and the others into notes; the report shows its table; verdict.json keeps its data.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One line with the numbers: a NO-GO reason when blocking, else a note."""

    what: str
    blocking: bool = True


@dataclass
class Section:
    """One part of the sign-off: its findings, a table for the report, data for verdict.json."""

    key: str  # stable id in verdict.json["sections"], e.g. "latency"
    title: str  # shown in the report and before each finding, e.g. "Latency in the suites"
    findings: list[Finding] = field(default_factory=list)
    html: str = ""  # a table (or any block) for the verdict page; escaped by the reader
    text: str = ""  # the same as plain text, attached to the verdict result
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.blocking for f in self.findings)

    def reasons(self) -> list[str]:
        return [f"{self.title}: {f.what}" for f in self.findings if f.blocking]

    def notes(self) -> list[str]:
        return [f"{self.title}: {f.what}" for f in self.findings if not f.blocking]

    def to_html(self) -> str:
        red = ' style="color:#c00"'
        items = "".join(f"<li{red if f.blocking else ''}>{html.escape(f.what)}</li>"
                        for f in self.findings)
        return (f"<h3>{html.escape(self.title)}</h3>" + (f"<ul>{items}</ul>" if items else "")
                + self.html)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "ok": self.ok,
                "findings": [{"what": f.what, "blocking": f.blocking} for f in self.findings],
                "data": self.data}


@dataclass(frozen=True)
class RunFiles:
    """Where a finished run left what the readers look at."""

    results_dir: Path  # the Allure results folder the suites wrote into (im-*.json beside them)
    reports: Path  # the sign-off's output folder (load/ under it)
    endpoints: tuple[str, str]  # (old, new)
    loads: Sequence[Any] = ()  # the run's LoadOutcome list (harness.report.verdict)
    options: Mapping[str, Any] = field(default_factory=dict)  # the plan's knobs readers need


Reader = Callable[[RunFiles], "Section | None"]


def read_sections(files: RunFiles, readers: Sequence[Reader]) -> list[Section]:
    """Each reader's section (the sign-off's are `harness.report.readers.READERS`); a reader
    that fails becomes a blocking finding, not a crash."""
    out: list[Section] = []
    for reader in readers:
        try:
            section = reader(files)
        except Exception as exc:  # noqa: BLE001 - a broken reader is reported, not fatal
            name = getattr(reader, "__module__", "?") + "." + getattr(reader, "__name__", "?")
            section = Section("reader_error", f"Report reader {name}",
                              [Finding(f"could not read its part of the run: "
                                       f"{type(exc).__name__}: {exc}")])
        if section is not None:
            out.append(section)
    return out
