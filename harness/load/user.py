"""The locust layer: `IMUser`, a User a team subclasses in its own locustfile, and the listeners.

Importing this module registers the listeners (options, setup on the master, metrics merged from
every worker, budgets judged at the end), so a complete locustfile is::

    from harness.load.user import IMUser


    class HarnessUser(IMUser):
        pass  # runs the scenarios chosen with --scenario

and it runs as::

    locust -f locustfile.py --headless -u 10 -r 10 -t 10s --scenario chat --endpoint new

A subclass with `scenario` left empty stands for every registered scenario (one generated class
per scenario, weighted by the plan); one that sets `scenario = "chat"` runs only that. A team
adds a scenario with `harness.load.scenarios.scenario` in its locustfile. With no endpoint
configured, the embedded reference service is started (on the master, or the single local
process). The exit code is 0 within budget, 1 over budget, 2 for a usage error.

Only locustfiles import this module: it imports locust and gevent (which patch the world).
"""

from __future__ import annotations

import collections
import gc
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from importlib.resources import as_file
from typing import Any, ClassVar, NoReturn

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, Runner, WorkerRunner

from harness.config import (
    defect_problem,
    environment_problem,
    load_config,
    number_problem,
    split_names,
)
from harness.contract import EndpointSettings
from harness.errors import ConfigError, HarnessError
from harness.load.bridge import AsyncBridge
from harness.load.budgets import Budgets, load_budgets
from harness.load.driver import LoadRun
from harness.load.health import judge as judge_health
from harness.load.health import offered_rate
from harness.load.metrics import LoadMetrics
from harness.load.phases import summarize as summarize_phases
from harness.load.ramp import (
    Outcome,
    RampPlan,
    RampRun,
    judge_payloads,
    open_ramp,
    ramp_plan,
    ramp_verdicts,
)
from harness.load.resources import ResourceSampler, finish_sampling, sample_server
from harness.load.scenarios import ScenarioPlan, plan, scenarios
from harness.load.summary import EXIT_OK, EXIT_USAGE, build_summary, render, write_summary
from harness.report.redact import Redactor
from harness.session import HarnessSession, describe, open_endpoint
from harness.timing import units

log = logging.getLogger("im-harness.load")
COLLECT_GRACE_S = 15.0  # beyond the drain time, how long the master waits for workers' metrics
# The oracle keeps every message of the run; with the default young-generation threshold (700)
# the collector rescans that growing heap often enough to cost ~8 us per message.
GC_THRESHOLD0 = 10_000
REQUEST_TYPE = "IM"  # the request_type of every locust request event this layer fires


class _State:
    """Process-wide state of this locust process (master, worker or local)."""

    def __init__(self) -> None:
        self.session: HarnessSession | None = None
        self.ramp_session: HarnessSession | None = None  # the endpoint a ramp moves users from
        self.setup: dict[str, Any] | None = None  # what a worker needs: settings, plan, drain
        self.budgets: Budgets | None = None
        self.run: LoadRun | RampRun | None = None
        self.resources: ResourceSampler | str = "the run never started"
        self.resources_old: ResourceSampler | str = "not a ramp"  # a ramp's old endpoint
        self.started = 0.0
        self.replies: dict[str, dict[str, Any]] = {}
        self.emitted: collections.deque[tuple[str, float, BaseException | None]] = \
            collections.deque()


STATE = _State()


def _opts(environment: Environment) -> Any:
    """The parsed command line (locust always parses one before `init`)."""
    assert environment.parsed_options is not None
    return environment.parsed_options


