"""Test helpers: a real ADS server on loopback, and builders for common resources.

```python
from sail import testing

with testing.XdsServer(testing.service("reviews", {"reviews-v1": [("127.0.0.1", 8001)]})) as xds:
    mesh = sail.Mesh.from_bootstrap(xds.bootstrap())
    ...
    xds.set(testing.service("reviews", {"reviews-v2": [("127.0.0.1", 8002)]}))  # mid-test
```

Resources are Envoy JSON dicts (each with an `"@type"`) or protobuf messages; the builders
return dicts, so a test can tweak any field Envoy's API has before serving it.

`set_testing(True)` (as stamina's) makes every mesh call a single attempt with no back-off,
so a unit test of code that calls through the mesh sees each failure at once:

```python
@pytest.fixture(autouse=True)
def no_retries():
    testing.set_testing(True)
    yield
    testing.set_testing(False)
```
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc.aio

from sail._loop import background_loop
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE, Bootstrap, parse_bootstrap
from sail.model import host_port
from sail.resilience.retry import is_testing, set_testing
from sail.xds.codec.envoy_json import load_resources
from sail.xds.server import SERVER_OPTIONS, AckRecord, AdsServer, ResourceStore

__all__ = [
    "XdsServer",
    "api_listener",
    "eds_cluster",
    "is_testing",
    "load_assignment",
    "previous_hosts",
    "route",
    "route_config",
    "server_listener",
    "service",
    "set_testing",
    "upstream_tls",
]

T = TypeVar("T")

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _messages(resources: Iterable[Any]) -> list[Any]:
    items = list(resources)
    dicts = [r for r in items if isinstance(r, Mapping)]
    parsed = iter(load_resources(dicts)) if dicts else iter(())
    return [next(parsed) if isinstance(r, Mapping) else r for r in items]


class XdsServer:
    """A State-of-the-World ADS server on `127.0.0.1`, run on sail's background loop.

    **Parameters**

    * `resources` - served from the start (Envoy JSON dicts or protobuf messages).
    * `port` - 0 picks a free port; `restart()` comes back on the same one.

    `nacks` lists every NACK received (`AckRecord` with the client's reason); `acks` holds
    the last ACK or NACK per (node id, type URL).
    """

    def __init__(self, resources: Iterable[Any] = (), *, port: int = 0) -> None:
        self._initial = _messages(resources)
        self.port = port
        self.store = ResourceStore()
        self.ads = AdsServer(self.store)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def nacks(self) -> list[AckRecord]:
        return list(self.ads.nacks)

    @property
    def acks(self) -> dict[tuple[str, str], AckRecord]:
        return dict(self.ads.acks)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> XdsServer:
        if self._loop is None:
            self._loop = background_loop()
            self._call(lambda: self.store.set_all(self._initial))
        self._run(self._start_server())
        return self

    async def _start_server(self) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        self.ads.add_to(server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    def stop_serving(self) -> None:
        """Stop the gRPC server (streams break) but keep the resources for `start()`."""
        if self._server is not None:
            server, self._server = self._server, None
            self._run(server.stop(None))

    def restart(self) -> None:
        self.stop_serving()
        self.start()

    def close(self) -> None:
        self.stop_serving()

    def __enter__(self) -> XdsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resources --------------------------------------------------------------------------

    def set(self, resources: Iterable[Any]) -> None:
        """Serve exactly `resources` from now on (each type not among them becomes empty)."""
        messages = _messages(resources)
        self._call(lambda: self.store.set_all(messages))

    def put(self, *resources: Any) -> None:
        """Add or replace resources, keeping the others."""
        messages = _messages(resources)
        self._call(lambda: self.store.put(*messages))

    def remove(self, type_url: str, *names: str) -> None:
        self._call(lambda: self.store.remove(type_url, *names))

    @property
    def version(self) -> int:
        return self.store.version

    def bootstrap(self, *, node_id: str = "sail-test", **extra: Any) -> Bootstrap:
        """A bootstrap naming this server (and `extra` top-level fields)."""
        return parse_bootstrap(self.bootstrap_json(node_id=node_id, **extra), source="<testing>")

    def bootstrap_json(self, *, node_id: str = "sail-test", **extra: Any) -> dict[str, Any]:
        return {
            "xds_servers": [
                {"server_uri": self.address, "channel_creds": [{"type": "insecure"}],
                 "server_features": ["xds_v3"]}
            ],
            "node": {"id": node_id, "cluster": "sail-test", "locality": {"zone": "test"}},
            **extra,
        }

    def _call(self, fn: Callable[[], T]) -> T:
        assert self._loop is not None, "start() the server first"

        async def run() -> T:
            return fn()

        result: T = self._run(run())
        return result

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            coro, self._loop
        )
        return future.result(10)


# -- resource builders (Envoy JSON) ---------------------------------------------------------


def route(
    cluster: str | Mapping[str, int] | None = None,
    *,
    prefix: str = "/",
    headers: Sequence[Mapping[str, Any]] = (),
    **action: Any,
) -> dict[str, Any]:
    """A route: to one cluster, or weighted clusters given as `{name: weight}`."""
    act: dict[str, Any] = dict(action)
    if isinstance(cluster, str):
        act["cluster"] = cluster
    elif cluster is not None:
        act["weighted_clusters"] = {
            "clusters": [{"name": n, "weight": w} for n, w in cluster.items()]
        }
    match: dict[str, Any] = {"prefix": prefix}
    if headers:
        match["headers"] = list(headers)
    return {"match": match, "route": act}


def previous_hosts() -> list[dict[str, Any]]:
    """A route retry policy's `retry_host_predicate` that sends each retry to an endpoint
    not tried yet (Envoy's `previous_hosts`); a new list each call."""
    return [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        },
    }]


