"""Rings and Maglev tables are not built again for inputs built a moment ago: an ejected
host's return, a flapping host, a cluster update that changed no endpoint or option."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from sail.balancing import build_picker
from sail.balancing import maglev as maglev_module
from sail.balancing import ring_hash as ring_module
from sail.balancing.maglev import MaglevPicker, maglev_picker
from sail.balancing.ring_hash import RecentBuilds, RingHashPicker, ring_hash_picker
from sail.model import Cluster, Endpoint, HealthStatus, LbPolicy
from tests.unit.balancing.balancing_helpers import assignment, loc


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    ring_module._recent_rings.clear()
    maglev_module._recent_tables.clear()
    yield
    ring_module._recent_rings.clear()
    maglev_module._recent_tables.clear()


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of `module.name` (the builds actually run)."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def hosts(n: int, **kw: Any) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}", 8080, **kw) for i in range(n)]


def test_the_same_endpoints_reuse_the_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = counting(monkeypatch, ring_module, "build_ring")
    policy = LbPolicy("ring_hash")
    first = ring_hash_picker(hosts(5), policy)
    second = ring_hash_picker(hosts(5), policy)
    assert len(builds) == 1
    assert isinstance(first, RingHashPicker) and isinstance(second, RingHashPicker)
    assert first.ring == second.ring
    ring_hash_picker(hosts(5), LbPolicy("ring_hash", (("minimum_ring_size", 64),)))
    ring_hash_picker(hosts(5), LbPolicy("ring_hash", (("hash_function", "MURMUR_HASH_2"),)))
    ring_hash_picker(hosts(5, weight=2), policy)  # weights 2, 2, ...: a different input
    assert len(builds) == 4


def test_a_returning_host_gets_its_ring_back_without_a_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = counting(monkeypatch, ring_module, "build_ring")
    cluster = Cluster("c", lb_policy=LbPolicy("ring_hash"))
    eps = hosts(4)
    healthy = assignment(loc("a", eps))
    ejected = assignment(loc("a", [attrs.evolve(eps[0], health=HealthStatus.UNHEALTHY), *eps[1:]]))
    before = build_picker(cluster, healthy)
    during = build_picker(cluster, ejected)
    after = build_picker(cluster, healthy)
    assert len(builds) == 2  # the return reuses the first ring
    assert isinstance(before, RingHashPicker) and isinstance(after, RingHashPicker)
    assert isinstance(during, RingHashPicker)
    assert after.ring == before.ring
    assert eps[0] not in {e for _, e in during.ring}


def test_only_the_last_few_builds_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = counting(monkeypatch, ring_module, "build_ring")
    for n in range(1, 18):
        ring_hash_picker(hosts(n), LbPolicy("ring_hash"))
    ring_hash_picker(hosts(17), LbPolicy("ring_hash"))  # recent: kept
    ring_hash_picker(hosts(1), LbPolicy("ring_hash"))  # the oldest of 17: gone
    assert len(builds) == 18


class Builds:
    """`build(name, n)`: a build of `n` entries that records its runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def __call__(self, name: str, n: int) -> Callable[[], list[int]]:
        def run() -> list[int]:
            self.runs.append(name)
            return [0] * n
        return run


def test_recent_builds_keeps_no_result_larger_than_its_budget() -> None:
    recent: RecentBuilds[str, list[int]] = RecentBuilds(size=4, entries=3)
    build = Builds()
    for name, n in [("small", 3), ("big", 4), ("small", 3), ("big", 4)]:
        recent.get(name, build(name, n), len)
    assert build.runs == ["small", "big", "big"]


def test_recent_builds_drops_the_oldest_beyond_its_entry_budget() -> None:
    recent: RecentBuilds[str, list[int]] = RecentBuilds(size=10, entries=5)
    build = Builds()
    for name, n in [("a", 2), ("b", 2), ("c", 2), ("b", 2), ("c", 2), ("a", 2)]:
        recent.get(name, build(name, n), len)
    assert build.runs == ["a", "b", "c", "a"]  # "c" (6 entries in all) pushed "a" out


def test_the_same_endpoints_reuse_the_maglev_table(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = counting(monkeypatch, maglev_module, "build_table")
    policy = LbPolicy("maglev", (("table_size", 131),))
    first = maglev_picker(hosts(5), policy)
    second = maglev_picker(hosts(5), policy)
    assert isinstance(first, MaglevPicker) and isinstance(second, MaglevPicker)
    assert first.table == second.table
    assert len(builds) == 1
    maglev_picker(hosts(5), LbPolicy("maglev", (("table_size", 137),)))
    maglev_picker(hosts(5, hostname="h"), LbPolicy("maglev", (("table_size", 131),
                                                              ("use_hostname_for_hashing", True))))
    assert len(builds) == 3


def test_a_returning_host_gets_its_maglev_table_back_without_a_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = counting(monkeypatch, maglev_module, "build_table")
    cluster = Cluster("c", lb_policy=LbPolicy("maglev", (("table_size", 131),)))
    eps = hosts(4)
    healthy = assignment(loc("a", eps))
    ejected = assignment(loc("a", [*eps[:3], attrs.evolve(eps[3], health=HealthStatus.UNHEALTHY)]))
    before = build_picker(cluster, healthy)
    build_picker(cluster, ejected)
    after = build_picker(cluster, healthy)
    assert len(builds) == 2
    assert isinstance(before, MaglevPicker) and isinstance(after, MaglevPicker)
    assert after.table == before.table
