"""The pytest plugin, run for real in a pytest subprocess against real reference services."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.reference.admin import AppHandle
from harness.reference.launcher import ReferenceService

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.slow
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -p no:cacheprovider
"""

SUITE = '''
import os
import pytest


async def test_send(im_user, endpoint, oracle):
    alice = await im_user("alice")
    bob = await im_user("bob")
    assert alice.id.startswith("alice-") and len(alice.id) == len("alice-") + 8
    ack = await alice.send(bob, "hello")
    [msg] = await bob.recorder.wait_messages(1)
    assert (msg.body, msg.message_id, msg.sender) == ("hello", ack.message_id, alice.id)
    oracle.assert_ok()
    if endpoint.server is not None:
        with open(os.environ["PIDS_FILE"], "a") as fh:
            fh.write(f"{endpoint.server.pid}\\n")


@pytest.mark.capability("recall")
async def test_recall(endpoint, im_user, oracle):
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "oops")
    await alice.recall(ack)
    await bob.recorder.wait_for(lambda e: e.type == "recall")
    oracle.assert_ok()


@pytest.mark.endpoints("new")
def test_only_new(endpoint):
    assert endpoint.name == "new"


@pytest.mark.needs_admin
async def test_push_on_fresh_app(endpoint, im_user, push_receiver, units):
    app = await endpoint.with_app(tier="free", webhook=push_receiver.url)
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app, connect=False)
    await alice.send(bob, "are you there")
    [push] = await push_receiver.wait_for(lambda p: p["to"] == bob.id, timeout=units(5))
    assert push["sender"] == alice.id


async def test_compare_all(endpoints, endpoint, im_user):
    assert endpoint is not endpoints["new"] and endpoint.name == list(endpoints)[0]
    bob = await im_user("bob", endpoint=endpoints["new"])
    assert bob.endpoint is endpoints["new"]
'''


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if v}


def assert_no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text


def usage_error(result: pytest.RunResult) -> str:
    """The single `ERROR:` line of a usage error (exit code 4, no traceback)."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert_no_traceback(result)
    lines = [ln for ln in result.stderr.lines if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: ")
    return lines[0].removeprefix("ERROR: ")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("PIDS_FILE", str(pytester.path / "pids.txt"))
    for var in ("IM_HARNESS_DEFECTS", "IM_HARNESS_TIME_SCALE", "IM_HARNESS_DEFECT_RATE"):
        monkeypatch.delenv(var, raising=False)
    return pytester


def test_default_endpoints_header_skip_and_send(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-v", "-rs", timeout=120)
    assert outcomes(result) == {"passed": 7, "skipped": 1}, result.stdout.str()
    result.stdout.fnmatch_lines([
        "im-harness: config defaults; endpoints old, new; time unit 1s; defects none",
        "  old: adapter reference, url embedded (started on first use), protocol v1, tier free",
        "  new: adapter reference, url embedded (started on first use), protocol v2, tier pro",
    ])
    result.stdout.fnmatch_lines([
        "*SKIPPED*endpoint 'old' (reference v1, tier free) does not offer capability 'recall'",
    ])
    result.stdout.fnmatch_lines(["*test_only_new*[[]new[]] PASSED*"])
    assert "test_only_new[old]" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*test_compare_all[[]old+new[]] PASSED*"])
    result.stdout.fnmatch_lines(["*test_push_on_fresh_app[[]old[]] PASSED*"])
    # The embedded services were real processes, and they are gone after the session.
    pids = {int(p) for p in (project.path / "pids.txt").read_text().split()}
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_im_endpoints_new_runs_only_new(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-v", "--im-endpoints", "new", "-k", "send", timeout=60)
    assert outcomes(result) == {"passed": 1, "deselected": 4}
    result.stdout.fnmatch_lines(["*test_send[[]new[]] PASSED*"])
    assert "[old]" not in result.stdout.str()


def test_xdist_two_workers(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-n", "2", "-k", "send or only", timeout=120)
    assert outcomes(result) == {"passed": 3}, result.stdout.str()  # xdist omits "deselected"
    result.stdout.fnmatch_lines(["*2 workers*"])


def test_defect_and_time_scale_reach_the_service(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_defect='''
        from harness.timing import unit

        async def test_defect(endpoint, units):
            assert await endpoint.admin.defects() == {
                **{k: False for k in await endpoint.admin.defects()},
                "no_push": True, "history_overlap": True,
            }
            assert units(1) == unit() == 2.5
        '''
    )
    result = project.runpytest_subprocess(
        "--im-defect", "no_push", "--im-defect", "history_overlap", "--im-time-scale", "2.5",
        "--im-endpoints", "new", "test_defect.py", timeout=60,
    )
    assert outcomes(result) == {"passed": 1}, result.stdout.str()
    result.stdout.fnmatch_lines(["*time unit 2.5s; defects no_push, history_overlap"])


def test_defects_from_environment(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IM_HARNESS_DEFECTS", "nope")
    message = usage_error(project.runpytest_subprocess(timeout=60))
    assert message.startswith("IM_HARNESS_DEFECTS = 'nope' is not a seeded defect; known: ")


def test_harness_table_options_and_embedded_limits(project: pytest.Pytester) -> None:
    project.makefile(".toml", **{"im-harness": """
