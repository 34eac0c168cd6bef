"""Workloads and where they are registered.

A `Workload` is one instance of a service: where it listens, its labels, locality, weight
and the service port clients call. A `Registrar` records that a workload is up
(`register`), changes its health (`set_health`: DRAINING on graceful shutdown) and removes
it (`deregister`); the servers a mesh makes (`@mesh.service`, `mesh.grpc_server()`) call
it as they start, drain and stop.

Two registrars exist:

* `InProcessRegistrar` (here), a `Mesh`'s default: keeps the workloads in memory and calls
  its subscribers with the whole set after every change. Nothing outside the process
  sees them; it is for tests and for meshes whose endpoints come from elsewhere.
* `sail.registry.remote.RemoteRegistrar` (`Mesh.from_bootstrap(register=True)`): registers
  with a `sail registry` under a lease that a background thread renews, so the workload
  reaches every client's EDS, and leaves it when the lease lapses. Given several
  registries (`register=True` passes every `xds_servers[*].server_uri` of the bootstrap,
  in order) it uses one and moves to the next at once when that one is unreachable; with
  registries sharing an etcd the lease is renewed there as it is, elsewhere the workload
  registers again.

The registry itself keeps registered `Workload`s in its store (`sail.registry.store`):
in its own process with the default file store and the memory store (a restarted registry
learns them again from the next heartbeats), in etcd with the etcd store (every registry on
that etcd knows every lease).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from sail.model import HealthStatus, Locality

__all__ = ["InProcessRegistrar", "Registrar", "Workload"]


@attrs.frozen
class Workload:
    """One instance of a service.

    **Parameters**

    * `service` - the service name (`reviews`).
    * `address`, `port` - where it listens.
    * `labels` - e.g. `{"version": "v2"}`; subsets select workloads by labels.
    * `locality` - where it runs; `weight` - its load-balancing weight (≥ 1).
    * `service_port` - the port clients call the service on (`reviews:9080`), when it is
      not `port` itself: Kubernetes' Service port next to its targetPort. Workloads that
      listen on different ports (several on one host) share one service port this way.
    * `identity` - the SPIFFE ID its certificate carries (`mesh.identity`), `None` without
      one. The registry makes it the identity clients expect of this workload over mTLS,
      and reads its namespace (`/ns/<ns>/`) for PeerAuthentication; without one, the
      namespace is `default` and clients do not choose mTLS on their own (auto-mTLS).
    * `permissive` - whether it serves mTLS and plaintext on one port under PERMISSIVE
      (sail's HTTP servers do; grpcio servers cannot, and serve plaintext then, as Istio's
      proxyless gRPC does). Clients choose mTLS on their own (auto-mTLS) to a PERMISSIVE
      workload only if it does.
    """

    service: str
    address: str
    port: int
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    locality: Locality = Locality()
    weight: int = 1
    service_port: int | None = None
    identity: str | None = None
    permissive: bool = True

    @property
    def namespace(self) -> str:
        """The namespace of `identity` (`spiffe://<td>/ns/<ns>/...`), else `default`."""
        if self.identity is not None:
            parts = self.identity.split("/")
            if len(parts) > 4 and parts[3] == "ns" and parts[4]:
                return parts[4]
        return "default"

    @property
    def called_port(self) -> int:
        """The service port this workload serves: `service_port`, or else `port`."""
        return self.service_port if self.service_port is not None else self.port

    @property
    def key(self) -> str:
        return f"{self.service}/{self.address}:{self.port}"


class Registrar(Protocol):
    def register(self, workload: Workload) -> None: ...

    def set_health(self, workload: Workload, health: HealthStatus) -> None: ...

    def deregister(self, workload: Workload) -> None: ...


class InProcessRegistrar:
    """Keeps workloads in memory; `subscribe` gets the full set after every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workloads: dict[str, tuple[Workload, HealthStatus]] = {}
        self._subscribers: list[Callable[[Mapping[str, tuple[Workload, HealthStatus]]], None]] = []

    @property
    def workloads(self) -> Mapping[str, tuple[Workload, HealthStatus]]:
        with self._lock:
            return dict(self._workloads)

    def subscribe(
        self, callback: Callable[[Mapping[str, tuple[Workload, HealthStatus]]], None]
    ) -> None:
        self._subscribers.append(callback)
        callback(self.workloads)

    def register(self, workload: Workload) -> None:
        self._change(workload, HealthStatus.HEALTHY)

    def set_health(self, workload: Workload, health: HealthStatus) -> None:
        self._change(workload, health)

    def deregister(self, workload: Workload) -> None:
        self._change(workload, None)

    def _change(self, workload: Workload, health: HealthStatus | None) -> None:
        with self._lock:
            if health is None:
                self._workloads.pop(workload.key, None)
            else:
                self._workloads[workload.key] = (workload, health)
            current = dict(self._workloads)
        for callback in list(self._subscribers):
            callback(current)
