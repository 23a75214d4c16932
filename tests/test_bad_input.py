"""Every bad input: one line naming the key, the value and the fix, exit 2, no secret, nothing lost.

Each row is a real subprocess (`im-harness`, `pytest` with the plugin, `locust` with the packaged
locustfile, `python -m harness.load`) in a fresh folder that holds a recognisable secret in the
environment and a previous run's results. None of them may start a server: validation comes
first. The rows run in a small thread pool, so the whole table takes well under a minute.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.load.__main__ import default_locustfile

pytestmark = pytest.mark.slow
SECRET = "PLANTED-s3cr3t-7f3a9c1e"  # must never appear in any output
PYTEST_USAGE = 4  # pytest's own exit code for a usage error
PREVIOUS = {  # a previous run's results: a usage error must leave every byte of them
    "reports/verdict.json": '{"verdict": "GO"}\n',
    "reports/junit.xml": "<testsuites/>\n",
    "reports/suites.log": "1 passed\n",
    "reports/allure-results/1-result.json": '{"name": "earlier"}\n',
    "reports/load/chat-new.json": '{"within_budget": true}\n',
    "reports/load/chat-new_stats.csv": "Type,Name\nIM,send_ack\n",
    "reports/load/chat-new_stats_history.csv": "Timestamp\n1\n",
}
# locust's own start-up lines: its banner, and its warning when the open-file limit is low.
LOCUST_INFO = re.compile(
    r"^\[[\d\- :,]+\] [^ ]+/(INFO/locust\.main: Starting Locust "
    r"|WARNING/locust\.main: System open file limit )"
    r"|^It's not high enough for load testing, and the OS didn't allow locust"
    r"|^See https://github\.com/locustio/locust/wiki/Installation"
)
LATIN1 = "# caf\u00e9 configuration\n".encode("latin-1")


@dataclass(frozen=True)
class Row:
    id: str
    tool: str  # cli | pytest | locust | load
    args: tuple[str, ...]
    words: str  # what the one line must say
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def toml(text: str) -> dict[str, str | bytes]:
    return {"im-harness.toml": text}


def budgets(text: str) -> dict[str, str | bytes]:
    return {"b/chat.toml": text, "b/group.toml": "max_loss = 0\n"}


ROWS = [
    # --- the config file (im-harness.toml), read by `im-harness doctor` unless said otherwise
    Row("config-latin1", "cli", ("doctor",), "not UTF-8",
        files={"im-harness.toml": LATIN1 + b"[harness]\nseed = 1\n"}),
    Row("config-latin1-pytest", "pytest", (), "not UTF-8", PYTEST_USAGE,
        files={"im-harness.toml": LATIN1}),
    Row("config-empty", "cli", ("doctor",), "is empty", files=toml("")),
    Row("config-bad-toml", "cli", ("doctor",), "invalid TOML", files=toml("[harness\n")),
    Row("config-send-inf", "cli", ("doctor",), "timeouts.send = inf: input should be a finite "
        "number; use a finite number > 0", files=toml("[endpoints.old.timeouts]\nsend = inf\n")),
    Row("config-connect-nan", "cli", ("doctor",), "timeouts.connect = nan",
        files=toml("[endpoints.old.timeouts]\nconnect = nan\n")),
    Row("config-time-scale-inf", "cli", ("doctor",), "harness.time_scale = inf",
        files=toml("[harness]\ntime_scale = inf\n")),
    Row("config-keepalive-inf", "cli", ("doctor",), "harness.keepalive_v1 = inf",
        files=toml("[harness]\nkeepalive_v2 = 1\nkeepalive_v1 = inf\n")),
    Row("config-keepalive-negative", "cli", ("doctor",), "use a finite number > 0",
        files=toml("[harness]\nkeepalive_v2 = -3\n")),
    Row("config-propagation-nan", "cli", ("doctor",), "harness.propagation_delay = nan",
        files=toml("[harness]\npropagation_delay = nan\n")),
    Row("config-recall-window-inf", "cli", ("doctor",),
        "tier.limits.recall_window_s = inf: input should be a finite number; use a finite number "
        ">= 0",
        files=toml("[endpoints.new.tier.limits]\nrecall_window_s = inf\n")),
    Row("config-feature-typo", "cli", ("doctor",), "features.recal is not a capability",
        files=toml("[endpoints.new.tier.features]\nrecal = true\n")),
    Row("config-url-userinfo", "cli", ("doctor",), "carries credentials",
        files=toml(f'[endpoints.old]\nurl = "ws://bob:{SECRET}@127.0.0.1:9"\n')),
    Row("config-url-port", "cli", ("doctor",), "is not a usable URL",
        files=toml('[endpoints.old]\nurl = "ws://127.0.0.1:99999"\n')),
    Row("config-secret-in-env-key", "cli", ("doctor",), "is not an environment variable name",
        files=toml(f'[endpoints.old]\napp_key_env = "{SECRET}"\n')),
    Row("config-secret-in-secrets-env", "cli", ("doctor",), "secrets_env.app_key = <redacted>",
        files=toml(f'[endpoints.old]\nurl = "ws://127.0.0.1:9"\n'
                   f'secrets_env = {{ app_key = "{SECRET}" }}\n')),
    Row("config-literal-secret", "cli", ("doctor",), "looks like a literal secret",
        files=toml(f'[endpoints.old]\napp_key = "{SECRET}"\n')),
    Row("config-endpoints-array", "cli", ("doctor",), "endpoints = an array of 1 item(s)",
        files=toml(f'[[endpoints]]\nname = "old"\nsecret = "{SECRET}"\n')),
    Row("config-endpoints-list-empty", "cli", ("doctor",), "harness.endpoints = [] names no",
        files=toml("[harness]\nendpoints = []\n")),
    Row("config-unknown-key", "cli", ("doctor",), "harness.sead is not a known key",
        files=toml("[harness]\nsead = 1\n")),
    Row("config-unset-secret-variable", "cli", ("doctor",), "which is not set",
        files=toml('[endpoints.old]\nurl = "ws://127.0.0.1:9"\napp_key_env = "NOPE_APP_KEY"\n'
                   '[endpoints.new]\nurl = "ws://127.0.0.1:9"\n')),
    Row("config-adapter-option", "cli", ("doctor",), "is not an option of adapter 'reference'",
        files=toml("[endpoints.old.options]\nping_intervl_s = 1\n")),
    Row("config-adapter-option-inf", "cli", ("doctor",),
        "options.ping_interval_s = inf is not a finite number",
        files=toml("[endpoints.old.options]\nping_interval_s = inf\n")),
    # --- [tool.im-harness] in pyproject.toml
    Row("pyproject-misspelt-table", "cli", ("doctor",), "[tool.im_harness] is not read",
        files={"pyproject.toml": "[tool.im_harness]\n[tool.im_harness.harness]\nseed = 1\n"}),
    Row("pyproject-misspelt-pytest", "pytest", (), "[tool.imharness] is not read", PYTEST_USAGE,
        files={"pyproject.toml": "[tool.imharness.harness]\nseed = 1\n"}),
    Row("pyproject-empty-table", "cli", ("doctor",), "its [tool.im-harness] table is empty",
        files={"pyproject.toml": "[tool.im-harness]\n"}),
    Row("pyproject-latin1", "cli", ("doctor",), "not UTF-8",
        files={"pyproject.toml": LATIN1 + b"[tool.im-harness.harness]\nseed = 1\n"}),
    # --- environment variables
    Row("env-time-scale-abc", "cli", ("doctor",), "IM_HARNESS_TIME_SCALE='abc' must be a finite",
        env={"IM_HARNESS_TIME_SCALE": "abc"}),
    Row("env-time-scale-abc-pytest-q", "pytest", ("-q",), "IM_HARNESS_TIME_SCALE='abc'",
        PYTEST_USAGE, env={"IM_HARNESS_TIME_SCALE": "abc"}),
    Row("env-time-scale-inf-pytest", "pytest", (), "IM_HARNESS_TIME_SCALE='inf'", PYTEST_USAGE,
        env={"IM_HARNESS_TIME_SCALE": "inf"}),
    Row("env-defects", "cli", ("run",), "IM_HARNESS_DEFECTS = 'nope' is not a seeded defect",
        env={"IM_HARNESS_DEFECTS": "nope"}),
    Row("env-defect-rate-nan-pytest", "pytest", (), "IM_HARNESS_DEFECT_RATE='nan' must be a "
        "finite number >= 0 and <= 1", PYTEST_USAGE, env={"IM_HARNESS_DEFECT_RATE": "nan"}),
    Row("env-profile-pytest", "pytest", (), "IM_HARNESS_PROFILE='nope' is not a registered "
        "hypothesis profile", PYTEST_USAGE, env={"IM_HARNESS_PROFILE": "nope"}),
    Row("env-time-scale-locust", "locust", (), "IM_HARNESS_TIME_SCALE='0'",
        env={"IM_HARNESS_TIME_SCALE": "0"}),
    # --- im-harness flags
    Row("signoff-load-time-0", "cli", ("signoff", "--load-time", "0s"),
        "--load-time '0s' must be more than 0s"),
    Row("signoff-load-time-word", "cli", ("signoff", "--load-time", "soon"), "is not a duration"),
    Row("signoff-users-0", "cli", ("signoff", "--users", "0"),
        "--users': Input should be greater than or equal to 1"),
    Row("signoff-unknown-flag", "cli", ("signoff", "--bogus"), "No such option: --bogus"),
    Row("signoff-scenario", "cli", ("signoff", "--scenario", "nope"), "is not a load scenario"),
    Row("signoff-budgets-dir-missing", "cli", ("signoff", "--budgets-dir", "nowhere"),
        "is not a folder"),
    Row("signoff-budgets-bad-value", "cli", ("signoff", "--budgets-dir", "b"),
        "max_error_ratio = inf must be a finite number >= 0", files=budgets(
            "max_error_ratio = inf\n")),
    Row("signoff-latency-factor", "cli", ("signoff", "--latency-factor", "0.5"),
        "--latency-factor '0.5' must be a finite number >= 1; e.g. 2"),
    Row("signoff-latency-floor-word", "cli", ("signoff", "--latency-floor-ms", "soon"),
        "--latency-floor-ms 'soon' must be a finite number >= 0; e.g. 20"),
    Row("config-latency-factor", "cli", ("signoff",), "harness.latency_factor = 0.5: input "
        "should be greater than or equal to 1", files=toml("[harness]\nlatency_factor = 0.5\n")),
    Row("config-latency-floor-inf", "cli", ("signoff",), "harness.latency_floor_ms = inf",
        files=toml("[harness]\nlatency_floor_ms = inf\n")),
    Row("signoff-reports-is-file", "cli", ("signoff", "--reports", "reports/verdict.json"),
        "is a file, not a folder"),
    Row("signoff-path-missing", "cli", ("signoff", "--path", "no/such/suites"),
        "--path 'no/such/suites' is neither"),
    Row("run-path-missing", "cli", ("run", "--path", "missing_suites.py"),
        "--path 'missing_suites.py' is neither"),
    # pytest itself refuses the -k expression: the run's staged results are dropped, not swapped in
    Row("run-keyword-pytest-refuses", "cli", ("run", "--no-html", "-k", "((("),
        "Wrong expression passed to '-k'"),
    Row("run-endpoints-one", "cli", ("run", "--endpoints", "old"), "must name two endpoints"),
    Row("run-endpoints-comma", "cli", ("run", "--endpoints", ","), "must name two endpoints"),
    Row("load-endpoint-unknown", "cli", ("load", "--endpoint", "staging"),
        "'staging' is not configured"),
    Row("load-budgets-negative", "cli", ("load", "--scenario", "chat", "--budgets-dir", "b"),
        "max_loss = -1 must be a finite number >= 0", files=budgets("max_loss = -1\n")),
    Row("load-budgets-latin1", "cli", ("load", "--scenario", "chat", "--budgets-dir", "b"),
        "not UTF-8", files={"b/chat.toml": LATIN1}),
    # locust itself refuses (its locustfile has no user for chat): the staged files are dropped
    Row("load-locust-refuses", "cli", ("load", "--scenario", "chat", "--load-time", "1s",
                                       "--locustfile", "mine.py"),
        "the locustfile has no IMUser subclass for 'chat'", files={"mine.py": (
            "from harness.load.user import IMUser\n\n\nclass Mine(IMUser):\n"
            "    scenario = 'group'\n")}),
    # a team's locustfile is asked about its scenarios before the suites run, not after
    Row("signoff-locustfile-scenario", "cli", ("signoff", "--scenario", "nosuch",
                                               "--locustfile", "mine.py"),
        "--scenario 'nosuch' is not a scenario; known: chat", files={"mine.py": (
            "from harness.load.user import IMUser\n\n\nclass Mine(IMUser):\n    pass\n")}),
    Row("load-time-2d", "cli", ("load", "--load-time", "48h"), "at most 24h"),
    Row("doctor-config-missing", "cli", ("doctor", "--config", "missing.toml"), "no such file"),
    Row("doctor-endpoint-unknown", "cli", ("doctor", "--endpoints", "old,staging"),
        "'staging' is not configured"),
    Row("serve-env-file-dir", "cli", ("serve", "--env-file", "reports"), "is a folder"),
    Row("check-adapter-clause", "cli", ("check-adapter", "--clause", "nope"),
        "conformance clause 'nope' is not known"),
    Row("check-adapter-endpoint", "cli", ("check-adapter", "--endpoint", "staging"),
        "'staging' is not configured"),
    Row("new-adapter-name", "cli", ("new-adapter", "Bad Name"), "Bad Name"),
    Row("new-adapter-dir-file", "cli", ("new-adapter", "acme", "--dir", "reports/verdict.json"),
        "is a file, not a folder"),
    Row("unknown-command", "cli", ("sign-off",), "No such command 'sign-off'"),
    # --- pytest --im-* options
    Row("pytest-endpoints-comma", "pytest", ("--im-endpoints", ","), "names no endpoint",
        PYTEST_USAGE),
    Row("pytest-endpoints-unknown", "pytest", ("--im-endpoints", "staging"),
        "'staging' is not configured", PYTEST_USAGE),
    Row("pytest-time-scale-inf", "pytest", ("--im-time-scale", "inf"),
        "--im-time-scale 'inf' must be a finite number > 0", PYTEST_USAGE),
    Row("pytest-time-scale-word", "pytest", ("--im-time-scale", "fast"),
        "--im-time-scale 'fast'", PYTEST_USAGE),
    Row("pytest-defect", "pytest", ("--im-defect", "nope"), "'nope' is not a seeded defect",
        PYTEST_USAGE),
    Row("pytest-config-missing", "pytest", ("--im-config", "missing.toml"), "no such file",
        PYTEST_USAGE),
    # --- locust options (the packaged locustfile)
    Row("locust-rate-negative", "locust", ("--rate", "-1"), "--rate '-1' must be a finite "
        "number > 0"),
    Row("locust-drain-negative", "locust", ("--drain-s", "-1"), "--drain-s '-1' must be"),
    Row("locust-drain-inf", "locust", ("--drain-s", "inf"), "--drain-s 'inf' must be"),
    Row("locust-cohort", "locust", ("--cohort", "101"),
        "--cohort '101' must be a finite number >= 0 and <= 100"),
    Row("locust-defect-rate", "locust", ("--im-defect-rate", "2"), "--im-defect-rate '2' must be"),
    Row("locust-rate-word", "locust", ("--rate", "fast"), "--rate 'fast' must be a finite"),
    Row("locust-scenario", "locust", ("--scenario", "nope"), "'nope' is not a scenario"),
    Row("locust-budgets-nan", "locust", ("--budgets", "b/chat.toml"),
        "send_ack.p99_ms = nan must be a finite number >= 0", files=budgets(
            "[send_ack]\np99_ms = nan\n")),
    Row("locust-scenarios-file-latin1", "locust", ("--scenarios-file", "s.toml"), "not UTF-8",
        files={"s.toml": LATIN1}),
    Row("locust-config-secret", "locust", (), "carries credentials",
        files=toml(f'[endpoints.new]\nurl = "wss://admin:{SECRET}@example.invalid"\n')),
    # --- python -m harness.load compare
    Row("compare-endpoints", "load", ("compare", "--endpoints", "old"),
        "must name two endpoints"),
    Row("compare-users-word", "load", ("compare", "--users", "many"),
        "argument --users: invalid int value: 'many'"),
    Row("compare-users-0", "load", ("compare", "--users", "0"), "--users 0 must be >= 1"),
]


def _command(row: Row) -> list[str]:
    if row.tool == "cli":
        return [sys.executable, "-m", "harness.cli", *row.args]
    if row.tool == "load":
        return [sys.executable, "-m", "harness.load", *row.args]
    if row.tool == "pytest":
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *row.args,
                "test_nothing.py"]
    return [sys.executable, "-m", "locust", "-f", str(default_locustfile()), "--headless",
            "-u", "1", "-r", "1", "-t", "1s", "--only-summary", *row.args]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted((root / "reports").rglob("*")) if p.is_file()}


def _run(row: Row, root: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, bytes]]:
    folder = root / row.id
    for rel, text in {**PREVIOUS, **row.files,
                      "test_nothing.py": "def test_nothing():\n    pass\n"}.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_HARNESS_")}
    env.update({"COLUMNS": "400", "NO_COLOR": "1", "NEW_APP_KEY": SECRET,
                "OLD_ADMIN_TOKEN": SECRET, **row.env})
    done = subprocess.run(_command(row), cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    return done, _snapshot(folder)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("bad-input")
    before = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {row.id: pool.submit(_run, row, root) for row in ROWS}
        for row in ROWS:
            before[row.id] = futures[row.id].result()
    return before


def test_the_table_covers_every_surface() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))
    assert len(ROWS) >= 45
    assert {row.tool for row in ROWS} == {"cli", "pytest", "locust", "load"}
    commands = {row.args[0] for row in ROWS if row.tool == "cli"}
    assert {"signoff", "run", "load", "doctor", "serve", "check-adapter",
            "new-adapter"} <= commands


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, outcomes: dict[str, tuple]) -> None:
    done, after = outcomes[row.id]
    shown = f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert done.returncode == row.code, shown
    # locust's own start-up log lines (its banner, a low open-file limit) are not errors
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not (
        row.tool == "locust" and LOCUST_INFO.match(ln))]
    assert len(lines) == 1, shown
    line = lines[0]
    if row.tool == "pytest":
        assert line.startswith("ERROR: "), shown
    assert row.words in line, shown
    for text in (done.stdout, done.stderr):
        assert "Traceback" not in text, shown
        assert "INTERNALERROR" not in text, shown
        assert SECRET not in text, shown
    expected = {rel: text if isinstance(text, bytes) else text.encode()
                for rel, text in PREVIOUS.items()}
    assert after == expected, "the previous results changed"