[harness]
endpoints = "old"
time_scale = 3

[endpoints.old]
protocol = "v1"
tier = { name = "free", limits = { max_connections = 5, recall_window_s = 2 } }

[endpoints.new]
"""})
    project.makepyfile(
        test_limits="""
        def test_limits(endpoint):
            assert endpoint.name == "old"
            assert endpoint.info.limits.max_connections == 5
            assert endpoint.info.limits.recall_window_s == 2
        """
    )
    result = project.runpytest_subprocess("test_limits.py", timeout=60)
    assert outcomes(result) == {"passed": 1}, result.stdout.str()
    result.stdout.fnmatch_lines([
        "im-harness: config im-harness.toml; endpoints old; time unit 3s*"
    ])
    # The command line wins over the table.
    result = project.runpytest_subprocess("test_limits.py", "--im-time-scale", "1", timeout=60)
    assert outcomes(result) == {"passed": 1}, result.stdout.str()
    result.stdout.fnmatch_lines(["*endpoints old; time unit 1s*"])


@pytest.mark.parametrize(
    ("toml", "args", "expected"),
    [
        (
            '[endpoints.new]\nadapter = "matrx"\n', (),
            r"im-harness\.toml: endpoints\.new\.adapter = 'matrx' is not a registered adapter; "
            r"known: .*reference.*",
        ),
        (
            '[endpoints.new]\nadapter = "reference"\nurl = \nprotocol = "v2"\n', (),
            r".*im-harness\.toml:3:7: invalid TOML: .*",
        ),
        (
            '[endpoints.new]\nadpater = "reference"\n', (),
            r"im-harness\.toml: endpoints\.new\.adpater is not a known key; known here: .*",
        ),
        (
            '[endpoints.new]\nurl = "ws://127.0.0.1:1"\napp_key = "s3cr3t"\n', (),
            r"im-harness\.toml: endpoints\.new\.app_key looks like a literal secret.*"
            r'app_key_env = "NEW_APP_KEY".*export NEW_APP_KEY',
        ),
        (
            '[endpoints.new]\nurl = "ws://127.0.0.1:1"\napp_key_env = "IM_TEST_UNSET_VAR"\n', (),
            r"im-harness\.toml: endpoints\.new\.app_key_env names the environment variable "
            r"IM_TEST_UNSET_VAR, which is not set.*",
        ),
        ("", ("--im-endpoints", "nwe"), r"defaults: endpoint 'nwe' is not configured; .*"),
        ("", ("--im-time-scale", "-2"), r"--im-time-scale '-2' must be a finite number > 0.*"),
    ],
    ids=["adapter", "toml", "key", "secret", "env", "endpoints", "time-scale"],
)
def test_bad_configuration_is_one_usage_error_line(
    project: pytest.Pytester, toml: str, args: tuple[str, ...], expected: str
) -> None:
    if toml:
        project.makefile(".toml", **{"im-harness": toml})
    message = usage_error(project.runpytest_subprocess(*args, timeout=60))
    assert re.fullmatch(expected, message), message
    assert "s3cr3t" not in message


def test_unknown_capability_marker_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_typo='''
        import pytest

        @pytest.mark.capability("recal")
        def test_x(endpoint):
            pass
        '''
    )
    message = usage_error(project.runpytest_subprocess("test_typo.py", timeout=60))
    assert message.startswith("test_typo.py::test_x[old]: @pytest.mark.capability('recal') is")


# --- an endpoint the harness did not start ------------------------------------------------


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[ReferenceService, AppHandle]]:
    with ReferenceService() as service:
        yield service, service.create_app_sync(tier="pro", features={"recall": True})


def external_toml(service: ReferenceService, app: AppHandle, url: str | None = None) -> str:
    return f"""
