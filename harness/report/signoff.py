"""The sign-off job: suites on old and new, load on old and new, Allure report, parity, verdict.

Each load scenario runs on old and new in alternating order with an A/A pair of old runs
(`harness.load.compare`); the new runs are also judged against the absolute budgets (the SLA).

Each step runs as a subprocess (pytest, locust, allure), so a crash in one still leaves the
others' results, and the verdict names what is missing. No framework is imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from harness.config import HarnessConfig
from harness.report import capacityreport, loadcompare
from harness.report.allure import (
    Attachment,
    ReportError,
    Result,
    endpoint_environment,
    generate,
    write_config,
    write_environment,
    write_executor,
    write_result,
)
from harness.report.loadreport import load_result
from harness.report.parity import ParityTable
from harness.report.readers import READERS
from harness.report.redact import Redactor, config_secrets
from harness.report.results import Results, read_results
from harness.report.sections import RunFiles, Section, read_sections
from harness.report.verdict import LoadOutcome, Verdict, decide, verdict_document, write_json

PACKAGED_SUITES = "harness.suites"  # the suites installed with the package (run with --pyargs)
DEFAULT_SCENARIOS = ("chat", "group")
# The packaged suites are async tests: they need pytest-asyncio's auto mode, which an installed
# package cannot set from an ini file of its own (pytest reads the ini of the run's rootdir).
ASYNCIO_INI = ["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"]
PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}
PYTEST_USAGE = 4
LOCUST_USAGE = 2  # the locustfile's usage-error exit (harness.load.summary.EXIT_USAGE)
MAX_LOAD_S = 24 * 3600  # the longest --load-time: beyond that it is a typo, not a plan
LOAD_FILES = (".json", ".json.tmp", "_stats.csv", "_stats_history.csv", "_failures.csv",
              "_exceptions.csv", ".html")  # what one locust run writes under its stem
STAGING = ".new-"  # prefix of what a step writes before it is swapped in
# sections that also become an Allure result of their own (with their pictures)
SECTION_RESULTS: dict[str, Callable[..., Result]] = {
    loadcompare.KEY: loadcompare.comparison_result,
    capacityreport.KEY: capacityreport.capacity_result,
}


class UI(Protocol):
    """What the job reports progress to (rich in the CLI, nothing in tests)."""

    def task(self, description: str, total: float | None = None
             ) -> contextlib.AbstractContextManager[Callable[[float], None]]: ...

    def line(self, text: str) -> None: ...


class QuietUI:
    """A UI that shows nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None
             ) -> Iterator[Callable[[float], None]]:
        yield lambda completed: None

    def line(self, text: str) -> None:
        pass


@dataclass
class Plan:
    """What to run and where the results go."""

    reports: Path = Path("reports")
    config: str | None = None
    endpoints: tuple[str, str] = ("old", "new")
    # suite files, folders or packages; default: the packaged suites (harness.suites)
    paths: list[str] = field(default_factory=list)
    keyword: str | None = None
    pytest_args: list[str] = field(default_factory=list)
    scenarios: Sequence[str] = DEFAULT_SCENARIOS
    users: int = 10
    run_time: str = "5s"
    budgets_dir: str | None = None  # <dir>/<scenario>.toml; default: each scenario's registered
    locustfile: str | None = None  # default: the installed harness.loadtests locustfile
    # old vs new: each scenario runs old,new,new,old (2 repeats); 0 = load on new only
    compare_repeats: int = 2
    processes: int = 0  # locust --processes per load run (0: one process)
    locust_args: list[str] = field(default_factory=list)  # more locustfile options
    html: bool = True
    suite_timeout_s: float = 1800.0
    # knobs the section readers take (harness.report.sections.RunFiles.options)
    section_options: dict[str, Any] = field(default_factory=dict)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def full_run(self) -> bool:
        return not self.paths and not self.keyword

    @property
    def results_dir(self) -> Path:
        return self.reports / "allure-results"

    @property
    def junit(self) -> Path:
        return self.reports / "junit.xml"

    @property
    def report_dir(self) -> Path:
        return self.reports / "allure-report"


@dataclass
class SuiteRun:
    exit_code: int | None
    problem: str = ""
    seconds: float = 0.0
    usage: bool = False  # pytest refused its input (exit 4): nothing ran, earlier results kept


