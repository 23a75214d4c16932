"""Endpoint configuration: `im-harness.toml` or `[tool.im-harness]` in pyproject.toml.

Every problem becomes one `ConfigError` line naming the file, the key path, the bad value and the
fix. Secrets never appear in the file: a credential is named by the environment variable that
holds it (`app_key_env = "OLD_APP_KEY"`) and resolved only for the endpoints a run selects.

With no configuration at all, `old` is the embedded reference service speaking v1 on a free-tier
app and `new` speaks v2 on a pro-tier app with recall and read receipts switched on.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.contract import Capability, EndpointSettings, TierLimits
from harness.errors import ConfigError
from harness.registry import adapters
from harness.report.redact import (  # looks_secret: other modules import it from here too
    MASK,
    looks_env_name,
    looks_secret,
    mask_urls,
    shown,
)
from harness.servers import NoOptions, ServerRequest, servers
from harness.timing import ENV_VAR as TIME_SCALE_ENV
from harness.timing import scale_problem

CONFIG_FILE = "im-harness.toml"
PYPROJECT_TABLE = ("tool", "im-harness")
DEFECTS_ENV = "IM_HARNESS_DEFECTS"
DEFECT_RATE_ENV = "IM_HARNESS_DEFECT_RATE"
DEFAULT_ADAPTER = "reference"  # the adapter of an endpoint that names none

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_LIMIT_NAMES = tuple(f.name for f in fields(TierLimits))
_FEATURES = tuple(c.value for c in Capability)


def suggested_env_var(endpoint: str, key: str) -> str:
    """The environment variable name we suggest for `key` of `endpoint`, e.g. OLD_APP_KEY."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{endpoint}_{key}").strip("_").upper()


def _custom(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"), ctx)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Timeouts(_Model):
    """Per-endpoint timeouts in seconds; unset means the adapter's default for its protocol."""

    send: float | None = Field(default=None, gt=0)
    connect: float | None = Field(default=None, gt=0)


class TierProfile(_Model):
    """The tier under test: its name, optional limit overrides and the features switched on."""

    name: str = ""
    limits: dict[str, float] = Field(default_factory=dict)
    features: dict[str, bool] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if key not in _LIMIT_NAMES:
                raise _custom(
                    "unknown_limit",
                    f"is not a tier limit; known: {', '.join(_LIMIT_NAMES)}",
                    key=key,
                )
            if not math.isfinite(number) or number < 0:
                raise _custom(
                    "negative_limit", f"= {number!r} must be a finite number >= 0", key=key
                )
        return value

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: dict[str, bool]) -> dict[str, bool]:
        for key in value:
            if key not in _FEATURES:
                raise _custom(
                    "unknown_feature",
                    f"is not a capability or feature; known: {', '.join(_FEATURES)}",
                    key=key,
                )
        return value


class UpgradeHook(_Model):
    """`[endpoints.X.upgrade]`: how the journey upgrades this endpoint, and the bounds it holds.

    `command` upgrades an endpoint the team runs (one with a url) in place; it runs with
    IM_HARNESS_UPGRADE_TO naming the endpoint it should become, and exit 0 means done;
    `rollback` does the reverse. Embedded servers upgrade themselves and need neither.
    """

    command: list[str] = Field(default_factory=list)
    rollback: list[str] = Field(default_factory=list)
    activation_bound_s: float | None = Field(default=None, ge=0)  # default: the server's lag
    token_window_s: float | None = Field(default=None, ge=0)  # the window a team's endpoint keeps

    @field_validator("command", "rollback")
    @classmethod
    def _no_blank_words(cls, value: list[str]) -> list[str]:
        if any(not word.strip() for word in value):
            raise _custom("blank_word", "holds an empty word; write e.g. command = "
                          "[\"./deploy.sh\", \"upgrade\"]")
        return value