[endpoints.staging]
url = "{url or service.ws_url}"
app_id = "{app.app_id}"
protocol = "v2"
app_key_env = "STAGING_KEY"
admin_token_env = "STAGING_ADMIN"
tier = {{ name = "pro", limits = {{ max_connections = 7 }}, features = {{ receipts = false }} }}
options = {{ api_url = "{service.api_url}" }}
"""


def test_external_endpoint(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[ReferenceService, AppHandle],
) -> None:
    service, app = running
    project.makefile(".toml", **{"im-harness": external_toml(service, app)})
    project.makepyfile(
        test_external='''
        import pytest

        async def test_profile_applied(endpoint):
            assert endpoint.server is None and endpoint.admin is not None
            assert endpoint.info.limits.max_connections == 7
            assert endpoint.supports("recall") and not endpoint.supports("receipts")
            assert endpoint.supports("tier_admin")

        @pytest.mark.capability("receipts")
        def test_receipts(endpoint):
            pass
        '''
    )
    monkeypatch.setenv("STAGING_KEY", app.app_key)
    monkeypatch.setenv("STAGING_ADMIN", service.admin_token)
    result = project.runpytest_subprocess("-rs", "test_external.py", timeout=60)
    assert outcomes(result) == {"passed": 1, "skipped": 1}, result.stdout.str()
    result.stdout.fnmatch_lines([
        f"  staging: adapter reference, url {service.ws_url}, protocol v2, tier pro",
        "*endpoint 'staging' (reference v2, tier pro) does not offer capability 'receipts'",
    ])
    text = result.stdout.str() + result.stderr.str()
    assert app.app_key not in text
    assert service.admin_token not in text


def test_a_refused_admin_secret_means_no_tier_admin_and_says_why(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[ReferenceService, AppHandle],
) -> None:
    service, app = running
    project.makefile(".toml", **{"im-harness": external_toml(service, app)})
    project.makepyfile(
        test_admin='''
        import pytest

        @pytest.mark.needs_admin
        async def test_switches_tiers(endpoint):
            pass
        '''
    )
    monkeypatch.setenv("STAGING_KEY", app.app_key)
    monkeypatch.setenv("STAGING_ADMIN", "not-the-admin-token")
    result = project.runpytest_subprocess("-rs", "test_admin.py", timeout=60)
    assert outcomes(result) == {"skipped": 1}, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*has no admin API (needs_admin): endpoint 'staging': its admin secret is refused*"])
    assert "not-the-admin-token" not in result.stdout.str() + result.stderr.str()


def test_wrong_credentials_are_a_usage_error(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[ReferenceService, AppHandle],
) -> None:
    service, app = running
    project.makefile(".toml", **{"im-harness": external_toml(service, app)})
    monkeypatch.setenv("STAGING_KEY", "not-the-key")
    monkeypatch.setenv("STAGING_ADMIN", "x")
    message = usage_error(project.runpytest_subprocess(timeout=60))
    assert message.startswith(
        f"endpoint 'staging' (reference) at {service.ws_url}: credentials refused"
    )
    assert "not-the-key" not in message


def test_unreachable_endpoint_is_a_usage_error(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[ReferenceService, AppHandle],
    tmp_path: Path,
) -> None:
    service, app = running
    dead = ReferenceService(tmp_path / "dead.db").start()
    dead_ws, dead_api = dead.ws_url, dead.api_url
    dead.stop()  # its ports are now closed: nothing listens there
    toml = external_toml(service, app, url=dead_ws).replace(service.api_url, dead_api)
    project.makefile(".toml", **{"im-harness": toml})
    monkeypatch.setenv("STAGING_KEY", app.app_key)
    monkeypatch.setenv("STAGING_ADMIN", service.admin_token)
    message = usage_error(project.runpytest_subprocess("-n", "2", timeout=60))
    assert message.startswith(f"endpoint 'staging' (reference) at {dead_ws} is unreachable: ")


FAULT_SUITE = '''
import dataclasses


async def test_user_behind_a_link(endpoint, im_user, fault_link, fault_timeline, units):
    link = await fault_link()
    bob = await im_user("bob", via_link=link, adapter_options={"backoff_base_s": 0.05})
    alice = await im_user("alice")
    assert len(link.connections) == 1  # bob's client, and only bob's, goes through the link
    await link.reset_now()
    await alice.send(bob, "after the reset")
    await bob.recorder.wait_messages(1, timeout=units(5))
    assert link.timeline is fault_timeline
    assert fault_timeline.of_kind("reset_now")


async def test_not_tcp(endpoint, fault_link):
    settings = dataclasses.replace(endpoint.settings, url="inproc://service")
    await fault_link(dataclasses.replace(endpoint, settings=settings))


async def test_restart_keeps_acked(endpoint, restart_service, im_user, fault_timeline, units):
    alice = await im_user("alice")
    bob = await im_user("bob", connect=False)
    await alice.send(bob, "durable")
    await restart_service(kill=True)
    await bob.connect()
    await bob.recorder.wait_messages(1, timeout=units(5))
    [record] = fault_timeline.of_kind("server_restart")
    assert record.params["kill"] is True and record.duration_s > 0


async def test_failure_shows_timeline(endpoint, fault_link):
    link = await fault_link(name="flaky")
    with link.latency(ms=5):
        pass
    raise AssertionError("boom")
'''


def test_fault_fixtures_link_restart_skip_and_timeline(project: pytest.Pytester) -> None:
    project.makepyfile(test_faulty=FAULT_SUITE)
    basetemp = project.path / "basetemp"
    result = project.runpytest_subprocess(
        "test_faulty.py", "--im-endpoints", "new", "-rs", f"--basetemp={basetemp}", timeout=120
    )
    assert outcomes(result) == {"passed": 2, "skipped": 1, "failed": 1}, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*SKIPPED*endpoint 'new' (reference v2, tier pro): adapter 'reference' is not "
        "TCP-based (url scheme 'inproc')*",
    ])
    # A failed test's report carries its fault timeline.
    result.stdout.fnmatch_lines(["*fault timeline*", "*flaky*latency*ms=5*"])
    texts = sorted(basetemp.rglob("fault-timeline.txt"))
    assert len(texts) == 3, texts  # every test that recorded a fault or a connection
    assert any("server_restart" in p.read_text() for p in texts)
    assert all(p.with_suffix(".json").exists() for p in texts)
