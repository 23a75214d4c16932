"""When the journey runs, and the `[endpoints.X.upgrade]` table it reads (validated)."""

from __future__ import annotations

import pytest

from harness.config import parse_config
from harness.errors import ConfigError
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
