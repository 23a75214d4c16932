"""The defect matrices' shared runner: suites in a pytest subprocess, read back from JUnit XML."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
# Short keepalives, so a dead peer is noticed within seconds, inside the suite budget.
CONFIG = "[harness]\nkeepalive_v1 = 2\nkeepalive_v2 = 1\n"
WORKERS = 2  # the machine has two cores


@dataclass
class Run:
    """One pytest subprocess: `suites` against a clean service (defect None) or a seeded defect."""

    defect: str | None
    suites: list[str]
    args: list[str] = field(default_factory=list)  # this run's own extra pytest arguments
    returncode: int = -1
    seconds: float = 0.0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # an assertion failed (call phase)
    errors: list[str] = field(default_factory=list)  # setup/teardown errors
    skipped: int = 0
    output: str = ""

    @property
    def label(self) -> str:
        return self.defect or "clean"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


R = TypeVar("R", bound=Run)


def _test_id(case: ET.Element) -> str:
    module = case.get("classname", "").replace(".", "/")
    return f"{module}.py::{case.get('name', '?')}"


def execute(run: R, *, junit: Path, config: Path, timeout_s: float, extra_args: Sequence[str],
            drop_env: tuple[str, ...]) -> R:
    """Run `run`'s suites once (environment variables starting with `drop_env` left out)."""
    cmd = [
        sys.executable, "-m", "pytest", *run.suites, "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}", f"--im-config={config}", *extra_args, *run.args,
    ]
    if run.defect:
        cmd += ["--im-defect", run.defect]
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)}
    start = time.monotonic()
    # Its own session, so a timeout kills the whole group: pytest and the services it started.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=units(timeout_s))
        run.returncode, run.output = proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        run.output = f"timed out after {units(timeout_s):.0f}s\n{out}"
    run.seconds = time.monotonic() - start
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            if case.find("failure") is not None:
                run.failed.append(_test_id(case))
            elif case.find("error") is not None:
                run.errors.append(_test_id(case))
            elif case.find("skipped") is not None:
                run.skipped += 1
            else:
                run.passed.append(_test_id(case))
    return run


def run_all(runs: list[R], workdir: Path, *, key: Callable[[R], str], timeout_s: float,
            extra_args: Sequence[str] = (), drop_env: tuple[str, ...]) -> dict[str, R]:
    """Execute `runs` in order, `WORKERS` at a time, with the short-keepalive config; key -> Run."""
    config = workdir / "im-harness.toml"
    config.write_text(CONFIG)

    def one(run: R) -> R:
        junit = workdir / f"{key(run).replace(':', '-')}.xml"
        return execute(run, junit=junit, config=config, timeout_s=timeout_s,
                       extra_args=extra_args, drop_env=drop_env)

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(one, runs))
    return {key(r): r for r in done}


def publish(text: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Write `text` to reports/`name` and show it on the terminal past pytest's capture."""
    out = ROOT / "reports" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    with capsys.disabled():
        print("\n" + text)
