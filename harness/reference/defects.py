"""Seeded defects: switches that make the service misbehave on purpose, all off by default.

Each defect is a few lines at the point where it corrupts behaviour, guarded by `on(name)`;
random choices come from one seeded `random.Random` so a run can be replayed.
"""

from __future__ import annotations

import random

DEFECTS: dict[str, str] = {
    "drop_delivery": "a fraction (--defect-rate) of deliveries never reach the recipient's inbox",
    "reorder_fanout": "group fan-out sometimes delivers a message to a member after the next one",
    "duplicate_on_reconnect": "on login with a cursor, the entry at the cursor is replayed again",
    "ack_before_persist": "the ack is sent before the write; writes are flushed late",
    "recall_not_offline": "recall events are not kept for offline members (live only)",
    "read_cursor_back": "a read cursor can move back",
    "history_overlap": "a `before` page includes the boundary message (pages overlap)",
    "nonmember_post": "a non-member can post to a group",
    "cross_app_token": "a token minted by app A is accepted by app B",
    "tier_not_raised": "switching an app to a higher tier keeps the old tier's limits",
    "keepalive_dead": "keepalive never notices a dead peer",
    "no_push": "no push for offline recipients",
    "slow_delivery": "live deliveries leave the server 200 ms late (in order; acks are on time)",
    "history_lost_on_upgrade": "the upgrade to a newer release drops one conversation's history",
    "old_tokens_refused": "tokens minted before an upgrade are refused at once (no window)",
    "activation_stuck": "a feature switched on with a delay (activation lag) never comes on",
}
DEFAULT_RATE = 0.2
SLOW_DELIVERY_S = 0.2  # how late slow_delivery sends each live frame

_active: set[str] = set()
_rng = random.Random(0)
_rate = DEFAULT_RATE


def configure(names: set[str] | list[str] | tuple[str, ...] = (), *, seed: int = 0,
              rate: float = DEFAULT_RATE) -> None:
    """Reset: switch on exactly `names`, reseed the random source, set the defect rate."""
    global _rng, _rate
    unknown = [n for n in names if n not in DEFECTS]
    if unknown:
        raise KeyError(f"unknown defect {unknown[0]!r}; known: {', '.join(DEFECTS)}")
    _active.clear()
    _active.update(names)
    _rng = random.Random(seed)
    _rate = rate


def on(name: str) -> bool:
    """Whether defect `name` is switched on."""
    return name in _active


def set_defect(name: str, enabled: bool) -> None:
    """Switch one defect on or off; `KeyError` for an unknown name."""
    if name not in DEFECTS:
        raise KeyError(f"unknown defect {name!r}; known: {', '.join(DEFECTS)}")
    if enabled:
        _active.add(name)
    else:
        _active.discard(name)


def snapshot() -> dict[str, bool]:
    """Every defect name and whether it is on."""
    return {name: name in _active for name in DEFECTS}


def chance() -> bool:
    """True with probability `--defect-rate`, from the seeded random source."""
    return _rng.random() < _rate
