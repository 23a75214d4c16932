"""When the journey runs, and the `[endpoints.X.upgrade]` table it reads (validated)."""

from __future__ import annotations

import sys

import pytest

from harness.config import parse_config
from harness.errors import ConfigError, HarnessError
from harness.journey import UpgradePair
from harness.session import HarnessSession


def _pair(data: dict) -> UpgradePair:
    return UpgradePair(HarnessSession(parse_config(data, source="im-harness.toml")))


def test_the_embedded_default_has_a_journey() -> None:
    assert _pair({}).problem() is None


def test_an_endpoint_the_team_runs_needs_a_hook() -> None:
    data = {"endpoints": {
        "old": {"url": "ws://127.0.0.1:9", "app_id": "a", "app_key_env": "OLD_KEY",
                "options": {"api_url": "http://127.0.0.1:10"}},
        "new": {"protocol": "v2"}}}
    assert _pair(data).problem() == (
        "endpoint 'old' (url ws://127.0.0.1:9) declares no upgrade hook; add "
        "[endpoints.old.upgrade] command = [...] to upgrade it in place")
    data["endpoints"]["old"]["upgrade"] = {"command": ["./deploy.sh", "upgrade"]}
    assert _pair(data).problem() is None


def test_a_missing_endpoint_or_another_adapter_is_named() -> None:
    assert _pair({"endpoints": {"old": {}}}).problem() == (
        "the upgrade journey needs endpoints 'old' and 'new'; 'new' is not configured")
    problem = _pair({"endpoints": {"old": {}, "new": {"adapter": "matrix",
                                                      "server": {"version": "1.163.2"}}}}).problem()
    assert problem is not None
    assert problem.startswith("endpoints 'old' (reference) and 'new' (matrix) use different")


@pytest.mark.parametrize(("table", "message"), [
    ({"comand": ["x"]}, "endpoints.old.upgrade.comand is not a known key; known here: command, "
                        "rollback, activation_bound_s, token_window_s"),
    ({"command": ["", "x"]}, "endpoints.old.upgrade.command = an array of 2 item(s): holds an "
                             "empty word"),
    ({"activation_bound_s": -1}, "endpoints.old.upgrade.activation_bound_s = -1"),
])
def test_bad_upgrade_tables_are_one_line(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"endpoints": {"old": {"upgrade": table}, "new": {}}},
                     source="im-harness.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _team_pair(monkeypatch: pytest.MonkeyPatch, upgrade: dict) -> UpgradePair:
    monkeypatch.setenv("OLD_KEY", "k" * 16)
    return _pair({"endpoints": {
        "old": {"url": "ws://127.0.0.1:9", "app_id": "a", "app_key_env": "OLD_KEY",
                "protocol": "v1", "options": {"api_url": "http://127.0.0.1:10"},
                "upgrade": upgrade},
        "new": {"protocol": "v2"}}})


def test_the_hook_runs_with_the_target_named(monkeypatch: pytest.MonkeyPatch) -> None:
    check = "import os, sys; sys.exit(0 if os.environ['IM_HARNESS_UPGRADE_TO'] == 'new' else 3)"
    pair = _team_pair(monkeypatch, {"command": [sys.executable, "-c", check]})
    assert pair.start().protocol == "v1"
    settings = pair.upgrade()
    assert (settings.name, settings.protocol, settings.url) == ("new", "v2", "ws://127.0.0.1:9")
    assert pair.rollback() == ("not drilled: endpoint 'old' declares no rollback hook "
                               "([endpoints.old.upgrade] rollback = [...])", False)


def test_a_failing_hook_names_the_endpoint_and_its_last_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fail = "import sys; print('deploy: no such release', file=sys.stderr); sys.exit(4)"
    pair = _team_pair(monkeypatch, {"command": [sys.executable, "-c", fail]})
    pair.start()
    with pytest.raises(HarnessError) as err:
        pair.upgrade()
    assert str(err.value) == (f"the upgrade hook of endpoint 'old' ({sys.executable}) exited 4: "
                              "deploy: no such release")
    assert pair.upgraded_at is None
