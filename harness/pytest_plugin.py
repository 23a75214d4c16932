"""pytest plugin for im-harness: options, markers, report header and the endpoint fixtures.

Loaded through the `pytest11` entry point. Every test that uses `endpoint` (or `im_user`) runs
once per selected endpoint, ids `old` / `new`. Options come from the command line or the
config's `[harness]` table (the command line wins); bad configuration stops pytest with one
usage-error line (exit code 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from harness.config import (
    DEFECT_RATE_ENV,
    DEFECTS_ENV,
    HarnessConfig,
    defect_problem,
    environment_problem,
    load_config,
    number_problem,
    rate_problem,
    split_names,
)
from harness.contract import Capability, EndpointInfo, GroupInfo
from harness.errors import ConfigError
from harness.faults.timeline import FaultTimeline
from harness.properties import PROFILE_ENV, profile_name, register_profiles
from harness.report.redact import Redactor
from harness.timing import ENV_VAR as TIME_SCALE_ENV
from harness.timing import units as _units
from harness.timing import until as _until

if TYPE_CHECKING:
    from harness.faults.link import FaultLink
    from harness.oracle import Oracle
    from harness.push import PushReceiver
    from harness.session import Endpoint, HarnessSession, User

CONFIG_KEY = pytest.StashKey[HarnessConfig]()
SESSION_KEY = pytest.StashKey["HarnessSession"]()
_SAVED_SCALE_KEY = pytest.StashKey["str | None"]()
FAULT_TIMELINE_KEY = pytest.StashKey[FaultTimeline]()

# Before hypothesis' own pytest_configure loads `--hypothesis-profile ci|deep`.
register_profiles()

MARKERS = (
    "capability(*names): skip on an endpoint that does not offer every named capability",
    "smoke: a quick check that an endpoint works at all",
    "endpoints(*names): run this test only on the named endpoints",
    "needs_admin: skip on an endpoint the harness cannot administer (tiers, features)",
    "slow: minutes rather than seconds (deselect with -m 'not slow' for a quick loop)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("im-harness", "im-harness: IM endpoints under test")
    group.addoption(
        "--im-config", metavar="PATH", default=None,
        help="endpoint configuration (default: im-harness.toml or [tool.im-harness] in "
        "pyproject.toml under the rootdir; none: embedded reference services)",
    )
    group.addoption(
        "--im-endpoints", metavar="NAMES", default=None,
        help="comma-separated endpoints to run, e.g. old,new (default: [harness].endpoints, "
        "else all configured)",
    )
    group.addoption(
        "--im-defect", metavar="NAME", action="append", default=None,
        help=f"start the embedded services with this seeded defect (repeatable; also env "
        f"{DEFECTS_ENV}=a,b or [harness].defects)",
    )
    group.addoption(
        "--im-time-scale", metavar="FACTOR", default=None,
        help=f"multiply every harness timeout (sets {TIME_SCALE_ENV}; also [harness].time_scale)",
    )


def _defects(config: pytest.Config, hc: HarnessConfig) -> list[str]:
    cli = config.getoption("im_defect")
    if cli:
        names, where = split_names(cli), "--im-defect"
    elif os.environ.get(DEFECTS_ENV, "").strip():
        names, where = split_names(os.environ[DEFECTS_ENV]), DEFECTS_ENV
    else:
        return list(hc.harness.defects)
    problem = defect_problem(names)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return names


def _defect_rate(hc: HarnessConfig) -> float | None:
    raw = os.environ.get(DEFECT_RATE_ENV, "").strip()
    if not raw:
        return hc.harness.defect_rate
    problem = rate_problem(f"{DEFECT_RATE_ENV}=", raw)
    if problem:
        raise ConfigError(problem)
    return float(raw)


def _time_scale(config: pytest.Config, hc: HarnessConfig) -> float | None:
    raw = config.getoption("im_time_scale")
    if raw is None:
        return hc.harness.time_scale
    problem = number_problem("--im-time-scale", raw, low=0, low_open=True, example="1 or 2.5")
    if problem:
        raise ConfigError(problem)
    return float(raw)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    from harness.session import HarnessSession

    try:
        problem = environment_problem()
        if problem:
            raise ConfigError(problem)
        if os.environ.get(PROFILE_ENV, "").strip():
            profile_name()  # an unknown IM_HARNESS_PROFILE, now rather than in a property test
        hc = load_config(config.getoption("im_config"), rootdir=config.rootpath)
        wanted = config.getoption("im_endpoints")
        if wanted is not None and not split_names(wanted):
            raise ConfigError(f"--im-endpoints {wanted!r} names no endpoint; pass e.g. old,new "
                              f"(configured: {', '.join(hc.endpoints)}), or leave it out for all")
        names = hc.selected(split_names(wanted) if wanted is not None else None)
        session = HarnessSession(
            hc, names, defects=_defects(config, hc), defect_rate=_defect_rate(hc)
        )
        session.resolve()  # a missing credential variable is a usage error, now
        scale = _time_scale(config, hc)
    except ConfigError as exc:
        raise pytest.UsageError(Redactor.from_environ().line(str(exc))) from None
    config.stash[CONFIG_KEY] = hc
    config.stash[SESSION_KEY] = session
    config.stash[_SAVED_SCALE_KEY] = os.environ.get(TIME_SCALE_ENV)
    if scale is not None:
        os.environ[TIME_SCALE_ENV] = repr(scale)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.stop()
    if _SAVED_SCALE_KEY in config.stash:
        saved = config.stash[_SAVED_SCALE_KEY]
        if saved is None:
            os.environ.pop(TIME_SCALE_ENV, None)
        else:
            os.environ[TIME_SCALE_ENV] = saved


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Check external endpoints (reachable, credentials accepted) before anything runs."""
    hs = session.config.stash.get(SESSION_KEY, None)
    if hs is None or not hs.external():
        return
    try:
        hs.probe(hs.external())
    except ConfigError as exc:
        raise pytest.UsageError(Redactor.from_environ().line(str(exc))) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    hs = config.stash.get(SESSION_KEY, None)
    if hs is None:
        return []
    defects = ", ".join(hs.defects) or "none"
    lines = [
        f"im-harness: config {hs.config.source}; endpoints {', '.join(hs.names)}; "
        f"time unit {_units(1):g}s; defects {defects}"
    ]
    lines += [f"  {name}: {hs.summary(name)}" for name in hs.names]
    return lines


