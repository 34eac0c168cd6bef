"""The lease sweeper: removes workloads whose lease lapsed, so watchers rebuild EDS.

A lapsed workload already disappears from `Store.workloads()` at once; the sweep is what
*tells* the watchers, so the endpoint leaves EDS without waiting for some other change.
Run it as a task on the registry's event loop (the store's loop):

```python
sweeper = asyncio.create_task(run_expiry(store, interval=1.0))
...
sweeper.cancel()
```

A dead workload is gone at most `ttl + interval` seconds after its last heartbeat.

A store whose leases expire by themselves (`sail.registry.etcd.EtcdStore`: etcd revokes the
lease and the store's watch tells the watchers) returns nothing from `expire()`, and the
sweep costs nothing.
"""

from __future__ import annotations

import asyncio
import logging

from sail.registry.store import Store

__all__ = ["run_expiry"]

log = logging.getLogger("sail.registry.leases")


async def run_expiry(store: Store, interval: float = 1.0) -> None:
    """Call `store.expire()` every `interval` seconds until cancelled. A failing sweep is
    logged and tried again next time: the sweeper never dies on its own."""
    if not interval > 0:
        raise ValueError(f"expiry interval must be positive, got {interval!r}")
    while True:
        await asyncio.sleep(interval)
        try:
            expired = store.expire()
        except Exception:
            log.exception("lease expiry sweep failed; trying again in %ss", interval)
            continue
        for workload in expired:
            log.info("lease of %s expired (no heartbeat): removed", workload.key)
