"""The conformance kit as pytest tests: one test id per clause (a framework layer: pytest).

In an adapter package's tests::

    from harness.testkit_conformance import conformance_test

    test_conformance = conformance_test()  # IM_HARNESS_CONFIG / IM_HARNESS_ENDPOINT

The kit runs once per process, at the first clause's test; a clause that fails fails its test
with the kit's reason, a clause that is not applicable skips with it. Without a configuration
every test skips, naming the variable to set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from harness.config import load_config
from harness.conformance import ClauseResult, Outcome, clause_names, run_conformance
from harness.errors import HarnessError

CONFIG_ENV = "IM_HARNESS_CONFIG"
ENDPOINT_ENV = "IM_HARNESS_ENDPOINT"


def conformance_test(
    config_path: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    *,
    clauses: Sequence[str] | None = None,
) -> Callable[[str], None]:
    """A test function parametrized over the kit's clauses, to assign to a `test_*` name.

    `config_path` / `endpoint` default to `$IM_HARNESS_CONFIG` / `$IM_HARNESS_ENDPOINT`, read
    when the tests run. Example: ``test_acme = conformance_test("im-harness.toml", "acme")``
    """
    names = clause_names() if clauses is None else list(clauses)
    cache: dict[str, dict[str, ClauseResult] | str] = {}

    def run(path: str, name: str) -> dict[str, ClauseResult] | str:
        key = f"{path}\0{name}"
        if key not in cache:
            try:
                results = run_conformance(load_config(Path(path)), name, clauses=names)
                cache[key] = {r.clause: r for r in results}
            except HarnessError as exc:
                cache[key] = f"conformance kit could not run on endpoint {name!r}: {exc}"
        return cache[key]

    @pytest.mark.parametrize("clause", names)
    def test_conformance(clause: str) -> None:
        path = str(config_path) if config_path is not None else os.environ.get(CONFIG_ENV, "")
        name = endpoint or os.environ.get(ENDPOINT_ENV, "")
        if not path:
            pytest.skip(f"no endpoint configured: {CONFIG_ENV} is unset; set it to an "
                        "im-harness.toml naming the endpoint to check")
        if not name:
            pytest.skip(f"no endpoint named: {ENDPOINT_ENV} is unset; set it to the endpoint "
                        f"in {path} to check")
        outcome = run(path, name)
        if isinstance(outcome, str):
            pytest.fail(outcome, pytrace=False)
        result = outcome[clause]
        if result.outcome is Outcome.NOT_APPLICABLE:
            pytest.skip(f"{clause}: {result.reason}")
        if result.outcome is Outcome.FAIL:
            pytest.fail(f"{clause}: {result.reason}", pytrace=False)

    return test_conformance


__all__ = ["CONFIG_ENV", "ENDPOINT_ENV", "conformance_test"]
