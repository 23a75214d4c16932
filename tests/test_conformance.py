"""The adapter conformance kit: it passes the reference adapter and names what broken ones break.

The broken adapters wrap the reference adapter (opened through the registry, like any adapter)
on a reference service started here; each breaks one contract clause on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
from typer.testing import CliRunner

from harness.cli_adapter import EXIT_FAILED, EXIT_OK, EXIT_USAGE, check_adapter, new_adapter
from harness.config import EndpointConfig, HarnessConfig, TierProfile
from harness.conformance import (
    ClauseResult,
    Outcome,
    clause,
    clause_names,
    run_conformance,
)
from harness.conformance.kit import CLAUSES, Clause, _run_one
from harness.contract import (
    Ack,
    Capability,
    Credentials,
    EndpointInfo,
    EndpointSettings,
    IMClient,
    Target,
)
from harness.errors import ConfigError, Forbidden, HarnessError, IMError, Unauthorized
from harness.reference.launcher import ReferenceService
from harness.registry import adapters
from harness.timing import units

APP_KEY_ENV = "CONFORMANCE_TEST_APP_KEY"
ADMIN_TOKEN_ENV = "CONFORMANCE_TEST_ADMIN_TOKEN"


# --- deliberately broken adapters ---------------------------------------------------------


class WrappedClient:
    """Delegates every operation to the reference client; subclasses break one."""

    def __init__(self, inner: IMClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def user_id(self) -> str:
        return self._inner.user_id

    @property
    def protocol(self) -> str:
        return self._inner.protocol

    def events(self) -> Any:
        return self._inner.events()

    async def send(self, to: Target, body: str = "", **kw: Any) -> Ack:
        return await self._inner.send(to, body, **kw)


class WrappedAdapter:
    """The reference adapter under another registry name, with `client_class` clients."""

    name: ClassVar[str] = "wrapped"
    client_class: ClassVar[type[WrappedClient]] = WrappedClient
    hidden: ClassVar[frozenset[Capability]] = frozenset()  # capabilities left out of info

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @classmethod
    async def open(cls, settings: EndpointSettings) -> WrappedAdapter:
        return cls(await adapters.get("reference").open(settings))  # type: ignore[attr-defined]

    @property
    def info(self) -> EndpointInfo:
        info = self._inner.info
        return replace(info, adapter=self.name, capabilities=info.capabilities - self.hidden)

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        return await self._inner.provision_user(user_id)  # type: ignore[no-any-return]

    async def connect(self, credentials: Credentials, *, protocol: str | None = None) -> Any:
        return self.client_class(await self._inner.connect(credentials, protocol=protocol))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _mapping_forbidden_to(error: type[IMError]) -> type[WrappedClient]:
    class Client(WrappedClient):
        async def send(self, to: Target, body: str = "", **kw: Any) -> Ack:
            try:
                return await self._inner.send(to, body, **kw)
            except Forbidden as exc:
                raise error(f"mapped wrongly: {exc}") from None

    return Client


class ForbiddenAsIMError(WrappedAdapter):
    name = "conformance-forbidden-as-imerror"
    client_class = _mapping_forbidden_to(IMError)


class ForbiddenAsUnauthorized(WrappedAdapter):
    name = "conformance-forbidden-as-unauthorized"
    client_class = _mapping_forbidden_to(Unauthorized)


class FreshClientIdClient(WrappedClient):
    async def send(self, to: Target, body: str = "", **kw: Any) -> Ack:
        kw["client_id"] = f"fresh-{uuid.uuid4().hex}"  # forgets the caller's id: no dedup
        return await self._inner.send(to, body, **kw)


class FreshClientId(WrappedAdapter):
    name = "conformance-fresh-client-id"
    client_class = FreshClientIdClient


class RecallUndeclared(WrappedAdapter):
    """Declares no recall, but its client recalls anyway (no Unsupported)."""

    name = "conformance-recall-undeclared"
    hidden = frozenset({Capability.RECALL})


for _cls in (WrappedAdapter, ForbiddenAsIMError, ForbiddenAsUnauthorized, FreshClientId,
             RecallUndeclared):
    _options = getattr(adapters.get("reference"), "Options", None)
    if _options is not None:  # once adapters declare their options, the config validates them
        _cls.Options = _options  # type: ignore[attr-defined]
    adapters.register(_cls.name)(_cls)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[ReferenceService]:
    with ReferenceService() as svc:
        yield svc


@pytest.fixture
def external(service: ReferenceService, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`make(adapter)`: a config whose endpoint "ext" is a fresh pro app behind `adapter`."""
    app = service.create_app_sync(tier="pro", features={"recall": True, "receipts": True})
    monkeypatch.setenv(APP_KEY_ENV, app.app_key)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, service.admin_token)

    def make(adapter: str) -> HarnessConfig:
        endpoint = EndpointConfig(
            adapter=adapter, url=service.ws_url, app_id=app.app_id, protocol="v2",
            tier=TierProfile(name="pro"),
            secrets_env={"app_key": APP_KEY_ENV, "admin_token": ADMIN_TOKEN_ENV},
            options={"api_url": service.api_url},
        )
        return HarnessConfig(endpoints={"ext": endpoint})

    return make


