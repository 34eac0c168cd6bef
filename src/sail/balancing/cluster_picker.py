"""`build_picker`: one immutable picker for a cluster, with Envoy's priority levels, panic
threshold and locality weights around the cluster's policy.

A pick goes down three steps, as in Envoy (docs "arch_overview/upstream/load_balancing"):

1. the **priority level**, by the priority load (`sail.balancing.priority`);
2. the **locality** within it, by effective locality weight (`sail.balancing.locality`) -
   skipped when the level is in panic, which balances over all of the level's hosts;
3. the **endpoint**, by the cluster's policy (`round_robin`, `random`...) over the healthy
   endpoints of that locality.

The cluster's `ClusterStats` (`sail.balancing.stats`), when the caller keeps one, is brought
up to date with the assignment (`observe`) and handed to the policy, so `least_request` reads
live request counts and slow start knows when each endpoint joined. Without one, a private
table is used: every count reads 0 and no endpoint is in slow start.

Everything is decided at build time. Steps 1 and 2 are a random draw and a bisect each, and
disappear when there is only one choice: a cluster with one priority and one locality gets
its policy's picker itself. When `pick()` is given a request hash, steps 1 and 2 draw from the
hash instead of `rand`, so a hashing policy keeps each key in one priority and locality.

Locality weighting is always on, as in gRPC. Envoy applies it only when the cluster sets
`common_lb_config.locality_weighted_lb_config`, and otherwise treats the level's healthy hosts
as one group; the model carries no such switch (and a locality weight defaults to 1), so two
localities of 10 and 2 hosts split a level 50/50 here, not 10/2.

Health, as gRPC and as Envoy without active health checking: HEALTHY and UNKNOWN endpoints
take traffic; UNHEALTHY, TIMEOUT and DEGRADED count as hosts that do not; DRAINING endpoints
are excluded altogether (not counted, never picked, even in panic - Envoy would still pick
them in panic, but a draining host is on its way out). Envoy gives DEGRADED hosts a second
tier of their own, used only when the healthy ones do not suffice; sail simply does not send
them traffic outside panic.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, cast

import attrs

from sail.balancing import registry
from sail.balancing.locality import effective_locality_weight
from sail.balancing.priority import LevelHealth, priority_load
from sail.balancing.stats import ClusterStats
from sail.balancing.unavailable import UnavailablePicker
from sail.balancing.weighted_choice import WeightedChoicePicker
from sail.errors import ConfigError
from sail.model import Cluster, ClusterLoadAssignment, Endpoint, HealthStatus, LocalityEndpoints

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sail.balancing.base import AnyPolicyFactory, LegacyPolicyFactory, Picker, PolicyFactory
    from sail.model import LbPolicy

    BoundFactory = Callable[[Sequence[Endpoint], LbPolicy], Picker]

__all__ = ["build_picker"]

_PRIORITY_SALT = 0x5A11_0001
_LOCALITY_SALT = 0x5A11_0002


def _counted(loc: LocalityEndpoints) -> list[Endpoint]:
    """The hosts Envoy counts: all but DRAINING ones."""
    return [e for e in loc.endpoints if e.health is not HealthStatus.DRAINING]


def _healthy(loc: LocalityEndpoints) -> list[Endpoint]:
    return [e for e in loc.endpoints if e.health.takes_traffic]


@attrs.frozen
class _Level:
    """The localities of one priority level."""

    priority: int
    localities: tuple[LocalityEndpoints, ...]

    def health(self) -> LevelHealth:
        return LevelHealth(
            healthy=sum(len(_healthy(loc)) for loc in self.localities),
            hosts=sum(len(_counted(loc)) for loc in self.localities),
        )


def build_picker(
    cluster: Cluster,
    assignment: ClusterLoadAssignment,
    *,
    rand: Callable[[], float] = random.random,
    stats: ClusterStats | None = None,
    shunned: frozenset[str] = frozenset(),
) -> Picker:
    """Build the picker for `cluster` over the endpoints of `assignment`.

    **Parameters**

    * `cluster` - supplies the policy (`lb_policy`) and `healthy_panic_threshold` (percent,
      default 50; 0 disables panic).
    * `assignment` - the endpoints by locality and priority, and `overprovisioning_factor`
      (percent, default 140).
    * `rand` - the draws for the priority and locality steps; tests pass a seeded one.
    * `stats` - the cluster's counters, kept by the caller across rebuilds (one table per
      cluster); optional. Updated here with the assignment's endpoints.
    * `shunned` - authorities of unhealthy hosts known not to answer at all (ejected for
      refusing or dropping connections): a level in panic leaves them out, unless it has
      nothing else. Envoy's panic sends to every host; sending to one that refuses
      connections only turns a request into a failed attempt.

    Never fails for lack of endpoints: the picker then raises `NoHealthyUpstream` on `pick()`,
    naming the cluster and why. Raises `ConfigError` for a policy name nothing registered.
    """
    factory = registry.get(cluster.lb_policy.name)
    if factory is None:
        known = ", ".join(sorted(registry.names())) or "none"
        raise ConfigError(
            f"cluster {cluster.name!r}: unknown load-balancing policy "
            f"{cluster.lb_policy.name!r} (registered: {known})"
        )
    endpoints = assignment.endpoints
    if stats is None:
        stats = ClusterStats()
        stats.observe(endpoints, now=float("-inf"))  # nobody new: no slow start
    else:
        stats.observe(endpoints)
    bound = _bind(factory, stats)
    if not endpoints:
        return UnavailablePicker(f"cluster {cluster.name!r} has no endpoints")

    # Envoy's proto rejects a factor of 0 (a validator the model does not have): use the default.
    factor = assignment.overprovisioning_factor
    if factor <= 0:
        factor = 140
    levels = _levels(assignment)
    load = priority_load([lv.health() for lv in levels], factor, cluster.healthy_panic_threshold)

    children: list[tuple[float, Picker, str]] = []
    for level, percent, panic in zip(levels, load.loads, load.panic, strict=True):
        if percent == 0:
            continue
        if panic:
            hosts = [e for loc in level.localities for e in _counted(loc)]
            if shunned:
                hosts = [e for e in hosts if e.authority not in shunned] or hosts
            picker = bound(hosts, cluster.lb_policy)
        else:
            picker = _level_picker(level, bound, cluster, factor, rand)
        children.append((percent, picker, f"P{level.priority}" + (" panic" if panic else "")))

    if not children:
        return UnavailablePicker(_unhealthy_reason(cluster.name, endpoints))
    if len(children) == 1:
        return children[0][1]
    return WeightedChoicePicker(children, rand, _PRIORITY_SALT)


def _bind(factory: AnyPolicyFactory, stats: ClusterStats) -> BoundFactory:
    """`factory` as `(endpoints, policy) -> Picker`, passing `stats` when it takes them."""
    if registry.takes_stats(factory):
        full = cast("PolicyFactory", factory)
        return lambda hosts, policy: full(hosts, policy, stats)
    return cast("LegacyPolicyFactory", factory)


def _levels(assignment: ClusterLoadAssignment) -> list[_Level]:
    by_priority: dict[int, list[LocalityEndpoints]] = {}
    for loc in assignment.localities:
        by_priority.setdefault(loc.priority, []).append(loc)
    return [_Level(p, tuple(by_priority[p])) for p in sorted(by_priority)]


def _level_picker(
    level: _Level,
    factory: BoundFactory,
    cluster: Cluster,
    factor: int,
    rand: Callable[[], float],
) -> Picker:
    """Locality choice (when there is one to make) over the policy's pickers."""
    children: list[tuple[float, Picker, str]] = []
    for loc in level.localities:
        healthy = _healthy(loc)
        weight = effective_locality_weight(loc.weight, len(healthy), len(_counted(loc)), factor)
        if weight > 0 and healthy:
            children.append((weight, factory(healthy, cluster.lb_policy), str(loc.locality)))
    if not children:
        # Every locality weighs 0 (weights of 0 from EDS): like Envoy without a locality
        # schedule, balance over the level's healthy hosts as one group.
        hosts = [e for loc in level.localities for e in _healthy(loc)]
        return factory(hosts, cluster.lb_policy)
    if len(children) == 1:
        return children[0][1]
    return WeightedChoicePicker(children, rand, _LOCALITY_SALT)


def _unhealthy_reason(cluster_name: str, endpoints: Sequence[Endpoint]) -> str:
    """The message, e.g. `cluster 'reviews': 0 of 3 endpoints healthy (2 DRAINING, 1 UNHEALTHY)`."""
    healthy = sum(1 for e in endpoints if e.health.takes_traffic)
    states = Counter(e.health.name for e in endpoints if not e.health.takes_traffic)
    detail = ", ".join(
        f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    return f"cluster {cluster_name!r}: {healthy} of {len(endpoints)} endpoints healthy ({detail})"
