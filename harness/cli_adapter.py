"""`im-harness check-adapter` and `im-harness new-adapter`: plain typer command functions.

harness/cli.py registers them::

    app.command("check-adapter")(check_adapter)
    app.command("new-adapter")(new_adapter)

Exit codes: 0 nothing failed, 1 a clause failed (or the endpoint could not start), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from harness.conformance import ClauseResult, Outcome
from harness.errors import ConfigError, HarnessError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_STYLE = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.NOT_APPLICABLE: "dim"}


def results_table(endpoint: str, results: list[ClauseResult]) -> Table:
    """The clause / pass-fail-n.a. / reason table `check-adapter` prints."""
    table = Table(title=f"Adapter conformance: endpoint {endpoint}", title_justify="left")
    table.add_column("clause", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("reason")
    for r in results:
        style = _STYLE[r.outcome]
        table.add_row(escape(r.clause), f"[{style}]{r.outcome.value}[/]", escape(r.reason))
    return table


def check_adapter(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="im-harness.toml (default: the one in the current folder, "
        "else the embedded endpoints)")] = None,
    endpoint: Annotated[str, typer.Option(
        "--endpoint", help="the configured endpoint whose adapter to check")] = "new",
    clause: Annotated[list[str] | None, typer.Option(
        "--clause", help="run only this clause (repeatable)")] = None,
) -> None:
    """Run the adapter conformance kit against one endpoint and print a clause table."""
    from harness import cli
    from harness.config import load_config
    from harness.conformance import run_conformance

    try:
        hc = load_config(config)
        hc.selected([endpoint])  # an unknown endpoint is bad input, before anything starts
        results = run_conformance(hc, endpoint, clauses=clause)
    except ConfigError as exc:
        raise cli.usage(str(exc)) from None
    except HarnessError as exc:
        cli.say(str(exc))
        raise typer.Exit(EXIT_FAILED) from None
    cli.console.print(results_table(endpoint, results))
    failed = [r.clause for r in results if r.failed]
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    summary = (f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
               f"{counts[Outcome.NOT_APPLICABLE]} not applicable")
    if failed:
        cli.console.print(f"[bold red]FAILED[/] {escape(summary)}: {escape(', '.join(failed))}")
        raise typer.Exit(EXIT_FAILED)
    cli.console.print(f"[bold green]OK[/] {escape(summary)}")
    raise typer.Exit(EXIT_OK)


def new_adapter(
    name: Annotated[str, typer.Argument(help="the adapter's registry name, e.g. acme")],
    dir: Annotated[Path, typer.Option(  # noqa: A002 - the agreed option name
        "--dir", help="folder to create im-harness-NAME in")] = Path("."),
) -> None:
    """Write an installable adapter package im-harness-NAME from the scaffold templates."""
    from harness import cli
    from harness.scaffold import write_package

    try:
        if dir.exists() and not dir.is_dir():
            raise ConfigError(f"new-adapter --dir {str(dir)!r} is a file, not a folder; pass "
                              "a folder")
        target = write_package(name, dir)
    except ConfigError as exc:
        raise cli.usage(str(exc)) from None
    cli.console.print(f"created {target}", markup=False, soft_wrap=True)
    cli.console.print(f"next: pip install -e {target} && pytest {target / 'tests'}  "
                      f"(see {target / 'README.md'})", markup=False, soft_wrap=True)