def _marker_names(item: pytest.Item, marker: str) -> list[str]:
    return [str(a) for m in item.iter_markers(marker) for a in m.args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse markers that name unknown capabilities or endpoints (a typo would skip silently)."""
    hs = config.stash.get(SESSION_KEY, None)
    known_caps = [c.value for c in Capability]
    for item in items:
        for name in _marker_names(item, "capability"):
            if name not in known_caps:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.capability({name!r}) is not a capability; "
                    f"known: {', '.join(known_caps)}"
                )
        if hs is not None:
            for name in _marker_names(item, "endpoints"):
                if name not in hs.config.endpoints:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.endpoints({name!r}) is not a configured "
                        f"endpoint; known: {', '.join(hs.config.endpoints)}"
                    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "endpoint" not in metafunc.fixturenames:
        return
    hs = metafunc.config.stash.get(SESSION_KEY, None)
    if hs is None:
        return
    names = _names_for(metafunc.definition, hs)
    if "endpoints" in metafunc.fixturenames and names:
        # A test over all endpoints at once runs once; `endpoint` (im_user's default) is the first.
        metafunc.parametrize("endpoint", names[:1], indirect=True, ids=["+".join(names)])
        return
    metafunc.parametrize("endpoint", names, indirect=True, ids=names)


def _names_for(item: pytest.Item, hs: HarnessSession) -> list[str]:
    """The selected endpoints, narrowed by the item's `endpoints` marker."""
    limit = _marker_names(item, "endpoints")
    return [n for n in hs.names if n in limit] if limit else list(hs.names)


def _unless_faulted(request: pytest.FixtureRequest, opened: Endpoint) -> Endpoint:
    """No latency from a test that injects faults: it would time the fault, not the endpoint."""
    if "fault_timeline" in request.fixturenames:  # fault_link, restart_service, properties
        opened.latency = None
    return opened


def _skip_reason(item: pytest.Item, name: str, info: EndpointInfo,
                 no_admin: str = "") -> str | None:
    from harness.session import describe

    for cap in _marker_names(item, "capability"):
        if not info.supports(cap):
            return f"endpoint {name!r} ({describe(info)}) does not offer capability {cap!r}"
    if item.get_closest_marker("needs_admin") and Capability.TIER_ADMIN not in info.capabilities:
        why = f": {no_admin}" if no_admin else ""
        return f"endpoint {name!r} ({describe(info)}) has no admin API (needs_admin){why}"
    return None


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def im_config(pytestconfig: pytest.Config) -> HarnessConfig:
    """The validated im-harness configuration."""
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def im_session(pytestconfig: pytest.Config) -> Iterator[HarnessSession]:
    """The selected endpoints, embedded services started once per session (per xdist worker)."""
    hs = pytestconfig.stash[SESSION_KEY]
    try:
        hs.start()
    except ConfigError as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    yield hs
    hs.stop()


@pytest_asyncio.fixture
async def endpoint(request: pytest.FixtureRequest, im_session: HarnessSession) -> AsyncIterator[
    Endpoint
]:
    """The endpoint under test, opened in the test's event loop; one test per endpoint.

    Example::

        @pytest.mark.capability("recall")
        async def test_recall(endpoint, im_user): ...
    """
    name = getattr(request, "param", None) or im_session.names[0]
    reason = _skip_reason(request.node, name, im_session.infos[name],
                          im_session.admin_problems.get(name, ""))
    if reason:
        pytest.skip(reason)
    opened = _unless_faulted(request, await im_session.open(name))
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest_asyncio.fixture
async def endpoints(
    request: pytest.FixtureRequest, im_session: HarnessSession
) -> AsyncIterator[dict[str, Endpoint]]:
    """Every selected endpoint at once (not parametrized), for tests that compare them.

    Example: ``old, new = endpoints["old"], endpoints["new"]``
    """
    names = _names_for(request.node, im_session)
    for name in names:
        reason = _skip_reason(request.node, name, im_session.infos[name],
                              im_session.admin_problems.get(name, ""))
        if reason:
            pytest.skip(reason)
    opened: dict[str, Endpoint] = {}
    try:
        for name in names:
            opened[name] = _unless_faulted(request, await im_session.open(name))
        yield opened
    finally:
        for ep in opened.values():
            with contextlib.suppress(Exception):
                await ep.aclose()


@pytest.fixture
def oracle() -> Oracle:
    """A fresh oracle; `im_user` feeds it every user's sends and events."""
    from harness.oracle import Oracle

    return Oracle()


UserFactory = Callable[..., Awaitable["User"]]


@pytest_asyncio.fixture
async def im_user(endpoint: Endpoint, oracle: Oracle) -> AsyncIterator[UserFactory]:
    """Factory of connected users with unique ids `{name}-{8 hex}`, closed at teardown.

    `via_link=link` (from the `fault_link` fixture) puts the user behind that fault link;
    `adapter_options` extend the adapter options of that user's endpoint (e.g. backoff).

    Example: ``alice = await im_user("alice"); bob = await im_user("bob", protocol="v1")``
    """
    from harness.faults.endpoint import linked_endpoint
    from harness.session import new_user

    users: list[User] = []
    variants: dict[tuple[int, int, str], Endpoint] = {}

    async def make(
        name: str = "user",
        protocol: str | None = None,
        endpoint: Endpoint | None = None,
        connect: bool = True,
        via_link: FaultLink | None = None,
        adapter_options: Mapping[str, Any] | None = None,
    ) -> User:
        target = endpoint or default
        if via_link is not None or adapter_options:
            key = (id(target), id(via_link), repr(sorted((adapter_options or {}).items())))
            if key not in variants:
                variants[key] = await linked_endpoint(
                    target, via_link, **dict(adapter_options or {})
                )
            target = variants[key]
        user = await new_user(target, oracle, name, protocol=protocol, connect=connect)
        users.append(user)
        return user

    default = endpoint
    yield make
    for user in reversed(users):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(user.close(), _units(5))
    for variant in variants.values():
        with contextlib.suppress(Exception):
            await variant.aclose()


@pytest.fixture
def im_group() -> Callable[..., Awaitable[GroupInfo]]:
    """Factory: ``group = await im_group(owner, [bob, carol], name=None)``."""
    from harness.session import unique_id

    async def make(owner: User, members: Sequence[User] = (), name: str | None = None) -> GroupInfo:
        return await owner.client.create_group(name or unique_id("group"), [m.id for m in members])

    return make


@pytest_asyncio.fixture
async def push_receiver() -> AsyncIterator[PushReceiver]:
    """A real HTTP server on 127.0.0.1 collecting push POSTs: `.url`, `.received`, `.wait_for`."""
    from harness.push import PushReceiver

    async with PushReceiver() as receiver:
        yield receiver


@pytest.fixture
def until() -> Callable[..., Awaitable[Any]]:
    """`harness.timing.until`: ``await until(lambda: cond, timeout=units(5), what="...")``."""
    return _until


@pytest.fixture
def units() -> Callable[[float], float]:
    """`harness.timing.units`: ``units(5)`` is five time units in seconds."""
    return _units


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def fault_timeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultTimeline]:
    """This test's fault timeline: links and restarts record into it.

    Kept on `request.node.stash[FAULT_TIMELINE_KEY]`, shown with a failed test's report, and
    written to `fault-timeline.txt` / `.json` in the test's tmp_path.
    """
    timeline = FaultTimeline(request.node.nodeid)
    request.node.stash[FAULT_TIMELINE_KEY] = timeline
    yield timeline
    if timeline.faults or timeline.events:
        (tmp_path / "fault-timeline.txt").write_text(timeline.to_text() + "\n")
        (tmp_path / "fault-timeline.json").write_text(timeline.to_json())


