"""Configuration: every validation path gives one line naming the key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import (
    HarnessConfig,
    find_config,
    load_config,
    looks_secret,
    parse_config,
    split_names,
)
from harness.errors import ConfigError
from harness.registry import adapters


def error_of(data: dict, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_two_embedded_reference_endpoints() -> None:
    config = HarnessConfig()
    assert config.source == "defaults"
    assert config.selected() == ["old", "new"]
    old, new = config.endpoints["old"], config.endpoints["new"]
    assert (old.adapter, old.protocol, old.tier.name) == ("reference", "v1", "free")
    assert (new.adapter, new.protocol, new.tier.name) == ("reference", "v2", "pro")
    assert old.embedded
    assert new.embedded
    assert new.tier.features == {"recall": True, "receipts": True}
    assert old.tier.features == {}


def test_no_file_means_defaults(tmp_path: Path) -> None:
    assert find_config(tmp_path) is None
    assert load_config(rootdir=tmp_path) == HarnessConfig()


def test_pyproject_without_table_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_config(rootdir=tmp_path).source == "defaults"


def test_full_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "im-harness.toml").write_text(
        """
[harness]
endpoints = "staging"
time_scale = 2.5
defects = ["drop_delivery"]

[endpoints.staging]
adapter = "reference"
url = "ws://127.0.0.1:9"
app_id = "app7"
protocol = "v2"
app_key_env = "STAGING_APP_KEY"
tier = { name = "pro", limits = { max_connections = 50 }, features = { recall = true } }
timeouts = { send = 3, connect = 2 }
options = { api_url = "http://127.0.0.1:10" }
"""
    )
    config = load_config(rootdir=tmp_path)
    assert config.source == "im-harness.toml"
    assert config.selected() == ["staging"]
    assert config.harness.time_scale == 2.5
    ep = config.endpoints["staging"]
    assert ep.secrets_env == {"app_key": "STAGING_APP_KEY"}
    assert not ep.embedded
    settings = config.settings_for("staging", {"STAGING_APP_KEY": "k-123"})
    assert settings.secrets == {"app_key": "k-123"}
    assert (settings.send_timeout_s, settings.connect_timeout_s) == (3, 2)
    assert settings.options == {"api_url": "http://127.0.0.1:10"}
    assert "k-123" not in repr(settings)


def test_pyproject_table_is_found_and_prefixes_paths(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.im-harness.endpoints.new]\nadapter = "matrx"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(rootdir=tmp_path)
    assert str(info.value) == (
        "pyproject.toml: tool.im-harness.endpoints.new.adapter = 'matrx' is not a registered "
        "adapter; known: " + str(info.value).split("known: ")[1]
    )
    assert "reference" in str(info.value).split("known: ")[1]


def test_unknown_adapter() -> None:
    message = error_of({"endpoints": {"new": {"adapter": "matrx"}}})
    assert message.startswith(
        "im-harness.toml: endpoints.new.adapter = 'matrx' is not a registered adapter; known: "
    )


def test_invalid_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "im-harness.toml"
    path.write_text('[endpoints.new]\nadapter = "reference"\nurl = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3:7: invalid TOML: ")


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"endpoints": {"new": {"bogus": 1}}},
            "im-harness.toml: endpoints.new.bogus is not a known key; known here: adapter, url, "
            "app_id, protocol, tier, timeouts, options, server, defects, upgrade, <secret>_env; "
            "remove or rename it",
        ),
        (
            {"harness": {"endpoint": "old"}},
            "im-harness.toml: harness.endpoint is not a known key; known here: endpoints, "
            "time_scale, defects, defect_rate, seed, keepalive_v1, keepalive_v2, "
            "propagation_delay, latency_factor, latency_floor_ms, budgets_dir; remove or rename "
            "it",
        ),
        (
            {"endpoints": {"new": {"timeouts": {"sned": 1}}}},
            "im-harness.toml: endpoints.new.timeouts.sned is not a known key; known here: send, "
            "connect; remove or rename it",
        ),
        (
            {"endpoints": {"new": {"timeouts": {"send": -1}}}},
            "im-harness.toml: endpoints.new.timeouts.send = -1: input should be greater than 0; "
            "use a finite number > 0",
        ),
        (
            {"harness": {"time_scale": "fast"}},
            "im-harness.toml: harness.time_scale = 'fast': input should be a valid number, "
            "unable to parse string as a number; use a finite number > 0",
        ),
        (
            {"endpoints": {}},
            "im-harness.toml: endpoints is empty; configure at least one [endpoints.NAME]",
        ),
        (
            {"endpoints": {"a b": {}}},
            "im-harness.toml: endpoints.a b is not a usable endpoint name; use letters, digits, "
            "'-' and '_'",
        ),
        (
            {"endpoints": {"new": {"tier": {"name": "gold"}}}},
            "im-harness.toml: endpoints.new.tier.name = 'gold' is not a tier of the 'reference' "
            "server; known: free, pro",
        ),
        (
            {"endpoints": {"new": {"app_key_env": "my key"}}},
            "im-harness.toml: endpoints.new.app_key_env = <redacted> is not an environment "
            "variable name (the value is not shown: it may be a secret); write e.g. "
            'app_key_env = "APP_KEY" and export that variable',
        ),
    ],
)
def test_one_line_errors(data: dict, expected: str) -> None:
    assert error_of(data) == expected


def test_unknown_tier_limit_lists_known_ones() -> None:
    message = error_of({"endpoints": {"x": {"url": "ws://h", "tier": {"limits": {"rate": 1}}}}})
    assert message.startswith("im-harness.toml: endpoints.x.tier.limits.rate is not a tier limit;")
    assert "max_connections" in message


def test_an_endpoints_own_defects_join_the_harness_wide_ones_for_that_endpoint_only() -> None:
    config = parse_config({"harness": {"defects": "drop_delivery"},
                           "endpoints": {"old": {}, "new": {"defects": "slow_delivery"}}})
    old = config.endpoints["old"].server_request("old", config.harness)
    new = config.endpoints["new"].server_request("new", config.harness)
    assert (old.defects, new.defects) == (("drop_delivery",), ("drop_delivery", "slow_delivery"))
    message = error_of({"endpoints": {"new": {"defects": ["slow_delivery", "nope"]}}})
    assert message.startswith("im-harness.toml: endpoints.new.defects = 'nope' is not a seeded "
                              "defect;")


def test_unknown_defect_lists_known_ones() -> None:
    message = error_of({"harness": {"defects": "drop_delivery, nope"}})
    assert message.startswith("im-harness.toml: harness.defects = 'nope' is not a seeded defect;")
    assert "drop_delivery" in message.split("known: ")[1]


@pytest.mark.parametrize("key", ["app_key", "token", "password", "admin_token", "api_secret"])
def test_literal_secret_is_refused_without_echoing_it(key: str) -> None:
    message = error_of({"endpoints": {"new": {key: "s3cr3t-value"}}})
    var = f"NEW_{key.upper()}"
    assert message == (
        f"im-harness.toml: endpoints.new.{key} looks like a literal secret, and secrets never go "
        f'in the config; remove it, write {key}_env = "{var}" in [endpoints.new] and export {var}'
    )
    assert "s3cr3t" not in message


def test_literal_secret_in_options_is_refused() -> None:
    message = error_of({"endpoints": {"old": {"options": {"access_token": "s3cr3t"}}}})
    assert message.startswith("im-harness.toml: endpoints.old.options.access_token looks like a")
    assert 'write access_token_env = "OLD_ACCESS_TOKEN"' in message
    assert "s3cr3t" not in message


def test_secret_key_detection() -> None:
    for key in ("app_key", "Token", "db-password", "admin_token", "client_secret"):
        assert looks_secret(key), key
    for key in ("app_id", "url", "keys_dir", "tokenizer", "api_url"):
        assert not looks_secret(key), key


def test_missing_env_var_names_var_and_key() -> None:
    config = parse_config({"endpoints": {"new": {"url": "ws://h", "app_key_env": "NEW_KEY"}}})
    with pytest.raises(ConfigError) as info:
        config.settings_for("new", {})
    assert str(info.value) == (
        "im-harness.toml: endpoints.new.app_key_env names the environment variable NEW_KEY, "
        "which is not set; export NEW_KEY (the app_key) or fix app_key_env"
    )
    with pytest.raises(ConfigError, match="NEW_KEY"):
        config.settings_for("new", {"NEW_KEY": ""})


def test_embedded_is_reference_without_url() -> None:
    config = parse_config({"endpoints": {"new": {"adapter": "reference", "url": ""}}})
    assert config.endpoints["new"].embedded
    config = parse_config({"endpoints": {"new": {"url": "ws://127.0.0.1:9"}}})
    assert not config.endpoints["new"].embedded


def test_other_adapter_needs_url(monkeypatch: pytest.MonkeyPatch) -> None:
    adapters.names()  # load the entry points first, so the stand-in is not overwritten
    monkeypatch.setitem(adapters._items, "standin", object)
    message = error_of({"endpoints": {"new": {"adapter": "standin"}}})
    assert message == (
        "im-harness.toml: endpoints.new.url is required for adapter 'standin', which registers "
        "no embedded server; only these adapters can run without a url: 'matrix', 'reference', "
        "'xmpp'"
    )


def test_urlless_matrix_endpoint_is_embedded_synapse() -> None:
    config = parse_config({"endpoints": {"old": {
        "adapter": "matrix", "server": {"version": "1.141.0"}}}})
    assert config.endpoints["old"].embedded
    config = parse_config({"endpoints": {"old": {"adapter": "matrix", "url": "http://127.0.0.1:9"}}})
    assert not config.endpoints["old"].embedded


def test_embedded_matrix_needs_a_synapse_version_and_a_known_profile() -> None:
    assert error_of({"endpoints": {"old": {"adapter": "matrix"}}}) == (
        "im-harness.toml: endpoints.old.server.version is required by the 'matrix' server; "
        "known options: version, rate_profile, database"
    )
    message = error_of({"endpoints": {"new": {"adapter": "matrix", "server": {
        "version": "1.163.2", "rate_profile": "fast"}}}})
    assert message == (
        "im-harness.toml: endpoints.new.server.rate_profile = 'fast': input should be 'relaxed' "
        "or 'default'; fix the value"
    )
    message = error_of({"endpoints": {"new": {"adapter": "matrix", "server": {
        "version": "9.9.9"}}}})
    assert message == (
        "im-harness.toml: endpoints.new.server.version = '9.9.9': value error, '9.9.9' has no "
        "pinned dependency date; use one of 1.141.0, 1.163.2; fix the value"
    )


def test_unknown_adapter_option_names_the_key_and_the_known_ones() -> None:
    message = error_of({"endpoints": {"new": {"options": {"backof_base_s": 0.1}}}})
    assert message.startswith(
        "im-harness.toml: endpoints.new.options.backof_base_s is not an option of adapter "
        "'reference'; known: "
    )
    assert "backoff_base_s" in message
    assert message.endswith("; remove or rename it")


def test_mistyped_adapter_option_names_the_value() -> None:
    message = error_of({"endpoints": {"new": {"options": {"backoff_base_s": "soon"}}}})
    assert message.startswith(
        "im-harness.toml: endpoints.new.options.backoff_base_s = 'soon': "
    )


def test_server_table_with_a_url_is_refused() -> None:
    message = error_of({"endpoints": {"new": {
        "adapter": "matrix", "url": "http://127.0.0.1:9", "server": {"version": "1.163.2"}}}})
    assert message == (
        "im-harness.toml: endpoints.new.server is set, but the endpoint has a url, so the "
        "harness starts no server for it; remove the [server] table or the url"
    )


def test_shipped_synapse_example_parses() -> None:
    config = load_config(Path(__file__).parents[1] / "examples" / "synapse.toml")
    assert config.selected() == ["old", "new"]
    versions = [config.endpoints[n].server["version"] for n in ("old", "new")]
    assert versions == ["1.141.0", "1.163.2"]
    assert all(config.endpoints[n].embedded for n in ("old", "new"))
    assert not config.endpoints["staging"].embedded


def test_selection() -> None:
    config = HarnessConfig()
    assert config.selected(["new"]) == ["new"]
    assert config.selected(["new", "old", "new"]) == ["new", "old"]
    with pytest.raises(ConfigError) as info:
        config.selected(["nwe"])
    assert str(info.value) == "defaults: endpoint 'nwe' is not configured; known: old, new"
    pinned = parse_config({"harness": {"endpoints": "new"}})
    assert pinned.selected() == ["new"]
    assert pinned.selected(["old"]) == ["old"]


def test_split_names() -> None:
    assert split_names(" a, b,,c ") == ["a", "b", "c"]
    assert split_names(["a,b", "c"]) == ["a", "b", "c"]
    assert split_names(None) == []


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "examples" / "im-harness.toml"
    config = load_config(example)
    assert set(config.endpoints) >= {"old", "new"}


def test_invalid_toml_at_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "im-harness.toml"
    path.write_text('[endpoints.new]\nurl = "ws://x"\nadapter =')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:3:10: invalid TOML: Invalid value at the end of the file; fix the syntax there"
    )


# --- bad input found before any work (issue: every bad input is one line) -------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"harness": {"time_scale": float("inf")}},
         "harness.time_scale = inf: input should be a finite number; use a finite number > 0"),
        ({"harness": {"propagation_delay": float("nan")}},
         "harness.propagation_delay = nan: input should be a finite number; use a finite "
         "number >= 0"),
        ({"endpoints": {"new": {"tier": {"limits": {"recall_window_s": float("inf")}}}}},
         "use a finite number >= 0"),
        ({"endpoints": {"new": {"tier": {"features": {"recal": True}}}}},
         "endpoints.new.tier.features.recal is not a capability or feature; known: chat"),
        ({"endpoints": {"new": {"url": "ws://u:pw-hunter2@127.0.0.1:1"}}},
         "endpoints.new.url = 'ws://<redacted>@127.0.0.1:1' carries credentials"),
        ({"endpoints": {"new": {"url": "127.0.0.1:8765"}}}, "is not a URL with a scheme"),
        ({"endpoints": [{"app_key": "pw-hunter2"}]}, "endpoints = an array of 1 item(s)"),
        ({"harness": {"endpoints": []}}, "harness.endpoints = [] names no endpoint"),
    ],
)
def test_numbers_features_urls_and_tables_are_refused_without_echoing_secrets(
    data: dict, words: str
) -> None:
    message = error_of(data)
    assert words in message
    assert "hunter2" not in message


def test_a_non_utf8_file_names_the_line_and_the_byte(tmp_path: Path) -> None:
    file = tmp_path / "im-harness.toml"
    file.write_bytes(b"[harness]\n# caf\xe9\nseed = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == (
        f"{file}:2:6: not UTF-8 (byte 0xe9); TOML files must be UTF-8: save the file as "
        "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def test_an_empty_file_or_a_misspelt_pyproject_table_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "im-harness.toml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the file is empty, so nothing is configured"):
        load_config(rootdir=tmp_path)
    (tmp_path / "im-harness.toml").unlink()
    (tmp_path / "pyproject.toml").write_text("[tool.im_harness.harness]\nseed = 1\n")
    with pytest.raises(ConfigError, match=r"\[tool\.im_harness\] is not read; the harness "
                                          r"reads \[tool\.im-harness\]"):
        load_config(rootdir=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    assert load_config(rootdir=tmp_path).source == "defaults"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"IM_HARNESS_TIME_SCALE": "abc"}, "IM_HARNESS_TIME_SCALE='abc' must be a finite"),
        ({"IM_HARNESS_TIME_SCALE": "inf"}, "IM_HARNESS_TIME_SCALE='inf' must be a finite"),
        ({"IM_HARNESS_DEFECTS": "nope"}, "IM_HARNESS_DEFECTS = 'nope' is not a seeded defect"),
        ({"IM_HARNESS_DEFECT_RATE": "nan"},
         "IM_HARNESS_DEFECT_RATE='nan' must be a finite number >= 0 and <= 1; e.g. 0.05"),
    ],
)
def test_environment_variables_are_checked_up_front(environ: dict, words: str) -> None:
    from harness.config import environment_problem

    assert words in (environment_problem(environ) or "")
    assert environment_problem({"IM_HARNESS_TIME_SCALE": "2.5"}) is None


def test_number_problem_says_the_range() -> None:
    from harness.config import number_problem

    assert number_problem("--rate", -1.0, low=0, low_open=True) == (
        "--rate -1.0 must be a finite number > 0; e.g. 1")
    assert number_problem("--cohort", 50, low=0, high=100) is None
    assert "a finite number >= 0 and <= 100" in (number_problem("--cohort", "inf", low=0,
                                                                high=100) or "")


def test_a_protocol_the_adapter_does_not_speak_is_refused_before_anything_starts() -> None:
    assert error_of({"endpoints": {"new": {"protocol": "v3"}}}) == (
        "im-harness.toml: endpoints.new.protocol = 'v3' is not a protocol of adapter "
        "'reference'; known: v1, v2"
    )
