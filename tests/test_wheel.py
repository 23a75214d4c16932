"""The built wheel, installed alone in a fresh venv, signs off from an empty folder.

What a team does: `pip install im-harness[load]` into its own repository and run `im-harness`
there, with no checkout of this project anywhere on the path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.report.allure import ALLURE_ENV
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "node_modules", "reports", "build", "dist", "__pycache__",
        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
RECALL_ONLINE = "test_recall_reaches_online_peer_and_history"


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=units(timeout), check=False)
    assert done.returncode == 0 or not check, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _uv() -> list[str]:
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(uv).is_file():
        return [uv]
    return [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the repository with the wheel (and the load extra) installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"  # build from a copy: no build/ or egg-info left in the checkout
    shutil.copytree(ROOT, source, ignore=lambda _d, names: [n for n in names if n in SKIP
                                                             or n.endswith(".egg-info")])
    dist = tmp / "dist"
    # This venv's setuptools when it has one (fast, offline); else pip fetches it to build.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
          "-w", str(dist), str(source)], cwd=tmp)
    [wheel] = dist.glob("im_harness-*.whl")
    venv = tmp / "venv"
    started = time.monotonic()
    _run([*_uv(), "venv", "-q", "--python", sys.executable, str(venv)], cwd=tmp)
    _run([*_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
          f"im-harness[load] @ {wheel.as_uri()}"], cwd=tmp, timeout=600)
    print(f"installed the wheel and its dependencies in {time.monotonic() - started:.0f}s")
    return venv


def _env(venv: Path) -> dict[str, str]:
    node = shutil.which("node")
    path = [str(venv / "bin"), *([os.path.dirname(node)] if node else []), "/usr/bin", "/bin"]
    keep = {k: v for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PATH"} and not k.startswith("PYTEST")}
    return {**keep, "PATH": os.pathsep.join(path), "COLUMNS": "200",
            ALLURE_ENV: str(ROOT)}  # the repository's node_modules has the Allure CLI


@pytest.mark.slow
def test_the_installed_wheel_carries_its_suites_locustfile_and_budgets(installed: Path,
                                                                       tmp_path: Path) -> None:
    probe = ("import json, harness, harness.suites, harness.loadtests\n"
             "from importlib.resources import files\n"
             "from harness.load.scenarios import scenarios\n"
             "print(json.dumps({'harness': harness.__file__,"
             " 'locustfile': str(files('harness.loadtests') / 'locustfile.py'),"
             " 'protocol': str(files('harness.reference') / 'PROTOCOL.md'),"
             " 'budgets': {n: str(scenarios.get(n).budgets) for n in scenarios}}))")
    done = _run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path,
                env=_env(installed))
    found = json.loads(done.stdout)
    venv = installed.resolve()
    assert Path(found["harness"]).resolve().is_relative_to(venv), found
    for file in [found["locustfile"], found["protocol"], *found["budgets"].values()]:
        assert Path(file).resolve().is_relative_to(venv), file
        assert Path(file).is_file(), file
    assert {"chat", "group"} <= set(found["budgets"])


@pytest.mark.slow
def test_signoff_from_an_empty_folder_is_go_with_a_report(installed: Path,
                                                          tmp_path: Path) -> None:
    if shutil.which("node") is None or not (ROOT / "node_modules" / "allure").is_dir():
        pytest.fail("the HTML report needs node and `npm ci` in the project root")
    done = _run([str(installed / "bin" / "im-harness"), "signoff", "-k", RECALL_ONLINE,
                 "--scenario", "chat", "--load-time", "2s", "--users", "2"],
                cwd=tmp_path, env=_env(installed), timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = tmp_path / "reports"
    doc = json.loads((reports / "verdict.json").read_text(encoding="utf-8"))
    assert doc["verdict"] == "GO", doc["reasons"]
    assert doc["parity"]["recall"]["new"]["passed"] == 1
    assert doc["load"][0]["within_budget"]
    assert (reports / "allure-report" / "index.html").is_file()
    assert doc["report"] == str((reports / "allure-report" / "index.html").resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # nothing else written
