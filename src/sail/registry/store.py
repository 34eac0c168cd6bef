"""What the registry knows: live workloads under leases, and config documents by source.

`Store` is the interface the rest of the registry uses; `MemoryStore` is the default, and an
etcd-backed store can implement the same protocol (etcd has leases of its own) without
anything else changing.

**Leases.** A workload is registered under a lease with a TTL (10 s by default). Each
heartbeat renews it for another TTL; a lease not renewed in time has *lapsed*. A lapsed
workload is never listed by `workloads()` and its lease id is unknown to `heartbeat`,
`set_health` and `remove_workload`; `expire()` removes lapsed workloads and tells watchers,
so the server calls it periodically (`sail.registry.leases.run_expiry`). A workload killed
with `kill -9` is thus gone from EDS at most TTL + one sweep interval after its last
heartbeat.

**One workload, one lease.** Workloads are keyed by `Workload.key` (service, address,
port). Registering a key that is already registered replaces the old lease: a process that
restarts on the same address, or a client re-registering after the registry lost its state,
does not leave a twin behind.

**Watchers** are called with no arguments after every change, expiries included; they
re-read what they need. They run synchronously inside the call that changed the store, so
they should be quick: schedule the work (rebuild xDS resources, debounced), don't do it.

**Threads.** `MemoryStore` is not thread-safe and takes no locks: use it from one asyncio
event loop, the registry's (the gRPC handlers and the expiry task all run there). An
implementation whose changes arrive on another thread (an etcd watch) must hop onto that
loop (`loop.call_soon_threadsafe`) before changing its state or calling watchers.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from sail.model import HealthStatus
from sail.registration import Workload

__all__ = ["DEFAULT_TTL", "Lease", "MemoryStore", "Store"]

log = logging.getLogger("sail.registry.store")

DEFAULT_TTL = 10.0
"""Seconds a lease lives without a heartbeat (clients heartbeat every 3 s by default)."""


@attrs.frozen
class Lease:
    """A workload's registration: `id` to heartbeat with, `ttl` in seconds, and `expires_at`
    on the store's clock (`time.monotonic()` unless one was injected)."""

    id: str
    ttl: float
    expires_at: float


class Store(Protocol):
    """The registry's state. Every method is called from the registry's event loop."""

    def put_workload(
        self, workload: Workload, health: HealthStatus = HealthStatus.HEALTHY,
        ttl: float = DEFAULT_TTL,
    ) -> Lease:
        """Register `workload` (replacing any lease of the same `workload.key`) under a new
        lease of `ttl` seconds (> 0, else `ValueError`)."""
        ...

    def heartbeat(self, lease_id: str) -> bool:
        """Renew a lease for another TTL. False if it is unknown or has lapsed: the client
        must register again."""
        ...

    def set_health(self, lease_id: str, health: HealthStatus) -> bool:
        """Change a live workload's health (and renew its lease). False if unknown."""
        ...

    def remove_workload(self, lease_id: str) -> bool:
        """Deregister. False if the lease is unknown or has lapsed."""
        ...

    def workloads(self) -> list[tuple[Workload, HealthStatus]]:
        """Live workloads with their health, ordered by `Workload.key`."""
        ...

    def put_config(self, source: str, text: str) -> None:
        """Store a config document (raw YAML) under a source name, replacing it."""
        ...

    def delete_config(self, source: str) -> bool:
        """Remove a config document. False if there was none under `source`."""
        ...

    def configs(self) -> dict[str, str]:
        """Every config document by source name (a copy)."""
        ...

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after every change; returns a function that stops it."""
        ...

    def expire(self, now: float | None = None) -> list[Workload]:
        """Remove workloads whose lease has lapsed at `now` (default: the store's clock) and
        return them. A store whose leases expire by themselves (etcd) returns `[]`."""
        ...


@attrs.define
class _Entry:
    workload: Workload
    health: HealthStatus
    lease: Lease


class MemoryStore:
    """The in-memory `Store`: state is lost when the registry stops, and clients re-register
    on their next heartbeat (it answers NOT_FOUND).

    **Parameters**

    * `clock` - seconds on a monotonic clock; tests inject a fake one to expire leases
      without waiting.

    Not thread-safe (see the module docstring): one event loop only.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}  # Workload.key -> lease id
        self._configs: dict[str, str] = {}
        self._watchers: list[Callable[[], None]] = []

    # -- workloads ----------------------------------------------------------------------------

    def put_workload(
        self, workload: Workload, health: HealthStatus = HealthStatus.HEALTHY,
        ttl: float = DEFAULT_TTL,
    ) -> Lease:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease ttl must be a positive number of seconds, got {ttl!r}")
        old = self._by_key.pop(workload.key, None)
        if old is not None:
            del self._leases[old]
        lease = Lease(id=secrets.token_hex(8), ttl=ttl, expires_at=self._clock() + ttl)
        self._leases[lease.id] = _Entry(workload, health, lease)
        self._by_key[workload.key] = lease.id
        self._changed()
        return lease

    def heartbeat(self, lease_id: str) -> bool:
        entry = self._live(lease_id)
        if entry is None:
            return False
        self._renew(entry)
        return True

    def set_health(self, lease_id: str, health: HealthStatus) -> bool:
        entry = self._live(lease_id)
        if entry is None:
            return False
        self._renew(entry)
        if entry.health != health:
            entry.health = health
            self._changed()
        return True

    def remove_workload(self, lease_id: str) -> bool:
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

    def put_config(self, source: str, text: str) -> None:
        if self._configs.get(source) == text:
            return
        self._configs[source] = text
        self._changed()

    def delete_config(self, source: str) -> bool:
        if self._configs.pop(source, None) is None:
            return False
        self._changed()
        return True

    def configs(self) -> dict[str, str]:
        return dict(self._configs)

    # -- watchers -----------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(callback)

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return stop

    def _changed(self) -> None:
        for callback in list(self._watchers):
            try:
                callback()
            except Exception:  # one broken watcher must not stop the others or the change
                log.exception("store watcher %r failed", callback)