class EndpointConfig(_Model):
    """One endpoint: which adapter, where, which app, which tier, and where its secrets live."""

    adapter: str = DEFAULT_ADAPTER
    url: str = ""  # empty: the harness starts the server registered for the adapter
    app_id: str = ""
    protocol: str = ""
    tier: TierProfile = Field(default_factory=TierProfile)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    secrets_env: dict[str, str] = Field(default_factory=dict)  # secret name -> env var name
    options: dict[str, Any] = Field(default_factory=dict)  # the adapter's, see its Options
    server: dict[str, Any] = Field(default_factory=dict)  # the embedded server's, its Options
    # seeded defects of this endpoint's embedded server only, beside [harness].defects
    defects: list[str] = Field(default_factory=list)
    upgrade: UpgradeHook = Field(default_factory=UpgradeHook)  # the journey's hook and bounds

    _defects = field_validator("defects", mode="before")(lambda value: _defect_names(value))

    @model_validator(mode="before")
    @classmethod
    def _collect_env_refs(cls, data: Any) -> Any:
        """Move `<secret>_env = "VAR"` keys into `secrets_env`; refuse literal secrets."""
        if not isinstance(data, Mapping):
            return data
        out: dict[str, Any] = {}
        refs: dict[str, str] = dict(data.get("secrets_env") or {})
        for key, value in data.items():
            if key == "secrets_env":
                continue
            if key.endswith("_env") and len(key) > 4:
                if not isinstance(value, str) or not looks_env_name(value):
                    # The value is not shown: a secret pasted here by mistake is common.
                    raise _custom(
                        "bad_env_name",
                        f"= {MASK} is not an environment variable name (the value is not "
                        f"shown: it may be a secret); write e.g. {key} = "
                        f"\"{key[:-4].upper()}\" and export that variable",
                        key=key,
                    )
                refs[key[:-4]] = value
            elif looks_secret(key):
                raise _custom("literal_secret", "", key=key, secret=key)
            else:
                out[key] = value
        for table in ("options", "server"):
            options = out.get(table)
            if isinstance(options, Mapping):
                for key in options:
                    if looks_secret(str(key)):
                        raise _custom(
                            "literal_secret", "", key=f"{table}.{key}", secret=str(key)
                        )
        for secret, var in refs.items():
            if not isinstance(var, str) or not looks_env_name(var):
                raise _custom(
                    "bad_env_name",
                    f"= {MASK} is not an environment variable name (the value is not shown: "
                    f"it may be a secret); write e.g. {secret}_env = \"{secret.upper()}\"",
                    key=f"secrets_env.{secret}",
                )
        out["secrets_env"] = refs
        return out

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise _custom("bad_url", f"= {shown(value)} is not a usable URL ({exc}); write "
                          "e.g. ws://127.0.0.1:8765") from None
        if not parts.scheme or not parts.hostname:
            raise _custom("bad_url", f"= {shown(value)} is not a URL with a scheme and a host; "
                          "write e.g. ws://127.0.0.1:8765")
        if "@" in parts.netloc:
            raise _custom("bad_url", f"= {shown(value)} carries credentials (user:password@); "
                          "remove them from the url and name a variable with a *_env key "
                          "instead, e.g. token_env = \"NEW_TOKEN\"")
        return value

    @field_validator("tier", mode="before")
    @classmethod
    def _tier_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def embedded(self) -> bool:
        """Whether the harness starts this endpoint's server itself (no url, a server exists)."""
        return not self.url and self.adapter in servers

    def server_request(self, name: str, harness: HarnessOptions) -> ServerRequest:
        """What to ask the embedded server for, to serve endpoint `name` (validated config)."""
        server_cls = servers.get(self.adapter)
        keepalive = {
            protocol: value
            for protocol, value in (("v1", harness.keepalive_v1), ("v2", harness.keepalive_v2))
            if value is not None
        }
        return ServerRequest(
            endpoint=name,
            adapter=self.adapter,
            protocol=self.protocol,
            tier=self.tier.name or server_cls.default_tier,
            limits=dict(self.tier.limits),
            features=dict(self.tier.features),
            app_id=self.app_id,
            adapter_options=dict(self.options),
            server_options=server_cls.Options.model_validate(self.server),
            timeouts=timeout_kwargs(self),
            defects=tuple(dict.fromkeys([*harness.defects, *self.defects])),
            defect_rate=harness.defect_rate,
            seed=harness.seed,
            keepalive=keepalive,
            propagation_delay=harness.propagation_delay,
        )


