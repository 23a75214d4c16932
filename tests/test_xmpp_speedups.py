"""slixmpp's SCRAM Hi() computed by hashlib's PBKDF2 gives RFC 5802's bytes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from harness.xmpp.adapter import speedups

pytest.importorskip("slixmpp")


def _rfc5802_hi(digest: str, text: bytes, salt: bytes, iterations: int) -> bytes:
    """Hi() as RFC 5802 §2.2 writes it: U1 = HMAC(text, salt + INT(1)), Ui = HMAC(text, Ui-1),
    Hi = U1 XOR U2 XOR ... XOR Ui (slixmpp's Python loop)."""
    u = hmac.new(text, salt + b"\0\0\0\1", digest).digest()
    out = int.from_bytes(u, "big")
    for _ in range(iterations - 1):
        u = hmac.new(text, u, digest).digest()
        out ^= int.from_bytes(u, "big")
    return out.to_bytes(len(u), "big")


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_pbkdf2_hi_is_rfc_5802s_hi(digest: str) -> None:
    class Mechanism:
        hash = getattr(hashlib, digest)

    salt = b"im-harness-salt"
    assert speedups._hi(Mechanism(), b"pencil", salt, 4096) == _rfc5802_hi(
        digest, b"pencil", salt, 4096)


def test_install_replaces_slixmpps_loop() -> None:
    from slixmpp.util.sasl import mechanisms

    speedups.install()
    assert mechanisms.SCRAM.Hi is speedups._hi
