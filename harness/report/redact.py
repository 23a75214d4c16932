"""Secret redaction: configured secret values never reach a results file, a log or a report.

The one masking helper of the harness: `Redactor` masks known secret values and the userinfo of
any URL (`ws://user:pass@host`); `shown(value, key)` is how an error line quotes a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import HarnessConfig
    from harness.session import HarnessSession

MASK = "<redacted>"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words
SECRET_WORDS = ("key", "token", "password", "passwd", "secret", "credential", "credentials")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_secret(key: str) -> bool:
    """Whether a key (config key or environment variable name) names a secret."""
    words = re.split(r"[_\-.]", key.lower())
    return bool(words) and words[-1] in SECRET_WORDS


def looks_env_name(value: str) -> bool:
    """Whether `value` could be an environment variable name (else it may be a pasted secret)."""
    return bool(_ENV_NAME.match(value))


def mask_urls(text: str) -> str:
    """`ws://user:pass@host` -> `ws://<redacted>@host`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def shown(value: object, key: str = "", limit: int = 60) -> str:
    """A value as an error line may quote it: never a secret, never a whole table."""
    if key and (looks_secret(key) or (key.endswith("_env") and not (
            isinstance(value, str) and looks_env_name(value)))):
        return MASK
    if isinstance(value, Mapping):
        return f"a table of {len(value)} key(s)"
    if isinstance(value, list | tuple | set):
        return f"an array of {len(value)} item(s)"
    text = mask_urls(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     names: Iterable[str] = ()) -> Redactor:
        """The values of the environment variables that look secret (or are named in `names`)."""
        env = os.environ if environ is None else environ
        wanted = set(names)
        return cls(v for k, v in env.items() if looks_secret(k) or k in wanted)

    def text(self, value: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return mask_urls(value)

    def line(self, value: str) -> str:
        """`value` masked and folded onto one line (an error line, a log line)."""
        return " ".join(self.text(value).split())

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
