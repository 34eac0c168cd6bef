"""The dependency manager: from the listeners a process uses, follow LDS → RDS → CDS → EDS
and publish one complete `MeshSnapshot` at a time.

It is fed decoded resources (by the ADS client, or by local mode from a file) and tells a
`subscribe` callback which names it now needs of each type. After every batch it publishes a
new snapshot if anything the snapshot holds changed; the snapshot is a new frozen object, so
readers never see a half-applied update.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from sail.model import (
    Cluster,
    ClusterLoadAssignment,
    DiscoveryType,
    Listener,
    MeshSnapshot,
    RouteConfig,
)

__all__ = ["CDS", "EDS", "LDS", "RDS", "ConfigResolver"]

log = logging.getLogger("sail.xds")

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class ConfigResolver:
    """Holds the resources of the four core types and resolves them for the listeners of
    interest.

    **Parameters**

    * `publish` - called with each new snapshot (on the feeding thread).
    * `subscribe` - called with `(type_url, names)` when the needed names of a type change;
      `None` when every resource is known up front (local mode).
    * `refused` - called with the listeners of interest that are *refused*, each with why,
      whenever that set changes (see `refusals`).

    Besides publishing, the resolver answers "is this listener settled?": a listener is
    *settled* when it is known not to exist, or when it, its routes, its clusters and their
    endpoints have all arrived (or been declared absent). `wait_settled` blocks the first
    request to a service until then.
    """

    def __init__(
        self,
        publish: Callable[[MeshSnapshot], None],
        subscribe: Callable[[str, frozenset[str]], None] | None = None,
        refused: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self._publish = publish
        self._subscribe = subscribe
        self._on_refused = refused
        self._refused: dict[str, str] = {}
        self._resources: dict[str, dict[str, Any]] = {LDS: {}, RDS: {}, CDS: {}, EDS: {}}
        self._absent: dict[str, set[str]] = {LDS: set(), RDS: set(), CDS: set(), EDS: set()}
        self._errors: dict[str, dict[str, str]] = {LDS: {}, RDS: {}, CDS: {}, EDS: {}}
        self._interest: set[str] = set()
        self._wanted: dict[str, frozenset[str]] = {}
        self._snapshot = MeshSnapshot()
        self._settled: dict[str, threading.Event] = {}
        self._kept: frozenset[str] = frozenset()  # deleted clusters still served
        self._lock = threading.Lock()  # guards _settled only; never taken on the request path

    # -- feeding ----------------------------------------------------------------------------

    def add_interest(self, names: Iterable[str]) -> None:
        new = set(names) - self._interest
        if new:
            self._interest |= new
            self._recompute()

    def remove_interest(self, names: Iterable[str]) -> None:
        """Stop watching listeners (an xDS-enabled server that stopped); the rest stay."""
        gone = set(names) & self._interest
        if gone:
            self._interest -= gone
            self._recompute()
            # What made them settled is forgotten with them (`_want`): a settled event left
            # set would tell a later watcher there is nothing to wait for, or to ask for.
            with self._lock:
                for name in gone:
                    event = self._settled.get(name)
                    if event is not None and event.is_set():
                        del self._settled[name]

    @property
    def interest(self) -> frozenset[str]:
        return frozenset(self._interest)

    def on_resources(
        self,
        type_url: str,
        changed: Mapping[str, Any],
        removed: frozenset[str],
        errors: Mapping[str, str],
        absent: frozenset[str],
    ) -> None:
        store = self._resources[type_url]
        store.update(changed)
        for name in removed:
            store.pop(name, None)
        self._absent[type_url] -= changed.keys()
        self._absent[type_url] |= absent | removed
        errs = self._errors[type_url]
        for name in (*changed, *removed, *absent):
            errs.pop(name, None)
        errs.update(errors)
        self._recompute()

    def on_connection(self, connected: bool, detail: str) -> None:
        if not connected:
            log.info("sail: control plane disconnected (%s); serving the last config", detail)

    def replace_all(
        self,
        resources: Mapping[str, Mapping[str, Any]],
        errors: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Local mode: the whole resource set at once; every listener is of interest, and
        so is every listener in `errors` (by type URL, then name: the resources that
        failed to decode, whose last good version, if any, is among `resources`)."""
        for type_url in self._resources:
            self._resources[type_url] = dict(resources.get(type_url, {}))
            self._errors[type_url] = dict((errors or {}).get(type_url, {}))
        self._interest = set(self._resources[LDS]) | set(self._errors[LDS])
        self._recompute()

    # -- reading ----------------------------------------------------------------------------

    @property
    def snapshot(self) -> MeshSnapshot:
        return self._snapshot

    def errors(self) -> Mapping[str, Mapping[str, str]]:
        """The rejected resources held, by type URL then name (the feeding thread's)."""
        return {t: dict(e) for t, e in self._errors.items() if e}

    def error(self, type_url: str, name: str) -> str | None:
        """Why resource `name` of `type_url` was rejected, if it was (one dict lookup)."""
        return self._errors[type_url].get(name)

    @property
    def refusals(self) -> Mapping[str, str]:
        """The listeners of interest that are *refused*, each with why: rejected with no
        last good version, or whose HCM's RouteConfiguration was (so the listener has no
        routes). A request to one fails naming that reason; it is never an outside host."""
        return self._refused

    def settled_event(self, listener: str) -> threading.Event:
        with self._lock:
            event = self._settled.get(listener)
            if event is None:
                event = self._settled[listener] = threading.Event()
                if self._is_settled(listener):
                    event.set()
            return event

    # -- resolution -------------------------------------------------------------------------

    def _recompute(self) -> None:
        previous = self._snapshot
        listeners: dict[str, Listener] = {}
        routes: dict[str, RouteConfig] = {}
        want_rds: set[str] = set()
        want_cds: set[str] = set()
        used: set[str] = set()
        for name in sorted(self._interest):
            listener = self._resources[LDS].get(name)
            if listener is None:
                continue
            listeners[name] = listener
            # A server's port listener may have several filter chains, each with its routes
            # (`Listener.route_keys`); every other listener has one HCM, keyed by its name.
            for key, chain in zip(listener.route_keys(), listener.chains(), strict=True):
                hcm = chain.hcm
                route = hcm.route_config
                if route is None and hcm.rds_name is not None:
                    want_rds.add(hcm.rds_name)
                    route = self._resources[RDS].get(hcm.rds_name)
                if route is None:
                    continue
                needed = route.cluster_names()
                want_cds |= needed
                if not all(self._cluster_ready(c) for c in needed):
                    # As gRPC's dependency manager: keep serving the last complete routes
                    # until every cluster of the new ones has resolved.
                    route = previous.routes.get(key)
                    if route is None:
                        continue
                    want_cds |= route.cluster_names()
                routes[key] = route
                used |= route.cluster_names()
        clusters: dict[str, Cluster] = {}
        endpoints: dict[str, ClusterLoadAssignment] = {}
        want_eds: set[str] = set()
        for cname in sorted(want_cds):
            cluster = self._resources[CDS].get(cname)
            if cluster is not None and cluster.discovery is DiscoveryType.EDS:
                want_eds.add(cluster.eds_name)
            if cname not in used:
                continue
            if self._settled_missing(CDS, cname):
                kept = self._kept_deleted(cname, previous)
                if kept is None:
                    continue  # known not to exist, or rejected: requests routed to it fail
                clusters[cname] = kept
                cla = previous.endpoints.get(cname)
                if kept.discovery is DiscoveryType.EDS:
                    want_eds.add(kept.eds_name)
                    cla = self._resources[EDS].get(kept.eds_name, cla)
                if cla is not None:
                    endpoints[cname] = cla
                continue
            if cluster is None or not self._cluster_ready(cname):
                cluster = previous.clusters.get(cname)
                cla = previous.endpoints.get(cname)
            elif cluster.discovery is DiscoveryType.EDS:
                cla = self._resources[EDS].get(cluster.eds_name)
            else:
                cla = cluster.load_assignment
            if cluster is not None:
                clusters[cname] = cluster
            if cla is not None:
                endpoints[cname] = cla
        self._kept = frozenset(c for c in clusters if self._settled_missing(CDS, c))
        if self._subscribe is not None:
            self._want(LDS, frozenset(self._interest))
            self._want(RDS, frozenset(want_rds))
            self._want(CDS, frozenset(want_cds))
            self._want(EDS, frozenset(want_eds))
        absent = frozenset(n for n in self._interest if n in self._absent[LDS])
        snap = MeshSnapshot(
            listeners=listeners,
            routes=routes,
            clusters=clusters,
            endpoints=endpoints,
            absent=absent,
            version=previous.version,
        )
        refused = self._refusals(routes)
        changed = refused != self._refused
        if changed:
            # New refusals are in force before the snapshot, and cleared ones stay until
            # after it: a name is never, even for a moment, neither refused nor served.
            self._refused = {**self._refused, **refused}
            if self._on_refused is not None:
                self._on_refused(self._refused)
        if snap != previous:
            self._snapshot = attrs.evolve(snap, version=previous.version + 1)
            self._publish(self._snapshot)
        if changed:
            self._refused = refused
            if self._on_refused is not None:
                self._on_refused(refused)
        self._wake_settled()

    def _refusals(self, routes: Mapping[str, RouteConfig]) -> dict[str, str]:
        """The listeners of interest with no routes because their Listener, or the
        RouteConfiguration it names, was rejected with no last good version."""
        refused: dict[str, str] = {}
        if not self._errors[LDS] and not self._errors[RDS]:
            return refused
        for name in self._interest:
            if name in routes:
                continue
            listener = self._resources[LDS].get(name)
            if listener is None:
                error = self._errors[LDS].get(name)
                if error is not None:
                    refused[name] = error
                continue
            hcm = listener.hcm  # the first chain's, whose routes are the listener's own
            rds = hcm.rds_name if hcm.route_config is None else None
            if rds is not None and rds not in self._resources[RDS]:
                error = self._errors[RDS].get(rds)
                if error is not None:
                    refused[name] = error
        return refused

    def _kept_deleted(self, name: str, previous: MeshSnapshot) -> Cluster | None:
        """The last version of cluster `name`, deleted by the server while the routes in
        force still name it; `None` if it never served or was not deleted.

        A server that drops a cluster before it moves the routes off it, or a restarted one
        that answers CDS before RDS, would otherwise fail every request routed there in
        between (Envoy answers them 503 NC). As gRPC's `ignore_resource_deletion` (A53),
        the cluster keeps serving, its endpoints still watched, until no route names it.
        """
        kept = previous.clusters.get(name)
        if kept is None or self._subscribe is None or name not in self._absent[CDS]:
            return None
        if name not in self._kept:
            log.warning(
                "sail xDS: cluster %r was deleted while routes still name it; "
                "serving its last version until they move off it", name,
            )
        return kept

    def _settled_missing(self, type_url: str, name: str) -> bool:
        """Known not to be coming: declared absent, or rejected with no last good value; in
        local mode (no `subscribe`, every resource known up front), not among them."""
        return name not in self._resources[type_url] and (
            self._subscribe is None
            or name in self._absent[type_url]
            or name in self._errors[type_url]
        )

    def _cluster_ready(self, name: str) -> bool:
        """The cluster resolved: it and its endpoints arrived, or one is known missing."""
        if self._settled_missing(CDS, name):
            return True
        cluster = self._resources[CDS].get(name)
        if cluster is None:
            return False
        if cluster.discovery is not DiscoveryType.EDS:
            return True
        eds = cluster.eds_name
        return eds in self._resources[EDS] or self._settled_missing(EDS, eds)

    def _want(self, type_url: str, names: frozenset[str]) -> None:
        before = self._wanted.get(type_url, frozenset())
        if before != names:
            self._wanted[type_url] = names
            # What we knew of a name we stop watching is stale by the time we watch it
            # again (a cluster deleted then re-added must not look absent).
            for name in before - names:
                self._resources[type_url].pop(name, None)
                self._absent[type_url].discard(name)
                self._errors[type_url].pop(name, None)
            assert self._subscribe is not None
            self._subscribe(type_url, names)

    def _is_settled(self, listener: str) -> bool:
        """Known absent, resolved to complete routes (or a route config known missing), or
        refused. A rejected listener (or route config) settles only once its refusal has
        been announced (`refused`), so a waiter never sees it as merely missing."""
        if listener in self._snapshot.routes or listener in self._refused:
            return True
        if self._settled_missing(LDS, listener):
            return listener not in self._errors[LDS]
        lst = self._resources[LDS].get(listener)
        rds = lst.hcm.rds_name if lst is not None else None
        return (
            rds is not None and self._settled_missing(RDS, rds)
            and rds not in self._errors[RDS]
        )

    def _wake_settled(self) -> None:
        with self._lock:
            pending = [(n, e) for n, e in self._settled.items() if not e.is_set()]
        for name, event in pending:
            if self._is_settled(name):
                event.set()
