"""Envoy's locality weighted load balancing: a locality's share within its priority level.

From the docs "arch_overview/upstream/load_balancing/locality_weight":

```
availability(L) = factor * healthy(L) / hosts(L)            # factor in percent, default 140
effective_weight(L) = locality_weight(L) * min(100, availability(L)) / 100
load to L = effective_weight(L) / sum(effective_weight(all localities of the level))
```

So a locality loses nothing until fewer than ~71 % of its hosts are healthy, then gives up
share in proportion; with localities X (weight 1) and Y (weight 2) and half of X healthy,
X gets 0.7 / 2.7 = 26 % of the level's traffic. A locality with no healthy host, or weight 0,
gets none. As in Envoy, DRAINING hosts are left out of `hosts(L)` altogether.
"""

from __future__ import annotations

__all__ = ["effective_locality_weight"]


def effective_locality_weight(
    weight: int, healthy: int, hosts: int, overprovisioning_factor: int = 140
) -> float:
    """`weight * min(1, factor / 100 * healthy / hosts)`; 0.0 for a locality with no hosts."""
    if hosts <= 0 or weight <= 0:
        return 0.0
    return weight * min(1.0, overprovisioning_factor / 100 * healthy / hosts)
