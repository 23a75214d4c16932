"""Per-user HMAC tokens: `base64url(json claims) . base64url(HMAC-SHA256(app_key, payload))`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from typing import Any

from harness.reference import strictjson


class TokenError(Exception):
    """A token is malformed, badly signed, or expired; the message is safe to show."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(app_key: str, payload: str) -> str:
    return _b64(hmac.new(app_key.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def mint(
    app_id: str, app_key: str, user_id: str, *, ttl_s: float = 3600.0, now: float | None = None
) -> str:
    """A token for `user_id` of `app_id`, valid for `ttl_s` seconds from `now`."""
    issued = time.time() if now is None else now
    claims = {"app": app_id, "sub": user_id, "iat": round(issued, 3),
              "exp": round(issued + ttl_s, 3)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(app_key, payload)}"


def claims(token: str) -> dict[str, Any]:
    """The token's claims, NOT verified (to find which app's key verifies it)."""
    if not isinstance(token, str) or token.count(".") != 1:
        raise TokenError("malformed token")
    payload = token.split(".", 1)[0]
    try:
        data = strictjson.loads(_unb64(payload))
    except ValueError:  # binascii.Error, non-ASCII text, JsonInputError
        raise TokenError("malformed token") from None
    exp = data.get("exp") if isinstance(data, dict) else None
    iat = data.get("iat", 0.0) if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("app"), str)
        or not isinstance(data.get("sub"), str)
        or not isinstance(exp, int | float)
        or isinstance(exp, bool)
        or not math.isfinite(exp)
        or not isinstance(iat, int | float)
        or isinstance(iat, bool)
        or not math.isfinite(iat)
    ):
        raise TokenError("malformed token")
    return data


def issued_at(token_claims: dict[str, Any]) -> float:
    """When the token was minted (0 for a token that does not say: minted before releases did)."""
    return float(token_claims.get("iat", 0.0))


def signed_by(token: str, app_key: str) -> bool:
    """Whether `app_key` produced the token's signature."""
    payload, _, sig = token.partition(".")
    if not payload.isascii():
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters
    return hmac.compare_digest(_sign(app_key, payload).encode(),
                               sig.encode("utf-8", "surrogateescape"))


def verify(token: str, app_id: str, app_key: str, *, now: float | None = None) -> str:
    """The user id of a valid, unexpired token of `app_id`; `TokenError` otherwise."""
    data = claims(token)
    if not signed_by(token, app_key):
        raise TokenError("invalid token signature")
    if data["app"] != app_id:
        raise TokenError("token was minted for another app")
    if data["exp"] <= (time.time() if now is None else now):
        raise TokenError("token expired")
    return str(data["sub"])
