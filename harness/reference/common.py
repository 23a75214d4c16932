"""What the service's parts share: its settings, the op error, request field checks."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.reference import defects
from harness.reference.state import compact
from harness.reference.strictjson import SAFE_INT

if TYPE_CHECKING:
    from harness.reference.frontend import Conn

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

# One op: the connection and the request frame in, the answer's fields out.
OpHandler = Callable[["Conn", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Config:
    """The service's settings from the command line."""

    keepalive_v1: float = 30.0
    keepalive_v2: float = 15.0
    propagation_delay: float = 0.0
    recall_window: float = 120.0
    max_frame_bytes: int = 1024 * 1024
    late_flush_s: float = 1.0  # ack_before_persist: how late writes are flushed
    release: int = 2  # the service release serving the data (harness.reference.releases)
    upgraded_at: float | None = None  # when the data was last upgraded to this release
    token_window_s: float = 600.0  # how long tokens minted before that upgrade stay valid

    def transition_error(self, issued_at: float, now: float) -> str | None:
        """Why a token minted at `issued_at` is refused after an upgrade, or None."""
        upgraded = self.upgraded_at
        if upgraded is None or issued_at >= upgraded:
            return None
        window = 0.0 if defects.on("old_tokens_refused") else self.token_window_s
        if now < upgraded + window:
            return None
        return (f"token minted before the upgrade to release {self.release}; its transition "
                f"window of {window:g}s has ended; mint a new token")

    def keepalive(self, protocol: str) -> float:
        """The ping interval of a connection speaking `protocol`."""
        return self.keepalive_v1 if protocol == "v1" else self.keepalive_v2


class OpError(Exception):
    """An operation failed with a wire error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            # rounded up: "retry after 0.0" would invite a retry that is refused again
            err["retry_after"] = max(0.001, math.ceil(self.retry_after * 1000) / 1000)
        return err


class Sent(Exception):
    """Raised by an op that already pushed its own response frames."""


def error_frame(rid: int | None, err: OpError) -> str:
    """The failure answer to request `rid`."""
    return compact({"re": rid, "ok": False, "error": err.wire()})


def read_int(msg: dict[str, Any], key: str, default: int | None = None, *,
             minimum: int = 0) -> Any:
    """`msg[key]` as an integer in `minimum`..2**53-1, `default` when absent; else `bad_request`."""
    value = msg.get(key, default)
    if value is None:
        return default
    if (not isinstance(value, int) or isinstance(value, bool)
            or not minimum <= value <= SAFE_INT):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise OpError("bad_request",
                      f"{key!r} must be an integer in {minimum}..{SAFE_INT}, got {shown}")
    return value
