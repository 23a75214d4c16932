"""`[harness] budgets_dir`: a config names its own load budgets, relative to the config file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import ConfigError
from harness.load.budgets import load_budgets
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("server", ["synapse", "prosody"])
def test_a_server_example_names_its_budgets_next_to_it(server: str) -> None:
    config = load_config(ROOT / "examples" / f"{server}.toml")
    folder = config.budgets_dir()
    assert folder == str(ROOT / "examples" / f"{server}-budgets")
    for scenario in ("chat", "group"):
        budgets = load_budgets(Path(folder) / f"{scenario}.toml")
        assert budgets.scenario == scenario
        assert budgets.limits["max_error_ratio"] == 0  # a clean run on a real server has no errors


def test_a_relative_folder_is_read_from_the_config_files_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine").mkdir()
    file = tmp_path / "conf" / "im-harness.toml"
    file.write_text('[harness]\nbudgets_dir = "mine"\n')
    monkeypatch.chdir(tmp_path)  # not where the config is
    assert load_config(file).budgets_dir() == str(tmp_path / "conf" / "mine")
    assert load_config().budgets_dir() is None  # nothing configured: the packaged budgets


def test_a_missing_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    file = tmp_path / "im-harness.toml"
    file.write_text('[harness]\nbudgets_dir = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"im-harness.toml: harness.budgets_dir = 'nowhere' is "
                                          r"not a folder .*relative to the config file"):
        load_config(file).budgets_dir()


def test_the_load_command_refuses_it_in_one_line_before_any_work(tmp_path: Path) -> None:
    file = tmp_path / "im-harness.toml"
    file.write_text('[harness]\nbudgets_dir = "nowhere"\n')
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "load", "-c", str(file), "--reports",
         str(tmp_path / "reports")],
        cwd=tmp_path, capture_output=True, text=True, timeout=units(60), check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "harness.budgets_dir = 'nowhere' is not a folder" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "reports").exists()  # validated before doing work
