"""What the request path reads: routers and pickers built once per config change.

`build_state` turns a `MeshSnapshot` into a `DataplaneState`, reusing the router of every
route config and the picker of every cluster that did not change, so an EDS update to one
cluster rebuilds one picker. The state is frozen and swapped whole; a request reads
`Dataplane.state` once and works on that object to the end, with no lock.

The call stack for one request, in order (Finagle's stack, flattened):

1. *service* - the listener named by the request's authority;
2. *route* - virtual host by Host, then the first matching route (`sail.routing`);
3. *cluster* - the route's cluster (weighted pick already done by the router);
4. *balance* - the cluster's picker chooses an endpoint (`sail.balancing`).

Retries, deadlines and circuit breaking (`sail.resilience`) wrap step 4: the transport
drives a `sail.resilience.call.Call` over the target's cluster, re-picking for retries.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

import attrs

from sail.balancing import Picker, UnavailablePicker, build_picker
from sail.balancing.hashing import NO_HASH, RequestHash
from sail.balancing.hashing import request_hash as hash_request
from sail.balancing.stats import ClusterStats
from sail.errors import NoHealthyUpstream, UnknownService, UnsupportedRequest
from sail.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    HttpConnectionManager,
    MeshSnapshot,
    RouteAction,
    RouteConfig,
    UpstreamTls,
)
from sail.resilience.call import Call
from sail.resilience.fault import FaultFilter
from sail.resilience.limits import ClusterLimits
from sail.resilience.outlier import DEFAULT_ACCRUAL, OutlierDetector
from sail.resilience.retry import DEFAULT_IDEMPOTENT_POLICY, DEFAULT_POLICY
from sail.routing import Headers, Router, RouteResult

if TYPE_CHECKING:
    from sail.resilience.events import AttemptObserver
    from sail.security.tls import TlsMaterial

__all__ = [
    "ClusterRuntime", "Dataplane", "DataplaneState", "Target", "TlsFactory",
    "UpstreamTlsRuntime", "build_state", "pick", "repick", "start_call",
]


class UpstreamTlsRuntime(Protocol):
    """A cluster's TLS as the request path reads it (`sail.security.tls.ClientTls`): the
    `ssl.SSLContext` for new connections now, replaced whole when a certificate rotates;
    `None` while the workload has no credentials for it, `why` then saying what is
    missing; `material`, the PEM the context was made from (for grpcio's channels)."""

    spec: UpstreamTls
    context: ssl.SSLContext | None
    material: TlsMaterial | None
    why: str


TlsFactory = Callable[[UpstreamTls], UpstreamTlsRuntime]
"""Makes the runtime of a cluster's `UpstreamTls` (on the control path)."""


@attrs.define(eq=False)
class ClusterRuntime:
    """A cluster as the request path sees it: its config, endpoints and picker, and what
    outlives config updates of the cluster: its circuit-breaker state (`limits`), its
    endpoints' in-flight counts (`hosts`, read by least request and slow start) and its
    outlier detector (`outlier`: the cluster's `outlier_detection`, or without one sail's
    failure accrual, `sail.resilience.outlier.DEFAULT_ACCRUAL`).

    `tls` is the cluster's TLS as its connections use it (`UpstreamTlsRuntime`, made by
    the dataplane's `tls_factory`), `None` for plaintext.

    `picker` is the one field that changes in place: when the outlier detector ejects or
    returns a host, the picker is rebuilt with the ejected hosts counted as unhealthy
    (`ejected` is the set it was built with), so Envoy's panic threshold applies to them.
    """

    cluster: Cluster
    assignment: ClusterLoadAssignment | None
    picker: Picker
    limits: ClusterLimits
    hosts: ClusterStats
    outlier: OutlierDetector | None = None
    high_limits: ClusterLimits | None = None
    ejected: frozenset[str] = frozenset()
    current: _Current | None = attrs.field(default=None, repr=False)
    tls: UpstreamTlsRuntime | None = None

    def rebuild(self, ejected: frozenset[str]) -> None:
        """Rebuild the picker with `ejected` hosts unhealthy (an ejection, a return)."""
        if self.assignment is not None:
            self.picker = _picker(self.cluster, self.assignment, self.hosts, ejected,
                                  self.outlier)
        self.ejected = ejected


class _Current:
    """The live runtime of a cluster, for its outlier detector's callback: a config update
    replaces the runtime, and the detector, which outlives it, must reach the new one."""

    __slots__ = ("runtime",)

    def __init__(self) -> None:
        self.runtime: ClusterRuntime | None = None

    def on_change(self, ejected: frozenset[str]) -> None:
        runtime = self.runtime
        if runtime is not None:
            runtime.rebuild(ejected)


def _picker(
    cluster: Cluster, assignment: ClusterLoadAssignment, hosts: ClusterStats,
    ejected: frozenset[str], outlier: OutlierDetector | None,
) -> Picker:
    """The cluster's picker with `ejected` hosts unhealthy; those ejected for not answering
    at all are left out even in panic (`build_picker`'s `shunned`)."""
    if ejected:
        assignment = attrs.evolve(assignment, localities=tuple(
            attrs.evolve(loc, endpoints=tuple(
                attrs.evolve(e, health=HealthStatus.UNHEALTHY)
                if e.authority in ejected and e.health is not HealthStatus.DRAINING else e
                for e in loc.endpoints
            ))
            for loc in assignment.localities
        ))
    shunned = outlier.failing_locally & ejected if outlier is not None else frozenset()
    return build_picker(cluster, assignment, stats=hosts, shunned=shunned)


@attrs.frozen
class ServiceRuntime:
    """A listener as the request path sees it: its compiled routes, and its HTTP fault
    filter (`None` without one), kept while the listener's HCM is unchanged so that its
    active-fault gauge survives route updates. `refused` says why a client must not send
    through it (an HTTP filter a client does not apply, which the codec lets through only
    on a server listener, e.g. in a local file), else `None`."""

    name: str
    config: RouteConfig
    router: Router
    faults: FaultFilter | None = None
    hcm: HttpConnectionManager | None = None
    refused: str | None = None


@attrs.frozen
class DataplaneState:
    snapshot: MeshSnapshot
    services: Mapping[str, ServiceRuntime]
    clusters: Mapping[str, ClusterRuntime]
    authorities: frozenset[str]


class Target(NamedTuple):
    """Where one request goes: the route's decision, the picked endpoint, the Host header
    to send (`None` keeps the caller's) and the chosen cluster. Made once per request."""

    service: str
    route: RouteResult
    endpoint: Endpoint | None
    host: str | None = None
    cluster: ClusterRuntime | None = None
    hash: RequestHash = NO_HASH
    faults: FaultFilter | None = None


def build_state(
    snapshot: MeshSnapshot,
    previous: DataplaneState | None = None,
    tls_factory: TlsFactory | None = None,
) -> DataplaneState:
    old_services = previous.services if previous else {}
    old_clusters = previous.clusters if previous else {}
    services: dict[str, ServiceRuntime] = {}
    for name, config in snapshot.routes.items():
        old = old_services.get(name)
        listener = snapshot.listeners.get(name)
        hcm = listener.hcm if listener is not None else None
        if old is not None and old.config == config and old.hcm == hcm:
            services[name] = old
            continue
        if old is not None and old.hcm == hcm:
            faults = old.faults
        else:
            faults = FaultFilter.from_hcm(hcm) if hcm is not None else None
        router = old.router if old is not None and old.config == config else Router.build(config)
        services[name] = ServiceRuntime(name, config, router, faults, hcm, _refusal(name, hcm))
    clusters: dict[str, ClusterRuntime] = {}
    for name, cluster in snapshot.clusters.items():
        assignment = snapshot.endpoints.get(name)
        prior = old_clusters.get(name)
        if prior is not None and prior.cluster == cluster and prior.assignment == assignment:
            clusters[name] = prior
            continue
        clusters[name] = _cluster_runtime(name, cluster, assignment, prior, tls_factory)
    authorities = frozenset(
        e.authority for cla in snapshot.endpoints.values() for e in cla.endpoints
    )
    return DataplaneState(snapshot, services, clusters, authorities)


def _refusal(name: str, hcm: HttpConnectionManager | None) -> str | None:
    """Why clients must not send through listener `name`, if they must not: fail closed on
    a filter that would be skipped (an RBAC filter is no policy if nobody applies it)."""
    for f in hcm.http_filters if hcm is not None else ():
        if not f.client_applies:
            return (
                f"service {name!r}: its listener has HTTP filter {f.name!r} ({f.type_url}), "
                "which sail clients do not apply; refusing to send rather than ignore it"
            )
    return None


def _cluster_runtime(
    name: str, cluster: Cluster, assignment: ClusterLoadAssignment | None,
    prior: ClusterRuntime | None, tls_factory: TlsFactory | None = None,
) -> ClusterRuntime:
    """A new runtime for a cluster whose config or endpoints changed, keeping the state
    that outlives it (limits, host counts, the outlier detector)."""
    if prior is not None:
        limits, high, hosts = prior.limits, prior.high_limits, prior.hosts
        outlier, current = prior.outlier, prior.current
        if prior.cluster != cluster:
            limits.configure(cluster)
            if high is not None:
                high.configure(cluster)
    else:
        limits, hosts = ClusterLimits(name, cluster), ClusterStats()
        high = ClusterLimits(name, cluster, priority=1)
        outlier = current = None
    config = cluster.outlier_detection or DEFAULT_ACCRUAL
    if outlier is None or current is None:
        current = _Current()
        outlier = OutlierDetector(config, on_change=current.on_change)
    elif outlier.config != config:
        outlier.configure(config)
    if assignment is not None:
        outlier.update_hosts(e.authority for e in assignment.endpoints)
    ejected = outlier.ejected
    picker: Picker
    tls = None
    if cluster.tls is not None:
        tls = prior.tls if prior is not None and prior.tls is not None and (
            prior.tls.spec == cluster.tls) else None
        if tls is None and tls_factory is not None:
            tls = tls_factory(cluster.tls)
    if cluster.tls is not None and tls is None:  # fail closed: never plaintext instead
        picker = UnavailablePicker(
            f"cluster {name!r} asks for TLS, and this mesh has no certificate providers"
        )
    elif assignment is None:
        picker = UnavailablePicker(f"cluster {name!r}: no endpoints received yet")
    else:
        picker = _picker(cluster, assignment, hosts, ejected, outlier)
    runtime = ClusterRuntime(
        cluster, assignment, picker, limits, hosts, outlier, high, ejected, current, tls
    )
    current.runtime = runtime
    if outlier.ejected != ejected:  # an ejection landed while this was being built
        runtime.rebuild(outlier.ejected)
    return runtime


class Dataplane:
    """Holds the current `DataplaneState`; `update` swaps it, `resolve` reads it.
    `observer` hears of every attempt of the calls made on it (`Mesh.observe`)."""

    def __init__(self, tls_factory: TlsFactory | None = None) -> None:
        self.tls_factory = tls_factory
        self.state = build_state(MeshSnapshot())
        self.observer: AttemptObserver | None = None

    def update(self, snapshot: MeshSnapshot) -> DataplaneState:
        self.state = build_state(snapshot, self.state, self.tls_factory)
        return self.state

    def resolve(
        self,
        service: str,
        authority: str,
        path: str,
        headers: Headers,
        method: str = "GET",
        state: DataplaneState | None = None,
        source_ip: str | None = None,
    ) -> Target:
        """Route and balance one request (hashing it by the route's `hash_policy` for the
        hashing policies; `source_ip` is for `connection_properties`). Raises
        `UnknownService`, `NoRoute` or `NoHealthyUpstream`, each naming the service and
        route."""
        state = state or self.state
        runtime = state.services.get(service)
        if runtime is None:
            raise UnknownService(f"service {service!r}: no listener for it in the mesh config")
        if runtime.refused is not None:
            raise UnsupportedRequest(runtime.refused)
        result = runtime.router.route(authority, path, headers, method=method)
        if result.cluster is None:
            return Target(service, result, None, faults=runtime.faults)
        cluster = state.clusters.get(result.cluster)
        if cluster is None:
            raise NoHealthyUpstream(
                f"service {service!r} route {_route_name(result)}: cluster "
                f"{result.cluster!r} is not in the mesh config"
            )
        action = result.route.action
        request_hash = NO_HASH
        if isinstance(action, RouteAction) and action.hash_policies:
            request_hash = hash_request(
                action.hash_policies, headers, path, source_ip,
                authority=authority, method=method,
            )
        try:
            endpoint = pick(cluster, request_hash.value)
        except NoHealthyUpstream as exc:
            raise NoHealthyUpstream(
                f"service {service!r} route {_route_name(result)}: {exc}"
            ) from None
        host = result.host
        if (
            host is None
            and endpoint.hostname
            and isinstance(action, RouteAction)
            and action.auto_host_rewrite
        ):
            host = endpoint.hostname
        # `tuple.__new__`, not `Target(...)`: the same object without the Python-level
        # `__new__` a NamedTuple runs.
        return tuple.__new__(
            Target, (service, result, endpoint, host, cluster, request_hash, runtime.faults)
        )


def pick(
    cluster: ClusterRuntime, hash_value: int | None = None, call: Call | None = None
) -> Endpoint:
    """The one pick of the request path: an endpoint of `cluster` for a request hashed to
    `hash_value` (`None`: not hashed). Every pick goes through here - the route's, a retry's
    or a hedge's (`call`: the call it is for), a mirror's, a channel's connectivity probe -
    so that what a pick must respect is said once.

    For a retry or a hedge, when the call's policy has the `previous_hosts` predicate and
    the endpoint picked was tried already, up to `host_selection_retry_max_attempts` more
    picks are made without the hash (Envoy's host selection retries). Raises
    `NoHealthyUpstream`."""
    picker = cluster.picker
    endpoint = picker.pick(hash_value)
    if call is not None and call.policy.previous_hosts:
        tried = call.tried
        for _ in range(call.policy.host_selection_retry_max_attempts):
            if endpoint.authority not in tried:
                break
            endpoint = picker.pick()
    return endpoint


def start_call(
    target: Target,
    deadline: float | None,
    observer: AttemptObserver | None,
    replayable: bool | Callable[[], bool] = True,
    idempotent: bool = False,
) -> Call:
    """The `Call` of a routed request (HTTP or gRPC): the route's retry policy (without
    one, sail's safe default: for an `idempotent` request, the one that also retries a
    dropped connection), the cluster's circuit breakers of the route's priority (a HIGH
    priority route has thresholds of its own), its outlier detector, the mesh's attempt
    observer."""
    cluster = target.cluster
    assert cluster is not None
    plan = target.route.policy  # resolved once per route when the router was built
    limits = cluster.limits
    if plan.priority and cluster.high_limits is not None:
        limits = cluster.high_limits
    policy = plan.retry or (DEFAULT_IDEMPOTENT_POLICY if idempotent else DEFAULT_POLICY)
    return Call(
        policy, limits, deadline, replayable,
        outlier=cluster.outlier, observer=observer, service=target.service,
    )


def repick(target: Target, call: Call) -> Endpoint:
    """The endpoint of a call's next attempt (`pick` on the target's cluster, by the
    request's hash). Raises `NoHealthyUpstream`."""
    assert target.cluster is not None
    return pick(target.cluster, target.hash.value, call)


def _route_name(result: RouteResult) -> str:
    return repr(result.route.name) if result.route.name else (
        f"#{result.virtual_host.routes.index(result.route)} of virtual host "
        f"{result.virtual_host.name!r}"
    )
