"""The upgrade journey's moving parts: a private server pair, upgraded in place, and its record.

`UpgradePair` starts its OWN server from the old endpoint's request (never the session's shared
one), upgrades it in place to the new endpoint's request (`harness.servers.Upgradable`) or runs
the hook an endpoint the team runs declares (`[endpoints.old.upgrade] command`), and drills the
rollback. `JourneyRecord` is what the sign-off reads back (`im-journey.json`): each step's
outcome, the activation lags, the reconnect gaps, the rollback fact and what differed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import procs
from harness.contract import EndpointInfo, EndpointSettings
from harness.errors import HarnessError, UpgradeRefused
from harness.servers import (
    EmbeddedServer,
    ServerRequest,
    UpgradeTerms,
    can_upgrade,
    servers,
    upgrade_terms,
)
from harness.session import Endpoint, HarnessSession, open_endpoint
from harness.timing import units

JOURNEY_FILE = "im-journey.json"
HOOK_TIMEOUT_UNITS = 120.0


@dataclass
class Step:
    """One named step of the journey and how it went."""

    name: str
    status: str = "passed"  # passed | failed | skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class JourneyRecord:
    """What one journey observed; written as `im-journey.json` for the sign-off."""

    old: str
    new: str
    server: str = ""  # e.g. "reference service release 1 -> reference service release 2"
    steps: list[Step] = field(default_factory=list)
    lags: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> seconds, bound
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> gap, reconnects
    rollback: str = "not drilled"
    differences: list[str] = field(default_factory=list)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)  # "before"/"after" -> info
    skipped: str = ""  # why the whole journey did not run

    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / JOURNEY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path


def info_dict(info: EndpointInfo) -> dict[str, Any]:
    """Every default an adapter reports, as plain data (never a secret: EndpointInfo holds none)."""
    return {
        "adapter": info.adapter, "protocol": info.protocol, "tier": info.tier,
        "capabilities": sorted(c.value for c in info.capabilities),
        "limits": asdict(info.limits), "keepalive_s": info.keepalive_s,
        "send_timeout_s": info.send_timeout_s, "protocols": sorted(info.protocols),
        "client_enforced": sorted(r.value for r in info.client_enforced),
        "client_hides": sorted(h.value for h in info.client_hides),
    }


class UpgradePair:
    """The old endpoint's server (or the team's endpoint with a hook), upgraded to the new one.

    Example::

        pair = UpgradePair(session, "old", "new")
        if (why := pair.problem()) is None:
            pair.start(); ...; pair.upgrade(); ...; fact = pair.rollback(); pair.stop()
    """

    def __init__(self, session: HarnessSession, old: str = "old", new: str = "new") -> None:
        self.session, self.old, self.new = session, old, new
        self.server: EmbeddedServer | None = None
        self.settings: EndpointSettings | None = None
        self.upgraded_at: float | None = None  # monotonic

    def problem(self) -> str | None:
        """Why this configuration has no journey (a skip reason naming what is missing)."""
        endpoints = self.session.config.endpoints
        for name in (self.old, self.new):
            if name not in endpoints:
                return (f"the upgrade journey needs endpoints {self.old!r} and {self.new!r}; "
                        f"{name!r} is not configured")
        old, new = endpoints[self.old], endpoints[self.new]
        if old.adapter != new.adapter:
            return (f"endpoints {self.old!r} ({old.adapter}) and {self.new!r} ({new.adapter}) "
                    "use different adapters; an in-place upgrade keeps one kind of server")
        if not old.embedded:
            if not old.upgrade.command:
                return (f"endpoint {self.old!r} (url {old.url}) declares no upgrade hook; add "
                        f"[endpoints.{self.old}.upgrade] command = [...] to upgrade it in place")
            return None
        if not new.embedded:
            return (f"endpoint {self.old!r} is embedded but {self.new!r} has a url; the journey "
                    "upgrades the old server to the new endpoint's request")
        server_cls = servers.get(old.adapter)
        if not can_upgrade(server_cls):
            return (f"the {old.adapter!r} server ({server_cls.__name__}) offers no in-place "
                    "upgrade (harness.servers.Upgradable)")
        return None

    def _request(self, name: str) -> ServerRequest:
        ep = self.session.config.endpoints[name]
        harness = self.session.config.harness.model_copy(update={
            "defects": list(self.session.defects), "defect_rate": self.session.defect_rate})
        return ep.server_request(name, harness)

    @property
    def external(self) -> bool:
        return not self.session.config.endpoints[self.old].embedded

    def start(self) -> EndpointSettings:
        """Start the private old server (or resolve the team's old endpoint)."""
        if self.external:
            self.settings = self.session.config.settings_for(self.old)
            return self.settings
        request = self._request(self.old)
        server = servers.get(request.adapter).for_request(request)
        try:
            self.settings = server.start()
        except BaseException:
            server.stop()
            raise
        self.server = server
        return self.settings

    def describe(self) -> str:
        if self.server is not None:
            return self.server.describe()
        return f"{self.old} at {self.settings.url if self.settings else '?'}"

    def upgrade(self) -> EndpointSettings:
        """Upgrade in place to the new endpoint's request; the settings clients now use."""
        if self.external:
            self._hook(self.session.config.endpoints[self.old].upgrade.command, self.new)
            new_cfg = self.session.config.endpoints[self.new]
            assert self.settings is not None
            self.settings = replace(self.settings, name=self.new,
                                    protocol=new_cfg.protocol or self.settings.protocol,
                                    tier=new_cfg.tier.name or self.settings.tier)
        else:
            assert self.server is not None
            self.settings = self.server.upgrade(self._request(self.new))  # type: ignore[attr-defined]
        self.upgraded_at = time.monotonic()
        assert self.settings is not None
        return self.settings

    def terms(self) -> UpgradeTerms:
        """What the upgrade promised: the server's own terms, the config's bounds over them."""
        hook = self.session.config.endpoints[self.old].upgrade
        terms = upgrade_terms(self.server) if self.server is not None else UpgradeTerms()
        if hook.token_window_s is not None:
            terms = replace(terms, token_window_s=hook.token_window_s)
        return terms

    def activation_bound(self) -> float | None:
        """The configured bound on each new feature's activation lag (default: lag + 2 units)."""
        bound = self.session.config.endpoints[self.old].upgrade.activation_bound_s
        if bound is not None:
            return bound
        lag = self.terms().activation_lag_s
        return None if lag is None else lag + units(2)

    def rollback(self) -> tuple[str, bool]:
        """Drill new -> old on the upgraded data: (the fact as one line, whether accepted)."""
        if self.external:
            command = self.session.config.endpoints[self.old].upgrade.rollback
            if not command:
                return (f"not drilled: endpoint {self.old!r} declares no rollback hook "
                        f"([endpoints.{self.old}.upgrade] rollback = [...])", False)
            self._hook(command, self.old)
            return f"accepted: the rollback hook of {self.old!r} exited 0", True
        assert self.server is not None
        before = self.server.describe()
        try:
            self.settings = self.server.upgrade(self._request(self.old))  # type: ignore[attr-defined]
        except UpgradeRefused as exc:
            return f"refused: {exc} (still serving: {self.server.describe()})", False
        return f"accepted: {before} -> {self.server.describe()} on the upgraded data", True

    def _hook(self, command: list[str], to: str) -> None:
        env = dict(os.environ, IM_HARNESS_UPGRADE_TO=to)
        child = procs.spawn(command, name=f"upgrade hook of {self.old}", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = child.proc.communicate(timeout=units(HOOK_TIMEOUT_UNITS))
        except subprocess.TimeoutExpired:
            child.kill()
            raise HarnessError(f"the upgrade hook of endpoint {self.old!r} ({command[0]}) did "
                               f"not finish within {units(HOOK_TIMEOUT_UNITS):.0f}s") from None
        if child.proc.returncode != 0:
            tail = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise HarnessError(f"the upgrade hook of endpoint {self.old!r} ({command[0]}) "
                               f"exited {child.proc.returncode}: {tail[0]}")

    async def open(self, name: str | None = None) -> Endpoint:
        """Open the pair's endpoint as it is now (close it with `aclose`)."""
        if self.settings is None:
            raise HarnessError("the upgrade pair is not started; call start() first")
        settings = self.settings if name is None else replace(self.settings, name=name)
        endpoint = await open_endpoint(settings, server=self.server)
        endpoint.app = self.server.app() if self.server is not None else None
        return endpoint

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A reported endpoint description with nested tables as dotted keys (`limits.max_...`)."""
    items: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            items.update(flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for each reported default that differs (nested limits flattened)."""
    out: list[str] = []
    a, b = flatten(before), flatten(after)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


__all__ = ["JOURNEY_FILE", "JourneyRecord", "Step", "UpgradePair", "differences", "flatten",
           "info_dict"]