class HarnessOptions(_Model):
    """The `[harness]` table: plugin options, each also a command-line option that wins."""

    endpoints: list[str] | None = None  # endpoints to run; default: all configured
    time_scale: float | None = Field(default=None, gt=0)
    defects: list[str] = Field(default_factory=list)
    defect_rate: float | None = Field(default=None, ge=0, le=1)
    seed: int = 0
    keepalive_v1: float | None = Field(default=None, gt=0)
    keepalive_v2: float | None = Field(default=None, gt=0)
    propagation_delay: float = Field(default=0.0, ge=0)
    # The sign-off's latency section (harness.report.latency): a new p95 over old's by more
    # than this factor AND by more than this many milliseconds is a NO-GO reason.
    latency_factor: float = Field(default=2.0, ge=1)
    latency_floor_ms: float = Field(default=20.0, ge=0)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return split_names(value) if isinstance(value, str) else value

    _defects = field_validator("defects", mode="before")(lambda value: _defect_names(value))

    @field_validator("endpoints")
    @classmethod
    def _some_endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise _custom("no_endpoints", "= [] names no endpoint; name at least one, or remove "
                          "the key to run every configured endpoint")
        return value



def default_endpoints() -> dict[str, EndpointConfig]:
    """The endpoints used when nothing is configured (both embedded reference services)."""
    return {
        "old": EndpointConfig(protocol="v1", tier=TierProfile(name="free")),
        "new": EndpointConfig(
            protocol="v2",
            tier=TierProfile(name="pro", features={"recall": True, "receipts": True}),
        ),
    }


