"""im-harness: regression and load test harness for IM SDK, service and tier upgrades."""

__version__ = "0.1.0"
