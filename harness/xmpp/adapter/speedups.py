"""Two costs of slixmpp the load generator cannot afford, removed without changing the wire.

- Every `ClientXMPP` builds a TLS context and loads the system's CA store (a fifth of a second
  of blocking CPU each): the adapter speaks plaintext on loopback (STARTTLS and direct TLS are
  off), so every stream shares one unused context (`shared_context`).
- slixmpp computes SCRAM's Hi() (RFC 5802 §2.2) in a Python loop of HMACs, another fifth of a
  second per login at 4096 rounds; Hi() is PBKDF2 with the hash's own length (RFC 5802), so
  `hashlib.pbkdf2_hmac` gives the same bytes in C (`install`).
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from typing import Any


@functools.cache
def shared_context() -> ssl.SSLContext:
    """One client TLS context for every stream (never used: TLS is off on loopback)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _hi(self: Any, text: Any, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(self.hash().name, bytes(text), salt, iterations)


@functools.cache
def install() -> None:
    """Compute slixmpp's SCRAM Hi() with hashlib's PBKDF2 (once per process)."""
    from slixmpp.util.sasl import mechanisms

    mechanisms.SCRAM.Hi = _hi  # type: ignore[method-assign]
