"""Property tests: health is honoured unless in panic, and shares follow weights."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.balancing import build_picker
from sail.balancing.priority import LevelHealth, priority_load
from sail.balancing.round_robin import RoundRobinPicker, round_robin_picker
from sail.balancing.weighted_choice import WeightedChoicePicker
from sail.errors import NoHealthyUpstream
from sail.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    LbPolicy,
    Locality,
    LocalityEndpoints,
)

statuses = st.sampled_from(list(HealthStatus))


@st.composite
def assignments(draw: st.DrawFn) -> ClusterLoadAssignment:
    localities = []
    for i in range(draw(st.integers(0, 5))):
        healths = draw(st.lists(statuses, max_size=6))
        eps = tuple(
            Endpoint(f"10.{i}.0.{j}", 80, weight=draw(st.integers(1, 5)), health=h)
            for j, h in enumerate(healths)
        )
        localities.append(
            LocalityEndpoints(
                Locality("r", f"z{i}"),
                eps,
                weight=draw(st.integers(0, 4)),
                priority=draw(st.integers(0, 2)),
            )
        )
    return ClusterLoadAssignment("c", tuple(localities), draw(st.sampled_from([100, 140, 200])))


@settings(max_examples=300, deadline=None)
@given(
    a=assignments(),
    policy=st.sampled_from(["round_robin", "random", "least_request", "ring_hash", "maglev"]),
    panic=st.sampled_from([0.0, 50.0, 100.0]),
    seed=st.integers(0, 2**32),
)
def test_picks_are_healthy_unless_in_panic(
    a: ClusterLoadAssignment, policy: str, panic: float, seed: int
) -> None:
    options = (("table_size", 131),) if policy == "maglev" else ()
    cluster = Cluster("c", lb_policy=LbPolicy(policy, options), healthy_panic_threshold=panic)
    picker = build_picker(cluster, a, rand=random.Random(seed).random)
    levels: dict[int, list[int]] = {}
    for loc in a.localities:
        h = levels.setdefault(loc.priority, [0, 0])
        h[0] += sum(e.health.takes_traffic for e in loc.endpoints)
        h[1] += sum(e.health is not HealthStatus.DRAINING for e in loc.endpoints)
    load = priority_load(
        [LevelHealth(*levels[p]) for p in sorted(levels)], a.overprovisioning_factor, panic
    )
    if sum(load.loads) == 0:
        try:
            picker.pick()
        except NoHealthyUpstream:
            return
        raise AssertionError("picked from a cluster with nothing to pick")
    keys = random.Random(seed)
    for i in range(50):
        e = picker.pick(keys.getrandbits(64) if i % 2 else None)
        assert e.health is not HealthStatus.DRAINING
        if not any(load.panic):
            assert e.health.takes_traffic


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(1, 50), min_size=1, max_size=20), cycles=st.integers(1, 3))
def test_round_robin_shares_are_exact_per_cycle(weights: list[int], cycles: int) -> None:
    eps = [Endpoint(f"10.0.0.{i}", 80, weight=w) for i, w in enumerate(weights)]
    picker = round_robin_picker(eps, LbPolicy("round_robin"))
    assert isinstance(picker, RoundRobinPicker)
    cycle = len(picker._schedule)
    c = Counter(picker.pick() for _ in range(cycle * cycles))
    # Shares are exactly proportional to the weights, whatever the starting offset.
    for e in eps:
        assert c[e] * sum(weights) == e.weight * cycle * cycles


@settings(max_examples=200, deadline=None)
@given(levels=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=5))
def test_priority_load_is_a_distribution(levels: list[tuple[int, int]]) -> None:
    healths = [LevelHealth(min(h, n), n) for h, n in levels]
    load = priority_load(healths)
    assert sum(load.loads) in (0, 100)
    assert sum(load.loads) == 0 or any(lv.hosts for lv in healths)
    if load.normalized_total_health == 100:
        assert not any(load.panic)
    # A level whose hosts all take traffic, with nothing above it short, keeps everything.
    if healths[0].hosts and healths[0].healthy == healths[0].hosts:
        assert load.loads[0] == 100


@settings(max_examples=200, deadline=None)
@given(
    localities=st.lists(
        st.tuples(st.integers(1, 10), st.integers(1, 4), st.integers(0, 4)), min_size=2, max_size=6
    )
)
def test_locality_shares_follow_effective_weights(localities: list[tuple[int, int, int]]) -> None:
    # (locality weight, healthy hosts, unhealthy hosts)
    locs = tuple(
        LocalityEndpoints(
            Locality("r", f"z{i}"),
            tuple(Endpoint(f"10.{i}.0.{j}", 80) for j in range(healthy))
            + tuple(
                Endpoint(f"10.{i}.1.{j}", 80, health=HealthStatus.UNHEALTHY) for j in range(bad)
            ),
            weight=w,
        )
        for i, (w, healthy, bad) in enumerate(localities)
    )
    a = ClusterLoadAssignment("c", locs)
    picker = build_picker(Cluster("c", healthy_panic_threshold=0), a)
    effective = [w * min(1.0, 1.4 * h / (h + b)) for w, h, b in localities]
    want = [x / sum(effective) for x in effective]
    assert isinstance(picker, WeightedChoicePicker)
    assert [share for _, share, _ in picker.children] == pytest.approx(want)