LinkFactory = Callable[..., Awaitable["FaultLink"]]


@pytest_asyncio.fixture
async def fault_link(
    endpoint: Endpoint, fault_timeline: FaultTimeline
) -> AsyncIterator[LinkFactory]:
    """Factory of started FaultLinks in front of the endpoint, stopped at teardown.

    Skips the test, with the reason, when the endpoint is not reached over TCP on loopback.

    Example::

        link = await fault_link()
        bob = await im_user("bob", via_link=link)
        with link.blackhole():
            ...
    """
    from harness.faults.endpoint import NotProxiable, link_for

    links: list[FaultLink] = []

    async def make(endpoint: Endpoint | None = None, name: str | None = None) -> FaultLink:
        target = endpoint or default
        label = name or f"{target.name}-link{len(links) + 1}"
        try:
            link = await link_for(target, timeline=fault_timeline, name=label)
        except NotProxiable as exc:
            pytest.skip(str(exc))
        links.append(link)
        return link

    default = endpoint
    yield make
    for link in reversed(links):
        await link.stop()


@pytest.fixture
def restart_service(
    endpoint: Endpoint, fault_timeline: FaultTimeline
) -> Callable[..., Awaitable[Any]]:
    """``await restart_service(kill=True)``: kill -9 and restart the endpoint's own service.

    On the same data and ports; recorded on the fault timeline. Skips the test when the harness
    did not start the endpoint's service.
    """
    from harness.errors import Unsupported
    from harness.faults.endpoint import restart_service as restart

    async def run(kill: bool = True, endpoint: Endpoint | None = None) -> Any:
        try:
            return await restart(endpoint or default, kill=kill, timeline=fault_timeline)
        except Unsupported as exc:
            pytest.skip(str(exc))

    default = endpoint
    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Show the fault timeline with a failed test's report."""
    report: Any = yield
    timeline = item.stash.get(FAULT_TIMELINE_KEY, None)
    if report.failed and timeline is not None and (timeline.faults or timeline.events):
        report.sections.append(("fault timeline", timeline.to_text()))
    return report