def _runner(environment: Environment) -> Runner:
    assert environment.runner is not None
    return environment.runner


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"im-harness load: {Redactor.from_environ().line(message)}\n")
    sys.stderr.flush()
    for session in (STATE.session, STATE.ramp_session):
        if session is not None:
            session.stop()
    raise SystemExit(EXIT_USAGE)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # A master listens on loopback unless the team names another address (--master-bind-host):
    # locust's own default is every interface.
    parser.set_defaults(master_bind_host="127.0.0.1")
    group = parser.add_argument_group("im-harness")
    group.add_argument("--scenario", default="chat",
                       help=f"scenario[:weight],... from {', '.join(scenarios)}")
    group.add_argument("--scenarios-file", default="",
                       help="TOML of [scenario] tables overriding weights and parameters")
    group.add_argument("--budgets", default="",
                       help="budgets TOML (default: the budgets the scenario registered)")
    group.add_argument("--endpoint", default="new", help="configured endpoint name (old/new)")
    group.add_argument("--im-config", default="", help="im-harness.toml (default: found in cwd)")
    group.add_argument("--im-defect", default="",
                       help="comma list of seeded defects for the embedded service")
    # Numbers are read as text and checked by check_options: one line naming the range, not
    # argparse's usage block.
    group.add_argument("--im-defect-rate", default=None,
                       help="fraction of operations a seeded defect hits (embedded service)")
    group.add_argument("--rate", default=None, help="override each scenario's rate")
    group.add_argument("--group-size", default=None, help="override group_size")
    group.add_argument("--cohort", default=None, help="canary: percent on v2")
    group.add_argument("--drain-s", default=None,
                       help="seconds to wait for in-flight messages at the end (default 3 units)")
    group.add_argument("--ramp", default="",
                       help="canary ramp: percent of users on --endpoint per stage, e.g. "
                            "5,20,50,100 (the rest on --ramp-from); off when empty")
    group.add_argument("--ramp-hold", default="10s", help="ramp: how long each stage holds")
    group.add_argument("--ramp-from", default="old", help="ramp: the endpoint users move from")
    group.add_argument("--im-check", action="store_true",
                       help="check the options, scenarios, budgets and config, start nothing, "
                            "and exit (0: fine; 2: the problem, in one line)")
    group.add_argument("--summary-json", default="",
                       help="JSON summary path (default reports/load-<scenario>-<endpoint>.json)")


def check_options(opts: Any) -> None:
    """Every im-harness option of this locust run, checked before anything starts."""
    problem = environment_problem()
    checks: tuple[tuple[str, str, float, float | None, bool, str], ...] = (
        ("--rate", "rate", 0, None, True, "1 or 0.5"),
        ("--group-size", "group_size", 2, None, False, "5"),
        ("--cohort", "cohort", 0, 100, False, "20"),
        ("--drain-s", "drain_s", 0, 3600, False, "3"),
        ("--im-defect-rate", "im_defect_rate", 0, 1, False, "0.05"),
    )
    for option, attr, low, high, low_open, example in checks:
        value = getattr(opts, attr)
        if problem is None and value is not None:
            problem = number_problem(option, value, low=low, high=high, low_open=low_open,
                                     example=example)
            if problem is None:
                setattr(opts, attr, float(value))
    if problem is None and opts.im_defect.strip():
        found = defect_problem(split_names(opts.im_defect))
        if found:
            problem = f"--im-defect {found}"
    if problem is None and not opts.endpoint.strip():
        problem = "--endpoint '' names no endpoint; pass e.g. new"
    if problem:
        raise ConfigError(problem)


@events.init.add_listener
def _init(environment: Environment, runner: Any, **_kw: Any) -> None:
    runner.register_message("im_setup", _on_setup)
    runner.register_message("im_collect", _on_collect, concurrent=True)
    runner.register_message("im_metrics", _on_metrics)
    if isinstance(runner, WorkerRunner):
        # The master names the classes to spawn; a worker knows one for every scenario.
        environment.user_classes = expand(environment.user_classes, scenarios.names())
        return  # the master sends everything else a worker needs
    opts = _opts(environment)
    try:
        check_options(opts)
        chosen = plan(opts.scenario, opts.scenarios_file or None,
                      {"rate": opts.rate, "group_size": opts.group_size, "cohort": opts.cohort})
        STATE.budgets = _budgets(opts.budgets, chosen)
        if STATE.budgets and STATE.budgets.scenario and STATE.budgets.scenario not in \
                chosen.weights:
            raise ConfigError(
                f"budgets {STATE.budgets.source} are for scenario {STATE.budgets.scenario!r}, "
                f"not {chosen.label!r}; pass the matching --budgets file"
            )
        ramp = ramp_plan(opts.ramp, opts.ramp_hold, old=opts.ramp_from,
                         new=opts.endpoint) if opts.ramp.strip() else None
        if ramp is not None and STATE.budgets is None:
            raise ConfigError(f"--ramp judges every stage against budgets, and {chosen.label!r} "
                              "has none; choose one scenario or pass --budgets")
        config = load_config(opts.im_config or None)
        defects = [d.strip() for d in opts.im_defect.split(",") if d.strip()] or None
        session = HarnessSession(config, [opts.endpoint], defects=defects,
                                 defect_rate=opts.im_defect_rate)
        session.resolve()  # an unset secret variable: before anything starts
        # A session of its own: a session starts its servers in parallel threads, which under
        # gevent share one OS thread, and two apps created at once collide in asyncio.run.
        old = HarnessSession(config, [ramp.old], defects=defects,
                             defect_rate=opts.im_defect_rate) if ramp else None
        if old is not None:
            old.resolve()
        classes = expand(environment.user_classes, chosen.weights, chosen.weights)
        if not classes:
            raise ConfigError(f"the locustfile has no IMUser subclass for {chosen.label!r}; "
                              "subclass harness.load.user.IMUser in it")
        if opts.im_check:
            raise SystemExit(EXIT_OK)  # everything above held: nothing was started
        STATE.session = session.start()  # validation is done: only now start a server
        if old is not None:
            STATE.ramp_session = old.start()
    except HarnessError as exc:
        _usage_error(str(exc))
    environment.user_classes = classes
    assert STATE.session is not None  # _usage_error exits otherwise
    _print_offered(chosen, int(getattr(opts, "num_users", 0) or 0))
    settings = STATE.session.settings(opts.endpoint)
    drain = opts.drain_s if opts.drain_s is not None else units(3)
    STATE.setup = {"settings": _settings_dict(settings), "plan": chosen.to_dict(),
                   "drain_s": drain}
    if ramp is not None:
        STATE.setup["ramp"] = ramp.to_dict()
        assert STATE.ramp_session is not None
        STATE.setup["ramp_from"] = _settings_dict(STATE.ramp_session.settings(ramp.old))


