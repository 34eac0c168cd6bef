"""Load balancing: named policies and the cluster picker built from them.

```python
from sail.balancing import build_picker
picker = build_picker(cluster, assignment)   # at config time, off the request path
endpoint = picker.pick()                     # per request: lock-free, never blocks
```

Importing this package registers the built-in policies, once:

| name | picker |
|---|---|
| `round_robin` | rotation; weighted (EDF schedule) when endpoint weights differ |
| `weighted_round_robin` | the same picker |
| `random` | independent draws proportional to endpoint weights |

A policy is a `PolicyFactory`, `(endpoints, LbPolicy) -> Picker`, added with
`registry.register(name, factory)`.
"""

from __future__ import annotations

from sail.balancing import registry
from sail.balancing.base import Picker, PolicyFactory
from sail.balancing.cluster_picker import build_picker
from sail.balancing.random_policy import random_picker
from sail.balancing.round_robin import round_robin_picker
from sail.balancing.unavailable import UnavailablePicker

__all__ = ["Picker", "PolicyFactory", "UnavailablePicker", "build_picker", "registry"]

_BUILTIN: dict[str, PolicyFactory] = {
    "round_robin": round_robin_picker,
    "weighted_round_robin": round_robin_picker,
    "random": random_picker,
}

for _name, _factory in _BUILTIN.items():
    registry.register(_name, _factory)
