"""The reference wire format <-> the contract, as pure functions (no I/O).

Frames are the JSON objects of harness/reference/PROTOCOL.md, already parsed.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from harness.contract import (
    Ack,
    Capability,
    Event,
    GroupInfo,
    HistoryPage,
    MembershipChanged,
    Message,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Target,
    TierLimits,
)
from harness.errors import IMError, error_from_wire

PROTOCOLS = ("v1", "v2")
KEEPALIVE_S = {"v1": 30.0, "v2": 15.0}
SEND_TIMEOUT_S = {"v1": 10.0, "v2": 5.0}
_V2_ONLY = frozenset({Capability.RECALL, Capability.RECEIPTS, Capability.GROUP_RECEIPTS})
_LIMIT_FIELDS = frozenset(f.name for f in fields(TierLimits))



def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Compact (fewer bytes per frame) and built once: `JSONEncoder.encode` makes its C encoder anew
# on every call, which costs a send more than the encoding itself. No circular-reference check:
# frames are built here from plain values.
_encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unencodable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)


def encode(frame: Mapping[str, Any]) -> str:
    """A frame as compact JSON text."""
    return "".join(_encoder(frame, 0))



def capabilities_from(features: Sequence[str], protocol: str) -> frozenset[Capability]:
    """Capabilities from a login answer's enabled features, less what the protocol lacks."""
    caps = set()
    for name in features:
        try:
            caps.add(Capability(name))
        except ValueError:
            continue  # a service feature the contract has no name for
    caps.discard(Capability.TIER_ADMIN)  # the harness adds it when it holds an admin client
    if Capability.MUTE in caps:
        caps.add(Capability.MUTE_ALL)  # the service's one "mute" feature gates both operations
    if protocol != "v2":
        caps -= _V2_ONLY
    return frozenset(caps)


def limits_from(raw: Mapping[str, Any] | None) -> TierLimits:
    """A login answer's `limits`, less the keys the contract has no field for."""
    return TierLimits(**{k: v for k, v in (raw or {}).items() if k in _LIMIT_FIELDS})


def message(raw: Mapping[str, Any]) -> Message:
    """A wire message object (in an event or a history page)."""
    return Message(
        message_id=str(raw["message_id"]),
        conversation=str(raw["conversation"]),
        seq=int(raw["seq"]),
        sender=str(raw["sender"]),
        client_id=str(raw.get("client_id") or ""),
        kind=raw.get("kind", "text"),
        body=str(raw.get("body") or ""),
        server_ts=float(raw.get("ts") or 0.0),
        group=raw.get("group"),
        recalled=bool(raw.get("recalled", False)),
        custom=raw.get("custom"),
    )


def group(raw: Mapping[str, Any]) -> GroupInfo:
    """A wire group object (the answer of group.create / group.info)."""
    return GroupInfo(
        group_id=str(raw["group_id"]),
        name=str(raw.get("name", "")),
        members=dict(raw.get("members") or {}),
        muted_all=bool(raw.get("muted_all", False)),
        muted=frozenset(raw.get("muted") or ()),
    )


def event(frame: Mapping[str, Any]) -> Event | None:
    """The contract event for a wire event frame; None for unknown or internal ones.

    A malformed frame raises KeyError, TypeError or ValueError.
    """
    kind = frame.get("ev")
    offline = bool(frame.get("offline", False))
    if kind == "message":
        return MessageReceived(message(frame["message"]), offline=offline)
    if kind == "recall":
        return MessageRecalled(frame["conversation"], frame["message_id"], frame["by"], offline)
    if kind == "receipt":
        return ReceiptUpdated(frame["conversation"], frame["reader"], int(frame["seq"]), offline)
    if kind == "membership":
        return MembershipChanged(frame["group"], frame["user"], frame["change"], frame["by"],
                                 frame.get("role"))
    if kind == "mute":
        return MuteChanged(frame["group"], frame.get("user"), bool(frame["muted"]), frame["by"])
    return None


def error(frame: Mapping[str, Any], op: str) -> IMError:
    """The contract's typed error for a refused request (`{"re":..,"ok":false,"error":{..}}`)."""
    err = frame.get("error") or {}
    code = str(err.get("code") or "error")
    details = {"retry_after": err["retry_after"]} if "retry_after" in err else {}
    return error_from_wire(code, str(err.get("message") or f"{op} failed"), **details)


def ack(answer: Mapping[str, Any], client_id: str) -> Ack:
    """The ack of an accepted send."""
    return Ack(
        client_id=client_id,
        message_id=str(answer["message_id"]),
        conversation=str(answer["conversation"]),
        seq=int(answer["seq"]),
        server_ts=float(answer["ts"]),
        duplicate=bool(answer.get("duplicate", False)),
    )


def history_page(answer: Mapping[str, Any], conversation: str) -> HistoryPage:
    """The answer of a `history` request."""
    return HistoryPage(
        conversation=str(answer.get("conversation", conversation)),
        messages=tuple(message(m) for m in answer.get("messages", ())),
        has_more=bool(answer.get("has_more", False)),
    )


def send_frame(to: Target, body: str, custom: Mapping[str, Any] | None,
               client_id: str) -> dict[str, Any]:
    """The `send` request for a message (its request id is added when it goes out)."""
    target = {"user": to.user} if to.user is not None else {"group": to.group}
    return {"op": "send", "to": target, "kind": "custom" if custom is not None else "text",
            "body": body, "custom": dict(custom) if custom is not None else None,
            "client_id": client_id}


__all__ = [
    "KEEPALIVE_S",
    "PROTOCOLS",
    "SEND_TIMEOUT_S",
    "ack",
    "capabilities_from",
    "encode",
    "error",
    "event",
    "group",
    "history_page",
    "limits_from",
    "message",
    "send_frame",
]
