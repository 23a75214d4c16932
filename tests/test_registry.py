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
