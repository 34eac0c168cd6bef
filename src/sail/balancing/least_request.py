"""Envoy's LEAST_REQUEST (`envoy.load_balancing_policies.least_request`).

Which algorithm runs depends on the weights, as in Envoy (docs
"arch_overview/upstream/load_balancing/load_balancers", `least_request_lb.cc`):

* **All weights equal: N random choices** (`choice_count`, default 2 - "power of two
  choices"). Draw `choice_count` hosts uniformly at random, *with* replacement, and take the
  one with the fewest active requests; on a tie the first drawn wins. O(1), and nearly as good
  as a full scan. `selection_method: FULL_SCAN` scans every host instead, breaking ties at
  random (reservoir sampling), O(N).
* **Weights differ: weighted least request**, an EDF schedule whose weights are read at pick
  time: `weight / (active_requests + 1) ** active_request_bias` (`active_request_bias`
  default 1.0; 0 makes it plain weighted round robin). A busy host is not excluded, it just
  comes round less often. See `sail.balancing.edf`.

Active request counts come from the cluster's `ClusterStats` (`sail.balancing.stats`), which
the data plane updates around each request; the picker keeps a reference to each endpoint's
`HostStats` and reads `active` on every pick, so a count changes picks at once, with no
rebuild. `slow_start_config` applies as for round robin: while an endpoint is in its window
the EDF path is used even with equal weights (as Envoy does), then the picker hands over to
the N-choices one.

Where sail differs from Envoy 1.40: counts are per process (as Envoy's are per Envoy), and a
count that a lost update drove below 0 reads as 0. Envoy's newer releases
(after 1.40) also use the weighted path when `active_request_bias` is set explicitly, even
with equal weights; sail follows 1.40 and uses N choices then.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sail.balancing.edf import DynamicEdfPicker, SlowStart, sanitize_exponent
from sail.balancing.schedule import host_weights
from sail.balancing.stats import ClusterStats
from sail.balancing.unavailable import UnavailablePicker
from sail.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import HostStats
    from sail.model import Endpoint, LbPolicy

__all__ = [
    "FullScanPicker",
    "NChoicesPicker",
    "TwoChoicesPicker",
    "least_request_picker",
]


class TwoChoicesPicker:
    """P2C: two uniform draws (with replacement), the less loaded wins, the first on a tie."""

    __slots__ = ("_endpoints", "_hosts", "_random", "_size")

    def __init__(self, endpoints: Sequence[Endpoint], hosts: Sequence[HostStats]) -> None:
        self._endpoints = tuple(endpoints)
        self._hosts = tuple(hosts)
        self._size = len(self._endpoints)
        self._random = random.random

    def pick(self, hash_key: int | None = None) -> Endpoint:
        draw, n, hosts = self._random, self._size, self._hosts
        first = int(draw() * n)
        second = int(draw() * n)
        if hosts[second].active < hosts[first].active:
            first = second
        return self._endpoints[first]

    def __repr__(self) -> str:
        return f"TwoChoicesPicker({self._size} endpoints)"


class NChoicesPicker:
    """`choice_count` uniform draws (with replacement); the fewest active requests wins."""

    __slots__ = ("_choices", "_endpoints", "_hosts", "_random", "_size")

    def __init__(
        self, endpoints: Sequence[Endpoint], hosts: Sequence[HostStats], choices: int
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._hosts = tuple(hosts)
        self._size = len(self._endpoints)
        self._choices = range(choices - 1)
        self._random = random.random

    def pick(self, hash_key: int | None = None) -> Endpoint:
        draw, n, hosts = self._random, self._size, self._hosts
        best = int(draw() * n)
        least = hosts[best].active
        for _ in self._choices:
            candidate = int(draw() * n)
            active = hosts[candidate].active
            if active < least:
                best, least = candidate, active
        return self._endpoints[best]

    def __repr__(self) -> str:
        return f"NChoicesPicker({self._size} endpoints, {len(self._choices) + 1} choices)"


class FullScanPicker:
    """`selection_method: FULL_SCAN`: the host with the fewest active requests, ties broken
    uniformly at random (reservoir sampling, as Envoy's `unweightedHostPickFullScan`). O(N)."""

    __slots__ = ("_endpoints", "_hosts", "_random")

    def __init__(self, endpoints: Sequence[Endpoint], hosts: Sequence[HostStats]) -> None:
        self._endpoints = tuple(endpoints)
        self._hosts = tuple(hosts)
        self._random = random.random

    def pick(self, hash_key: int | None = None) -> Endpoint:
        best = 0
        least = self._hosts[0].active
        tied = 1
        draw = self._random
        for i, host in enumerate(self._hosts):
            active = host.active
            if active < least:
                best, least, tied = i, active, 1
            elif active == least and i:
                tied += 1
                if draw() * tied < 1.0:
                    best = i
        return self._endpoints[best]

    def __repr__(self) -> str:
        return f"FullScanPicker({len(self._endpoints)} endpoints)"


def least_request_picker(
    endpoints: Sequence[Endpoint],
    policy: LbPolicy | None = None,
    stats: ClusterStats | None = None,
) -> Picker:
    """The `least_request` policy factory.

    Options: `choice_count` (default 2, at least 2), `active_request_bias` (default 1.0),
    `selection_method` (`N_CHOICES` or `FULL_SCAN`), `slow_start_config`. Without `stats`
    every count reads 0 (the picker is then as good as random).
    """
    hosts = tuple(endpoints)
    if not hosts:
        return UnavailablePicker("no endpoints")
    if stats is None:
        stats = ClusterStats()
        stats.observe(hosts, now=float("-inf"))
    counters = [stats.host(e) for e in hosts]
    choices = _option_int(policy, "choice_count", 2)
    if choices < 2:
        raise ConfigError(f"least_request: choice_count {choices} is less than 2")
    bias = sanitize_exponent(policy.option("active_request_bias") if policy else None)
    method = policy.option("selection_method", "N_CHOICES") if policy else "N_CHOICES"
    if method not in ("N_CHOICES", "FULL_SCAN"):
        raise ConfigError(f"least_request: unknown selection_method {method!r}")

    weights = host_weights(hosts)
    equal = min(weights) == max(weights)
    steady: Picker | None = None
    if equal:
        if method == "FULL_SCAN":
            steady = FullScanPicker(hosts, counters)
        elif choices == 2:
            steady = TwoChoicesPicker(hosts, counters)
        else:
            steady = NChoicesPicker(hosts, counters, choices)

    slow_start = SlowStart.from_policy(policy)
    starts: tuple[float | None, ...] = ()
    until: float | None = None
    if slow_start is not None and len(hosts) > 1:
        starts, until = slow_start.starts(hosts, counters, stats.clock())
    if steady is not None and until is None:
        return steady
    if len(hosts) == 1:
        return steady or TwoChoicesPicker(hosts, counters)
    return DynamicEdfPicker(
        hosts,
        weights,
        counters,
        bias=bias,
        slow_start=slow_start,
        starts=starts,
        until=until,
        steady=steady,
        clock=stats.clock,
    )


def _option_int(policy: LbPolicy | None, key: str, default: int) -> int:
    value = policy.option(key, default) if policy else default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"option {key!r} must be an integer, got {value!r}")
    return value
