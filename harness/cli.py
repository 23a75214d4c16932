"""`im-harness`: the upgrade sign-off in one command, plus serve, run, load, ramp,
capacity and doctor.

Example::

    im-harness signoff                  # suites old vs new, load old vs new, report, GO/NO-GO
    im-harness signoff -k recall --scenario chat --load-time 3s
    im-harness capacity --scenario chat # the most users old and new hold within budget

Exit codes: 0 GO (or success), 1 NO-GO (or failures), 2 usage error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.cli_adapter import check_adapter, new_adapter
from harness.config import (
    HarnessConfig,
    environment_problem,
    load_config,
    split_names,
)
from harness.errors import ConfigError, HarnessError
from harness.report.allure import NODE_HINT, allure_command
from harness.report.latency import options as latency_options
from harness.report.parity import ParityTable
from harness.report.redact import Redactor
from harness.report.signoff import (
    DEFAULT_SCENARIOS,
    Outcome,
    Plan,
    finish,
    plugins_missing,
    run_load,
    run_loads,
    run_suites,
)

EXIT_GO, EXIT_NO_GO, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="im-harness", add_completion=False, no_args_is_help=True,
    help="Regression and load sign-off of an IM upgrade: old vs new endpoint.",
)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class RichUI:
    """Progress bars for the long steps, one line per message."""

    def __init__(self, out: Console) -> None:
        self.out = out

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None
             ) -> Iterator[Callable[[float], None]]:
        columns = [SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"),
                   BarColumn(),
                   TextColumn("{task.completed:.0f}/{task.total:.0f}") if total else TextColumn(""),
                   TimeElapsedColumn()]
        with Progress(*columns, console=self.out, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield lambda completed: progress.update(task, completed=completed)
            progress.update(task, total=total or 1, completed=total or 1)  # shown as done

    def line(self, text: str) -> None:
        self.out.print(text)


def say(message: str) -> None:
    """One line on stderr, `im-harness: ...`, with anything secret-looking masked."""
    err.print(f"im-harness: {Redactor.from_environ().line(message)}", markup=False,
              soft_wrap=True)


def usage(message: str) -> typer.Exit:
    """Print the one usage-error line (secrets masked) and return the exit to raise."""
    say(message)
    return typer.Exit(EXIT_USAGE)


def check_paths(paths: list[str] | None) -> None:
    """Every --path is an existing file or folder, or an importable package (pytest --pyargs)."""
    import importlib.util

    for entry in paths or []:
        if Path(entry.split("::", 1)[0]).exists():  # a file, folder or test id (file::test)
            continue
        spec = None
        if entry.replace(".", "").replace("_", "").isalnum():
            with contextlib.suppress(ImportError, ValueError):
                spec = importlib.util.find_spec(entry)
        if spec is None:
            raise ConfigError(f"--path {entry!r} is neither a file or folder nor an importable "
                              "package; pass an existing path or a package name")


def _config(path: str | None, endpoints: str, *, pytest: bool = False
            ) -> tuple[HarnessConfig, tuple[str, str]]:
    """The validated configuration and the two endpoints (old first); ConfigError otherwise."""
    from harness.session import HarnessSession

    if pytest and (missing := plugins_missing()):
        raise ConfigError(missing)
    if problem := environment_problem():
        raise ConfigError(problem)
    config = load_config(path)
    names = split_names(endpoints)
    if len(names) != 2:
        raise ConfigError(f"--endpoints {endpoints!r} must name two endpoints, old first, "
                          "e.g. old,new")
    HarnessSession(config, names).resolve()  # unknown names, unset secret variables
    return config, (names[0], names[1])


def parity_table(table: ParityTable) -> Table:
    out = Table(title="Parity: capability x endpoint", title_justify="left")
    out.add_column("capability")
    for endpoint in table.endpoints:
        out.add_column(endpoint)
    for row in table.cells:
        cells = []
        for endpoint in table.endpoints:
            cell = table.cell(row, endpoint)
            style = "red" if cell.failed else ("green" if cell.passed else "dim")
            cells.append(f"[{style}]{escape(cell.short())}[/]")
        out.add_row(row, *cells)
    return out


def _show(outcome: Outcome, reports: Path, verdict: bool = True) -> None:
    console.print(parity_table(outcome.table))
    for lo in outcome.loads:
        state = "within budget" if lo.ok else ("NO RESULT: " + lo.problem if lo.summary is None
                                               else "OVER BUDGET: " + "; ".join(
                                                   lo.failed_budgets()))
        run = f" on {(lo.summary or {}).get('endpoint', {}).get('name', '?')} run {lo.run}" \
            if lo.run else ""
        console.print(f"load {lo.scenario}{run}: {state}", markup=False)
    for section in outcome.sections:
        if section.text:
            console.print(f"{section.title}\n{section.text}", markup=False, soft_wrap=True)
    if outcome.report:
        console.print(f"report: {outcome.report}", markup=False)
    elif outcome.report_problem:
        say(f"no HTML report: {outcome.report_problem}")
    if not verdict:
        return
    v = outcome.verdict
    for note in v.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    for reason in v.reasons:
        console.print(f"[red]-[/] {escape(reason)}", soft_wrap=True)
    style = "bold green" if v.go else "bold red"
    console.print(f"[{style}]{escape(v.headline())}[/]", soft_wrap=True)
    console.print(f"verdict: {reports / 'verdict.json'}", markup=False)


ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="im-harness.toml")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="output folder")]
EndpointsOpt = Annotated[str, typer.Option("--endpoints", help="old,new: two endpoint names")]
KeywordOpt = Annotated[str | None, typer.Option("-k", help="pytest -k expression (a subset)")]
PathOpt = Annotated[list[str] | None, typer.Option(
    "--path", help="suite file, folder or package (repeatable; default: the packaged suites, "
    "harness.suites; --path harness.suites --path DIR runs yours beside them)")]
ScenarioOpt = Annotated[list[str] | None, typer.Option(
    "--scenario", help=f"load scenario (repeatable; default {','.join(DEFAULT_SCENARIOS)}; "
    "`python -m harness.load list` shows every registered one)")]
UsersOpt = Annotated[int, typer.Option("--users", min=1, help="load users per scenario")]
TimeOpt = Annotated[str, typer.Option("--load-time", help="load run time per scenario, e.g. 5s")]
BudgetsOpt = Annotated[str | None, typer.Option(
    "--budgets-dir", help="folder of <scenario>.toml budgets (default: [harness] budgets_dir of "
    "the config, else the budgets each "
    "scenario registered)")]
ProcessesOpt = Annotated[int, typer.Option(
    "--processes", min=0, max=64, help="locust worker processes per load run (0: one process)")]
LocustfileOpt = Annotated[str | None, typer.Option(
    "--locustfile", help="a locustfile with an IMUser subclass (default: the installed one)")]
HtmlOpt = Annotated[bool, typer.Option(
    "--html/--no-html", help="build the Allure HTML report (needs Node.js and the `allure` npm "
    "package: $IM_HARNESS_ALLURE, else node_modules in this folder or a parent, else PATH)")]


def _check_load(run_time: str, budgets_dir: str | None, scenarios: list[str],
                locustfile: str | None = None, *, endpoint: str = "new",
                config: str | None = None) -> None:
    import re
    from importlib.resources import as_file

    from harness.load.budgets import load_budgets
    from harness.load.scenarios import scenarios as registered
    from harness.report.signoff import MAX_LOAD_S, run_seconds

    if not re.fullmatch(r"\d+(\.\d+)?[smh]?", run_time.strip()):
        raise ConfigError(f"--load-time {run_time!r} is not a duration; use e.g. 5s or 2m")
    if not 0 < run_seconds(run_time) <= MAX_LOAD_S:
        raise ConfigError(f"--load-time {run_time!r} must be more than 0s and at most "
                          f"{MAX_LOAD_S // 3600:g}h; use e.g. 5s or 2m")
    if locustfile and not Path(locustfile).is_file():
        raise ConfigError(f"--locustfile {locustfile!r} does not exist; pass an existing file")
    if budgets_dir and not Path(budgets_dir).is_dir():
        raise ConfigError(f"--budgets-dir {budgets_dir!r} is not a folder; pass a folder of "
                          "<scenario>.toml budgets")
    for name in scenarios:
        # A team's locustfile may register scenarios of its own: locust judges those names.
        if not locustfile and name not in registered:
            raise ConfigError(f"--scenario {name!r} is not a load scenario; known: "
                              f"{', '.join(registered)}")
        if budgets_dir:
            file = Path(budgets_dir) / f"{name}.toml"
            if not file.is_file():
                raise ConfigError(f"--budgets-dir {budgets_dir!r} has no {name}.toml; add it "
                                  "or point at another folder")
            load_budgets(file)  # a bad value is a usage error now, not after the run
        elif name in registered and (packaged := registered.get(name).budgets) is not None:
            if packaged.is_file():
                with as_file(packaged) as file:
                    load_budgets(file)
    if locustfile and scenarios:
        from harness.load.__main__ import locustfile_problem

        # Its own scenarios are known only to locust: asked now, not after the suites ran.
        if problem := locustfile_problem(locustfile, scenarios, endpoint=endpoint,
                                         config=config):
            raise ConfigError(problem)


def _check_reports(reports: Path) -> None:
    if reports.exists() and not reports.is_dir():
        raise ConfigError(f"--reports {str(reports)!r} is a file, not a folder; pass a folder")


def _node_hint(html: bool) -> None:
    if html and allure_command() is None:
        err.print(f"im-harness: {NODE_HINT}; the JSON verdict and parity table are still "
                  "produced", markup=False, soft_wrap=True)


@app.command()
def signoff(
    config: ConfigOpt = None,
    reports: ReportsOpt = Path("reports"),
    endpoints: EndpointsOpt = "old,new",
    keyword: KeywordOpt = None,
    path: PathOpt = None,
    scenario: ScenarioOpt = None,
    users: UsersOpt = 10,
    load_time: TimeOpt = "3s",
    budgets_dir: BudgetsOpt = None,
    locustfile: LocustfileOpt = None,
    load: Annotated[bool, typer.Option("--load/--no-load", help="run the load scenarios")] = True,
    compare_repeats: Annotated[int, typer.Option(
        "--compare-repeats", min=0, max=10,
        help="load runs per endpoint and scenario, old and new alternating (old,new,new,old "
        "for 2); the old runs are the A/A noise floor; 0: load on new only, budgets alone")] = 2,
    processes: ProcessesOpt = 0,
    capacity: CapacityOpt = False,
    html: HtmlOpt = True,
    latency_factor: Annotated[str | None, typer.Option(
        "--latency-factor", help="a new p95 over old's by this factor (and the floor) is a NO-GO "
        "(default: [harness] latency_factor, 2)")] = None,
    latency_floor_ms: Annotated[str | None, typer.Option(
        "--latency-floor-ms", help="... and by more than this many ms (default: [harness] "
        "latency_floor_ms, 20)")] = None,
) -> None:
    """Suites on old and new, load on old vs new and against budgets, report, GO/NO-GO."""
    scenarios = list(scenario or DEFAULT_SCENARIOS) if load else []
    try:
        hc, names = _config(config, endpoints, pytest=True)
        knobs = latency_options(hc.harness, factor=latency_factor, floor_ms=latency_floor_ms)
        check_paths(path)
        _check_reports(reports)
        budgets_dir = budgets_dir or hc.budgets_dir()
        _check_load(load_time, budgets_dir, scenarios, locustfile, endpoint=names[1],
                    config=config)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    plan = Plan(reports=reports, config=config, endpoints=names, paths=list(path or []),
                keyword=keyword, scenarios=scenarios, users=users, run_time=load_time,
                budgets_dir=budgets_dir, locustfile=locustfile, html=html,
                compare_repeats=compare_repeats, processes=processes,
                section_options=knobs)
    reports.mkdir(parents=True, exist_ok=True)
    _node_hint(html)
    ui = RichUI(console)
    suite = run_suites(plan, ui)
    if suite.usage:
        raise usage(suite.problem)
    loads = run_loads(plan, ui)
    if capacity and scenarios:
        plan.section_options["capacity"] = True
        _capacity(plan, scenarios[0], ui, start=8, cap=128, resolution=0.1)
    outcome = finish(plan, suite, loads, ui, hc, load_expected=load)
    _show(outcome, reports)
    raise typer.Exit(EXIT_GO if outcome.verdict.go else EXIT_NO_GO)


CapacityOpt = Annotated[bool, typer.Option(
    "--capacity/--no-capacity", help="also search old's and new's capacity (im-harness "
    "capacity with its defaults, on the first scenario): notes in the verdict, curve attached")]


def _capacity(plan: Plan, scenario: str, ui: RichUI, *, start: int, cap: int,
              resolution: float) -> dict[str, object]:
    """Both searches, written to capacity.json (and capacity.png); returns the document."""
    from harness.load.capacity import run_capacity
    from harness.report.capacityreport import capacity_document, curve_plot, write_capacity

    old, new = (run_capacity(plan, scenario, name, ui, start=start, cap=cap,
                             resolution=resolution) for name in plan.endpoints)
    document = capacity_document(scenario, old, new)
    write_capacity(plan.reports, document)
    png = curve_plot(document)
    if png:
        (plan.reports / "capacity.png").write_bytes(png)
    return document


@app.command()
def capacity(
    config: ConfigOpt = None,
    reports: ReportsOpt = Path("reports"),
    endpoints: EndpointsOpt = "old,new",
    scenario: Annotated[str, typer.Option("--scenario", help="the load scenario")] = "chat",
    start: Annotated[int, typer.Option("--start", min=1, help="users at the first step")] = 8,
    max_users: Annotated[int, typer.Option("--max-users", min=1,
                                           help="the user cap: never more")] = 128,
    step_time: Annotated[str, typer.Option(
        "--step-time", help="how long each step holds its load, e.g. 5s")] = "5s",
    resolution: Annotated[float, typer.Option(
        "--resolution", min=0.01, max=1.0,
        help="bisect until the bracket is this fraction of the capacity")] = 0.1,
    processes: ProcessesOpt = 0,
    budgets_dir: BudgetsOpt = None,
    locustfile: LocustfileOpt = None,
) -> None:
    """The most users old and new each hold within budget (double, then bisect), and new/old."""
    try:
        _hc, names = _config(config, endpoints)
        _check_reports(reports)
        _check_load(step_time, budgets_dir, [scenario], locustfile, endpoint=names[1],
                    config=config)
        if start > max_users:
            raise ConfigError(f"--start {start} is above --max-users {max_users}; start lower "
                              "or raise the cap")
    except ConfigError as exc:
        raise usage(str(exc)) from None
    plan = Plan(reports=reports, config=config, endpoints=names, scenarios=[scenario],
                run_time=step_time, budgets_dir=budgets_dir, locustfile=locustfile,
                processes=processes)
    reports.mkdir(parents=True, exist_ok=True)
    document = _capacity(plan, scenario, RichUI(console), start=start, cap=max_users,
                         resolution=resolution)
    failed = False
    for side in ("old", "new"):
        found = document[side]
        assert isinstance(found, dict)
        console.print(str(found["line"]), markup=False, soft_wrap=True)
        failed = failed or found["status"] == "no_result"
    console.print(str(document["ratio"]), markup=False, soft_wrap=True)
    console.print(f"capacity: {reports / 'capacity.json'}", markup=False)
    raise typer.Exit(EXIT_NO_GO if failed else EXIT_GO)


@app.command()
def run(
    config: ConfigOpt = None,
    reports: ReportsOpt = Path("reports"),
    endpoints: EndpointsOpt = "old,new",
    keyword: KeywordOpt = None,
    path: PathOpt = None,
    html: HtmlOpt = True,
) -> None:
    """The suites only, on old and new: parity table and Allure report (no verdict)."""
    try:
        hc, names = _config(config, endpoints, pytest=True)
        check_paths(path)
        _check_reports(reports)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    plan = Plan(reports=reports, config=config, endpoints=names, paths=list(path or []),
                keyword=keyword, scenarios=(), html=html)
    reports.mkdir(parents=True, exist_ok=True)
    _node_hint(html)
    ui = RichUI(console)
    suite = run_suites(plan, ui)
    if suite.usage:
        raise usage(suite.problem)
    # A sign-off's verdict would now point at a report it no longer describes.
    (reports / "verdict.json").unlink(missing_ok=True)
    outcome = finish(plan, suite, [], ui, hc, load_expected=False, decide_verdict=False)
    _show(outcome, reports, verdict=False)
    if suite.problem:
        say(suite.problem)
    bad = any(o.bad for o in outcome.results.outcomes) or bool(suite.problem)
    raise typer.Exit(EXIT_NO_GO if bad or not outcome.results.outcomes else EXIT_GO)


@app.command("load")
def load_cmd(
    config: ConfigOpt = None,
    reports: ReportsOpt = Path("reports"),
    endpoint: Annotated[str, typer.Option("--endpoint", help="endpoint to load")] = "new",
    scenario: ScenarioOpt = None,
    users: UsersOpt = 10,
    load_time: TimeOpt = "5s",
    budgets_dir: BudgetsOpt = None,
    locustfile: LocustfileOpt = None,
) -> None:
    """Load scenarios on one endpoint against their budgets (exit 1 when one is over)."""
    scenarios = list(scenario or DEFAULT_SCENARIOS)
    try:
        if problem := environment_problem():
            raise ConfigError(problem)
        hc = load_config(config)
        hc.selected([endpoint])
        _check_reports(reports)
        budgets_dir = budgets_dir or hc.budgets_dir()
        _check_load(load_time, budgets_dir, scenarios, locustfile, endpoint=endpoint,
                    config=config)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    plan = Plan(reports=reports, config=config, scenarios=scenarios, users=users,
                run_time=load_time, budgets_dir=budgets_dir, locustfile=locustfile)
    reports.mkdir(parents=True, exist_ok=True)
    ui = RichUI(console)
    ok = True
    for name in scenarios:
        outcome, _, text = run_load(plan, name, ui, endpoint=endpoint)
        if outcome.usage:
            raise usage(outcome.problem)
        if outcome.summary is None:
            ok = False
            console.print(f"load {name}: NO RESULT: {outcome.problem}", markup=False)
            continue
        from harness.load.summary import render

        console.print(render(outcome.summary), markup=False)
        ok = ok and outcome.ok
    raise typer.Exit(EXIT_GO if ok else EXIT_NO_GO)


@app.command("ramp")
def ramp_cmd(
    config: ConfigOpt = None,
    reports: ReportsOpt = Path("reports"),
    endpoints: EndpointsOpt = "old,new",
    scenario: Annotated[str, typer.Option("--scenario", help="the load scenario")] = "chat",
    stages: Annotated[str, typer.Option("--stages", help="percent of users on new per stage")
                      ] = "5,20,50,100",
    hold: Annotated[str, typer.Option("--hold", help="how long each stage holds")] = "10s",
    users: UsersOpt = 10,
    budgets: Annotated[str | None, typer.Option(
        "--budgets", help="budgets TOML (default: the scenario's own)")] = None,
    locustfile: LocustfileOpt = None,
) -> None:
    """Canary ramp old -> new (5/20/50/100 % of users); rolls back at the first breaching stage."""
    from harness.load.__main__ import main as load_main

    argv = ["ramp", "--scenario", scenario, "--stages", stages, "--hold", hold, "--endpoints",
            endpoints, "--users", str(users), "--report-dir", str(reports)]
    if locustfile:
        argv += ["--locustfile", locustfile]
    extra = [*(["--im-config", config] if config else []), *(["--budgets", budgets]
                                                               if budgets else [])]
    raise typer.Exit(load_main([*argv, "--", *extra] if extra else argv))


@app.command()
def serve(
    config: ConfigOpt = None,
    env_file: Annotated[Path, typer.Option(
        "--env-file", help="where the app keys go (mode 0600); never printed")] = Path(
        "reports/serve.env"),
) -> None:
    """Start the embedded endpoints, print their URLs; Ctrl-C stops them."""
    from harness.session import HarnessSession

    try:
        if problem := environment_problem():
            raise ConfigError(problem)
        if env_file.is_dir():
            raise ConfigError(f"--env-file {str(env_file)!r} is a folder; pass a file path")
        if env_file.parent.exists() and not env_file.parent.is_dir():
            raise ConfigError(f"--env-file {str(env_file)!r}: {str(env_file.parent)!r} is not "
                              "a folder; pass a path in an existing folder")
        hc = load_config(config)
        names = [n for n in hc.selected() if hc.endpoints[n].embedded]
        if not names:
            raise ConfigError("no embedded endpoint is configured (every endpoint has a url); "
                              "nothing to serve")
    except ConfigError as exc:
        raise usage(str(exc)) from None
    session = HarnessSession(hc, names)
    try:
        with RichUI(console).task("starting the embedded servers", None):
            session.start()
    except HarnessError as exc:
        say(str(exc))
        raise typer.Exit(EXIT_NO_GO) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(sig, lambda *_: stop.set())
    try:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for name in names:
            settings = session.settings(name)
            var = f"{name.upper().replace('-', '_')}_APP_KEY"
            lines.append(f"{var}={settings.secrets.get('app_key', '')}")
            console.print(
                f"{name}: {settings.url}  api {settings.options.get('api_url', '-')}  "
                f"app {settings.app_id}  protocol {settings.protocol}  tier {settings.tier}  "
                f"(app key in ${var})", markup=False)
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        console.print(f"app keys: {env_file} (source it); Ctrl-C stops", markup=False)
        while not stop.wait(0.5):
            pass
    finally:
        session.stop()
        console.print("stopped", markup=False)


def _limit(key: str, value: float) -> str:
    """`max_connections=10000`, `history_retention_s=90d`: durations in the unit people use."""
    if key.endswith("_s"):
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if value >= size and value % size == 0:
                return f"{key}={value / size:g}{unit}"
        return f"{key}={value:g}s"
    return f"{key}={value:g}"


@app.command()
def doctor(config: ConfigOpt = None, endpoints: EndpointsOpt = "old,new") -> None:
    """Validate the config, reach every endpoint, print capabilities and limits."""
    from dataclasses import asdict

    from harness.session import HarnessSession, describe

    try:
        hc, names = _config(config, endpoints)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    console.print(f"config: {hc.source}", markup=False)
    session = HarnessSession(hc, list(names))
    try:
        with RichUI(console).task("reaching the endpoints", None):
            session.start()
        refused = session.admin_problems
    except ConfigError as exc:  # unreachable, or its credentials refused: bad input
        session.stop()
        raise usage(str(exc)) from None
    except HarnessError as exc:
        session.stop()
        say(str(exc))
        raise typer.Exit(EXIT_NO_GO) from None
    try:
        table = Table(title="Endpoints", title_justify="left")
        for col in ("endpoint", "what", "url", "capabilities", "limits"):
            table.add_column(col)
        for name in names:
            info = session.infos[name]
            limits = "\n".join(_limit(k, v) for k, v in asdict(info.limits).items()
                                if v is not None)
            caps = sorted(c.value for c in info.capabilities)
            table.add_row(name, describe(info), info.url, ", ".join(caps), limits or "-")
        console.print(table)
    finally:
        session.stop()
    if refused:
        raise usage("; ".join(refused.values()))
    node = "ok" if allure_command() else NODE_HINT
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    console.print(f"allure report: {node}", markup=False, soft_wrap=True)
    console.print(f"chromium (browser check): {chromium or 'not installed'}", markup=False)


app.command("check-adapter")(check_adapter)
app.command("new-adapter")(new_adapter)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a usage error is one line and exit 2, as everywhere."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        err.print("im-harness: aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help(), markup=False)
            sys.exit(EXIT_USAGE)
        command = ctx.command_path if ctx is not None else "im-harness"
        hint = f"; see {command} --help" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"{command}: {Redactor.from_environ().line(message)}{hint}", markup=False,
                  soft_wrap=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)

if __name__ == "__main__":
    main()