def route_config(
    name: str, routes: Sequence[Mapping[str, Any]], *, domains: Sequence[str] = ("*",)
) -> dict[str, Any]:
    return {
        "@type": ROUTE_CONFIGURATION,
        "name": name,
        "virtual_hosts": [{"name": name, "domains": list(domains), "routes": list(routes)}],
    }


def api_listener(
    name: str, *, rds: str | None = None, routes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A client listener whose HCM takes routes from RDS (`rds`) or inline (`routes`)."""
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": name,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if routes is not None:
        hcm["route_config"] = {k: v for k, v in routes.items() if k != "@type"}
    else:
        hcm["rds"] = {"route_config_name": rds or name, "config_source": {"ads": {}}}
    return {"@type": LISTENER, "name": name, "api_listener": {"api_listener": hcm}}


def server_listener(
    address: str,
    port: int,
    *,
    name: str | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    rds: str | None = None,
    http_filters: Sequence[Mapping[str, Any]] = (),
    mtls: str = "DISABLE",
) -> dict[str, Any]:
    """The Listener of an xDS-enabled server (gRFC A36) listening on `address:port`.

    Named as gRPC's usual template names it (`name` to override); one filter chain whose HCM
    routes every call with `non_forwarding_action` (or `routes`, or routes from RDS `rds`),
    `http_filters` going before the router. `mtls` is a PeerAuthentication mode: `STRICT`
    puts mTLS (certificate provider `default`, a client certificate required) on the
    chain, `PERMISSIVE` adds such a chain for TLS connections (`transport_protocol: tls`)
    before the plaintext one, `DISABLE` leaves it plaintext."""
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "inbound",
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    if rds is not None:
        hcm["rds"] = {"route_config_name": rds, "config_source": {"ads": {}}}
    else:
        every = [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]
        hcm["route_config"] = {
            "name": "inbound",
            "virtual_hosts": [
                {"name": "inbound", "domains": ["*"], "routes": list(routes or every)}
            ],
        }
    return {
        "@type": LISTENER,
        "name": name or DEFAULT_SERVER_LISTENER_TEMPLATE.replace("%s", host_port(address, port)),
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": _server_chains(hcm, mtls),
    }


def _server_chains(hcm: dict[str, Any], mtls: str) -> list[dict[str, Any]]:
    filters = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    provider = {"instance_name": "default"}
    secure = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_certificate_provider_instance": {**provider, "certificate_name": "default"},
                "validation_context": {
                    "ca_certificate_provider_instance": {**provider, "certificate_name": "ROOTCA"},
                },
            },
            "require_client_certificate": True,
        },
    }
    if mtls == "STRICT":
        return [{"name": "mtls", "filters": filters, "transport_socket": secure}]
    plain = {"name": "plaintext", "filters": filters}
    if mtls == "PERMISSIVE":
        tls = {"name": "mtls", "filter_chain_match": {"transport_protocol": "tls"},
               "filters": filters, "transport_socket": secure}
        return [tls, plain]
    if mtls != "DISABLE":
        raise ValueError(f"mtls {mtls!r}: STRICT, PERMISSIVE or DISABLE")
    return [plain]


def eds_cluster(name: str, *, lb_policy: str = "ROUND_ROBIN", **fields: Any) -> dict[str, Any]:
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "lb_policy": lb_policy,
        **fields,
    }


def upstream_tls(*spiffe_ids: str, instance: str = "default") -> dict[str, Any]:
    """A cluster's `transport_socket`: mTLS with certificate provider `instance` (its
    certificate and its roots, as Istio's proxyless config names them), accepting a peer
    whose certificate carries one of `spiffe_ids` (any verified peer when none are given).
    Put it in `eds_cluster(..., transport_socket=upstream_tls(...))`."""
    provider = {"instance_name": instance}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS,
            "common_tls_context": {
                "tls_certificate_provider_instance": {**provider, "certificate_name": "default"},
                "validation_context": {
                    "ca_certificate_provider_instance": {**provider, "certificate_name": "ROOTCA"},
                    "match_subject_alt_names": [{"exact": s} for s in spiffe_ids],
                },
            },
        },
    }


def load_assignment(
    cluster: str,
    endpoints: Sequence[tuple[str, int] | tuple[str, int, int]],
    *,
    health: str = "HEALTHY",
    identities: Sequence[str] = (),
) -> dict[str, Any]:
    """One locality (weight 1) of `(address, port[, weight])` endpoints; `identities`, when
    given, the SPIFFE ID of each (as the registry writes them in the endpoint metadata)."""
    def identity(i: int) -> dict[str, Any]:
        if i >= len(identities) or not identities[i]:
            return {}
        return {"metadata": {"filter_metadata": {"sail": {"identity": identities[i]}}}}

    return {
        "@type": CLUSTER_LOAD_ASSIGNMENT,
        "cluster_name": cluster,
        "endpoints": [
            {
                "locality": {"zone": "test"},
                "load_balancing_weight": 1,
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": e[0], "port_value": e[1]}}
                        },
                        "health_status": health,
                        "load_balancing_weight": e[2] if len(e) > 2 else 1,
                        **identity(i),
                    }
                    for i, e in enumerate(endpoints)
                ],
            }
        ],
    }


def service(
    name: str,
    clusters: Mapping[str, Sequence[tuple[str, int] | tuple[str, int, int]]],
    *,
    weights: Mapping[str, int] | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    transport_socket: Mapping[str, Any] | None = None,
    identities: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Everything a client needs for service `name`: a listener, its route configuration
    (one route to the single cluster, or a weighted split by `weights`, or `routes`), and an
    EDS cluster with endpoints for each entry of `clusters` (with `transport_socket`, e.g.
    `upstream_tls(...)`, and the endpoints' `identities`, when given)."""
    if routes is None:
        if weights is not None:
            routes = [route(dict(weights))]
        else:
            (only,) = clusters
            routes = [route(only)]
    resources: list[dict[str, Any]] = [
        api_listener(name),
        route_config(name, routes, domains=["*"]),
    ]
    for cluster, eps in clusters.items():
        extra: dict[str, Any] = (
            {"transport_socket": dict(transport_socket)} if transport_socket else {}
        )
        resources.append(eds_cluster(cluster, **extra))
        resources.append(load_assignment(cluster, eps, identities=identities))
    return resources
