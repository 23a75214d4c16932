"""HttpProxy's bad input: one ConfigError naming the parameter, the value and the fix.

(What the proxy does to a real homeserver's answers: tests/test_matrix_proxy.py.)
"""

from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.faults.httpproxy import HttpProxy, SyncFault


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"upstream": "127.0.0.1:8008"}, r"upstream='127.0.0.1:8008' is not an HTTP URL; pass e\.g\."),
    ({"upstream": "http://127.0.0.1:8008", "hold_s": 0}, r"hold_s=0 is not a positive number"),
    ({"upstream": "http://127.0.0.1:8008", "hold_s": True}, r"hold_s=True is not a positive"),
    ({"upstream": "http://127.0.0.1:8008", "senders": "(@"}, r"senders='\(@' is not a regular"),
])
def test_bad_arguments_are_named(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        HttpProxy(**kwargs)  # type: ignore[arg-type]


def test_faults_switch_by_name_and_an_unknown_one_is_refused() -> None:
    proxy = HttpProxy("http://127.0.0.1:8008")
    proxy.fault = "swap_events"
    assert proxy.fault is SyncFault.SWAP
    with proxy.inject(SyncFault.DROP):
        assert proxy.fault is SyncFault.DROP
    assert proxy.fault is None  # clean again after the block
    with pytest.raises(ConfigError, match=r"fault 'dorp_event' is unknown; use one of drop_event"):
        proxy.fault = "dorp_event"
    assert proxy.fault is None
    with pytest.raises(ConfigError, match="not started"):
        _ = proxy.url
