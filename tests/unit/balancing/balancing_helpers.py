"""Builders shared by the balancing tests."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import sail.balancing  # noqa: F401  (registers the built-in policies)
from sail.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    LbPolicy,
    Locality,
    LocalityEndpoints,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from sail.balancing.base import Picker

H = HealthStatus


def endpoints(
    prefix: str, n: int, health: HealthStatus = H.HEALTHY, weight: int = 1
) -> tuple[Endpoint, ...]:
    """`n` endpoints `prefix.0` ... `prefix.n-1` on port 80."""
    return tuple(Endpoint(f"{prefix}.{i}", 80, weight=weight, health=health) for i in range(n))


def mixed(
    prefix: str, healthy: int, unhealthy: int, bad: HealthStatus = H.UNHEALTHY
) -> tuple[Endpoint, ...]:
    """`healthy` HEALTHY endpoints followed by `unhealthy` ones in state `bad`."""
    good = endpoints(prefix, healthy)
    rest = tuple(Endpoint(f"{prefix}.{healthy + i}", 80, health=bad) for i in range(unhealthy))
    return good + rest


def loc(
    name: str, eps: Sequence[Endpoint], *, weight: int = 1, priority: int = 0
) -> LocalityEndpoints:
    return LocalityEndpoints(Locality("region", name), tuple(eps), weight, priority)


def assignment(*localities: LocalityEndpoints, factor: int = 140) -> ClusterLoadAssignment:
    return ClusterLoadAssignment("reviews", tuple(localities), factor)


def cluster(policy: str = "round_robin", panic: float = 50.0) -> Cluster:
    return Cluster("reviews", lb_policy=LbPolicy(policy), healthy_panic_threshold=panic)


def seeded(seed: int = 7) -> Callable[[], float]:
    return random.Random(seed).random


def counts(picker: Picker, n: int, key: Callable[[Endpoint], str] | None = None) -> Counter[str]:
    """How many of `n` picks landed on each key (default: the address)."""
    by = key or (lambda e: e.address)
    return Counter(by(picker.pick()) for _ in range(n))


def prefix(e: Endpoint) -> str:
    """The part of the address before the last dot: which group built it."""
    return e.address.rsplit(".", 1)[0]


def shares(c: Counter[str]) -> dict[str, float]:
    total = sum(c.values())
    return {k: v / total for k, v in c.items()}


def assert_shares(c: Counter[str], expected: dict[str, float], tol: float = 0.02) -> None:
    """Every key's share is within `tol` (absolute) of `expected`; unexpected keys fail."""
    got = shares(c)
    assert set(got) <= set(expected), f"unexpected keys: {set(got) - set(expected)}"
    for k, want in expected.items():
        assert abs(got.get(k, 0.0) - want) <= tol, f"{k}: got {got.get(k, 0.0):.4f}, want {want}"


def weight_shares(eps: Iterable[Endpoint]) -> dict[str, float]:
    eps = list(eps)
    total = sum(e.weight for e in eps)
    return {e.address: e.weight / total for e in eps}
