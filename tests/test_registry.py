"""The reference adapter is found by name, through the registry and its entry point."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from harness.contract import EndpointSettings
from harness.errors import ConfigError
from harness.registry import Registry
from harness.timing import units


def test_entry_point_is_installed() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="im_harness.adapters")}
    assert found.get("reference") == "harness.adapters.reference:ReferenceAdapter"


def test_fresh_interpreter_finds_reference_through_the_entry_point() -> None:
    """Nothing imports the adapter module first: only the entry point can register it."""
    code = (
        "import sys\n"
        "from harness.registry import adapters\n"
        "assert 'harness.adapters.reference' not in sys.modules\n"
        "cls = adapters.get('reference')\n"
        "print(cls.__module__, cls.__qualname__, cls.name, callable(cls.open))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=units(30), check=True).stdout.split()
    assert out == ["harness.adapters.reference", "ReferenceAdapter", "reference", "True"]


def test_registry_lists_reference_and_names_the_known_ones_on_a_typo() -> None:
    from harness.adapters.reference import ReferenceAdapter

    fresh: Registry[type] = Registry("adapter", group="im_harness.adapters")
    assert fresh.get("reference") is ReferenceAdapter
    assert "reference" in fresh.names()
    with pytest.raises(ConfigError, match=r"'refrence' is not registered; known: .*reference"):
        fresh.get("refrence")


def _settings(**over: object) -> EndpointSettings:
    base: dict[str, object] = {
        "name": "new", "adapter": "reference", "url": "ws://127.0.0.1:1", "app_id": "app1",
        "protocol": "v2", "secrets": {"app_key": "sekrit-key-123"},
        "options": {"api_url": "http://127.0.0.1:2"},
    }
    base.update(over)
    return EndpointSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"protocol": "v3"}, "protocol 'v3'"),
        ({"url": "http://127.0.0.1:1"}, "not a WebSocket URL"),
        ({"options": {}}, "options.api_url"),
        ({"secrets": {}}, "secret 'app_key'"),
        ({"app_id": ""}, "app_id"),
        ({"options": {"api_url": "http://127.0.0.1:2", "backoff_cap_s": -1}}, "backoff_cap_s"),
    ],
)
def test_bad_settings_name_the_key_and_hide_the_secret(override: dict, names: str) -> None:
    from harness.adapters.reference import ReferenceAdapter

    with pytest.raises(ConfigError, match="endpoint 'new'") as info:
        ReferenceAdapter(_settings(**override))
    assert names in str(info.value)
    assert "sekrit" not in str(info.value)


def test_adapter_repr_hides_the_app_key() -> None:
    from harness.adapters.reference import ReferenceAdapter

    adapter = ReferenceAdapter(_settings())
    assert "sekrit" not in repr(adapter)
    assert "sekrit" not in repr(adapter.settings)


@pytest.mark.parametrize("name", ["reference", "matrix"])
def test_each_adapter_describes_its_options(name: str) -> None:
    """`Options` knows every key with a type, a default and a description; others are refused."""
    from pydantic import ValidationError

    from harness.registry import adapters

    model = adapters.get(name).Options
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True
    defaults = model()
    for key, field in model.model_fields.items():
        assert field.description, f"{name}: options.{key} has no description"
        assert getattr(defaults, key) == field.default
    with pytest.raises(ValidationError, match="synapse_version"):
        model.model_validate({"synapse_version": "1.141.0"})
    with pytest.raises(ValidationError, match="backoff_base_s"):
        model.model_validate({"backoff_base_s": -0.5})


def test_the_options_keys_each_adapter_reads() -> None:
    from harness.adapters.matrix import MatrixAdapter
    from harness.adapters.reference import ReferenceAdapter

    assert set(ReferenceAdapter.Options.model_fields) == {
        "api_url", "backoff_base_s", "backoff_cap_s", "jitter_seed", "max_reconnect_attempts",
        "ping_interval_s", "token_ttl_s", "send_timeout_s"}
    assert set(MatrixAdapter.Options.model_fields) == {
        "server_name", "sync_timeout_s", "send_timeout_s", "room_version", "send_rate_per_user",
        "send_burst", "backoff_base_s", "backoff_cap_s", "jitter_seed"}


def test_validated_options_reach_the_adapter_typed() -> None:
    from harness.adapters.reference import ReferenceAdapter

    adapter = ReferenceAdapter(_settings(options={
        "api_url": "http://127.0.0.1:2/", "backoff_cap_s": 2, "max_reconnect_attempts": 3,
        "not_ours": "kept out: the configuration refuses unknown keys, not the adapter"}))
    assert adapter.api_url == "http://127.0.0.1:2"
    assert (adapter.options.backoff_base_s, adapter.options.backoff_cap_s) == (0.5, 2.0)
    assert adapter.options.max_reconnect_attempts == 3
    assert adapter.send_timeout_for("v1") == 10.0
    with pytest.raises(ConfigError, match=r"options\.ping_interval_s='10' must be a number >= 0"):
        ReferenceAdapter(_settings(options={"api_url": "http://x", "ping_interval_s": "10"}))


async def test_open_admin_needs_the_admin_token_and_the_api_url() -> None:
    from harness.adapters.reference import ReferenceAdapter

    assert ReferenceAdapter.open_admin(_settings()) is None  # no admin_token secret
    assert ReferenceAdapter.open_admin(
        _settings(options={}, secrets={"app_key": "k", "admin_token": "t0k"})) is None
    admin = ReferenceAdapter.open_admin(
        _settings(secrets={"app_key": "k", "admin_token": "sekrit-admin"}))
    assert admin is not None
    try:
        assert admin.api_url == "http://127.0.0.1:2"
        assert "sekrit" not in repr(admin)
    finally:
        await admin.aclose()
