"""What the registry knows: live workloads under leases, and config documents by source.

`Store` is the interface the rest of the registry uses. Two implement it:

* `MemoryStore` (the default): state lives in the registry's process and is lost when it
  stops; workloads re-register on their next heartbeat (answered NOT_FOUND).
* `sail.registry.etcd.EtcdStore` (`sail registry --store etcd://HOST:PORT`): state lives in
  etcd, so a restarted registry finds every workload and config document, and several
  registries sharing one etcd serve the same mesh.

`sail.registry.stores.open_store(url)` makes either from a `--store` URL (it is kept apart,
so that this module never imports the etcd one, which imports it).

**Writes are async, reads are not.** The write methods (`put_workload`, `heartbeat`,
`set_health`, `remove_workload`, `put_config`, `delete_config`) are coroutines: an etcd
store does network I/O there, and it must not block the registry's event loop. The reads
(`workloads()`, `configs()`) are plain calls on an in-memory view, which the etcd store keeps
current from an etcd watch. When a write returns, the store's view (and its watchers) have
seen it, so a read right after a write sees the write. A store that cannot reach its
backend raises `StoreUnavailable` (the API answers UNAVAILABLE) and keeps its last view.

**Leases.** A workload is registered under a lease with a TTL (10 s by default). Each
heartbeat renews it for another TTL; a lease not renewed in time has *lapsed*. A lapsed
workload is never listed by `workloads()` and its lease id is unknown to `heartbeat`,
`set_health` and `remove_workload`. In the memory store `expire()` removes lapsed workloads
and tells watchers, so the server calls it periodically (`sail.registry.leases.run_expiry`);
etcd expires its leases itself (`expire()` returns `[]`) and the watch removes the workload.
A workload killed with `kill -9` is thus gone from EDS about a TTL after its last heartbeat.

**One workload, one lease.** Workloads are keyed by `Workload.key` (service, address,
port). Registering a key that is already registered replaces the old lease: a process that
restarts on the same address, or a client re-registering after the registry lost its state,
does not leave a twin behind.

**Config writes are checked.** `put_config` and `delete_config` raise `StoreConflict` when
the config documents changed (at another registry sharing the store) since `configs()` was
read on the same turn of the loop; the caller reads them again, validates and retries.
`MemoryStore` never raises it: one registry, one loop.

**Watchers** are called with no arguments after every change that `workloads()` or
`configs()` can see, expiries and changes made by another registry included; they re-read
what they need. They run synchronously on the registry's loop, so they should be quick:
schedule the work (rebuild xDS resources, debounced), don't do it.

**Lifecycle.** `await store.start()` before use (the etcd store loads its view and starts
watching; it raises `StoreUnavailable` if etcd cannot be reached), `await store.close()`
after. `status()` describes the store for `sail status`.

**Threads.** Stores are not thread-safe and take no locks: use them from one asyncio event
loop, the registry's (the gRPC handlers, the expiry task and the etcd watch all run there).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from sail.errors import SailError
from sail.model import HealthStatus
from sail.registration import Workload

__all__ = [
    "DEFAULT_TTL",
    "Lease",
    "MemoryStore",
    "Store",
    "StoreConflict",
    "StoreUnavailable",
]

log = logging.getLogger("sail.registry.store")

DEFAULT_TTL = 10.0
"""Seconds a lease lives without a heartbeat (clients heartbeat every 3 s by default)."""


class StoreUnavailable(SailError, ConnectionError):
    """The store's backend (etcd) cannot be reached; the message names it and its address."""


class StoreConflict(SailError):
    """The config documents changed (at another registry) since they were read: read them
    again, validate and retry."""


@attrs.frozen
class Lease:
    """A workload's registration: `id` to heartbeat with, `ttl` in seconds, and `expires_at`
    on the store's clock (`time.monotonic()` unless one was injected)."""

    id: str
    ttl: float
    expires_at: float


