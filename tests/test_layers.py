"""The import rules of ARCHITECTURE.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"
FRAMEWORKS = {"pytest", "_pytest", "pytest_asyncio", "locust", "gevent", "allure", "allure_commons"}
# The thin framework layers: the only modules allowed to import a test or load framework.
FRAMEWORK_LAYERS = {
    "harness/pytest_plugin.py",  # pytest
    "harness/pytest_allure.py",  # pytest + allure-pytest (the report labels)
    "harness/load/bridge.py",  # gevent/locust
}
SERVICE = {"server.py", "state.py", "store.py", "api.py", "__main__.py", "tiers.py", "defects.py"}


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports (absolute names; relative ones resolved by package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> list[Path]:
    return sorted(HARNESS.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_framework(path: Path) -> None:
    """Only the pytest plugin and the locust bridge may import a test or load framework."""
    rel = str(path.relative_to(ROOT))
    if rel in FRAMEWORK_LAYERS:
        return
    bad = {name for name in imports_of(path) if name.split(".")[0] in FRAMEWORKS}
    assert not bad, f"{rel} imports {sorted(bad)}; only {sorted(FRAMEWORK_LAYERS)} may"


@pytest.mark.parametrize("name", ["contract.py", "errors.py"])
def test_contract_and_errors_stand_alone(name: str) -> None:
    """The contract and the error taxonomy depend on nothing else in the harness."""
    harness_imports = {n for n in imports_of(HARNESS / name) if n.split(".")[0] == "harness"}
    assert not harness_imports, f"harness/{name} imports {sorted(harness_imports)}"


def test_service_and_adapters_share_only_the_wire() -> None:
    """The service never imports an adapter, and adapters never import the service's modules."""
    problems = []
    for path in (HARNESS / "reference").glob("*.py"):
        if path.name in SERVICE:
            forbidden = ("harness.adapters", "harness.session")
            bad = {n for n in imports_of(path) if n.startswith(forbidden)}
            if bad:
                problems.append(f"{path.name} imports {sorted(bad)}")
    service_modules = {f"harness.reference.{name.removesuffix('.py')}" for name in SERVICE}
    for path in (HARNESS / "adapters").glob("*.py"):
        bad = imports_of(path) & service_modules
        if bad:
            problems.append(f"adapters/{path.name} imports {sorted(bad)}")
    assert not problems, "; ".join(problems)


def test_suites_know_no_wire_format() -> None:
    """Suites reach endpoints through the contract only: no websockets, aiohttp, service."""
    problems = []
    for path in sorted((ROOT / "suites").glob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in {"websockets", "aiohttp"} or name.startswith("harness.reference.server"):
                problems.append(f"{path.name} imports {name}")
    assert not problems, "; ".join(problems)