@dataclass
class Outcome:
    """Everything the job produced."""

    verdict: Verdict
    table: ParityTable
    results: Results
    document: dict[str, Any]
    report: Path | None
    report_problem: str = ""
    loads: list[LoadOutcome] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def suite_paths(plan: Plan) -> list[str]:
    """What pytest collects: the plan's paths or packages, else the packaged suites.

    pytest runs with --pyargs, so an entry that names an importable package (harness.suites, a
    team's own suites package) is collected from where it is installed, and any other entry is a
    file or folder: `--path harness.suites --path tests/im` runs a team's suites beside ours.
    """
    return list(plan.paths) or [PACKAGED_SUITES]


def plugins_missing() -> str:
    """Why pytest would run the suites without the harness's plugins ('' when it would not).

    Both plugins arrive through their `pytest11` entry points only: naming one with `-p` as well
    would register it twice and stop pytest.
    """
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ("PYTEST_DISABLE_PLUGIN_AUTOLOAD is set, so pytest would not load the harness's "
                "plugins; unset it for im-harness")
    loaded = {ep.value for ep in entry_points(group="pytest11")}
    missing = [m for m in ("harness.pytest_plugin", "harness.pytest_allure") if m not in loaded]
    if missing:
        return (f"pytest plugin {', '.join(missing)} is not registered in this Python; install "
                "im-harness into it: pip install \"im-harness[load]\" (in a checkout: "
                "pip install -e \".[dev]\")")
    return ""


def _pytest_base(plan: Plan) -> list[str]:
    paths = suite_paths(plan)
    cmd = [sys.executable, "-m", "pytest", "--pyargs", *paths, "-p", "no:cacheprovider",
           "--im-endpoints", ",".join(plan.endpoints)]
    if PACKAGED_SUITES in paths:
        cmd += ASYNCIO_INI
    if plan.config:
        cmd += ["--im-config", plan.config]
    if plan.keyword:
        cmd += ["-k", plan.keyword]
    return cmd + list(plan.pytest_args)


def count_tests(plan: Plan) -> int | None:
    """How many tests the suites will run (for the progress bar)."""
    done = subprocess.run([*_pytest_base(plan), "--co", "-q"], capture_output=True, text=True,
                          timeout=120, check=False)
    match = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
    return int(match.group(1)) if match else None


def _staged(path: Path) -> Path:
    return path.with_name(STAGING + path.name)


def _swap_in(staged: Path, final: Path) -> None:
    """Replace `final` (file or folder) with `staged`, which the run has just produced."""
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    else:
        final.unlink(missing_ok=True)
    if staged.exists():
        os.replace(staged, final)