class Store(Protocol):
    """The registry's state. Every method is called from the registry's event loop."""

    async def start(self) -> None:
        """Get ready (load state, start watching); `StoreUnavailable` if the backend is
        unreachable."""
        ...

    async def close(self) -> None:
        """Stop background work and release connections."""
        ...

    async def put_workload(
        self, workload: Workload, health: HealthStatus = HealthStatus.HEALTHY,
        ttl: float = DEFAULT_TTL,
    ) -> Lease:
        """Register `workload` (replacing any lease of the same `workload.key`) under a new
        lease of `ttl` seconds (> 0, else `ValueError`). A store may round the TTL up (etcd
        counts whole seconds, at least 2): the returned lease says what was granted."""
        ...

    async def heartbeat(self, lease_id: str) -> bool:
        """Renew a lease for another TTL. False if it is unknown or has lapsed: the client
        must register again."""
        ...

    async def set_health(self, lease_id: str, health: HealthStatus) -> bool:
        """Change a live workload's health (and renew its lease). False if unknown."""
        ...

    async def remove_workload(self, lease_id: str) -> bool:
        """Deregister. False if the lease is unknown or has lapsed."""
        ...

    def workloads(self) -> list[tuple[Workload, HealthStatus]]:
        """Live workloads with their health, ordered by `Workload.key`."""
        ...

    async def put_config(self, source: str, text: str) -> None:
        """Store a config document (raw YAML) under a source name, replacing it.
        `StoreConflict` if the documents changed since `configs()` (module docstring)."""
        ...

    async def delete_config(self, source: str) -> bool:
        """Remove a config document. False if there was none under `source`.
        `StoreConflict` as `put_config`."""
        ...

    def configs(self) -> dict[str, str]:
        """Every config document by source name (a copy)."""
        ...

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after every change; returns a function that stops it."""
        ...

    async def create_value(self, key: str, value: str) -> str:
        """Store `value` under `key` unless a value is there already, and return the value
        that is there now: ours, or the one another registry sharing the store put first
        (so replicas that start together agree on one CA). Values are the registry's own
        state (the CA, the join-token secret), kept apart from config and workloads."""
        ...

    def expire(self, now: float | None = None) -> list[Workload]:
        """Remove workloads whose lease has lapsed at `now` (default: the store's clock) and
        return them. A store whose leases expire by themselves (etcd) returns `[]`."""
        ...

    def status(self) -> dict[str, Any]:
        """What the store is and how it is doing, JSON-serializable (`{"kind": ...}`)."""
        ...


class Watchers:
    """Callbacks told of every change; one failing does not stop the others."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def stop() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return stop

    def notify(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # one broken watcher must not stop the others or the change
                log.exception("store watcher %r failed", callback)


@attrs.define
class _Entry:
    workload: Workload
    health: HealthStatus
    lease: Lease


def check_ttl(ttl: float) -> None:
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"lease ttl must be a positive number of seconds, got {ttl!r}")


class MemoryStore:
    """The in-memory `Store`: state is lost when the registry stops, and clients re-register
    on their next heartbeat (it answers NOT_FOUND).

    **Parameters**

    * `clock` - seconds on a monotonic clock; tests inject a fake one to expire leases
      without waiting.

    Its coroutines never suspend, so each call is atomic on the loop. Not thread-safe (see
    the module docstring): one event loop only.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}  # Workload.key -> lease id
        self._configs: dict[str, str] = {}
        self._values: dict[str, str] = {}
        self._watchers = Watchers()

    async def start(self) -> None:
        pass

    async def create_value(self, key: str, value: str) -> str:
        return self._values.setdefault(key, value)

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"kind": "memory"}

    # -- workloads ----------------------------------------------------------------------------

    async def put_workload(
        self, workload: Workload, health: HealthStatus = HealthStatus.HEALTHY,
        ttl: float = DEFAULT_TTL,
    ) -> Lease:
        check_ttl(ttl)
        old = self._by_key.pop(workload.key, None)
        if old is not None:
            del self._leases[old]
        lease = Lease(id=secrets.token_hex(8), ttl=ttl, expires_at=self._clock() + ttl)
        self._leases[lease.id] = _Entry(workload, health, lease)
        self._by_key[workload.key] = lease.id
        self._changed()
        return lease

    async def heartbeat(self, lease_id: str) -> bool:
        entry = self._live(lease_id)
        if entry is None:
            return False
        self._renew(entry)
        return True

    async def set_health(self, lease_id: str, health: HealthStatus) -> bool:
        entry = self._live(lease_id)
        if entry is None:
            return False
        self._renew(entry)
        if entry.health != health:
            entry.health = health
            self._changed()
        return True

    async def remove_workload(self, lease_id: str) -> bool:
        entry = self._live(lease_id)
        if entry is None:
            return False
        self._drop(entry)
        self._changed()
        return True

    def workloads(self) -> list[tuple[Workload, HealthStatus]]:
        now = self._clock()
        live = [e for e in self._leases.values() if e.lease.expires_at > now]
        return [(e.workload, e.health) for e in sorted(live, key=lambda e: e.workload.key)]

    def expire(self, now: float | None = None) -> list[Workload]:
        at = self._clock() if now is None else now
        lapsed = [e for e in self._leases.values() if e.lease.expires_at <= at]
        for entry in lapsed:
            self._drop(entry)
        if lapsed:
            self._changed()
        return [e.workload for e in lapsed]

    def _live(self, lease_id: str) -> _Entry | None:
        entry = self._leases.get(lease_id)
        if entry is not None and entry.lease.expires_at <= self._clock():
            self.expire()  # lapsed but not swept yet: sweep now, watchers see it
            return None
        return entry

    def _renew(self, entry: _Entry) -> None:
        entry.lease = attrs.evolve(entry.lease, expires_at=self._clock() + entry.lease.ttl)

    def _drop(self, entry: _Entry) -> None:
        del self._leases[entry.lease.id]
        del self._by_key[entry.workload.key]

    # -- config documents ---------------------------------------------------------------------

    async def put_config(self, source: str, text: str) -> None:
        if self._configs.get(source) == text:
            return
        self._configs[source] = text
        self._changed()

    async def delete_config(self, source: str) -> bool:
        if self._configs.pop(source, None) is None:
            return False
        self._changed()
        return True

    def configs(self) -> dict[str, str]:
        return dict(self._configs)

    # -- watchers -----------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._watchers.add(callback)

    def _changed(self) -> None:
        self._watchers.notify()
