"""Regression suites: the same tests against the old and the new endpoint, side by side."""
