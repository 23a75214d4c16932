"""Allure Report 3 without Java: result files, environment, executor, config and generation.

Allure's result format is plain JSON, so the core writes it directly (no allure import); the
HTML comes from the npm package `allure` pinned in package.json (`npm ci`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report.redact import Redactor
from harness.report.results import FAILURE_LABEL

GENERATED_LABEL = "im_generated"  # marks results written here (load, verdict): not suite tests
ALLURE_ENV = "IM_HARNESS_ALLURE"  # the allure script, or a folder whose node_modules has it
NODE_HINT = (
    "Node.js 20+ and the `allure` npm package (Allure Report 3) are needed for the HTML report: "
    "install Node.js (Debian: `apt-get install -y nodejs npm`), then run `npm install allure` "
    "(or `npm ci` in a checkout of im-harness) in this folder or a parent, or set "
    f"{ALLURE_ENV} to the folder holding that node_modules"
)

# Allure 3 reads categories from its config file only (a categories.json in results is ignored).
CATEGORIES: list[dict[str, Any]] = [
    {"id": "product-regression", "name": "Product regression",
     "matchers": [{"statuses": ["failed"], "labels": {FAILURE_LABEL: "^product$"}}],
     "groupBy": [{"label": "epic"}], "expand": True},
    {"id": "budget-exceeded", "name": "Budget exceeded",
     "matchers": [{"statuses": ["failed"], "labels": {FAILURE_LABEL: "^budget$"}}]},
    {"id": "harness-error", "name": "Harness or infrastructure error",
     "matchers": [{"statuses": ["broken", "failed"], "labels": {FAILURE_LABEL: "^harness$"}},
                  {"statuses": ["broken"]}]},
    {"id": "not-supported", "name": "Capability not supported",
     "matchers": [{"statuses": ["skipped"], "labels": {FAILURE_LABEL: "^unsupported$"}}],
     "groupBy": [{"label": "im_endpoint"}]},
]


@dataclass
class Attachment:
    """A file to attach to a result."""

    name: str
    body: bytes
    mime: str = "text/plain"
    ext: str = "txt"


@dataclass
class Result:
    """One Allure test result written by the harness itself (a load scenario, the verdict)."""

    name: str
    full_name: str
    status: str  # passed | failed | broken | skipped
    labels: list[tuple[str, str]] = field(default_factory=list)
    parameters: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""
    trace: str = ""
    description: str = ""  # markdown
    description_html: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    start_ms: int = 0
    stop_ms: int = 0


def write_result(results_dir: str | Path, result: Result, redactor: Redactor | None = None) -> Path:
    """Write `result` and its attachments into an Allure results directory."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    clean = redactor.text if redactor else (lambda s: s)
    attachments = []
    for att in result.attachments:
        source = f"{uuid.uuid4()}-attachment.{att.ext}"
        body = redactor.data(att.body) if redactor else att.body
        (folder / source).write_bytes(body)
        attachments.append({"name": att.name, "source": source, "type": att.mime})
    now = int(time.time() * 1000)
    data: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "historyId": result.full_name,
        "testCaseId": result.full_name,
        "fullName": result.full_name,
        "name": clean(result.name),
        "status": result.status,
        "stage": "finished",
        "start": result.start_ms or now,
        "stop": result.stop_ms or now,
        "labels": [{"name": k, "value": clean(v)} for k, v in
                   [*result.labels, (GENERATED_LABEL, "true")]],
        "parameters": [{"name": k, "value": clean(v)} for k, v in result.parameters],
        "attachments": attachments,
        "steps": [],
    }
    if result.message or result.trace:
        data["statusDetails"] = {"message": clean(result.message), "trace": clean(result.trace)}
    if result.description:
        data["description"] = clean(result.description)
    if result.description_html:
        data["descriptionHtml"] = clean(result.description_html)
    path = folder / f"{data['uuid']}-result.json"
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _escape_property(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", " ").replace("=", "\\=").replace(":", "\\:")


def write_environment(results_dir: str | Path, values: Mapping[str, str]) -> Path:
    """environment.properties: the endpoints, adapters, versions and tiers (never a secret)."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{_escape_property(k).replace(' ', '_')}={_escape_property(str(v))}"
             for k, v in values.items()]
    path = folder / "environment.properties"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def endpoint_environment(endpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Flatten endpoint descriptions (as the allure layer stores them) for the environment."""
    out: dict[str, str] = {}
    for name, info in endpoints.items():
        out[f"{name}.endpoint"] = str(info.get("describe", "?"))
        for key in ("adapter", "url", "protocol", "tier"):
            out[f"{name}.{key}"] = str(info.get(key, "?"))
        out[f"{name}.capabilities"] = ", ".join(info.get("capabilities", ())) or "-"
    return out


def executor(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Allure's executor.json for the CI this runs on, or None outside CI."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS"):
        server = env.get("GITHUB_SERVER_URL", "")
        repo = env.get("GITHUB_REPOSITORY", "")
        run = env.get("GITHUB_RUN_ID", "")
        url = f"{server}/{repo}/actions/runs/{run}" if server and repo and run else ""
        return {"name": "GitHub Actions", "type": "github", "buildOrder": env.get(
            "GITHUB_RUN_NUMBER"), "buildName": f"{env.get('GITHUB_WORKFLOW', '')} "
                f"#{env.get('GITHUB_RUN_NUMBER', '')}".strip(), "buildUrl": url}
    if env.get("GITLAB_CI"):
        return {"name": "GitLab CI", "type": "gitlab", "buildOrder": env.get("CI_PIPELINE_IID"),
                "buildName": f"pipeline {env.get('CI_PIPELINE_IID', '')}",
                "buildUrl": env.get("CI_PIPELINE_URL", "")}
    if env.get("JENKINS_URL"):
        return {"name": "Jenkins", "type": "jenkins", "buildOrder": env.get("BUILD_NUMBER"),
                "buildName": env.get("BUILD_TAG", ""), "buildUrl": env.get("BUILD_URL", "")}
    if env.get("CI"):
        return {"name": "CI", "type": "ci", "buildName": env.get("CI_JOB_ID", "")}
    return None


def write_executor(
    results_dir: str | Path, environ: Mapping[str, str] | None = None
) -> Path | None:
    info = executor(environ)
    if info is None:
        return None
    path = Path(results_dir) / "executor.json"
    path.write_text(json.dumps({k: v for k, v in info.items() if v}), encoding="utf-8")
    return path


def write_config(path: str | Path, *, name: str, output: str | Path, history: str | Path,
                 variables: Mapping[str, str] | None = None) -> Path:
    """The Allure 3 config: single-file awesome report, categories, history file."""
    config = {
        "name": name,
        "output": str(output),
        "historyPath": str(history),
        "categories": {"rules": CATEGORIES},
        "variables": dict(variables or {}),
        "plugins": {"awesome": {"options": {"singleFile": True, "reportName": name,
                                            "groupBy": ["epic", "feature", "story"]}}},
    }
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return file


def _in_node_modules(folder: Path) -> Path | None:
    for candidate in (folder / "node_modules" / "allure" / "cli.js",
                      folder / "node_modules" / ".bin" / "allure"):
        if candidate.exists():
            return candidate.resolve()
    return None


def allure_command(cwd: str | Path | None = None) -> list[str] | None:
    """How to run the Allure 3 CLI, or None when node or the `allure` package is missing.

    Looked up as npx would, never in the harness's own install: $IM_HARNESS_ALLURE (the script
    or a folder with node_modules), then node_modules in `cwd` (default: the current folder) or
    any parent, then `allure` on PATH.
    """
    node = shutil.which("node")
    if node is None:
        return None
    configured = os.environ.get(ALLURE_ENV, "").strip()
    if configured:
        target = Path(configured).expanduser()
        script = _in_node_modules(target) if target.is_dir() else target
        return [node, str(script)] if script is not None and script.is_file() else None
    here = Path(cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        script = _in_node_modules(folder)
        if script is not None:
            return [node, str(script)]
    on_path = shutil.which("allure")
    return [on_path] if on_path else None


class ReportError(Exception):
    """The HTML report could not be generated; the message says why and how to fix it."""


def generate(results_dirs: Sequence[str | Path], output: str | Path, config: str | Path, *,
             timeout: float = 300.0) -> Path:
    """Run `allure generate` into a fresh `output` folder; returns the single HTML file."""
    command = allure_command()
    if command is None:
        raise ReportError(NODE_HINT)
    out = Path(output)
    if out.exists():
        shutil.rmtree(out)  # allure nests a new report inside an existing folder
    cmd = [*command, "generate", "--config", str(Path(config).resolve()), "--output",
           str(out.resolve()), *(str(Path(d).resolve()) for d in results_dirs)]
    env = dict(os.environ, NO_COLOR="1", FORCE_COLOR="0")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ReportError(f"allure generate took over {timeout:g}s; see {out}") from None
    index = out / "index.html"
    if done.returncode != 0 or not index.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [ln.strip() for ln in lines if "error" in ln.lower() and " at " not in ln]
        tail = " | ".join(errors[:2] or lines[-3:])
        raise ReportError(f"allure generate exited {done.returncode}: {tail}")
    return index
