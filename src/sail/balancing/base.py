"""The contract between the balancing policies and the data plane.

A policy is registered by name. From a list of hosts it builds a `Picker`: a small immutable
object whose `pick()` never blocks, takes no lock and does no I/O. Config updates build a
new picker and swap it whole; the request path only ever calls `pick()`.

Load-aware policies (`least_request`, slow start) also read the cluster's `ClusterStats`
(`sail.balancing.stats`): mutable per-endpoint counters that outlive the pickers, which the
data plane updates around each request and pickers only read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.stats import ClusterStats
    from sail.model import Endpoint, LbPolicy

__all__ = ["AnyPolicyFactory", "LegacyPolicyFactory", "Picker", "PolicyFactory"]


class Picker(Protocol):
    def pick(self, hash_key: int | None = None) -> Endpoint:
        """Choose one endpoint. `hash_key` is the request hash for hashing policies (a
        64-bit unsigned int, see `sail.balancing.hashing.request_hash`); others ignore it.
        Raises `sail.errors.NoHealthyUpstream` when nothing can be picked."""
        ...


class PolicyFactory(Protocol):
    def __call__(
        self, endpoints: Sequence[Endpoint], policy: LbPolicy, stats: ClusterStats, /
    ) -> Picker:
        """Build a picker over `endpoints` (non-empty, already filtered to those that take
        traffic) honouring each endpoint's `weight`. `stats` is the cluster's counters table,
        which already holds an entry for every endpoint: a picker may keep references to the
        `HostStats` it needs (`stats.host(endpoint)`) and read them on each pick."""
        ...


class LegacyPolicyFactory(Protocol):
    def __call__(self, endpoints: Sequence[Endpoint], policy: LbPolicy, /) -> Picker:
        """The two-argument form of `PolicyFactory`, for policies that need no counters.
        `build_picker` calls a factory that does not take a third argument this way."""
        ...


AnyPolicyFactory = PolicyFactory | LegacyPolicyFactory
"""What `registry.register` accepts."""
