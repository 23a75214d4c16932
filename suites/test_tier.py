"""Tier contract: the endpoint honours the profile it declares (caps, rate, features, upgrades).

Message size is checked in test_chat.py and group size in test_groups.py, against the same
`endpoint.info.limits`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.contract import Target
from harness.errors import (
    FeatureDisabled,
    LimitReached,
    RateLimited,
    TooLarge,
    Unsupported,
)
from harness.testkit import Endpoint

pytestmark = pytest.mark.capability("chat")

# A tier limit this small is tested for real on a fresh app when it cannot be lowered per app.
SMALL_ENOUGH = 128


async def _fresh_app_with_small_limit(
    endpoint: Endpoint, field: str, small: int
) -> tuple[Endpoint, int]:
    """A fresh app whose `field` limit is `small` (override) or the tier's own when small."""
    try:
        app = await endpoint.with_app(limits={field: small})
    except (TypeError, Unsupported) as exc:
        reason = f"no per-app limits override ({exc})"
    else:
        if getattr(app.info.limits, field) == small:
            return app, small
        reason = f"the limits override was not applied ({getattr(app.info.limits, field)})"
    declared = getattr(endpoint.info.limits, field)
    if declared is not None and declared <= SMALL_ENOUGH:
        return await endpoint.with_app(), declared
    pytest.skip(f"endpoint {endpoint.name!r}: {field}={declared} is too big for a suite; {reason}")


@pytest.mark.needs_admin
async def test_concurrent_connection_cap(endpoint, im_user, until, units):
    """Connections beyond the app's cap are refused with LimitReached; a freed slot is reusable."""
    app, cap = await _fresh_app_with_small_limit(endpoint, "max_connections", 3)
    users = await asyncio.gather(*(im_user(f"c{i}", endpoint=app) for i in range(cap)))
    extra = await im_user("extra", endpoint=app, connect=False)
    with pytest.raises(LimitReached):
        await extra.connect()

    await users[0].close()

    async def connects() -> bool:
        try:
            await extra.connect()
        except LimitReached:
            return False
        return True

    await until(connects, timeout=units(3), what="a connection slot freed by a logout")


async def test_rate_limit_tells_when_to_retry(endpoint, im_user):
    """Beyond the tier's burst, sends are refused with RateLimited(retry_after>0); waiting works."""
    limits = endpoint.info.limits
    if limits.send_burst is None or limits.send_rate_per_user is None:
        pytest.skip(f"endpoint {endpoint.name!r} declares no send rate limit")
    alice = await im_user("alice")
    bob = await im_user("bob", connect=False)
    to_bob = Target.to_user(bob.id)
    attempts = limits.send_burst + max(10, limits.send_burst // 2)
    results = await asyncio.gather(
        *(alice.client.send(to_bob, f"flood {i}") for i in range(attempts)),
        return_exceptions=True,
    )
    unexpected = [r for r in results if isinstance(r, BaseException)
                  and not isinstance(r, RateLimited)]
    assert not unexpected, f"sends failed other than RateLimited: {unexpected[:3]}"
    limited = [r for r in results if isinstance(r, RateLimited)]
    accepted = len(results) - len(limited)
    assert limited, f"{attempts} sends at once were all accepted; the burst is {limits.send_burst}"
    assert accepted >= limits.send_burst, f"only {accepted} of a {limits.send_burst} burst passed"
    assert all(r.retry_after > 0 for r in limited), "RateLimited without a positive retry_after"

    await asyncio.sleep(max(r.retry_after for r in limited))  # the wait the service asked for
    ack = await alice.client.send(to_bob, "after waiting as told")
    assert ack.message_id


@pytest.mark.parametrize("feature", ["recall", "receipts"])
async def test_declared_features_work_and_others_are_refused(endpoint, im_user, units, feature):
    """A feature the profile lists works; one it does not list is refused cleanly, not crashed."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "feature probe")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))

    async def use() -> None:
        if feature == "recall":
            await alice.recall(ack)
        else:
            await bob.client.mark_read(ack.conversation, ack.seq)

    if endpoint.info.supports(feature):
        await use()
    else:
        # v1 has no such operation at all (Unsupported); a v2 app without it: FeatureDisabled.
        with pytest.raises((FeatureDisabled, Unsupported)):
            await use()


@pytest.mark.needs_admin
async def test_recall_and_receipts_on_free_tier_are_feature_disabled(endpoint, im_user, units):
    """On a free-tier app, recall and receipts are refused as FeatureDisabled (new SDK)."""
    app = await endpoint.with_app(tier="free", protocol="v2")
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    ack = await alice.send(bob, "free tier")
    with pytest.raises(FeatureDisabled):
        await alice.client.recall(ack.conversation, ack.message_id)
    with pytest.raises(FeatureDisabled):
        await bob.client.mark_read(ack.conversation, ack.seq)


@pytest.mark.needs_admin
async def test_feature_switch_takes_effect_after_propagation_delay(endpoint, im_user, until, units):
    """Receipts switched on for a pro app are refused until the activation delay passes."""
    app = await endpoint.with_app(tier="pro", features={"receipts": False}, protocol="v2")
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    ack = await alice.send(bob, "read me once receipts are on")
    with pytest.raises(FeatureDisabled):
        await bob.client.mark_read(ack.conversation, ack.seq)

    delay = units(1)
    effective_at = await endpoint.admin.update_app(
        app.settings.app_id, features={"receipts": True}, delay_s=delay
    )
    with pytest.raises(FeatureDisabled):
        await bob.client.mark_read(ack.conversation, ack.seq)
    assert time.time() < effective_at, "the check above ran after the delay; it proved nothing"

    await asyncio.sleep(max(0.0, effective_at - time.time()))  # pass the announced delay

    async def works() -> bool:
        try:
            await bob.client.mark_read(ack.conversation, ack.seq)
        except FeatureDisabled:
            return False
        return True

    await until(works, timeout=units(2), what="receipts to work after the activation delay")


@pytest.mark.needs_admin
async def test_upgrade_to_a_higher_tier_raises_the_limits(endpoint, im_user, units):
    """After an app moves from free to pro, the pro tier's larger message size applies."""
    app = await endpoint.with_app(tier="free")
    app_id = app.settings.app_id
    before = (await endpoint.admin.get_app(app_id))["effective"]["limits"]["max_message_bytes"]
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    body = "x" * (before + 1)
    with pytest.raises(TooLarge):
        await alice.client.send(Target.to_user(bob.id), body)

    await endpoint.admin.update_app(app_id, tier="pro", delay_s=0)
    effective = (await endpoint.admin.get_app(app_id))["effective"]
    assert effective["tier"] == "pro"
    after = effective["limits"]["max_message_bytes"]
    assert after > before, f"the pro tier reports max_message_bytes {after}, free {before}"
    ack = await alice.send(bob, body)
    [got] = await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    assert got.body == body


@pytest.mark.needs_admin
@pytest.mark.capability("history")
async def test_history_retention_hides_expired_messages(endpoint, im_user, units):
    """Messages older than the tier's history retention are no longer returned by history."""
    retention = units(1)
    try:
        app = await endpoint.with_app(limits={"history_retention_s": retention})
    except (TypeError, Unsupported) as exc:
        pytest.skip(f"a retention of days cannot be observed in a suite; {exc}")
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    old = await alice.send(bob, "soon forgotten")
    await asyncio.sleep(retention + units(0.2))  # let the first message age past retention
    new = await alice.send(bob, "still remembered")
    page = await bob.history(new.conversation, limit=10)
    assert [m.message_id for m in page.messages] == [new.message_id], (
        f"history still returns {old.message_id} past retention"
    )
