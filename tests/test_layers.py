"""The import rules of ARCHITECTURE.md, checked on the source, transitively.

Every module of the installed package is read as text (suites/ and loadtests/ under their
installed names `harness.suites` and `harness.loadtests`); each import, at module level or inside
a function, is an edge. The rules are the ones ARCHITECTURE.md writes down.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each installed package's files live in this checkout (setup.py maps the same).
PACKAGE_DIRS = {
    "harness": ROOT / "harness",
    "harness.suites": ROOT / "suites",
    "harness.loadtests": ROOT / "loadtests",
}
FRAMEWORKS = {
    "pytest", "_pytest", "pytest_asyncio", "locust", "gevent", "allure", "allure_commons",
    "hypothesis",
}
# The thin framework layers: the only modules allowed to import a test or load framework.
FRAMEWORK_LAYERS = {
    "harness.pytest_plugin",  # pytest
    "harness.pytest_allure",  # pytest + allure-pytest (the report labels)
    "harness.testkit",  # pytest: the suites' one helper module
    "harness.testkit_conformance",  # pytest: the conformance kit as tests
    "harness.properties",  # hypothesis: profiles and the replaying runner
    "harness.faults.world",  # hypothesis: the property tests' state machine
    "harness.load.bridge",  # gevent/locust
    "harness.load.user",  # locust: the IMUser a team subclasses
}
FRAMEWORK_PACKAGES = ("harness.suites", "harness.loadtests")
# Plugins shipped inside the package: adapters and the servers they can start. The core reaches
# them only through the registries (entry points), never by import.
PLUGIN_PACKAGES = ("harness.adapters", "harness.reference", "harness.matrix", "harness.xmpp")
# The harness-side handles of the reference service (everything else in it is the service).
REFERENCE_HANDLES = {
    "harness.reference", "harness.reference.launcher", "harness.reference.admin",
    "harness.reference.embedded",
}
STANDALONE = ("harness.contract", "harness.errors")
SUITE_SURFACE = {"harness.contract", "harness.errors", "harness.timing", "harness.testkit"}
# What a third-party plugin may use (harness.xmpp is written as one): the contract, the errors,
# the time unit, the process and server registries, and the adapters' shared base.
PLUGIN_SURFACE = {
    "harness", "harness.contract", "harness.errors", "harness.timing", "harness.procs",
    "harness.managed", "harness.servers", "harness.registry", "harness.backoff", "harness.adapters",
    "harness.adapters.base",
}


def _module_name(package: str, base: Path, path: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package by its installed dotted name."""
    found: dict[str, Path] = {}
    for package, base in PACKAGE_DIRS.items():
        for path in sorted(base.rglob("*.py")):
            if "templates" in path.relative_to(base).parts:
                continue  # scaffold templates are text the CLI writes out, not modules
            name = _module_name(package, base, path)
            if package == "harness" and name.split(".")[1:2] in (["suites"], ["loadtests"]):
                continue
            found[name] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@functools.cache
