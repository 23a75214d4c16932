"""Service tiers as data: limits and which optional features a tier can offer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DAY_S = 86400.0
DEFAULT_RECALL_WINDOW_S = 120.0
OPTIONAL_FEATURES = ("recall", "receipts")
BASE_FEATURES = (
    "chat", "custom", "groups", "roles", "mute", "offline", "history", "push", "idempotent_send",
)


@dataclass(frozen=True)
class TierLimits:
    """A tier's limits; `None` means unlimited. Sent as `limits` at login (PROTOCOL.md)."""

    max_connections: int | None = None  # concurrent connections per app
    send_rate_per_user: float | None = None  # messages per second, sustained
    send_burst: int | None = None  # messages allowed at once before the rate applies
    max_message_bytes: int | None = None  # encoded size of one message body
    max_group_members: int | None = None
    recall_window_s: float | None = None
    history_retention_s: float | None = None


LIMIT_FIELDS = tuple(f.name for f in fields(TierLimits))


@dataclass(frozen=True)
class Tier:
    """One tier: its rank (higher is more), limits, and the optional features it offers."""

    name: str
    rank: int
    limits: TierLimits
    optional_features: frozenset[str]


TIERS: dict[str, Tier] = {
    "free": Tier(
        name="free",
        rank=0,
        limits=TierLimits(
            max_connections=100,
            send_rate_per_user=10.0,
            send_burst=20,
            max_message_bytes=5120,
            max_group_members=100,
            recall_window_s=DEFAULT_RECALL_WINDOW_S,
            history_retention_s=7 * DAY_S,
        ),
        optional_features=frozenset(),
    ),
    "pro": Tier(
        name="pro",
        rank=1,
        limits=TierLimits(
            max_connections=10000,
            send_rate_per_user=100.0,
            send_burst=200,
            max_message_bytes=65536,
            max_group_members=3000,
            recall_window_s=DEFAULT_RECALL_WINDOW_S,
            history_retention_s=90 * DAY_S,
        ),
        optional_features=frozenset(OPTIONAL_FEATURES),
    ),
}


def get_tier(name: str) -> Tier:
    """The tier called `name`; `KeyError` naming the known tiers otherwise."""
    try:
        return TIERS[name]
    except KeyError:
        raise KeyError(f"unknown tier {name!r}; known: {', '.join(TIERS)}") from None


def effective_limits(
    tier: str, overrides: Mapping[str, Any] | None = None, recall_window_s: float | None = None
) -> TierLimits:
    """The tier's limits with an app's admin overrides and recall window applied."""
    limits = get_tier(tier).limits
    if recall_window_s is not None:
        limits = replace(limits, recall_window_s=float(recall_window_s))
    if overrides:
        limits = replace(limits, **dict(overrides))
    return limits


def limits_dict(limits: TierLimits) -> dict[str, Any]:
    """The limits as a JSON-ready dict."""
    return {name: getattr(limits, name) for name in LIMIT_FIELDS}
