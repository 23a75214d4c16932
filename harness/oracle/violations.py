"""What the oracle reports: a `Violation` of one `ViolationKind`, explained in one paragraph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from harness.errors import HarnessError

MAX_PARAGRAPHS_PER_KIND = 25  # assert_ok keeps failure messages readable under load


class ViolationKind(StrEnum):
    """The guarantee a violation breaks; a `str` whose value is what reports print in brackets."""

    LOSS = "loss"  # an acked message a recipient never received
    DUPLICATE = "duplicate"  # seen twice, stored twice for one client id, or acked twice as new
    ORDER = "order"  # one participant saw a conversation (or one sender) out of seq order
    GROUP_ORDER = "group_order"  # two members saw the messages they share in different orders
    RECALL = "recall"  # a recall that did not reach a receiver, or history showing it unrecalled
    RECEIPT = "receipt"  # a read cursor moved back
    HISTORY = "history"  # a history page that differs from what was delivered or acked
    UNEXPECTED = "unexpected"  # a delivery to a non-recipient, at another seq, or never sent
    CAUSAL_ORDER = "causal_order"  # B seen before A, though A was acked before B was started
    # The server repeated an event or moved a read cursor back, where the client declares
    # (EndpointInfo.client_hides) that the protocol's real SDKs hide exactly that from users.
    HIDDEN_BY_SDK = "hidden_by_sdk"


KINDS: tuple[ViolationKind, ...] = tuple(ViolationKind)


@dataclass(frozen=True)
class Violation:
    """One broken guarantee, explained in one readable paragraph."""

    kind: ViolationKind
    participant: str
    conversation: str
    explanation: str
    message_ids: tuple[str, ...] = ()  # the messages the explanation names, first the culprit

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ViolationKind):  # built with a plain string: "loss"
            object.__setattr__(self, "kind", ViolationKind(self.kind))

    def __str__(self) -> str:
        return self.explanation


class OracleViolation(HarnessError, AssertionError):
    """The observed conversations break an IM guarantee; the message lists every violation."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(render_paragraphs(violations))


def render_paragraphs(violations: Sequence[Violation]) -> str:
    """A head line, then one `[kind] explanation` paragraph each, at most a few per kind."""
    per_kind: dict[ViolationKind, int] = {}
    shown: list[str] = []
    for v in violations:
        per_kind[v.kind] = per_kind.get(v.kind, 0) + 1
        if per_kind[v.kind] <= MAX_PARAGRAPHS_PER_KIND:
            shown.append(f"[{v.kind}] {v.explanation}")
    for kind, n in per_kind.items():
        if n > MAX_PARAGRAPHS_PER_KIND:
            shown.append(f"... and {n - MAX_PARAGRAPHS_PER_KIND} more {kind} violations.")
    head = f"{len(violations)} IM guarantee violation(s) observed:"
    return "\n\n".join([head, *shown])