def imports_of(name: str) -> frozenset[str]:
    """Every module name `name` imports, anywhere in it (relative imports resolved)."""
    path = modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from harness.faults import world` imports a module, not a name.
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules())
    return frozenset(found)


def harness_edges(name: str) -> set[str]:
    """The package's own modules that `name` imports (a dotted import also runs its parents)."""
    out: set[str] = set()
    for imported in imports_of(name):
        parts = imported.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in modules() and candidate != name:
                out.add(candidate)
    return out


def reachable(name: str) -> dict[str, list[str]]:
    """Every module of the package `name` imports transitively, with one import path to it."""
    paths = {name: [name]}
    todo = [name]
    while todo:
        current = todo.pop()
        for nxt in sorted(harness_edges(current)):
            if nxt not in paths:
                paths[nxt] = [*paths[current], nxt]
                todo.append(nxt)
    del paths[name]
    return paths


def _in(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def is_framework_layer(name: str) -> bool:
    return name in FRAMEWORK_LAYERS or _in(name, FRAMEWORK_PACKAGES)


def is_plugin(name: str) -> bool:
    return _in(name, PLUGIN_PACKAGES)


def is_core(name: str) -> bool:
    return not (is_framework_layer(name) or is_plugin(name))


def is_service(name: str) -> bool:
    return _in(name, ["harness.reference"]) and name not in REFERENCE_HANDLES


def _ids(names: Iterable[str]) -> list[str]:
    return sorted(names)


def test_the_map_of_the_package_is_complete() -> None:
    """The rules see every layer: core, framework layers, plugins, the service, the suites."""
    names = modules()
    assert "harness.session" in names
    assert "harness.suites.test_chat" in names
    assert any(is_service(n) for n in names)
    assert any(_in(n, ["harness.adapters"]) for n in names)
    missing = [n for n in FRAMEWORK_LAYERS if n not in names]
    assert not missing, f"FRAMEWORK_LAYERS names modules that do not exist: {missing}"


@pytest.mark.parametrize("name", _ids(modules()))
def test_only_framework_layers_import_a_framework(name: str) -> None:
    """pytest, hypothesis, locust, gevent and allure are imported only by the thin layers."""
    if is_framework_layer(name):
        return
    bad = {n for n in imports_of(name) if n.split(".")[0] in FRAMEWORKS}
    assert not bad, f"{name} imports {sorted(bad)}; only {sorted(FRAMEWORK_LAYERS)} may"


@pytest.mark.parametrize("name", _ids(n for n in modules() if is_core(n)))
def test_core_reaches_no_server_adapter_or_framework(name: str) -> None:
    """The core names no server: not by import, not through another module (transitively)."""
    for target, path in reachable(name).items():
        assert not is_plugin(target), (
            f"{name} reaches {target} ({' -> '.join(path)}); the core finds adapters and servers "
            "through harness.registry / harness.servers only"
        )
        assert not is_framework_layer(target), (
            f"{name} reaches the framework layer {target} ({' -> '.join(path)})"
        )


@pytest.mark.parametrize("name", STANDALONE)
def test_contract_and_errors_stand_alone(name: str) -> None:
    """The contract and the error taxonomy depend on nothing else in the harness."""
    assert not harness_edges(name), f"{name} imports {sorted(harness_edges(name))}"


@pytest.mark.parametrize("name", _ids(n for n in modules() if is_service(n)))
def test_the_service_is_a_program_of_its_own(name: str) -> None:
    """The reference service imports nothing of the harness but its own modules."""
    # Importing harness.reference.x runs the package inits too: they must stay empty of imports.
    inits = {"harness", "harness.reference"}
    outside = {t: p for t, p in reachable(name).items() if not (is_service(t) or t in inits)}
    assert not outside, (
        f"{name} reaches " + "; ".join(f"{t} ({' -> '.join(p)})" for t, p in outside.items())
    )


@pytest.mark.parametrize("name", _ids(n for n in modules() if _in(n, ["harness.adapters"])))
def test_adapters_share_only_the_wire_with_the_service(name: str) -> None:
    """Adapters never import the service's modules (only its harness-side admin handle)."""
    bad = {t for t in reachable(name) if is_service(t)}
    assert not bad, f"{name} reaches the service modules {sorted(bad)}"


@pytest.mark.parametrize("name", _ids(n for n in modules() if _in(n, ["harness.suites"])))
def test_suites_import_only_the_public_surface(name: str) -> None:
    """Suites reach endpoints through the contract, errors, timing and harness.testkit only."""
    own = {n for n in harness_edges(name) if not _in(n, ["harness.suites"])}
    bad = own - SUITE_SURFACE - {"harness"}
    assert not bad, f"{name} imports {sorted(bad)}; suites may import {sorted(SUITE_SURFACE)}"
    wire = {n for n in imports_of(name) if n.split(".")[0] in {"websockets", "aiohttp"}}
    assert not wire, f"{name} imports the wire libraries {sorted(wire)}"


def beyond_plugin_surface(name: str, own: str) -> set[str]:
    """The harness modules `name` imports that are neither in package `own` nor public."""
    return {n for n in harness_edges(name) if not _in(n, [own])} - PLUGIN_SURFACE


@pytest.mark.parametrize("name", _ids(n for n in modules() if _in(n, ["harness.xmpp"])))
def test_xmpp_uses_only_the_public_plugin_surface(name: str) -> None:
    """harness.xmpp is built as a third party would build it: only the public plugin surface."""
    bad = beyond_plugin_surface(name, "harness.xmpp")
    assert not bad, f"{name} imports {sorted(bad)}; a plugin may import {sorted(PLUGIN_SURFACE)}"


def test_the_layer_rules_can_fail() -> None:
    """The transitive walk sees through a chain of imports (a guard on the test itself)."""
    assert "harness.contract" in reachable("harness.session")
    assert any(is_plugin(t) for t in reachable("harness.reference.embedded"))
    assert beyond_plugin_surface("harness.matrix.embedded", "harness.xmpp")  # imports matrix
