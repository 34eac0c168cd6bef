"""Envoy's priority load: how much traffic each priority level gets, and which levels panic.

This is the arithmetic of Envoy's `LoadBalancerBase` (`recalculatePerPriorityState`,
`recalculatePerPriorityPanic`, `recalculateLoadInTotalPanic`) with its integer percents, as
described in the docs "arch_overview/upstream/load_balancing/priority" and ".../panic_threshold".
For each level P, counting hosts (not weights, as Envoy does unless `weighted_priority_health`
is set):

```
health(P)               = min(100, factor * healthy(P) // hosts(P))        # integer percent
normalized_total_health = min(100, sum(health(P) for all P))
load(P_0)               = min(100, health(P_0) * 100 // normalized_total_health)
load(P_X)               = min(100 - sum(load(P_0) .. load(P_X-1)),
                              health(P_X) * 100 // normalized_total_health)
```

`factor` is the overprovisioning factor in percent (default 140): a level with 80 % healthy
hosts still counts as 100 % healthy (80 * 1.4 > 100), and P0 keeps all the traffic until
fewer than ~71.4 % of its hosts are healthy. The rounding leftover (at most one percent per
level) goes to the first level with any health, as in Envoy's code. (The doc tables round
some rows differently, e.g. healths {35, 35, 28} are 37/35/28 in Envoy and 36/36/28 in the
docs; this module follows the code.)

**Panic** (default threshold 50 %; 0 disables it). Only when normalized total health is below
100 - there are not enough healthy hosts anywhere - is each level checked on its own: a level
whose healthy share `100 * healthy / hosts` is below the threshold is *in panic* and balances
over all its hosts, healthy or not, for the load it was given. When every level is in panic
("total panic") the loads are recomputed from host counts alone:
`load(P) = 100 * hosts(P) // sum(hosts)`, leftover to the first non-empty level. So a cluster
whose hosts are all unhealthy still sends traffic to all of them - the point of panic is to
stop a cascade in which each failing host pushes more load onto the last few healthy ones.
The trap: with the threshold at 0 and nothing healthy, no level panics and no host is picked.
(The panic doc says all traffic then goes to P0; Envoy's code, followed here, spreads it by
host count.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LevelHealth", "PriorityLoad", "level_health", "priority_load"]


@attrs.frozen
class LevelHealth:
    """Host counts of one priority level.

    `hosts` counts every host Envoy does not *exclude*: DRAINING hosts are excluded (Envoy
    1.40's `exclude_host_in_eds_status_draining`), every other status counts. `healthy` counts
    the hosts that take traffic.
    """

    healthy: int
    hosts: int


@attrs.frozen
class PriorityLoad:
    """The result: per level, the percent of traffic (summing to 100, or all 0 when no host
    can be picked at all) and whether the level is in panic."""

    loads: tuple[int, ...]
    panic: tuple[bool, ...]
    normalized_total_health: int

    @property
    def total_panic(self) -> bool:
        return bool(self.panic) and all(self.panic)


def level_health(level: LevelHealth, overprovisioning_factor: int = 140) -> int:
    """`min(100, factor * healthy // hosts)`, 0 for an empty level."""
    if level.hosts <= 0:
        return 0
    return min(100, overprovisioning_factor * level.healthy // level.hosts)


def priority_load(
    levels: Sequence[LevelHealth],
    overprovisioning_factor: int = 140,
    panic_threshold: float = 50.0,
) -> PriorityLoad:
    """Envoy's priority load and panic flags for `levels`, highest priority (P0) first."""
    health = [level_health(level, overprovisioning_factor) for level in levels]
    normalized = min(100, sum(health))
    threshold = min(100.0, panic_threshold)
    loads = [0] * len(levels)

    if normalized > 0:
        remaining = 100
        for i, h in enumerate(health):
            loads[i] = min(remaining, h * 100 // normalized)
            remaining -= loads[i]
        if remaining:
            loads[next(i for i, h in enumerate(health) if h > 0)] += remaining

    if normalized == 100 or threshold <= 0:
        return PriorityLoad(tuple(loads), (False,) * len(levels), normalized)

    panic = tuple(_healthy_percent(level) < threshold for level in levels)
    if all(panic):
        loads = _loads_by_host_count(levels)
    return PriorityLoad(tuple(loads), panic, normalized)


def _healthy_percent(level: LevelHealth) -> float:
    return 100.0 * level.healthy / level.hosts if level.hosts > 0 else 0.0


def _loads_by_host_count(levels: Sequence[LevelHealth]) -> list[int]:
    total = sum(max(0, level.hosts) for level in levels)
    if total == 0:
        return [0] * len(levels)
    loads = [100 * max(0, level.hosts) // total for level in levels]
    loads[next(i for i, level in enumerate(levels) if level.hosts > 0)] += 100 - sum(loads)
    return loads
