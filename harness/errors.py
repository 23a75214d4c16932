"""One base exception for the harness, and the typed errors an IM endpoint can raise.

Adapters map their wire errors onto the `IMError` subclasses, so that suites assert
`pytest.raises(Forbidden)` whatever the endpoint speaks. Every error carries a stable
`code`, the string the reference service puts on the wire.
"""

from __future__ import annotations

from typing import ClassVar


class HarnessError(Exception):
    """Base of every error raised by im-harness."""


class ConfigError(HarnessError):
    """Bad configuration or usage: the message names the key, the value and the fix."""


class UpgradeRefused(HarnessError):
    """An embedded server refused to start as another version on the same data.

    The message is the server's own (e.g. "database schema is too new"): the rollback drill
    reports it as a fact, not as a harness failure.
    """


class IMError(HarnessError):
    """An IM endpoint refused or failed an operation."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class Unauthorized(IMError):
    """The credentials are missing, malformed, expired or belong to another app."""

    code = "unauthorized"


class Forbidden(IMError):
    """The user is authenticated but may not do this (not a member, not the sender, muted)."""

    code = "forbidden"


class NotFound(IMError):
    """The user, group, conversation or message does not exist (for this caller)."""

    code = "not_found"


class RateLimited(IMError):
    """Too many requests; retry after `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after: float = 0.0, **details: object) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = float(retry_after)


class TooLarge(IMError):
    """The message or frame exceeds the tier's size limit."""

    code = "too_large"


class LimitReached(IMError):
    """A tier limit was reached: concurrent connections, group members, ..."""

    code = "limit_reached"


class FeatureDisabled(IMError):
    """The feature exists on this tier or version but is switched off for this app."""

    code = "feature_disabled"


class Unsupported(IMError):
    """The endpoint, tier or protocol version does not offer this operation at all."""

    code = "unsupported"


class RecallWindowExpired(Forbidden):
    """The message is older than the recall window."""

    code = "recall_window_expired"


class BadRequest(IMError):
    """The request was malformed or named an unknown operation."""

    code = "bad_request"


class IMTimeout(IMError, TimeoutError):
    """The endpoint did not answer within the timeout."""

    code = "timeout"


class ConnectionLost(IMError, ConnectionError):
    """The connection to the endpoint dropped and the operation's outcome is unknown."""

    code = "connection_lost"


ERRORS_BY_CODE: dict[str, type[IMError]] = {
    cls.code: cls
    for cls in (
        Unauthorized,
        Forbidden,
        NotFound,
        RateLimited,
        TooLarge,
        LimitReached,
        FeatureDisabled,
        Unsupported,
        RecallWindowExpired,
        BadRequest,
        IMTimeout,
        ConnectionLost,
    )
}


def error_from_wire(code: str, message: str = "", **details: object) -> IMError:
    """Build the typed error for a wire error code; unknown codes become a plain `IMError`."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        err = IMError(f"{code}: {message}" if message else code, **details)
        return err
    if cls is RateLimited:
        retry_after = details.pop("retry_after", 0.0)
        return RateLimited(message, retry_after=float(retry_after or 0.0), **details)  # type: ignore[arg-type]
    return cls(message, **details)
