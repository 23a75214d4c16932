"""The matrix adapter's word on a malformed answer: the endpoint, the call, the first bytes.

(Through a real Synapse and the corrupting proxy: tests/test_matrix_proxy.py.)
"""

from __future__ import annotations

from harness.adapters.matrix.transport import BODY_SHOWN, malformed
from harness.errors import ConnectionLost


def test_a_malformed_answer_is_a_connection_lost_quoting_its_first_bytes() -> None:
    raw = b'{"next_batch": "s1", "rooms": {"join": {' + b"x" * 200
    error = malformed("endpoint 'new': GET /sync", 200, raw, "not JSON: Expecting value")
    assert isinstance(error, ConnectionLost)
    assert error.details == {"malformed": True}  # the sync loop fetches it again
    assert str(error).startswith("endpoint 'new': GET /sync: the 200 answer is malformed "
                                 "(not JSON: Expecting value); it begins b'{\"next_batch\"")
    assert str(error).endswith(f"... ({len(raw)} bytes)")
    assert repr(raw[:BODY_SHOWN])[2:-1] in str(error)
    assert "x" * (BODY_SHOWN + 1) not in str(error)


def test_a_token_at_the_start_of_a_malformed_answer_is_never_quoted() -> None:
    raw = b'{"user_id": "@a:hs", "access_token": "syt_PLANTED_s3cr3t", "device_id": "D'
    error = malformed("endpoint 'new': POST /login", 200, raw, "not JSON: Unterminated string")
    assert "PLANTED" not in str(error)
    assert '"access_token": "<hidden>"' in str(error)
