"""Load balancing: named policies and the cluster picker built from them.

```python
from sail.balancing import ClusterStats, build_picker, request_hash
stats = ClusterStats()                                 # one per cluster, kept across rebuilds
picker = build_picker(cluster, assignment, stats=stats)   # at config time, off the request path
endpoint = picker.pick()                               # per request: lock-free, never blocks
endpoint = picker.pick(request_hash(route.hash_policies, headers, target).value)  # hashing
```

Importing this package registers the built-in policies, once. Each follows Envoy's policy of
the same name (the module docstrings say how, and where sail differs):

| name | picker | per pick |
|---|---|---|
| `round_robin` | rotation; EDF schedule when weights differ; `slow_start_config` | O(1) |
| `weighted_round_robin` | the same picker | O(1) |
| `random` | independent draws proportional to endpoint weights | O(log N) |
| `least_request` | equal weights: least loaded of `choice_count` (2) random draws | O(1) |
| | weights differ: EDF over `weight / (active + 1) ** active_request_bias` | O(log N) |
| `ring_hash` | ketama ring of xxHash64 points by weight, at most 4096 entries (A42) | O(log ring) |
| `maglev` | Maglev table of `table_size` (prime, 65537) slots claimed by weighted turns | O(1) |

`ring_hash` and `maglev` read the request hash passed to `pick(hash_key)` (see
`sail.balancing.hashing.request_hash`, Envoy's route `hash_policy`); with none they pick at
random, as Envoy does. `least_request` and slow start read the cluster's `ClusterStats`
(`sail.balancing.stats`), which the data plane keeps: `stats.host(endpoint).active` up around
each request.

A policy is a `PolicyFactory`, `(endpoints, LbPolicy, ClusterStats) -> Picker` (or
`(endpoints, LbPolicy) -> Picker` for one that needs no counters), added with
`registry.register(name, factory)`.
"""

from __future__ import annotations

from sail.balancing import registry
from sail.balancing.base import AnyPolicyFactory, LegacyPolicyFactory, Picker, PolicyFactory
from sail.balancing.cluster_picker import build_picker
from sail.balancing.hashing import RequestHash, request_hash
from sail.balancing.least_request import least_request_picker
from sail.balancing.maglev import maglev_picker
from sail.balancing.random_policy import random_picker
from sail.balancing.ring_hash import ring_hash_picker
from sail.balancing.round_robin import round_robin_picker
from sail.balancing.stats import ClusterStats, HostStats
from sail.balancing.unavailable import UnavailablePicker

__all__ = [
    "AnyPolicyFactory",
    "ClusterStats",
    "HostStats",
    "LegacyPolicyFactory",
    "Picker",
    "PolicyFactory",
    "RequestHash",
    "UnavailablePicker",
    "build_picker",
    "registry",
    "request_hash",
]

_BUILTIN: dict[str, PolicyFactory] = {
    "round_robin": round_robin_picker,
    "weighted_round_robin": round_robin_picker,
    "random": random_picker,
    "least_request": least_request_picker,
    "ring_hash": ring_hash_picker,
    "maglev": maglev_picker,
}

for _name, _factory in _BUILTIN.items():
    registry.register(_name, _factory)
