"""The warm pool's pure decisions, table-tested: refill, bounds, rollout, burn after use, claims."""

from __future__ import annotations

import pytest

from voltgrid.api.pool import (
    PodState,
    PoolPod,
    RefillBucket,
    counts,
    pick_for_claim,
    plan,
    template_hash,
)
from voltgrid.api.sandboxtemplate import SandboxTemplateSpec

STATES = {"W": PodState.WARMING, "R": PodState.READY, "C": PodState.CLAIMED, "D": PodState.DEAD}


def pods(text: str) -> list[PoolPod]:
    """``"R:new W:old C:old"`` -> pods p0, p1, ... created in that order, with those states and hashes."""
    return [PoolPod(f"p{i}", h, STATES[s], float(i)) for i, (s, h) in enumerate(w.split(":") for w in text.split())]


def spec(**kw: int) -> SandboxTemplateSpec:
    return SandboxTemplateSpec.model_validate({"image": "img", **kw})


@pytest.mark.parametrize(
    ("sizing", "observed", "create", "delete"),
    [
        # An empty pool fills up, bounded by maxWarming and by the refill bucket.
        ((5, 10, 100, 0), "", 5, ()),
        ((5, 2, 100, 0), "", 2, ()),
        ((5, 10, 3, 0), "", 3, ()),
        ((5, 10, 0, 0), "", 0, ()),
        # Pods already warming count towards the pool and against maxWarming.
        ((5, 3, 100, 0), "W:new W:new", 1, ()),
        ((2, 10, 100, 0), "R:new W:new", 0, ()),
        # Burn after use: claimed pods are neither counted as warm nor ever deleted; the pool refills.
        ((2, 10, 100, 0), "C:new C:new R:new", 1, ()),
        ((0, 10, 100, 0), "C:new C:old", 0, ()),
        # Dead pods are deleted and replaced.
        ((1, 10, 100, 0), "D:new", 1, ("p0",)),
        # Scale down: warming first (newest first), then the oldest ready.
        ((1, 10, 100, 0), "R:new R:new W:new W:new", 0, ("p3", "p2", "p0")),
        ((0, 10, 100, 0), "R:new W:new", 0, ("p1", "p0")),
        # Claims waiting on an empty pool create on demand, beyond replicas.
        ((0, 10, 100, 2), "", 2, ()),
        ((1, 10, 100, 2), "R:new", 2, ()),
        # Rollout: outdated warming pods go at once; outdated ready ones only as new ones are ready.
        ((2, 10, 100, 0), "R:old R:old", 2, ()),
        ((2, 10, 100, 0), "R:old R:old W:old", 2, ("p2",)),
        ((2, 10, 100, 0), "R:old R:old R:new W:new", 0, ("p0",)),
        ((2, 10, 100, 0), "R:old R:old R:new R:new", 0, ("p0", "p1")),
        ((2, 10, 100, 0), "R:old C:old R:new R:new", 0, ("p0",)),
    ],
)
def test_plan(sizing: tuple[int, int, int, int], observed: str, create: int, delete: tuple[str, ...]) -> None:
    """``sizing``: (replicas, maxWarming, the bucket's allowance, claims waiting)."""
    replicas, max_warming, allowance, waiting = sizing
    p = plan(
        spec(replicas=replicas, maxWarming=max_warming),
        pods(observed),
        "new",
        allowance=allowance,
        now=0.0,
        waiting=waiting,
    )
    assert (p.create, p.delete) == (create, delete)


def test_a_rollout_never_drops_ready_below_replicas() -> None:
    """Drive a 3-pod pool from revision old to new, one step at a time, with pods ready next step."""
    s = spec(replicas=3, maxWarming=1)
    live = pods("R:old R:old R:old")
    for step in range(10):
        p = plan(s, live, "new", allowance=10, now=0.0)
        assert sum(x.state is PodState.READY for x in live) >= 3
        live = [x for x in live if x.name not in p.delete]
        live = [PoolPod(x.name, x.template_hash, PodState.READY, x.created) for x in live]  # warming -> ready
        live += [PoolPod(f"n{step}-{i}", "new", PodState.WARMING, 100.0 + step) for i in range(p.create)]
    assert {x.template_hash for x in live} == {"new"} and len(live) == 3


def test_counts_feed_the_status_and_scale() -> None:
    c = counts(pods("R:new R:old W:new C:new C:old D:new"), "new")
    assert (c.ready, c.warming, c.claimed, c.updated, c.replicas) == (2, 1, 2, 2, 3)


@pytest.mark.parametrize(
    ("observed", "picked"),
    [("", None), ("W:new C:new", None), ("R:old R:new R:new", "p1"), ("R:old R:old", "p0"), ("C:new R:new", "p1")],
)
def test_a_claim_takes_the_oldest_ready_pod_of_the_current_revision(observed: str, picked: str | None) -> None:
    pod = pick_for_claim(pods(observed), "new")
    assert (pod.name if pod else None) == picked


@pytest.mark.parametrize(
    ("change", "rolls_out"),
    [
        ({"replicas": 7}, False),
        ({"maxWarming": 3, "refillPerMinute": 5}, False),
        ({"ttl": "5m", "maxTtl": "1h"}, False),
        ({"image": "img:2"}, True),
        ({"env": [{"name": "A", "value": "1"}]}, True),
        ({"resources": {"cpu": "1"}}, True),
        ({"network": {"allowDns": True}}, True),
        ({"isolation": {"runtimeClassName": "gvisor"}}, True),
    ],
)
def test_template_hash_changes_only_with_what_a_pod_is_made_of(change: dict[str, object], rolls_out: bool) -> None:
    base = SandboxTemplateSpec.model_validate({"image": "img"})
    changed = SandboxTemplateSpec.model_validate({"image": "img", **change})
    assert (template_hash(base) != template_hash(changed)) is rolls_out
    assert len(template_hash(base)) == 10


def test_refill_bucket_is_bounded_to_a_minute_and_refills_at_its_rate() -> None:
    b = RefillBucket.full(per_minute=60, now=0.0)
    assert b.available(0.0) == 60
    b.take(60)
    assert b.available(0.0) == 0
    assert b.available(10.0) == 10
    b.take(10)
    assert b.available(1000.0) == 60  # never more than one minute's worth
    assert b.available(999.0) == 60  # a clock read out of order does not mint tokens
