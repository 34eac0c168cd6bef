"""Server listeners for xDS-enabled gRPC servers (gRFC A36).

An xDS-enabled server - grpcio's `grpc.server(..., xds=True)`, or sail's
`mesh.grpc_server(..., xds=True)` - asks for the Listener named by its bootstrap's
`server_listener_resource_name_template` with its listening address in place of `%s`
(`grpc/server?xds.resource.listening_address=127.0.0.1:50051`), and serves only once it has
one whose address is its own.

The registry serves one for each registered workload, under the workload's address and
under the wildcard addresses a server may listen on (`0.0.0.0`, `[::]`), with the port
the workload listens on: one filter chain, an HTTP connection manager with the router
filter alone (grpcio refuses a server Listener with the fault filter, which is
client-only) and one route that matches every call with `non_forwarding_action` (the server
handles the call itself). These listeners are served only to clients that ask for them by
name: Envoy's wildcard subscription never sees them (it would try to bind their ports).

Each workload's transport comes from PeerAuthentication
(`sail.registry.istio.peer_authentication`): STRICT is one mTLS chain, PERMISSIVE adds an
mTLS chain for TLS connections before the plaintext one (for a workload with an
identity), DISABLE is plaintext.
"""

from __future__ import annotations

from collections.abc import Iterable

from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE as DEFAULT_TEMPLATE
from sail.model import (
    HttpConnectionManager,
    Listener,
    PathMatch,
    PathMatchKind,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
    host_port,
)
from sail.registration import Workload
from sail.registry.istio.peer_authentication import PeerPolicies, server_chains
from sail.registry.istio.security import MtlsMode
from sail.registry.translate import ROUTER_FILTER

__all__ = ["DEFAULT_TEMPLATE", "server_listener_names", "server_listeners"]


_WILDCARDS = ("0.0.0.0", "::")

_EVERY_CALL = Route(RouteMatch(PathMatch(PathMatchKind.PREFIX, "/")), None, name="inbound")
_INBOUND = RouteConfig("inbound", (VirtualHost("inbound", ("*",), (_EVERY_CALL,)),))


def server_listener_names(
    workload: Workload, template: str = DEFAULT_TEMPLATE
) -> list[tuple[str, str]]:
    """`(listener name, address)` for each address `workload` may listen on."""
    addresses = [workload.address, *(w for w in _WILDCARDS if w != workload.address)]
    return [(template.replace("%s", host_port(a, workload.port)), a) for a in addresses]


def server_listeners(
    workloads: Iterable[Workload],
    template: str = DEFAULT_TEMPLATE,
    policies: PeerPolicies | None = None,
) -> list[Listener]:
    """The server listeners of `workloads`, sorted by name (each name once), with the
    transport `policies` (PeerAuthentication) give each workload."""
    hcm = HttpConnectionManager(route_config=_INBOUND, http_filters=(ROUTER_FILTER,))
    out: dict[str, Listener] = {}
    for workload in workloads:
        mode = policies.mode(workload) if policies is not None else MtlsMode.PERMISSIVE
        chains = tuple(server_chains(hcm, mode, workload))
        plain = len(chains) == 1 and chains[0].tls is None
        for name, address in server_listener_names(workload, template):
            out.setdefault(name, Listener(
                name=name, hcm=hcm, address=(address, workload.port),
                filter_chains=() if plain else chains,
            ))
    return [out[name] for name in sorted(out)]
