"""The parity table: capability x endpoint -> passed / failed / skipped (not supported)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from harness.report.results import Outcome


@dataclass
class Cell:
    """What one capability's tests did on one endpoint."""

    passed: int = 0
    failed: int = 0
    not_supported: int = 0
    skipped: int = 0  # skipped for another reason (e.g. a fault the endpoint cannot take)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.not_supported + self.skipped

    def short(self) -> str:
        """`3 passed / 1 failed / 2 not supported` without the zero parts; `-` when empty."""
        parts = [f"{n} {what}" for n, what in (
            (self.passed, "passed"), (self.failed, "failed"),
            (self.not_supported, "not supported"), (self.skipped, "skipped"),
        ) if n]
        return " / ".join(parts) or "-"

    def to_dict(self) -> dict[str, int]:
        return {"passed": self.passed, "failed": self.failed,
                "skipped_not_supported": self.not_supported, "skipped_other": self.skipped}


def _missing(reason: str, rows: tuple[str, ...]) -> tuple[str, ...]:
    """The rows a not-supported skip is about: the capability its reason names."""
    named = re.findall(r"capability '([a-z_]+)'", reason)
    if "has no admin API" in reason:
        named.append("tier_admin")
    return tuple(named) or rows


@dataclass
class ParityTable:
    """Rows are capabilities (or areas for tests that declare none), columns endpoints."""

    endpoints: list[str]
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)

    @classmethod
    def build(cls, outcomes: Iterable[Outcome], endpoints: Sequence[str]) -> ParityTable:
        table = cls(list(endpoints))
        for outcome in outcomes:
            rows = outcome.rows
            if outcome.not_supported:
                rows = _missing(outcome.message, rows)
            for endpoint in outcome.endpoints:
                if endpoint not in table.endpoints:
                    continue
                for row in rows:
                    cell = table.cells.setdefault(row, {e: Cell() for e in table.endpoints})[
                        endpoint]
                    if outcome.status == "passed":
                        cell.passed += 1
                    elif outcome.bad:
                        cell.failed += 1
                    elif outcome.not_supported:
                        cell.not_supported += 1
                    elif outcome.status == "skipped":
                        cell.skipped += 1
        table.cells = dict(sorted(table.cells.items()))
        return table

    def cell(self, row: str, endpoint: str) -> Cell:
        return self.cells.get(row, {}).get(endpoint, Cell())

    def to_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        return {row: {e: c.to_dict() for e, c in cols.items()} for row, cols in self.cells.items()}

    def to_text(self) -> str:
        width = max([len("capability"), *(len(r) for r in self.cells)])
        cols = {e: max([len(e), *(len(self.cell(r, e).short()) for r in self.cells)])
                for e in self.endpoints}
        lines = ["  ".join([f"{'capability':<{width}}", *(f"{e:<{cols[e]}}" for e in cols)])]
        for row in self.cells:
            lines.append("  ".join([f"{row:<{width}}",
                                    *(f"{self.cell(row, e).short():<{cols[e]}}" for e in cols)]))
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        lines = ["| capability | " + " | ".join(self.endpoints) + " |",
                 "|---|" + "---|" * len(self.endpoints)]
        for row in self.cells:
            lines.append(f"| {row} | " + " | ".join(self.cell(row, e).short()
                                                   for e in self.endpoints) + " |")
        return "\n".join(lines)

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(e)}</th>" for e in self.endpoints)
        rows = []
        for row in self.cells:
            tds = []
            for e in self.endpoints:
                c = self.cell(row, e)
                style = ' style="color:#c00"' if c.failed else ""
                tds.append(f"<td{style}>{c.passed} passed, {c.failed} failed, "
                           f"{c.not_supported} not supported"
                           + (f", {c.skipped} skipped" if c.skipped else "") + "</td>")
            rows.append(f"<tr><th>{html.escape(row)}</th>{''.join(tds)}</tr>")
        return (f'<table class="parity" border="1" cellpadding="4"><tr><th>capability</th>{head}'
                f"</tr>{''.join(rows)}</table>")
