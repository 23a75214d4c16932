"""The sign-off's section readers, in the order their sections appear: each named once here."""

from __future__ import annotations

from harness.report.capacityreport import read_capacity
from harness.report.changes import read_changes
from harness.report.journey import read_journey
from harness.report.latency import read_latency
from harness.report.loadcompare import read_load_compare
from harness.report.sections import Reader

READERS: list[Reader] = [read_latency, read_journey, read_changes, read_load_compare,
                         read_capacity]