class HarnessConfig(_Model):
    """The whole validated configuration."""

    endpoints: dict[str, EndpointConfig] = Field(default_factory=default_endpoints)
    harness: HarnessOptions = Field(default_factory=HarnessOptions)
    _source: str = PrivateAttr(default="defaults")

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        if not value:
            raise _custom("no_endpoints", "is empty; configure at least one [endpoints.NAME]")
        for name in value:
            if not _NAME_RE.match(name):
                raise _custom(
                    "bad_endpoint_name",
                    "is not a usable endpoint name; use letters, digits, '-' and '_'",
                    key=name,
                )
        return value

    @property
    def source(self) -> str:
        """Where this configuration came from: a file label or "defaults"."""
        return self._source

    def selected(self, names: Iterable[str] | None = None) -> list[str]:
        """The endpoint names to run: `names`, else `[harness].endpoints`, else all."""
        chosen = list(names) if names is not None else self.harness.endpoints
        if not chosen:
            return list(self.endpoints)
        for name in chosen:
            if name not in self.endpoints:
                raise ConfigError(
                    f"{self.source}: endpoint {name!r} is not configured; "
                    f"known: {', '.join(self.endpoints)}"
                )
        return list(dict.fromkeys(chosen))

    def secrets_for(
        self, name: str, environ: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Resolve endpoint `name`'s secrets from the environment; a missing one is an error."""
        env = os.environ if environ is None else environ
        resolved: dict[str, str] = {}
        for secret, var in self.endpoints[name].secrets_env.items():
            value = env.get(var, "")
            if not value:
                raise ConfigError(
                    f"{self.source}: endpoints.{name}.{secret}_env names the environment "
                    f"variable {var}, which is not set; export {var} (the {secret}) or fix "
                    f"{secret}_env"
                )
            resolved[secret] = value
        return resolved

    def settings_for(
        self, name: str, environ: Mapping[str, str] | None = None
    ) -> EndpointSettings:
        """`EndpointSettings` for a configured endpoint that has a url (not embedded)."""
        ep = self.endpoints[name]
        return EndpointSettings(
            name=name,
            adapter=ep.adapter,
            url=ep.url,
            app_id=ep.app_id,
            protocol=ep.protocol,
            tier=ep.tier.name,
            secrets=self.secrets_for(name, environ),
            options=dict(ep.options),
            **timeout_kwargs(ep),
        )


def timeout_kwargs(ep: EndpointConfig) -> dict[str, float]:
    """The configured timeouts as `EndpointSettings` keyword arguments (unset ones left out)."""
    out: dict[str, float] = {}
    if ep.timeouts.send is not None:
        out["send_timeout_s"] = ep.timeouts.send
    if ep.timeouts.connect is not None:
        out["connect_timeout_s"] = ep.timeouts.connect
    return out


def split_names(raw: str | Iterable[str] | None) -> list[str]:
    """`"a, b"` or `["a", "b,c"]` -> `["a", "b", "c"]` (empty parts dropped)."""
    if raw is None:
        return []
    parts = [raw] if isinstance(raw, str) else list(raw)
    return [n.strip() for p in parts for n in str(p).split(",") if n.strip()]


def known_defects() -> list[str]:
    """Every seeded defect some registered embedded server understands."""
    names: dict[str, None] = {}
    for server in servers.names():
        names.update(dict.fromkeys(servers.get(server).defects))
    return list(names)


def _defect_names(value: Any) -> Any:
    """`defects`: a comma string or a list of seeded defect names; an unknown name is an error."""
    names = split_names(value) if isinstance(value, str) else value
    if isinstance(names, list | tuple):
        problem = defect_problem(str(n) for n in names)
        if problem:
            raise _custom("unknown_defect", problem)
    return names


def defect_problem(names: Iterable[str]) -> str | None:
    """`= 'x' is not a seeded defect; known: ...` for the first unknown name, else None."""
    known = known_defects()
    for name in names:
        if name not in known:
            return f"= {name!r} is not a seeded defect; known: {', '.join(known) or 'none'}"
    return None


# --- loading ------------------------------------------------------------------------------


def find_config(rootdir: Path) -> tuple[Path, tuple[str, ...]] | None:
    """The config file under `rootdir`: im-harness.toml, else a pyproject with the table."""
    candidate = rootdir / CONFIG_FILE
    if candidate.is_file():
        return candidate, ()
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        data = read_toml(pyproject)
        tool = data.get(PYPROJECT_TABLE[0], {})
        if not isinstance(tool, Mapping):
            return None
        if PYPROJECT_TABLE[1] in tool:
            return pyproject, PYPROJECT_TABLE
        for name in tool:
            if re.sub(r"[-_. ]", "", str(name).lower()) == "imharness":
                raise ConfigError(
                    f"{pyproject}: [tool.{name}] is not read; the harness reads "
                    f"[tool.{PYPROJECT_TABLE[1]}]; rename the table"
                )
    return None


def load_config(
    path: str | Path | None = None, *, rootdir: str | Path | None = None
) -> HarnessConfig:
    """Load and validate the configuration from `path`, or the one found under `rootdir`."""
    table: tuple[str, ...]
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--im-config {str(path)!r}: no such file; pass an existing path")
        table = PYPROJECT_TABLE if file.name == "pyproject.toml" else ()
    else:
        found = find_config(Path(rootdir) if rootdir is not None else Path.cwd())
        if found is None:
            return HarnessConfig()
        file, table = found
    data: Any = read_toml(file)
    for part in table:
        data = data.get(part, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{file.name}: [{'.'.join(table)}] must be a table")
    if not data:
        where = f"its [{'.'.join(table)}] table" if table else "the file"
        raise ConfigError(
            f"{file}: {where} is empty, so nothing is configured; add [endpoints.NAME] "
            "tables (see examples/im-harness.toml), or remove it to run the embedded defaults"
        )
    return parse_config(data, source=file.name, prefix=table)


def parse_config(
    data: Mapping[str, Any], *, source: str = CONFIG_FILE, prefix: tuple[str, ...] = ()
) -> HarnessConfig:
    """Validate a config mapping; errors are one line prefixed with `source` and key path."""
    try:
        config = HarnessConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(explain(exc, source=source, prefix=prefix)) from None
    config._source = source
    where = ".".join(prefix) + "." if prefix else ""
    for name, ep in config.endpoints.items():
        problem = endpoint_problem(name, ep, f"{where}endpoints.{name}")
        if problem:
            raise ConfigError(f"{source}: {problem}")
    return config


def endpoint_problem(name: str, ep: EndpointConfig, where: str) -> str | None:
    """What is wrong with endpoint `name` beyond its shape (adapter, server, options), or None.

    `where` is its key path, e.g. `endpoints.new`.
    """
    if ep.adapter not in adapters:
        return (
            f"{where}.adapter = {ep.adapter!r} is not a registered adapter; "
            f"known: {', '.join(adapters.names()) or 'none'}"
        )
    adapter_cls = adapters.get(ep.adapter)
    problem = options_problem(
        getattr(adapter_cls, "Options", NoOptions), ep.options, f"{where}.options",
        f"adapter {ep.adapter!r}",
    )
    if problem:
        return problem
    protocols = getattr(adapter_cls, "protocols", None)  # optional: the versions it speaks
    if protocols and ep.protocol and ep.protocol not in protocols:
        return (
            f"{where}.protocol = {ep.protocol!r} is not a protocol of adapter {ep.adapter!r}; "
            f"known: {', '.join(protocols)}"
        )
    if ep.url:
        if ep.server:
            return (
                f"{where}.server is set, but the endpoint has a url, so the harness starts no "
                "server for it; remove the [server] table or the url"
            )
        return None
    if ep.adapter not in servers:
        startable = ", ".join(repr(n) for n in servers.names()) or "none"
        return (
            f"{where}.url is required for adapter {ep.adapter!r}, which registers no embedded "
            f"server; only these adapters can run without a url: {startable}"
        )
    server_cls = servers.get(ep.adapter)
    problem = options_problem(
        server_cls.Options, ep.server, f"{where}.server", f"the {ep.adapter!r} server"
    )
    if problem:
        return problem
    if server_cls.tiers and ep.tier.name and ep.tier.name not in server_cls.tiers:
        return (
            f"{where}.tier.name = {ep.tier.name!r} is not a tier of the {ep.adapter!r} server; "
            f"known: {', '.join(server_cls.tiers)}"
        )
    return None


def options_problem(
    model: type[BaseModel], options: Mapping[str, Any], where: str, owner: str
) -> str | None:
    """`options` checked against `owner`'s pydantic model: one line naming key, value and fix.

    Numbers must be finite whatever the model says: an `inf` timeout is never what was meant.
    """
    try:
        validated = model.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        path = ".".join([where, *(str(p) for p in err["loc"])])
        known = ", ".join(model.model_fields) or "none"
        if err["type"] == "extra_forbidden":
            return (
                f"{path} is not an option of {owner}; known: {known}; remove or rename it"
            )
        if err["type"] == "missing":
            return f"{path} is required by {owner}; known options: {known}"
        value = shown(err.get("input"), str(err["loc"][-1]) if err["loc"] else "")
        msg = str(err["msg"])
        return f"{path} = {value}: {msg[:1].lower() + msg[1:]}; fix the value"
    for key, value in validated.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where}.{key} = {value!r} is not a finite number; use a finite number"
    return None


def read_toml(file: Path, *, missing: str | None = None) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names file:line:column. `missing`: the error if absent."""
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except UnicodeDecodeError as exc:
        raise ConfigError(_not_utf8(file, exc)) from None
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", text)
        if m:
            where, why = f"{file}:{m.group(1)}:{m.group(2)}", text[: m.start()].strip()
        elif "(at end of document)" in text:
            lines = file.read_text(encoding="utf-8", errors="replace").split("\n")
            where = f"{file}:{len(lines)}:{len(lines[-1]) + 1}"
            why = text.replace("(at end of document)", "at the end of the file").strip()
        else:
            where, why = str(file), text
        raise ConfigError(f"{where}: invalid TOML: {why}; fix the syntax there") from None
    except FileNotFoundError:
        if missing is None:
            raise ConfigError(f"{file}: cannot read: no such file") from None
        raise ConfigError(missing) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None


def _not_utf8(file: Path, exc: UnicodeDecodeError) -> str:
    raw = file.read_bytes()
    start = raw.find(exc.object[exc.start:exc.end]) if isinstance(exc.object, bytes) else -1
    if start < 0:
        start = 0
    line = raw.count(b"\n", 0, start) + 1
    column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
    byte = raw[start:start + 1].hex() if start < len(raw) else "?"
    return (f"{file}:{line}:{column}: not UTF-8 (byte 0x{byte}); TOML files must be UTF-8: "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def environment_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with the harness's environment variables, or None (checked up front)."""
    env = os.environ if environ is None else environ
    if TIME_SCALE_ENV in env:
        problem = scale_problem(env[TIME_SCALE_ENV])
        if problem:
            return problem
    raw = env.get(DEFECTS_ENV, "").strip()
    if raw:
        problem = defect_problem(split_names(raw))
        if problem:
            return f"{DEFECTS_ENV} {problem}; unset it or fix the name"
    raw = env.get(DEFECT_RATE_ENV, "").strip()
    if raw:
        return rate_problem(DEFECT_RATE_ENV + "=", raw)
    return None


def number_problem(label: str, raw: object, *, low: float | None = None,
                   high: float | None = None, low_open: bool = False,
                   example: str = "1") -> str | None:
    """`label` + ` 'x' must be a finite number > 0; e.g. 1` when `raw` is out of range, else None.

    `label` ends with `=` for an environment variable, else it is an option name.
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    rng = f"a finite number {' and '.join(bounds)}".rstrip()
    sep = "" if label.endswith("=") else " "
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if ok:
        return None
    return f"{label}{sep}{shown(raw)} must be {rng}; e.g. {example}"


def rate_problem(label: str, raw: object) -> str | None:
    return number_problem(label, raw, low=0, high=1, example="0.05")


# --- one-line errors ----------------------------------------------------------------------


def explain(exc: ValidationError, *, source: str, prefix: tuple[str, ...] = ()) -> str:
    """The first validation error as one line: source, key path, value (never a secret), fix."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    ctx = err.get("ctx") or {}
    key = ctx.get("key")
    if key is not None:
        loc.append(str(key))
    path = ".".join([*prefix, *loc])
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        known = _known_keys(tuple(err["loc"][:-1]))
        return (
            f"{source}: {path} is not a known key; known here: {known}; remove or rename it"
        )
    if kind == "missing":
        return f"{source}: {path} is required"
    if kind == "literal_secret":
        secret = str(ctx["secret"])
        endpoint = loc[1] if len(loc) > 2 and loc[0] == "endpoints" else "endpoint"
        var = suggested_env_var(endpoint, secret)
        return (
            f"{source}: {path} looks like a literal secret, and secrets never go in the config; "
            f"remove it, write {secret}_env = \"{var}\" in [{'.'.join([*prefix, *loc[:2]])}] "
            f"and export {var}"
        )
    if kind in {"bad_env_name", "unknown_limit", "negative_limit", "unknown_feature",
                "unknown_defect", "no_endpoints", "bad_endpoint_name", "bad_url"}:
        return f"{source}: {path} {msg}"
    value = err.get("input")
    hidden = any(looks_secret(p) for p in loc)
    text = MASK if hidden else shown(value, loc[-1] if loc else "")
    msg = msg[:1].lower() + msg[1:]
    fix = "fix the value"
    if kind.startswith(("finite_number", "greater_than", "less_than", "float_", "int_")):
        rng = _range(tuple(err["loc"]))
        if rng:
            fix = f"use {rng}"
    return mask_urls(f"{source}: {path} = {text}: {msg}; {fix}")


def _field_at(loc: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """The annotation and the field a validation `loc` points at in the config models.

    None when `loc` leaves the models (an unknown key, or into a plain value).
    """
    ann: Any = HarnessConfig
    info = None
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            info = ann.model_fields.get(str(part))
            if info is None:
                return None
            ann = info.annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            return None
    return ann, info


def _range(loc: tuple[Any, ...]) -> str:
    """`a finite number > 0` for the numeric field a validation `loc` points at ('' if none)."""
    found = _field_at(loc)
    if found is None:
        return ""
    info = found[1]
    bounds = []
    for meta in info.metadata if info is not None else ():
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                bounds.append(f"{sign} {bound:g}")
    if not bounds and "limits" in [str(p) for p in loc]:
        bounds.append(">= 0")  # a tier limit (checked again, with its name, by TierProfile)
    return "a finite number" + (" " + " and ".join(bounds) if bounds else "")


def _known_keys(loc: tuple[Any, ...]) -> str:
    """The keys allowed at the model a validation `loc` points into."""
    found = _field_at(loc)
    if found is None:
        return "?"
    ann = found[0]
    ann = _unwrap(ann)
    if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
        return "?"
    names = [n for n in ann.model_fields if n != "secrets_env"]
    if ann is EndpointConfig:
        names.append("<secret>_env")
    return ", ".join(names)


def _unwrap(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann
