"""`new-adapter`: the scaffold writes an installable package whose tests run the kit."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.cli_adapter import EXIT_OK, EXIT_USAGE, new_adapter
from harness.conformance import clause_names
from harness.errors import ConfigError
from harness.scaffold import names_for, render, write_package
from harness.timing import units

ROOT = Path(__file__).resolve().parent.parent  # this checkout: its `harness` is the one tested


def test_the_package_has_both_entry_points_and_every_part(tmp_path: Path) -> None:
    target = write_package("acme-chat", tmp_path)
    assert target == tmp_path / "im-harness-acme-chat"
    files = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml", "README.md", "src/im_harness_acme_chat/__init__.py",
        "src/im_harness_acme_chat/adapter.py", "src/im_harness_acme_chat/server.py",
        "tests/test_conformance.py", "tests/test_package.py",
    }
    project = tomllib.loads((target / "pyproject.toml").read_text())["project"]
    assert project["name"] == "im-harness-acme-chat"
    assert project["entry-points"]["im_harness.adapters"] == {
        "acme-chat": "im_harness_acme_chat.adapter:AcmeChatAdapter"}
    assert project["entry-points"]["im_harness.servers"] == {
        "acme-chat": "im_harness_acme_chat.server:AcmeChatServer"}
    adapter = (target / "src/im_harness_acme_chat/adapter.py").read_text()
    assert 'extra="forbid"' in adapter
    assert "Options: ClassVar[type[BaseModel]] = AcmeChatOptions" in adapter
    for source in files:
        if source.endswith(".py"):
            compile((target / source).read_text(), source, "exec")  # valid Python, no leftovers
    assert "$" not in "".join(render("acme-chat").values())  # every placeholder filled
    assert 'app_key_env = "ACME_CHAT_APP_KEY"' in (target / "README.md").read_text()


def test_the_server_stub_meets_the_server_protocol(tmp_path: Path) -> None:
    """The stub is an EmbeddedServer, so an url-less endpoint gets its clear error."""
    import importlib.util

    from harness.servers import EmbeddedServer, ServerRequest

    target = write_package("acme", tmp_path)
    path = target / "src/im_harness_acme/server.py"
    spec = importlib.util.spec_from_file_location("acme_server_stub", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wanted = {n for n in vars(EmbeddedServer) if not n.startswith("_")}
    wanted |= set(EmbeddedServer.__annotations__)
    missing = sorted(n for n in wanted if not hasattr(module.AcmeServer, n))
    assert not missing, f"the server stub lacks {missing}"
    with pytest.raises(ConfigError, match="external only: set url"):
        module.AcmeServer.for_request(ServerRequest(endpoint="new", adapter="acme"))


@pytest.mark.parametrize("name", ["Acme", "acme chat", "-acme", "acme--x", "9acme", ""])
def test_an_unusable_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a usable adapter name"):
        names_for(name)


def test_an_existing_package_is_never_overwritten(tmp_path: Path) -> None:
    target = write_package("acme", tmp_path)
    (target / "README.md").write_text("my notes")
    with pytest.raises(ConfigError, match="exists and is not empty; pass another --dir"):
        write_package("acme", tmp_path)
    assert (target / "README.md").read_text() == "my notes"


def test_the_new_adapter_command(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("new-adapter")(new_adapter)
    app.command("other")(lambda: None)  # two commands, as in harness/cli.py: NAME is an argument
    runner = CliRunner()
    done = runner.invoke(app, ["new-adapter", "acme", "--dir", str(tmp_path)])
    assert done.exit_code == EXIT_OK, done.output
    assert f"created {tmp_path / 'im-harness-acme'}" in done.output
    again = runner.invoke(app, ["new-adapter", "acme", "--dir", str(tmp_path)])
    assert again.exit_code == EXIT_USAGE, again.output
    assert again.output.strip().count("\n") == 0
    assert "exists and is not empty" in again.output
    bad = runner.invoke(app, ["new-adapter", "Acme!", "--dir", str(tmp_path)])
    assert bad.exit_code == EXIT_USAGE
    assert "new-adapter 'Acme!': not a usable adapter name" in bad.output


def _run(args: list[str], *, cwd: Path, env: dict[str, str], limit: float
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=units(limit), check=False)


@pytest.mark.slow
def test_the_generated_package_installs_and_its_tests_run_the_kit(tmp_path: Path) -> None:
    """Install `im-harness-acme` into a throwaway venv and run its own tests there.

    Why this route: installing into the current venv (`pip install -e`, uninstall at the end)
    would show the `acme` entry points to every other process sharing that venv while the
    test runs, and leave them behind if it is killed. A fresh venv with all of its
    dependencies would need the network. So: `python -m venv --without-pip` under tmp_path
    (well under a second), a .pth that adds this interpreter's site-packages (im-harness and
    its dependencies, nothing copied), and pip of this interpreter installing the package
    into it (`pip --python`, `--no-deps --no-index --no-build-isolation`: offline, bounded).
    Everything lives under tmp_path; the current venv never changes.
    """
    package = write_package("acme", tmp_path / "src")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path,
         env=dict(os.environ), limit=60).check_returncode()
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=tmp_path, env=dict(os.environ), limit=30).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_im_harness_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("IM_HARNESS_CONFIG", "IM_HARNESS_ENDPOINT", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ROOT)
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", "--no-build-isolation", str(package)],
                   cwd=tmp_path, env=env, limit=120)
    assert install.returncode == 0, install.stdout + install.stderr
    assert not any(d.metadata["Name"] == "im-harness-acme" for d in distributions())

    pytest_cmd = [str(python), "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-n", "0",
                  "tests"]
    done = _run(pytest_cmd, cwd=package, env=env, limit=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    n = len(clause_names())
    assert f"5 passed, {n} skipped" in out, out
    assert f"SKIPPED [{n}] " in out, out
    assert "no endpoint configured: IM_HARNESS_CONFIG is unset" in out, out

    # With an endpoint configured the kit runs, and the stub fails where it is unimplemented.
    config = tmp_path / "acme.toml"
    config.write_text('[endpoints.acme]\nadapter = "acme"\nurl = "https://example.invalid"\n')
    configured = _run([*pytest_cmd[:-1], "tests/test_conformance.py"], cwd=package,
                      env={**env, "IM_HARNESS_CONFIG": str(config)}, limit=120)
    out = configured.stdout + configured.stderr
    assert configured.returncode == 1, out
    assert "FAILED tests/test_conformance.py::test_conformance[errors.unauthorized]" in out
    assert "Adapter.provision_user is not implemented yet" in out, out
