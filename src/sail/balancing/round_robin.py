"""Envoy's ROUND_ROBIN, also registered as `weighted_round_robin`.

Equal weights give a plain rotation; unequal weights give a weighted round robin whose
shares match the weights exactly over every cycle. The picker is lock-free: the whole
rotation is precomputed into a tuple and a shared `itertools.count()` hands out positions.
`next()` on a count is one atomic C call under the GIL, so any number of threads and
coroutines can pick at once without a lock and without two of them drifting out of turn.

**Slow start** (`slow_start_config`, Envoy's semantics, see `sail.balancing.edf`): while an
endpoint is within its window the picker is Envoy's EDF with time-scaled weights (O(log N) a
pick); once the last window has passed it hands over to the plain rotation. Slow start needs
the cluster's `ClusterStats` to know when each endpoint joined.

(gRPC's own `weighted_round_robin` is a different policy that weights endpoints by the load
they report through ORCA; here the name is an alias of round robin, which honours the EDS
`load_balancing_weight` of each endpoint.)
"""

from __future__ import annotations

import itertools
import random
from bisect import bisect_right
from typing import TYPE_CHECKING

from sail.balancing.edf import DynamicEdfPicker, SlowStart
from sail.balancing.schedule import (
    SCHEDULE_LIMIT,
    cumulative_bounds,
    edf_schedule,
    host_weights,
    reduce_weights,
)
from sail.balancing.unavailable import UnavailablePicker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import ClusterStats
    from sail.model import Endpoint, LbPolicy

__all__ = ["GoldenRatioPicker", "RoundRobinPicker", "round_robin_picker"]

_MASK64 = (1 << 64) - 1
_PHI64 = 0x9E3779B97F4A7C15
"""2**64 / golden ratio, odd: `n * _PHI64 mod 2**64` is Weyl's sequence `n * phi mod 1` in
fixed point (Knuth's Fibonacci hashing), exact in integers however large `n` grows."""


class RoundRobinPicker:
    """Walks a precomputed schedule: `schedule[next(counter) % len(schedule)]`, O(1).

    The counter starts at a random position so that a fleet of clients built from the same
    config does not send its first requests all to the first endpoint.
    """

    __slots__ = ("_counter", "_schedule", "_size")

    def __init__(self, schedule: Sequence[Endpoint]) -> None:
        self._schedule = tuple(schedule)
        self._size = len(self._schedule)
        self._counter = itertools.count(random.randrange(self._size))

    def pick(self, hash_key: int | None = None) -> Endpoint:
        return self._schedule[next(self._counter) % self._size]

    def __repr__(self) -> str:
        return f"RoundRobinPicker({self._size} slots)"


class GoldenRatioPicker:
    """Weighted round robin for weights too uneven to precompute, O(log N).

    The *n*-th pick takes the point `frac(n * phi)` of the cumulative weight line and bisects
    for the endpoint owning it. Successive points of this low-discrepancy sequence fill
    [0, 1) almost evenly (any interval of length *p* receives `n * p + O(log n)` of the first
    *n* points), so shares track the weights as closely as a real schedule does, with no
    table at all. Integer arithmetic keeps it exact at any count.
    """

    __slots__ = ("_bounds", "_counter", "_endpoints", "_total")

    def __init__(self, endpoints: Sequence[Endpoint], weights: Sequence[int]) -> None:
        self._endpoints = tuple(endpoints)
        self._bounds, self._total = cumulative_bounds(weights)
        self._counter = itertools.count(random.randrange(1 << 32))

    def pick(self, hash_key: int | None = None) -> Endpoint:
        point = ((next(self._counter) * _PHI64) & _MASK64) * self._total >> 64
        return self._endpoints[bisect_right(self._bounds, point)]

    def __repr__(self) -> str:
        return f"GoldenRatioPicker({len(self._endpoints)} endpoints, total weight {self._total})"


def round_robin_picker(
    endpoints: Sequence[Endpoint],
    policy: LbPolicy | None = None,
    stats: ClusterStats | None = None,
) -> Picker:
    """The `round_robin` / `weighted_round_robin` policy factory.

    * all weights equal: the endpoints in order, rotated;
    * otherwise weights are divided by their gcd and, when the cycle is at most
      `SCHEDULE_LIMIT` long, laid out by `edf_schedule`; beyond that `GoldenRatioPicker`;
    * with `slow_start_config` and an endpoint still in its window (known from `stats`):
      a `DynamicEdfPicker` that becomes the above when the window ends.
    """
    hosts = tuple(endpoints)
    if not hosts:
        return UnavailablePicker("no endpoints")
    weights = host_weights(hosts)
    steady = _static_picker(hosts, weights)
    slow_start = SlowStart.from_policy(policy)
    if slow_start is None or stats is None or len(hosts) < 2:
        return steady
    counters = [stats.host(e) for e in hosts]
    starts, until = slow_start.starts(hosts, counters, stats.clock())
    if until is None:
        return steady
    return DynamicEdfPicker(
        hosts,
        weights,
        counters,
        slow_start=slow_start,
        starts=starts,
        until=until,
        steady=steady,
        clock=stats.clock,
    )


def _static_picker(hosts: tuple[Endpoint, ...], weights: list[int]) -> Picker:
    if min(weights) == max(weights):
        return RoundRobinPicker(hosts)
    weights = reduce_weights(weights)
    if sum(weights) <= SCHEDULE_LIMIT:
        return RoundRobinPicker(edf_schedule(hosts, weights))
    return GoldenRatioPicker(hosts, weights)