JOURNEYS_KEY = pytest.StashKey[list[Any]]()


@pytest_asyncio.fixture
async def upgrade_journey(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A private old server, upgraded in place to the new endpoint's request by the test.

    Started from the old endpoint's request (the session's shared servers are not even
    started for it); skipped,
    with the reason, when the configuration offers no in-place upgrade. The journey's record
    goes into `im-journey.json` in the --alluredir folder at the end of the session.

    Example: ``old = await upgrade_journey.open(); ...; await upgrade_journey.upgrade()``
    """
    from harness.testkit import Journey, JourneyRecord, UpgradePair

    # The session's configuration, not its servers: the journey starts (only) its own pair.
    pair = UpgradePair(request.config.stash[SESSION_KEY])
    record = JourneyRecord(pair.old, pair.new)
    request.config.stash.setdefault(JOURNEYS_KEY, []).append(record)
    why = pair.problem()
    if why is not None:
        record.skipped = why
        pytest.skip(why)
    await asyncio.to_thread(pair.start)
    journey = Journey(pair, record)
    try:
        yield journey
    finally:
        await journey.aclose()
        await asyncio.to_thread(pair.stop)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave the upgrade journey's record beside the Allure results (with --alluredir)."""
    records = session.config.stash.get(JOURNEYS_KEY, [])
    folder = getattr(session.config.option, "allure_report_dir", None)
    if not records or not folder:
        return
    ran = [r for r in records if not r.skipped] or records
    ran[-1].write(Path(folder))