def _discard(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _usage_line(text: str, tool: str) -> str:
    """The line a tool's usage error printed (pytest's `ERROR: ...`, the locustfile's)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("ERROR:", "im-harness load:", "error:")):
            return ln.removeprefix("ERROR:").strip()
    return f"{tool} refused its input: {lines[-1] if lines else 'no output'}"


def run_suites(plan: Plan, ui: UI) -> SuiteRun:
    """pytest with --alluredir and --junitxml; the progress bar follows the result files.

    pytest writes beside the previous results; they are swapped in only when pytest ran (a
    usage error, exit 4, leaves the previous results, log and JUnit file as they were).
    """
    results, junit, log = (_staged(plan.results_dir), _staged(plan.junit),
                           _staged(plan.reports / "suites.log"))
    for path in (results, junit, log):
        _discard(path)
    results.mkdir(parents=True, exist_ok=True)
    total = count_tests(plan)
    cmd = [*_pytest_base(plan), "--alluredir", str(results),
           "--junitxml", str(junit), "-q", "-rfE"]
    started = time.monotonic()
    try:
        with log.open("w", encoding="utf-8") as out, ui.task(
            f"suites on {' and '.join(plan.endpoints)}", total
        ) as advance:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            timed_out = False
            try:
                while proc.poll() is None:
                    advance(len(list(results.glob("*-result.json"))))
                    if time.monotonic() - started > plan.suite_timeout_s:
                        proc.kill()
                        proc.wait()
                        timed_out = True
                        break
                    time.sleep(0.25)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            advance(len(list(results.glob("*-result.json"))))
        code = proc.returncode
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        if code == PYTEST_USAGE and not timed_out:
            for path in (results, junit, log):
                _discard(path)
            return SuiteRun(code, _usage_line(text, "pytest"), seconds, usage=True)
    except BaseException:
        for path in (results, junit, log):
            _discard(path)
        raise
    for staged, final in ((results, plan.results_dir), (junit, plan.junit),
                          (log, plan.reports / "suites.log")):
        _swap_in(staged, final)
    log = plan.reports / "suites.log"
    if timed_out:
        return SuiteRun(None, f"the suites did not finish within {plan.suite_timeout_s:g}s "
                        f"and were stopped; see {log}", seconds)
    if code in (0, 1):
        return SuiteRun(code, "", seconds)
    what = PYTEST_EXIT.get(code, f"exit code {code}" if code >= 0 else f"signal {-code}")
    tail = " | ".join(ln.strip() for ln in text.splitlines()[-3:])
    return SuiteRun(code, f"the suites did not complete ({what}): {tail}", seconds)


def run_seconds(run_time: str) -> float:
    """`5s`, `2m`, `1h`, `30` -> seconds (60 for what is not a duration)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", run_time)
    if not match:
        return 60.0
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


_seconds = run_seconds


def run_load(plan: Plan, scenario: str, ui: UI, endpoint: str | None = None, *, tag: str = "",
             users: int | None = None, folder: Path | None = None
             ) -> tuple[LoadOutcome, Path, str]:
    """One headless locust run of `scenario` on the new endpoint, via the load layer.

    Its files are `<folder>/<scenario>-<endpoint>[-<tag>]*` (folder: reports/load).
    """
    from harness.load.__main__ import default_locustfile, processes_args

    name = endpoint or plan.endpoints[1]
    users = users or plan.users
    folder = folder or plan.reports / "load"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (f"{scenario}-{name}" + (f"-{tag}" if tag else ""))
    # locust writes beside the previous run's files; they are replaced only by a run's own
    stem = _staged(final)
    for old in folder.glob(f"{stem.name}*"):
        _discard(old)
    summary_path = Path(f"{stem}.json")
    cmd = [sys.executable, "-m", "locust", "-f", str(plan.locustfile or default_locustfile()),
           "--headless",
           "-u", str(users), "-r", str(users), "-t", plan.run_time,
           "--scenario", scenario, "--endpoint", name, "--summary-json", str(summary_path),
           "--csv", str(stem), "--csv-full-history", "--only-summary"]
    if plan.config:
        cmd += ["--im-config", plan.config]
    if plan.budgets_dir:
        cmd += ["--budgets", str(Path(plan.budgets_dir) / f"{scenario}.toml")]
    if plan.processes:
        cmd += processes_args(plan.processes)
    cmd += plan.locust_args
    limit = _seconds(plan.run_time)
    started = time.monotonic()
    started_ms = int(time.time() * 1000)
    what = f"load {scenario} on {name}" + (f" run {tag}" if tag else "")
    with ui.task(f"{what} ({users} users, {plan.run_time})", limit) as advance:
        # Into a file, not a pipe: a run that logs more than a pipe holds would block on it.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                while proc.poll() is None:
                    advance(min(limit, time.monotonic() - started))
                    if time.monotonic() - started > limit + 120:
                        proc.kill()
                    time.sleep(0.25)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            out.seek(0)
            text = out.read()
        advance(limit)
    stopped_ms = int(time.time() * 1000)
    produced = sorted(folder.glob(f"{stem.name}*"))
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    history = Path(f"{final}_stats_history.csv")
    if summary is None:
        for path in produced:
            _discard(path)
        if proc.returncode == LOCUST_USAGE:
            return (LoadOutcome(scenario, None, _usage_line(text, "locust"), started_ms,
                                stopped_ms, usage=True, run=tag), history, text)
        last = " | ".join(ln.strip() for ln in text.strip().splitlines()[-2:])
        problem = f"locust exited {proc.returncode} without a summary: {last or 'no output'}"
        return (LoadOutcome(scenario, None, problem, started_ms, stopped_ms, run=tag), history,
                text)
    for suffix in LOAD_FILES:
        _discard(folder / f"{final.name}{suffix}")  # the previous run's, also those not rewritten
    for path in produced:
        os.replace(path, folder / (final.name + path.name[len(stem.name):]))
    return LoadOutcome(scenario, summary, "", started_ms, stopped_ms, run=tag), history, text


COMPARE_FILE = "compare.json"  # under reports/load: which runs this sign-off compared


def run_compare(plan: Plan, ui: UI) -> list[tuple[LoadOutcome, Path, str]]:
    """Every scenario on old and new in alternating order; returns the runs on new (the SLA).

    Writes `reports/load/compare.json`, naming each run's summary (or why it has none), and the
    scenario's `[compare]` rules, for the sign-off's old-vs-new section to read back.
    """
    from harness.load.compare import NEW, compare_rules, run_order

    order = run_order(plan.compare_repeats)
    folder = plan.reports / "load"
    manifest: dict[str, Any] = {"order": order, "endpoints": dict(zip(
        ("old", "new"), plan.endpoints, strict=True)), "scenarios": {}}
    on_new: list[tuple[LoadOutcome, Path, str]] = []
    for scenario in plan.scenarios:
        rules = compare_rules(scenario, plan.budgets_dir)
        runs = []
        for index, role in enumerate(order, 1):
            name = plan.endpoints[1 if role == NEW else 0]
            outcome, history, text = run_load(plan, scenario, ui, endpoint=name, tag=str(index))
            runs.append({"index": index, "role": role, "endpoint": name,
                         "summary": f"{scenario}-{name}-{index}.json" if outcome.summary
                         else None, "problem": outcome.problem})
            if role == NEW:
                on_new.append((outcome, history, text))
        manifest["scenarios"][scenario] = {"rules": rules.to_dict(), "runs": runs}
    write_json(manifest, folder / COMPARE_FILE)
    return on_new


def run_loads(plan: Plan, ui: UI) -> list[tuple[LoadOutcome, Path, str]]:
    """The sign-off's load step: old vs new when the plan compares, else new only."""
    if plan.compare_repeats > 0 and plan.scenarios:
        plan.section_options["load_compare"] = True
        return run_compare(plan, ui)
    return [run_load(plan, name, ui) for name in plan.scenarios]


def _endpoints_info(plan: Plan) -> dict[str, Any]:
    from harness.report.results import ENDPOINTS_FILE

    try:
        return dict(json.loads((plan.results_dir / ENDPOINTS_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def load_table_html(loads: Sequence[LoadOutcome]) -> str:
    """One row per load scenario: its budget verdict and the latencies a release owner asks for."""
    import html

    rows = []
    for lo in loads:
        s = lo.summary or {}
        lat = s.get("latency_ms") or {}

        def ms(metric: str, p: str, lat: Mapping[str, Any] = lat) -> str:
            value = (lat.get(metric) or {}).get(p)
            return f"{value:.1f}" if isinstance(value, int | float) else "-"

        state = ("within budget" if lo.ok else "no result: " + lo.problem if lo.summary is None
                 else "OVER BUDGET: " + "; ".join(lo.failed_budgets()))
        style = "" if lo.ok else ' style="color:#c00"'
        endpoint = (s.get("endpoint") or {}).get("name", "-")
        rate = s.get("deliveries_per_s")
        rows.append(
            f"<tr><th>{html.escape(lo.scenario)}</th><td>{html.escape(str(endpoint))}</td>"
            f"<td{style}>{html.escape(state)}</td><td>{ms('send_ack', 'p95')}</td>"
            f"<td>{ms('send_ack', 'p99')}</td><td>{ms('delivery', 'p95')}</td>"
            f"<td>{ms('delivery', 'p99')}</td><td>{'-' if rate is None else rate}</td></tr>")
    return ('<table class="load" border="1" cellpadding="4"><tr><th rowspan="2">scenario</th>'
            '<th rowspan="2">endpoint</th><th rowspan="2">budgets</th>'
            '<th colspan="2">send&rarr;ack (ms)</th><th colspan="2">delivery (ms)</th>'
            '<th rowspan="2">deliveries/s</th></tr>'
            f"<tr><th>p95</th><th>p99</th><th>p95</th><th>p99</th></tr>{''.join(rows)}</table>")


def verdict_result(verdict: Verdict, table: ParityTable, endpoints: dict[str, Any],
                   started_ms: int = 0, loads: Sequence[LoadOutcome] = (),
                   sections: Sequence[Section] = ()) -> Result:
    """The sign-off itself as a result at the top of the report.

    It spans the whole job, so it starts before every other result and the report's default
    order (earliest first) shows it first.
    """
    import html

    items = "".join(f"<li>{html.escape(r)}</li>" for r in verdict.reasons)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in verdict.notes)
    described = "".join(f"<li>{html.escape(n)}: {html.escape(str(i.get('describe')))}</li>"
                        for n, i in endpoints.items())
    body = (f"<h2>Verdict: {verdict.label}</h2><p>{html.escape(verdict.headline())}</p>"
            + (f"<h3>Reasons</h3><ul>{items}</ul>" if items else "")
            + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
            + f"<h3>Endpoints</h3><ul>{described}</ul><h3>Parity</h3>{table.to_html()}"
            + (f"<h3>Load (details in the Load epic)</h3>{load_table_html(loads)}"
               if loads else "")
            + "".join(section.to_html() for section in sections))
    attachments = [Attachment("parity table", table.to_text().encode())]
    attachments += [Attachment(section.title, section.text.encode())
                    for section in sections if section.text]
    return Result(
        name=f"Sign-off verdict: {verdict.label}", full_name="signoff.verdict",
        status="passed" if verdict.go else "failed",
        labels=[("epic", "Sign-off"), ("feature", "verdict"), ("severity", "blocker"),
                ("parentSuite", "sign-off")],
        message="" if verdict.go else "\n".join(verdict.reasons),
        description_html=body,
        attachments=attachments,
        start_ms=started_ms, stop_ms=int(time.time() * 1000) if started_ms else 0,
    )


def report_variables(verdict: Verdict, table: ParityTable) -> dict[str, str]:
    """Shown in the report's header: the verdict and one line per parity row."""
    out = {"Verdict": verdict.headline()}
    for row in table.cells:
        out[f"parity {row}"] = "; ".join(f"{e}: {table.cell(row, e).short()}"
                                         for e in table.endpoints)
    return out


def finish(plan: Plan, suite: SuiteRun | None, loads: Sequence[tuple[LoadOutcome, Path, str]],
           ui: UI, config: HarnessConfig | None, *, load_expected: bool = True,
           decide_verdict: bool = True) -> Outcome:
    """Read everything back, decide, write the Allure results, the HTML and verdict.json."""
    old, new = plan.endpoints
    results = read_results(plan.results_dir, plan.junit, plan.endpoints)
    endpoints = _endpoints_info(plan)
    table = ParityTable.build(results.outcomes, plan.endpoints)
    problems = [suite.problem] if suite and suite.problem else []
    promised = endpoints.get(new, {}).get("capabilities")
    sections = read_sections(RunFiles(plan.results_dir, plan.reports, plan.endpoints,
                                      [lo for lo, _, _ in loads], plan.section_options),
                             READERS)
    verdict = decide(results, table, promised=promised, loads=[lo for lo, _, _ in loads],
                     problems=problems, old=old, new=new, full_run=plan.full_run,
                     load_expected=load_expected, sections=sections)
    redactor = Redactor(config_secrets(config) if config else ())
    for outcome, history, text in loads:
        write_result(plan.results_dir, load_result(outcome, history_csv=history, text=text),
                     redactor)
    started = min((lo.started_ms for lo, _, _ in loads), default=0)
    stopped = max((lo.stopped_ms for lo, _, _ in loads), default=0)
    for section in sections:
        if section.key in SECTION_RESULTS:
            write_result(plan.results_dir, SECTION_RESULTS[section.key](
                section, start_ms=started, stop_ms=stopped), redactor)
    if decide_verdict:
        write_result(plan.results_dir,
                     verdict_result(verdict, table, endpoints, plan.started_ms,
                                    [lo for lo, _, _ in loads], sections), redactor)
    if endpoints:
        write_environment(plan.results_dir, endpoint_environment(endpoints))
    write_executor(plan.results_dir)
    for target in (plan.results_dir, plan.reports / "load"):
        if target.exists():
            redactor.tree(target)
    for file in (plan.junit, plan.reports / "suites.log"):
        if file.is_file():
            redactor.tree_file(file)
    report: Path | None = None
    report_problem = ""
    if plan.html:
        title = f"im-harness sign-off: {verdict.label}" if decide_verdict else "im-harness run"
        cfg = write_config(plan.reports / "allurerc.json", name=title,
                           output=plan.report_dir.resolve(),
                           history=(plan.reports / "allure-history.jsonl").resolve(),
                           variables=report_variables(verdict, table) if decide_verdict else {})
        with ui.task("Allure report", None):
            try:
                report = generate([plan.results_dir.resolve()], plan.report_dir.resolve(), cfg)
            except ReportError as exc:
                report_problem = str(exc)
    document = verdict_document(
        verdict, table, results=results, endpoints=endpoints,
        loads=[lo for lo, _, _ in loads], suite_exit=suite.exit_code if suite else None,
        report=str(report) if report else None, sections=sections,
    )
    if report_problem:
        document["report_problem"] = report_problem
    if decide_verdict:
        write_json(document, plan.reports / "verdict.json")
    return Outcome(verdict, table, results, document, report, report_problem,
                   [lo for lo, _, _ in loads], sections)
