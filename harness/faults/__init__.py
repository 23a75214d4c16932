"""Network faults between a client and its endpoint: a loopback TCP fault link and its timeline."""

from harness.faults.link import (
    DIRECTIONS,
    Bandwidth,
    Blackhole,
    Fault,
    FaultLink,
    Latency,
    LinkConnection,
    Partition,
    ResetAfter,
    SlowClose,
)
from harness.faults.timeline import ConnectionEvent, FaultRecord, FaultTimeline

__all__ = [
    "DIRECTIONS",
    "Bandwidth",
    "Blackhole",
    "ConnectionEvent",
    "Fault",
    "FaultLink",
    "FaultRecord",
    "FaultTimeline",
    "Latency",
    "LinkConnection",
    "Partition",
    "ResetAfter",
    "SlowClose",
]
