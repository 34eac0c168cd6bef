"""Per-endpoint counters the load-aware policies read: active requests and slow-start time.

Pickers are immutable and rebuilt on every config change, but `least_request` needs to know
how many requests each endpoint has in flight *now*, and slow start needs to know when each
endpoint joined. Both live in a small mutable table per cluster that outlives the pickers:

```python
stats = ClusterStats()                          # one per cluster, kept across rebuilds
picker = build_picker(cluster, cla, stats=stats)
endpoint = picker.pick()
host = stats.host(endpoint)                     # the data plane, around each request:
host.active += 1
try:
    ...                                         # send the request, read the response
finally:
    host.active -= 1
```

**The data plane writes, pickers only read.** No locks: `host.active += 1` is a read and a
write of a slot, which CPython's GIL in practice does not split (it hands over between
threads at calls and loop jumps, not inside this statement), and a lost update would only
skew balancing a little: pickers read a negative count as 0. Without the GIL (free-threaded
builds) counts may drift. The table is keyed by `Endpoint.authority` (`10.0.0.7:8080`), so
an endpoint keeps its counters when its weight or health changes.

`build_picker` calls `observe()` with the cluster's endpoints on every rebuild: entries of
endpoints that left are dropped (a request still in flight on one keeps its own `HostStats`
object and decrements that), new ones are added, and each endpoint's `first_healthy` is
stamped the first time it is seen taking traffic - Envoy's `last_hc_pass_time` when no active
health checking runs, the start of the endpoint's slow-start window.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from sail.model import Endpoint

__all__ = ["ClusterStats", "HostStats"]


class HostStats:
    """The mutable counters of one endpoint.

    * `active` - requests in flight to it (Envoy's `rq_active`), kept by the data plane.
    * `first_healthy` - `ClusterStats.clock()` time it was first seen taking traffic (HEALTHY
      or UNKNOWN), or `None` while it never has; set by `ClusterStats.observe`.
    """

    __slots__ = ("active", "first_healthy")

    def __init__(self, first_healthy: float | None = None) -> None:
        self.active = 0
        self.first_healthy = first_healthy

    def __repr__(self) -> str:
        return f"HostStats(active={self.active}, first_healthy={self.first_healthy})"


class ClusterStats:
    """The `HostStats` of one cluster's endpoints, by `Endpoint.authority`.

    `clock` is the time source of `first_healthy` and of slow start (`time.monotonic` by
    default; tests pass a fake one).
    """

    __slots__ = ("_hosts", "clock")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._hosts: dict[str, HostStats] = {}

    def host(self, endpoint: Endpoint) -> HostStats:
        """The counters of `endpoint`, created (with no `first_healthy`) if it has none.

        One dict lookup: the data plane calls this once per request. An endpoint the table
        does not know (it left the cluster while a picker still held it) gets a fresh entry,
        dropped again at the next `observe`.
        """
        key = endpoint.authority
        found = self._hosts.get(key)
        if found is None:
            found = self._hosts.setdefault(key, HostStats())
        return found

    def get(self, authority: str) -> HostStats | None:
        return self._hosts.get(authority)

    def observe(self, endpoints: Iterable[Endpoint], now: float | None = None) -> None:
        """Make the table hold exactly `endpoints` (a cluster's whole assignment).

        Keeps the counters of endpoints already known, adds new ones, drops the rest, and
        stamps `first_healthy = now` (default `clock()`) on endpoints taking traffic that have
        none yet. The new table replaces the old one in one reference swap, so a data-plane
        thread reading it meanwhile sees one or the other, never a half-built one.
        """
        stamp = self.clock() if now is None else now
        old = self._hosts
        table: dict[str, HostStats] = {}
        for endpoint in endpoints:
            key = endpoint.authority
            entry = table.get(key) or old.get(key)
            if entry is None:
                entry = HostStats()
            if entry.first_healthy is None and endpoint.health.takes_traffic:
                entry.first_healthy = stamp
            table[key] = entry
        self._hosts = table

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, authority: object) -> bool:
        return authority in self._hosts

    def __iter__(self) -> Iterator[str]:
        return iter(self._hosts)

    def __repr__(self) -> str:
        busy = sum(1 for h in self._hosts.values() if h.active > 0)
        return f"ClusterStats({len(self._hosts)} endpoints, {busy} with requests in flight)"
