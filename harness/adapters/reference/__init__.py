"""Adapter for the embedded reference IM service (wire format: harness/reference/PROTOCOL.md).

The package along its seams: `transport` (the WebSocket link; login, reconnect and resend),
`translate` (wire frames <-> contract objects, no I/O), `ops` (the IMClient operations),
`adapter` (`ReferenceAdapter`, `ReferenceClient`) and `options` (`ReferenceOptions`, the keys
of `[endpoints.X.options]`).
"""

from harness.adapters.reference.adapter import ReferenceAdapter, ReferenceClient
from harness.adapters.reference.options import ReferenceOptions
from harness.adapters.reference.translate import (
    KEEPALIVE_S,
    PROTOCOLS,
    SEND_TIMEOUT_S,
    capabilities_from,
    limits_from,
)

# The public home of the classes is this package (the entry point names it).
ReferenceAdapter.__module__ = ReferenceClient.__module__ = __name__

__all__ = [
    "KEEPALIVE_S",
    "PROTOCOLS",
    "SEND_TIMEOUT_S",
    "ReferenceAdapter",
    "ReferenceClient",
    "ReferenceOptions",
    "capabilities_from",
    "limits_from",
]
