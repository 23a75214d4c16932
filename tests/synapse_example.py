"""examples/synapse.toml on SQLite, for the Synapse tests that stay on the launcher's default."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synapse.toml"


def sqlite_example(folder: Path) -> Path:
    """A copy of the shipped example with `database = "sqlite"` for old and new, in `folder`."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text.count('database = "postgres"') == 2, "examples/synapse.toml changed shape"
    text = text.replace('database = "postgres"', 'database = "sqlite"')
    budgets = EXAMPLE.parent / "synapse-budgets"
    text = text.replace('budgets_dir = "synapse-budgets"', f'budgets_dir = "{budgets}"')
    copy = folder / "synapse-sqlite.toml"
    copy.write_text(text, encoding="utf-8")
    return copy
