"""`im-harness new-adapter NAME`: an installable adapter package from packaged templates.

The templates (`templates/**/*.tmpl`, package data) are `string.Template` texts with the
placeholders `$name` (registry name), `$dist` (`im-harness-NAME`), `$module`
(`im_harness_NAME`), `$Class` (`Name`, for class names) and `$NAME` (`NAME`, for
environment variables).
"""

from __future__ import annotations

import re
import string
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from harness.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
TEMPLATE_SUFFIX = ".tmpl"
# Where each template folder lands in the new package ("package" is the import package).
LAYOUT = {"package": "src/{module}", "tests": "tests", "": ""}


def names_for(name: str) -> dict[str, str]:
    """The placeholder values for adapter `name`; a `ConfigError` when it is not usable."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"new-adapter {name!r}: not a usable adapter name; use lower-case letters and "
            "digits, words joined by '-' or '_', e.g. acme or acme-chat"
        )
    words = re.split(r"[-_]", name)
    return {
        "name": name,
        "dist": f"im-harness-{name}",
        "module": "im_harness_" + "_".join(words),
        "Class": "".join(w.capitalize() for w in words),
        "NAME": "_".join(words).upper(),
    }


def _templates(root: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    found = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            found += _templates(entry, rel + "/")
        elif entry.name.endswith(TEMPLATE_SUFFIX):
            found.append((rel, entry))
    return found


def render(name: str) -> dict[str, str]:
    """The new package's files for adapter `name`: relative path -> text."""
    values = names_for(name)
    out: dict[str, str] = {}
    for rel, entry in _templates(files("harness.scaffold") / "templates"):
        folder, _, leaf = rel.rpartition("/")
        dest_folder = LAYOUT.get(folder, folder).format(**values)
        dest = f"{dest_folder}/{leaf}" if dest_folder else leaf
        out[dest.removesuffix(TEMPLATE_SUFFIX)] = string.Template(
            entry.read_text(encoding="utf-8")).substitute(values)
    return out


def write_package(name: str, directory: Path | str) -> Path:
    """Write `im-harness-NAME/` under `directory` and return its path; never overwrites."""
    files_out = render(name)
    target = Path(directory) / names_for(name)["dist"]
    if target.exists() and any(target.iterdir()):
        raise ConfigError(
            f"new-adapter {name!r}: {target} exists and is not empty; pass another --dir or "
            "remove it"
        )
    for rel, text in files_out.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


__all__ = ["names_for", "render", "write_package"]
