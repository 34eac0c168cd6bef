"""Istio objects + registered workloads → the xDS resources the registry serves.

```python
resources = translate(objects, [(workload, HealthStatus.HEALTHY), ...])
resources.listeners, resources.route_configs, resources.clusters, resources.load_assignments
```

**Services** are the registered workloads' services and the ServiceEntry hosts; a
service's **ports** are those its workloads listen on (and a ServiceEntry's `ports`).
For each service `S` and port `P` the output has:

* an API listener named `S:P` (what gRPC asks for with `xds:///S:P`), and one named `S`
  for the service's first (lowest) port, each an HTTP connection manager taking routes
  over RDS from the route configuration of the same name, with the fault filter (which the
  routes configure per route, as Istio does) and the router filter;
* that route configuration: one virtual host whose domains are `S`, `S:P`, the
  Kubernetes names `S.<ns>.svc.cluster.local[:P]` (namespace of S's VirtualService, else
  `default`) and `*`, so any Host reaches it (clients choose the route configuration by
  listener, not by Host). Its routes come from S's VirtualService (see
  `sail.registry.istio.routes`), or are one default route to `outbound|P||S`;
* EDS clusters `outbound|P||S` and `outbound|P|<subset>|S` for each subset of S's
  DestinationRule, with the rule's traffic policy (`sail.registry.istio.clusters`), and
  their load assignments: the workloads of S on port P (for a subset, those whose labels
  include the subset's), grouped by locality, with their health. A route may name a
  cluster beyond these (a port or subset with no workload yet): it is made too, with no
  endpoints, so every route resolves.

ServiceEntry hosts: `STATIC` entries are EDS clusters of their endpoints; `DNS` entries are
`STRICT_DNS` clusters carrying their endpoints inline (no separate load assignment).

**Port listeners for Envoy** (`port_listeners`, which the registry adds unless told not
to): Envoy ignores API listeners, so for each port P of any service it also gets a listener
`127.0.0.1_P` bound to loopback (as Istio's Sidecar egress listeners with
`captureMode: NONE` are), whose routes come over RDS from the route configuration `P`
(Istio names outbound route configurations by port): one virtual host `S:P` per service on
that port, chosen by Host.

**mTLS.** A cluster of a mesh service is mTLS (an `UpstreamTls` naming certificate
provider `default`, expecting the SPIFFE IDs of the service's workloads) when its
DestinationRule's `tls.mode` is ISTIO_MUTUAL, or, without one, when every workload behind
it has an identity and its PeerAuthentication does not DISABLE mTLS (auto-mTLS, `_mtls`).
PeerAuthentication's server side is in `sail.registry.server_listener`.
AuthorizationPolicy and RequestAuthentication never get here: `check_supported` refuses
them until sail enforces them. The output is sorted by name and built only from
its inputs, so unchanged config and workloads give equal `Resources`. Objects are assumed
validated (`sail.registry.istio.validate`); what cannot be translated raises
`IstioConfigError` (`check_supported`) rather than being dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from sail.model import (
    CertificateProviderRef,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryType,
    Endpoint,
    HealthStatus,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    Locality,
    Route,
    RouteAction,
    RouteConfig,
    SanMatcher,
    StringMatcher,
    StringMatchKind,
    UpstreamTls,
    VirtualHost,
)
from sail.registration import Workload
from sail.registry.istio.clusters import hash_policies, load_assignment, with_policy
from sail.registry.istio.destination_rule import TLSMode, TrafficPolicy
from sail.registry.istio.hosts import CLUSTER_SUFFIX, cluster_name, short_host
from sail.registry.istio.model import (
    DestinationRule,
    IstioObject,
    ServiceEntry,
    VirtualService,
)
from sail.registry.istio.peer_authentication import MESH_PROVIDER, PeerPolicies
from sail.registry.istio.routes import FAULT_FILTER_NAME, build_routes
from sail.registry.istio.security import MtlsMode
from sail.registry.istio.service_entry import Resolution
from sail.registry.istio.validate import check_supported
from sail.xds.codec.extensions import FAULT, ROUTER, ROUTER_NAME

__all__ = [
    "FAULT_FILTER",
    "HTTP_FILTERS",
    "LOOPBACK",
    "ROUTER_FILTER",
    "Resources",
    "port_listeners",
    "translate",
]

ROUTER_FILTER = HttpFilter(ROUTER_NAME, ROUTER)
"""The router filter every HTTP connection manager ends with (peers need it)."""

FAULT_FILTER = HttpFilter(FAULT_FILTER_NAME, FAULT)
"""The fault filter, with no faults of its own: a VirtualService's `fault` becomes a
per-route config for it. Listed in every HCM so that turning faults on or off changes routes
only, never listeners (Istio does the same)."""

HTTP_FILTERS = (FAULT_FILTER, ROUTER_FILTER)
"""The HTTP filters of every HCM the registry serves, in order."""


@attrs.frozen
class Resources:
    """One complete set of xDS resources, each tuple sorted by name."""

    listeners: tuple[Listener, ...] = ()
    route_configs: tuple[RouteConfig, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    load_assignments: tuple[ClusterLoadAssignment, ...] = ()


def translate(
    objects: Sequence[IstioObject], workloads: Sequence[tuple[Workload, HealthStatus]]
) -> Resources:
    """The resources for `objects` and `workloads`; raises `IstioConfigError` for config
    that parses but cannot be translated yet."""
    check_supported(objects)
    mesh = _Mesh(objects, workloads)
    needed: dict[str, tuple[str, int, str]] = {}

    def use(host: str, port: int, subset: str) -> str:
        name = cluster_name(port, host, subset)
        needed[name] = (host, port, subset)
        return name

    listeners: list[Listener] = []
    route_configs: list[RouteConfig] = []
    for service, ports in sorted(mesh.ports.items()):
        vs = mesh.virtual_services.get(service)
        rule = mesh.destination_rules.get(service)
        for port in ports:
            use(service, port, "")
            for subset in rule.spec.subsets if rule is not None else ():
                use(service, port, subset.name)
            routes = build_routes(vs, service, port, mesh.ports, use)
            virtual_host = VirtualHost(
                name=service,
                domains=_domains(service, port, vs),
                routes=tuple(mesh.with_hashing(r, needed) for r in routes),
            )
            # gRPC asks for `xds:///S:P`; the bare `S` is the service's first port
            names = [f"{service}:{port}", *([service] if port == ports[0] else [])]
            for name in names:
                listeners.append(_listener(name))
                route_configs.append(RouteConfig(name, (virtual_host,)))

    clusters: list[Cluster] = []
    assignments: list[ClusterLoadAssignment] = []
    for name, key in sorted(needed.items()):
        cluster, assignment = mesh.cluster(name, *key)
        clusters.append(cluster)
        if assignment is not None:
            assignments.append(assignment)
    return Resources(
        listeners=tuple(sorted(listeners, key=lambda x: x.name)),
        route_configs=tuple(sorted(route_configs, key=lambda r: r.name)),
        clusters=tuple(clusters),
        load_assignments=tuple(assignments),
    )


LOOPBACK = "127.0.0.1"
"""Where `port_listeners` bind by default."""


def port_listeners(
    route_configs: Sequence[RouteConfig], address: str = LOOPBACK
) -> tuple[list[Listener], list[RouteConfig]]:
    """Istio-shaped outbound port listeners for Envoy, from the route configurations
    `translate` made: for each port P, the listener `<address>_P` on `address:P` (an HCM
    with the usual HTTP filters taking routes over RDS) and the route configuration `P`
    holding, for each service S on port P, the virtual host of S's configuration `S:P`
    named `S:P`, its domains less the catch-all `*` (there Host must choose). A domain
    claimed by two services on one port stays with the first by name, so Envoy never sees
    a duplicate. Both lists are sorted by port."""
    by_port: dict[int, list[VirtualHost]] = {}
    for config in sorted(route_configs, key=lambda c: c.name):
        _, sep, number = config.name.rpartition(":")
        if not sep or not number.isdigit() or not config.virtual_hosts:
            continue  # `S` repeats `S:P` for S's first port
        vhost = attrs.evolve(config.virtual_hosts[0], name=config.name)
        by_port.setdefault(int(number), []).append(vhost)
    listeners: list[Listener] = []
    routes: list[RouteConfig] = []
    for port, vhosts in sorted(by_port.items()):
        claimed: set[str] = set()
        hosts: list[VirtualHost] = []
        for vhost in vhosts:
            domains = tuple(d for d in vhost.domains if d != "*" and d.lower() not in claimed)
            if domains:
                claimed.update(d.lower() for d in domains)
                hosts.append(attrs.evolve(vhost, domains=domains))
        routes.append(RouteConfig(str(port), tuple(hosts)))
        listeners.append(
            Listener(
                name=f"{address}_{port}",
                hcm=HttpConnectionManager(rds_name=str(port), http_filters=HTTP_FILTERS),
                address=(address, port),
            )
        )
    return listeners, routes


def _listener(name: str) -> Listener:
    return Listener(name, HttpConnectionManager(rds_name=name, http_filters=HTTP_FILTERS))


def _domains(service: str, port: int, vs: VirtualService | None) -> tuple[str, ...]:
    names = [service]
    if "." not in service:
        namespace = vs.meta.namespace if vs is not None else "default"
        names.append(f"{service}.{namespace}{CLUSTER_SUFFIX}")
        if vs is not None:  # long names as the VirtualService writes them
            names.extend(h for h in vs.spec.hosts if h != service and short_host(h) == service)
    unique = dict.fromkeys(d for n in names for d in (n, f"{n}:{port}"))
    return (*unique, "*")


class _Mesh:
    """The inputs indexed by (short) host. Where two objects claim one host (which
    `validate` refuses), the first by kind/namespace/name wins, so the output does not
    depend on input order."""

    def __init__(
        self, objects: Sequence[IstioObject], workloads: Sequence[tuple[Workload, HealthStatus]]
    ) -> None:
        self.virtual_services: dict[str, VirtualService] = {}
        self.destination_rules: dict[str, DestinationRule] = {}
        self.entries: dict[str, tuple[ServiceEntry, str]] = {}  # by short host: (entry, host)
        for obj in sorted(objects, key=lambda o: o.key):
            if isinstance(obj, VirtualService):
                for host in obj.spec.hosts:
                    self.virtual_services.setdefault(short_host(host), obj)
            elif isinstance(obj, DestinationRule):
                self.destination_rules.setdefault(short_host(obj.spec.host), obj)
            elif isinstance(obj, ServiceEntry):
                for host in obj.spec.hosts:
                    self.entries.setdefault(short_host(host), (obj, host))
        self.workloads: dict[str, list[tuple[Workload, HealthStatus]]] = {}
        ports: dict[str, set[int]] = {}
        for workload, health in workloads:
            service = short_host(workload.service)
            self.workloads.setdefault(service, []).append((workload, health))
            ports.setdefault(service, set()).add(workload.called_port)
        for host, (entry, _) in self.entries.items():
            ports.setdefault(host, set()).update(p.number for p in entry.spec.ports)
        self.ports: Mapping[str, tuple[int, ...]] = {h: tuple(sorted(p)) for h, p in ports.items()}
        self.peer_policies = PeerPolicies(objects)

    def _policy(self, host: str, subset: str) -> TrafficPolicy | None:
        """The traffic policy of `host`'s subset (the subset's sections over the rule's)."""
        rule = self.destination_rules.get(host)
        chosen = rule.spec.subset(subset) if rule is not None and subset else None
        policy = rule.spec.traffic_policy if rule is not None else None
        if chosen is not None and chosen.traffic_policy is not None:
            own = chosen.traffic_policy
            policy = policy.overridden_by(own) if policy is not None else own
        return policy

    def with_hashing(self, route: Route, needed: Mapping[str, tuple[str, int, str]]) -> Route:
        """`route` with the hash policy of its destinations' `consistentHash`, when they
        all have the same one (Istio hashes a route by its destination's rule)."""
        action = route.action
        if not isinstance(action, RouteAction):
            return route
        found = set()
        for name in action.cluster_names():
            host, _, subset = needed[name]
            policy = self._policy(host, subset)
            lb = policy.load_balancer if policy is not None else None
            found.add(lb.consistent_hash if lb is not None else None)
        if len(found) != 1 or (ch := found.pop()) is None:
            return route
        return attrs.evolve(route, action=attrs.evolve(action, hash_policies=hash_policies(ch)))

    def cluster(
        self, name: str, host: str, port: int, subset: str
    ) -> tuple[Cluster, ClusterLoadAssignment | None]:
        """Cluster `name` and, for an EDS cluster, its load assignment."""
        rule = self.destination_rules.get(host)
        chosen = rule.spec.subset(subset) if rule is not None and subset else None
        policy = self._policy(host, subset)

        def selects(labels: Mapping[str, str]) -> bool:
            if not subset:
                return True
            return chosen is not None and chosen.selects(labels)

        endpoints = self._endpoints(host, port, selects)
        assignment = load_assignment(name, endpoints)
        entry, _ = self.entries.get(host, (None, ""))
        if entry is not None and entry.spec.resolution is Resolution.DNS:
            cluster = Cluster(name, discovery=DiscoveryType.STRICT_DNS, load_assignment=assignment)
            return with_policy(cluster, policy), None
        cluster = with_policy(Cluster(name, eds_service_name=name), policy)
        if entry is None and self._mtls(host, port, policy, selects):
            cluster = attrs.evolve(cluster, tls=self._upstream_tls(host))
        return cluster, assignment

    def _mtls(
        self, host: str, port: int, policy: TrafficPolicy | None,
        selects: Callable[[Mapping[str, str]], bool],
    ) -> bool:
        """Whether clients of `host:port` use mTLS: as the DestinationRule's `tls.mode`
        says (ISTIO_MUTUAL or DISABLE), else auto-mTLS as Istio does it: when every
        workload behind the cluster has an identity and accepts mTLS (its PeerAuthentication
        mode is STRICT, or PERMISSIVE on a workload that serves both on one port). sail
        decides per cluster, not per endpoint (Istio's `tlsMode` transport socket match),
        so a cluster mixing workloads that accept mTLS and workloads that do not is
        plaintext; one with a STRICT workload among them then fails to reach that workload
        rather than send it plaintext."""
        tls = policy.tls if policy is not None else None
        if tls is not None:
            return tls.mode is TLSMode.ISTIO_MUTUAL
        behind = [w for w, _ in self.workloads.get(host, ())
                  if w.called_port == port and selects(w.labels)]
        return bool(behind) and all(
            w.identity is not None and _accepts_mtls(self.peer_policies.mode(w), w)
            for w in behind
        )

    def _upstream_tls(self, host: str) -> UpstreamTls:
        """mTLS with the mesh's certificate provider, expecting the identity of one of
        `host`'s workloads (Istio's SAN check: the service's service accounts)."""
        identities = sorted({w.identity for w, _ in self.workloads.get(host, ())
                             if w.identity is not None})
        return UpstreamTls(
            roots=CertificateProviderRef(MESH_PROVIDER, "ROOTCA"),
            identity=CertificateProviderRef(MESH_PROVIDER, "default"),
            san_matchers=tuple(
                SanMatcher(StringMatcher(StringMatchKind.EXACT, i)) for i in identities
            ),
        )

    def _endpoints(
        self, host: str, port: int, selects: Callable[[Mapping[str, str]], bool]
    ) -> list[tuple[Locality, Endpoint]]:
        out = [
            (w.locality, Endpoint(w.address, w.port, weight=max(1, w.weight), health=health,
                                  identity=w.identity or ""))
            for w, health in self.workloads.get(host, ())
            if w.called_port == port and selects(w.labels)
        ]
        entry, written = self.entries.get(host, (None, host))
        if entry is None:
            return out
        service_port = next((p for p in entry.spec.ports if p.number == port), None)
        if service_port is None:
            return out
        for e in entry.spec.endpoints:
            if selects(e.labels):
                endpoint = Endpoint(e.address, e.port_for(service_port), weight=e.weight or 1)
                out.append((e.parsed_locality, endpoint))
        if not entry.spec.endpoints and selects({}):  # DNS: resolve the host itself
            out.append((Locality(), Endpoint(written, service_port.target_port or port)))
        return out


def _accepts_mtls(mode: MtlsMode, workload: Workload) -> bool:
    """Whether `workload` takes mTLS under PeerAuthentication `mode`."""
    return mode is MtlsMode.STRICT or (mode is MtlsMode.PERMISSIVE and workload.permissive)