def by_clause(results: list[ClauseResult]) -> dict[str, ClauseResult]:
    return {r.clause: r for r in results}


def failed(results: list[ClauseResult]) -> dict[str, str]:
    return {r.clause: r.reason for r in results if r.outcome is Outcome.FAIL}


# --- the reference adapter conforms -------------------------------------------------------


@pytest.mark.parametrize("name", ["new", "old"])
def test_the_embedded_reference_endpoints_pass(name: str) -> None:
    """Default config: "new" (v2, pro, recall and receipts on) and "old" (v1, free)."""
    results = run_conformance(HarnessConfig(), name)
    assert [r.clause for r in results] == clause_names()
    assert not failed(results), failed(results)
    got = by_clause(results)
    for clause_name in ("errors.unauthorized", "errors.forbidden", "errors.not_found",
                        "errors.too_large", "errors.rate_limited", "capability.idempotent_send",
                        "capability.offline", "lifecycle.drop", "lifecycle.close",
                        "history.paging", "capability.push", "capability.tier_admin"):
        assert got[clause_name].outcome is Outcome.PASS, got[clause_name]
    assert got["declared.client_enforced"].outcome is Outcome.NOT_APPLICABLE
    assert "declares nothing hidden" in got["declared.client_enforced"].reason
    if name == "new":
        assert got["capability.recall"].reason.startswith("declared;")
    else:  # v1 has no recall or receipts: the kit checks that they refuse
        for cap in ("recall", "receipts", "group_receipts"):
            result = got[f"capability.{cap}"]
            assert result.outcome is Outcome.PASS, result
            assert result.reason == "not declared; its operation raised Unsupported"


def test_a_wrapper_that_changes_nothing_passes(external: Any) -> None:
    """The control for the broken ones below: the same wrapper, nothing broken."""
    results = run_conformance(external("wrapped"), "ext")
    assert not failed(results), failed(results)
    assert by_clause(results)["capability.tier_admin"].outcome is Outcome.PASS


# --- broken adapters are caught, clause by clause -----------------------------------------


@pytest.mark.parametrize(("adapter", "raised"), [
    ("conformance-forbidden-as-imerror", "IMError"),
    ("conformance-forbidden-as-unauthorized", "Unauthorized"),
])
def test_a_wrong_error_mapping_fails_the_forbidden_clauses(external: Any, adapter: str,
                                                          raised: str) -> None:
    bad = failed(run_conformance(external(adapter), "ext"))
    assert set(bad) == {"errors.forbidden", "capability.mute", "capability.mute_all"}, bad
    assert f"raised {raised}(" in bad["errors.forbidden"]
    assert bad["errors.forbidden"].endswith("expected Forbidden"), bad["errors.forbidden"]


def test_a_non_idempotent_send_fails_the_idempotency_clause(external: Any) -> None:
    bad = failed(run_conformance(external("conformance-fresh-client-id"), "ext"))
    assert "the same client_id sent twice gave message ids" in bad["capability.idempotent_send"]
    # The fresh id also shows in the ack and the delivered message: both clauses say so.
    assert "ack.client_id" in bad["send.ack"]
    assert "client_id" in bad["events.message"]
    assert set(bad) == {"capability.idempotent_send", "send.ack", "events.message"}, bad


def test_an_undeclared_capability_that_works_fails_its_clause(external: Any) -> None:
    bad = failed(run_conformance(external("conformance-recall-undeclared"), "ext"))
    assert set(bad) == {"capability.recall"}, bad
    assert bad["capability.recall"].startswith("undeclared 'recall': its operation succeeded")
    assert "expected Unsupported or FeatureDisabled" in bad["capability.recall"]


# --- the machinery ------------------------------------------------------------------------


