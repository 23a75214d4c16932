"""Secret redaction: configured secret values never reach a results file, a log or a report."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import HarnessConfig
    from harness.session import HarnessSession

MASK = "<redacted>"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words


class Redactor:
    """Replaces every known secret value with `MASK`; secrets can be added as they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def __repr__(self) -> str:
        return f"<Redactor {len(self._secrets)} secret(s)>"

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, value: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return value

    def data(self, value: bytes) -> bytes:
        for secret in sorted(self._secrets, key=len, reverse=True):
            value = value.replace(secret.encode(), MASK.encode())
        return value

    def tree_file(self, path: str | Path) -> bool:
        """Redact one file in place; True when it held a secret."""
        file = Path(path)
        raw = file.read_bytes()
        clean = self.data(raw)
        if clean == raw:
            return False
        tmp = file.with_name(file.name + ".redacting")
        tmp.write_bytes(clean)
        os.replace(tmp, file)
        return True

    def tree(self, root: str | Path) -> list[Path]:
        """Redact every file under `root` in place; returns the files that held a secret."""
        if not self._secrets:
            return []
        return [p for p in sorted(Path(root).rglob("*")) if p.is_file() and self.tree_file(p)]


def config_secrets(config: HarnessConfig, environ: dict[str, str] | None = None) -> set[str]:
    """The values of every secret variable the configuration names that is set."""
    env = os.environ if environ is None else environ
    return {
        env[var]
        for ep in config.endpoints.values()
        for var in ep.secrets_env.values()
        if env.get(var)
    }


def session_secrets(session: HarnessSession) -> set[str]:
    """Secrets a running session holds: resolved settings, embedded app keys, admin tokens."""
    found = config_secrets(session.config)
    for name in session.names:
        try:
            found.update(session.settings(name).secrets.values())
        except Exception:  # not started yet: nothing resolved for it
            continue
    for server in session.servers.values():
        found.update(server.secrets())
    return {s for s in found if isinstance(s, str)}