def _print_offered(chosen: ScenarioPlan, users: int) -> None:
    offered = offered_rate(chosen.weights, chosen.params, users)
    if offered is not None:
        sends, deliveries = offered
        sys.stderr.write(f"im-harness load: the plan offers {sends:g} sends/s and "
                         f"{deliveries:g} deliveries/s in total ({users} users x rate x senders "
                         "per user x fan-out)\n")


def _budgets(path: str, chosen: ScenarioPlan) -> Budgets | None:
    """--budgets, or the budgets the single chosen scenario registered (None: not judged)."""
    if path:
        return load_budgets(path)
    if len(chosen.weights) != 1:
        return None
    name = next(iter(chosen.weights))
    registered = scenarios.get(name).budgets
    if registered is None:
        return None
    if not registered.is_file():
        raise ConfigError(f"scenario {name!r} registered the budgets {registered}, which do not "
                          "exist; add that file or pass --budgets")
    with as_file(registered) as file:
        return load_budgets(file)


def _settings_dict(settings: EndpointSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["secrets"] = dict(settings.secrets)
    data["options"] = dict(settings.options)
    return data


def _on_setup(environment: Environment, msg: Any, **_kw: Any) -> None:
    STATE.setup = msg.data


def _emit(name: str, ms: float, exc: BaseException | None) -> None:
    STATE.emitted.append((name, ms, exc))  # loop thread; drained by a greenlet


def _fire_requests(environment: Environment) -> None:
    """Turn what the loop thread measured into locust request events (web UI, CSVs)."""
    fire = environment.events.request.fire
    while True:
        while STATE.emitted:
            name, ms, exc = STATE.emitted.popleft()
            fire(request_type=REQUEST_TYPE, name=name, response_time=ms, response_length=0,
                 exception=exc, context={})
        gevent.sleep(0.2)


@events.test_start.add_listener
def _test_start(environment: Environment, **_kw: Any) -> None:
    STATE.started = time.monotonic()
    runner = _runner(environment)
    if not isinstance(runner, WorkerRunner):
        name = _opts(environment).endpoint
        STATE.resources = sample_server(name, STATE.session.servers.get(name)
                                        if STATE.session else None)
        if STATE.ramp_session is not None:
            old = STATE.ramp_session.names[0]
            STATE.resources_old = sample_server(old, STATE.ramp_session.servers.get(old))
    if isinstance(runner, MasterRunner):
        STATE.replies = {}
        if STATE.setup and STATE.setup.get("ramp"):
            STATE.setup["ramp_step"] = runner.worker_count  # worker i takes units i, i+n, ...
        if STATE.setup is not None:  # the senders' phases interleave across the workers
            STATE.setup["processes"] = max(1, len(runner.clients))
        runner.send_message("im_setup", STATE.setup)
        return
    setup = STATE.setup
    if setup is None:
        log.error("im-harness load: no setup from the master; is it the same locustfile?")
        return
    bridge = AsyncBridge.get()
    settings = EndpointSettings(**setup["settings"])
    session, ramp_session = STATE.session, STATE.ramp_session
    process = runner.worker_index if isinstance(runner, WorkerRunner) else 0

    async def open_named(name: str) -> Any:
        if ramp_session is not None and name in ramp_session.names:
            return await ramp_session.open(name)
        if session is not None:
            return await session.open(name)
        ramp_from = setup.get("ramp_from")
        if ramp_from is not None and name == ramp_from["name"]:
            return await open_endpoint(EndpointSettings(**ramp_from))
        return await open_endpoint(settings)

    async def open_run() -> LoadRun | RampRun:
        plan = ScenarioPlan.from_dict(setup["plan"])
        if setup.get("ramp"):
            worker = runner.worker_index if isinstance(runner, WorkerRunner) else 0
            return await open_ramp(open_named, plan, RampPlan.from_dict(setup["ramp"]),
                                   drain_s=float(setup["drain_s"]), budgets=STATE.budgets,
                                   emit=_emit, first_index=worker,
                                   index_step=int(setup.get("ramp_step", 1)))
        return LoadRun(await open_named(settings.name), plan, emit=_emit,
                       process=process, processes=int(setup.get("processes", 1)))

    STATE.run = bridge.run(open_run(), timeout=units(30))
    _quiet_gc()
    gevent.spawn(_fire_requests, environment)
    if isinstance(STATE.run, RampRun) and not isinstance(runner, WorkerRunner):
        gevent.spawn(_quit_after_ramp, environment, STATE.run)


def _quit_after_ramp(environment: Environment, run: RampRun) -> None:
    """End the locust run when the ramp has ended (completed or rolled back)."""
    while not run.done.is_set():
        gevent.sleep(0.2)
    runner = _runner(environment)
    if runner.state in (STATE_SPAWNING, STATE_RUNNING):  # not already ending at the run time
        runner.quit()


def _quiet_gc() -> None:
    """Keep start-up objects (locust, gevent, modules) out of every later collection's scan."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_THRESHOLD0, gen0), gen1, gen2)


def _finish_local() -> dict[str, Any] | None:
    run, setup = STATE.run, STATE.setup
    if run is None or setup is None:
        return None
    bridge = AsyncBridge.get()
    drain = float(setup["drain_s"])
    try:
        payload = bridge.run(run.finish(drain), timeout=3 * drain + units(10))
    except HarnessError as exc:
        log.error("im-harness load: finishing the run failed: %s",
                  Redactor.from_environ().line(str(exc)))
        return None
    endpoint = run.endpoint

    async def close() -> None:
        await endpoint.aclose()

    try:
        bridge.run(close(), timeout=units(5))
    except HarnessError:
        pass
    return payload


def _on_collect(environment: Environment, msg: Any, **_kw: Any) -> None:
    payload = _finish_local()
    _runner(environment).send_message("im_metrics", payload or {"missing": True})


def _on_metrics(environment: Environment, msg: Any, **_kw: Any) -> None:
    STATE.replies[msg.node_id] = msg.data


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_kw: Any) -> None:
    runner = _runner(environment)
    if isinstance(runner, WorkerRunner):
        return  # the master asks for the metrics with im_collect
    duration = time.monotonic() - STATE.started if STATE.started else None
    problems: list[str] = []
    payloads: list[dict[str, Any]] = []
    if isinstance(runner, MasterRunner):
        workers = list(runner.clients.keys())
        runner.send_message("im_collect", {})
        drain = float(STATE.setup["drain_s"]) if STATE.setup else units(3)
        deadline = time.monotonic() + 3 * drain + COLLECT_GRACE_S
        while time.monotonic() < deadline and not all(w in STATE.replies for w in workers):
            gevent.sleep(0.1)
        for worker in workers:
            reply = STATE.replies.get(worker)
            if reply is None or reply.get("missing"):
                problems.append(f"worker {worker} sent no metrics; its load is not judged")
            else:
                payloads.append(reply)
        if not workers:
            problems.append("no workers were connected; nothing was measured")
    else:
        payload = _finish_local()
        if payload is None:
            problems.append("the run never started; nothing was measured")
        else:
            payloads.append(payload)
    _judge(environment, LoadMetrics.merged(payloads), payloads, problems, duration)


def _judge(environment: Environment, metrics: LoadMetrics, payloads: list[dict[str, Any]],
           problems: list[str], duration: float | None) -> None:
    opts = _opts(environment)
    ramp = judge_payloads(payloads, STATE.budgets)
    verdicts = STATE.budgets.evaluate(metrics) if STATE.budgets and ramp is None else []
    deliveries = metrics.counts["deliveries"]
    if ramp is not None:  # the mixed old+new totals are not judged: each stage is
        verdicts = ramp_verdicts(ramp)
        deliveries = sum(r["counts"]["new"]["deliveries"] for r in ramp["results"])
        if ramp["outcome"] == Outcome.INCOMPLETE:
            problems.append(ramp["line"])
    resources = finish_sampling(STATE.resources, deliveries)
    if ramp is not None:
        old_deliveries = sum(r["counts"]["old"]["deliveries"] for r in ramp["results"])
        ramp["server_resources"] = {"new": resources, "old": finish_sampling(
            STATE.resources_old, old_deliveries)}
    session = STATE.session
    info = session.infos.get(opts.endpoint) if session else None
    endpoint = {"name": opts.endpoint, "describe": describe(info) if info else "?",
                "url": info.url if info else "?",
                "max_connections": info.limits.max_connections if info else None}
    cohorts: dict[str, int] = collections.Counter()
    for payload in payloads:
        cohorts.update(payload.get("cohorts", {}))
    scenario = STATE.setup["plan"] if STATE.setup else {}
    label = "+".join(scenario.get("weights", {})) or opts.scenario
    summary = build_summary(
        metrics, scenario=label, endpoint=endpoint, verdicts=verdicts, budgets=STATE.budgets,
        duration_s=round(duration, 3) if duration else None, problems=problems,
        generator=judge_health(payloads, behind_ratio=metrics.behind_schedule_ratio()),
        extra={"plan": scenario, "cohorts": dict(cohorts),
               "schedule": summarize_phases(part for payload in payloads
                                            for part in payload.get("schedule", ())),
               "users": _runner(environment).user_count
               if not isinstance(environment.runner, MasterRunner) else None,
               "server_resources": resources, **({"ramp": ramp} if ramp else {})},
    )
    path = opts.summary_json or f"reports/load-{label}-{opts.endpoint}.json"
    write_summary(summary, path)
    sys.stderr.write(render(summary) + f"\nsummary written to {path}\n")
    environment.process_exit_code = summary["exit_code"]


@events.quitting.add_listener
def _quitting(environment: Environment, **_kw: Any) -> None:
    for session in (STATE.session, STATE.ramp_session):
        if session is not None:
            session.stop()
    STATE.session = STATE.ramp_session = None


class IMUser(User):
    """One unit of a load scenario, run in the process's asyncio loop through the bridge.

    Subclass it in a locustfile; every operation the unit times arrives as a locust request
    event (request_type "IM", names connect, send_ack, delivery, history).
    """

    abstract = True
    scenario: ClassVar[str] = ""  # "" = whichever scenarios --scenario chooses

    @task
    def run_unit(self) -> None:
        run = STATE.run
        if run is None:
            raise StopUser()
        AsyncBridge.get().run(run.unit(self.scenario))
        raise StopUser()  # the run is finishing: sending stopped


_GENERATED: dict[tuple[type[User], str], type[IMUser]] = {}


def expand(classes: Iterable[type[User]], names: Iterable[str],
           weights: Mapping[str, int] | None = None) -> list[type[User]]:
    """The user classes for scenarios `names`: one per scenario for each generic IMUser subclass.

    Classes that are not IMUsers are left out; a pinned subclass (`scenario = "chat"`) stays
    when its scenario is among `names`. The generated classes are named `<scenario>:<Base>`
    in every process, so a worker resolves what the master spawns.
    """
    wanted = list(names)
    out: list[type[User]] = []
    for cls in classes:
        if not issubclass(cls, IMUser):
            continue
        if cls.scenario:
            if cls.scenario in wanted:
                out.append(cls)
            continue
        for name in wanted:
            key = (cls, name)
            if key not in _GENERATED:
                _GENERATED[key] = type(f"{name}:{cls.__name__}", (cls,),
                                       {"scenario": name, "__module__": cls.__module__})
            out.append(_GENERATED[key])
    if weights is not None:
        for user in out:
            user.weight = weights.get(user.scenario, 1)  # type: ignore[attr-defined]
    return out
