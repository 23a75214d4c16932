"""Which property-test rules an endpoint can take, and the reason named for each one that is off."""

from __future__ import annotations

from typing import Any

from harness.contract import Capability, EndpointInfo, EndpointSettings
from harness.faults.world import WorldContext, WorldMachine

EVERYTHING = frozenset(Capability) - {Capability.TIER_ADMIN}


def context(capabilities: frozenset[Capability] = EVERYTHING, *, server: Any = None,
            proxiable: bool = True) -> WorldContext:
    settings = EndpointSettings(name="staging", adapter="matrix", url="http://10.0.0.5:8008")
    info = EndpointInfo(name="staging", adapter="matrix", url=settings.url, protocol="synapse",
                        tier="default", capabilities=capabilities)
    return WorldContext(settings=settings, info=info, server=server, proxiable=proxiable)


class NoApps:
    """A harness-started server without apps (as Synapse is): restarts, no admin API."""

    def app(self) -> None:
        return None


def test_an_endpoint_the_harness_did_not_start_is_never_restarted() -> None:
    off = context().disabled()
    assert off == {"restart_service": "endpoint 'staging' is not started by the harness "
                                      "(no restarts)"}


def test_an_embedded_server_without_apps_takes_every_rule() -> None:
    assert context(server=NoApps()).disabled() == {}


def test_off_loopback_no_faults_and_without_capabilities_no_recall_receipts_groups() -> None:
    off = context(frozenset({Capability.CHAT}), server=NoApps(), proxiable=False).disabled()
    assert off == {
        "inject_fault": "endpoint 'staging' is not a TCP endpoint on loopback (no fault link)",
        "recall": "endpoint 'staging' does not offer capability 'recall'",
        "mark_read": "endpoint 'staging' does not offer capability 'receipts'",
        "send_to_group": "endpoint 'staging' does not offer capability 'groups'",
    }


def test_every_rule_named_off_is_a_rule_of_the_machine() -> None:
    rules = {name for name in dir(WorldMachine) if not name.startswith("_")}
    off = context(frozenset(), proxiable=False).disabled()
    assert set(off) <= rules
    assert set(off) == {"restart_service", "inject_fault", "recall", "mark_read",
                        "send_to_group"}