def test_clauses_are_registered_once_by_name() -> None:
    names = clause_names()
    assert len(names) == len(set(names))
    assert {f"capability.{c.value}" for c in Capability} <= set(names)
    with pytest.raises(HarnessError, match="registered twice"):
        clause(names[0])(lambda ctx: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    assert [c.name for c in CLAUSES] == names


def test_unknown_endpoint_or_clause_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'staging' is not configured; known: old, new"):
        run_conformance(HarnessConfig(), "staging")
    with pytest.raises(ConfigError, match="clause 'errors.nope' is not known; known: "):
        run_conformance(HarnessConfig(), "new", clauses=["errors.nope"])


async def test_a_clause_that_hangs_fails_within_its_time_bound() -> None:
    async def hangs(ctx: Any) -> str:
        await asyncio.sleep(units(60))
        return "never"

    entry = Clause("test.hangs", hangs, "hangs forever", timeout_units=0.2)
    result = await asyncio.wait_for(_run_one(entry, endpoint=None), units(5))  # type: ignore[arg-type]
    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("did not finish within")
    assert result.duration_s < units(2)


async def test_a_crashing_clause_fails_without_stopping_the_run() -> None:
    async def crashes(ctx: Any) -> str:
        raise KeyError("oops")

    result = await _run_one(Clause("test.crash", crashes, "crashes"), endpoint=None)  # type: ignore[arg-type]
    assert result.outcome is Outcome.FAIL
    assert result.reason == "crashed: KeyError(\"'oops'\")"


# --- the CLI ------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    """The two commands registered as harness/cli.py registers them."""
    app = typer.Typer()
    app.command("check-adapter")(check_adapter)
    app.command("new-adapter")(new_adapter)
    return app


def invoke(*args: str, env: Mapping[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli_app(), list(args), env={"COLUMNS": "200", **(env or {})})


def test_check_adapter_prints_the_table_and_exits_0_on_the_reference(tmp_path: Path) -> None:
    config = tmp_path / "im-harness.toml"
    config.write_text('[endpoints.new]\nprotocol = "v2"\ntier = "pro"\n')
    done = invoke("check-adapter", "-c", str(config), "--endpoint", "new")
    assert done.exit_code == EXIT_OK, done.output
    assert "Adapter conformance: endpoint new" in done.output
    for name in ("errors.rate_limited", "history.paging", "declared.client_enforced"):
        assert name in done.output
    assert "declares nothing hidden" in done.output
    assert " 0 failed" in done.output


def test_check_adapter_exits_1_naming_the_failed_clause(tmp_path: Path, external: Any) -> None:
    hc = external("conformance-fresh-client-id")
    ep = hc.endpoints["ext"]
    config = tmp_path / "im-harness.toml"
    config.write_text(
        f'[endpoints.ext]\nadapter = "{ep.adapter}"\nurl = "{ep.url}"\napp_id = "{ep.app_id}"\n'
        f'protocol = "v2"\ntier = "pro"\napp_key_env = "{APP_KEY_ENV}"\n'
        f'[endpoints.ext.options]\napi_url = "{ep.options["api_url"]}"\n')
    done = invoke("check-adapter", "-c", str(config), "--endpoint", "ext",
                  "--clause", "capability.idempotent_send", "--clause", "errors.not_found")
    assert done.exit_code == EXIT_FAILED, done.output
    assert "FAILED 1 passed, 1 failed, 0 not applicable: capability.idempotent_send" in done.output
    assert "gave message ids" in done.output


@pytest.mark.parametrize(("args", "words"), [
    (["--endpoint", "staging"], "endpoint 'staging' is not configured; known: old, new"),
    (["-c", "missing.toml"], "'missing.toml': no such file"),
    (["--clause", "nope"], "conformance clause 'nope' is not known"),
])
def test_check_adapter_bad_input_is_one_line_and_exit_2(args: list[str], words: str) -> None:
    done = invoke("check-adapter", *args)
    assert done.exit_code == EXIT_USAGE, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1, done.output
    assert lines[0].startswith("im-harness: "), lines
    assert words in lines[0], lines
    assert "Traceback" not in done.output


def test_check_adapter_bad_config_value_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "im-harness.toml"
    config.write_text('[endpoints.new]\nadapter = "matrx"\n')
    done = invoke("check-adapter", "-c", str(config), "--endpoint", "new")
    assert done.exit_code == EXIT_USAGE, done.output
    assert "endpoints.new.adapter = 'matrx' is not a registered adapter" in done.output
