"""The adapter conformance kit: the contract's clauses, run against one configured endpoint.

Example::

    from harness.conformance import run_conformance
    for result in run_conformance(load_config("im-harness.toml"), "acme"):
        print(result.clause, result.outcome, result.reason)

Core code: no pytest. `harness.testkit_conformance` turns the results into pytest tests.
"""

from harness.conformance.kit import (
    CLAUSES,
    Clause,
    ClauseFailed,
    ClauseResult,
    Context,
    NotApplicable,
    Outcome,
    check_endpoint,
    clause,
    clause_names,
    run_conformance,
)

__all__ = [
    "CLAUSES",
    "Clause",
    "ClauseFailed",
    "ClauseResult",
    "Context",
    "NotApplicable",
    "Outcome",
    "check_endpoint",
    "clause",
    "clause_names",
    "run_conformance",
]
