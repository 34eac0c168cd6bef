"""The port listener Envoy clients use.

gRPC and sail ask for one API listener per service; Envoy subscribes to every listener and
ignores API listeners, so the registry also serves one *port* listener for Envoy sidecars:
an HCM on `address:port` whose routes (`sail_outbound`, over RDS) hold one virtual host
per service, chosen by the Host header, as Istio's outbound listener does. Each virtual host
carries the same routes as that service's own route configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from sail.model import HttpConnectionManager, HttpFilter, Listener, RouteConfig, VirtualHost

__all__ = ["OUTBOUND", "outbound_listener", "outbound_routes"]

OUTBOUND = "sail_outbound"
_ROUTER = HttpFilter(
    "envoy.filters.http.router",
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
)


def outbound_routes(route_configs: Sequence[RouteConfig]) -> RouteConfig:
    """One virtual host per service: the first virtual host of each service's route
    configuration named after the config, with its domains less the catch-all `*` (each
    service's own config may use `*`; here Host must choose). A domain claimed by two
    services stays with the first, by name, so Envoy never sees a duplicate."""
    hosts: list[VirtualHost] = []
    claimed: set[str] = set()
    for config in sorted(route_configs, key=lambda c: c.name):
        if ":" in config.name or not config.virtual_hosts:
            continue  # `reviews:9080` repeats `reviews`; one virtual host per service
        vhost = config.virtual_hosts[0]
        domains = tuple(d for d in vhost.domains if d != "*" and d.lower() not in claimed)
        if not domains:
            continue
        claimed.update(d.lower() for d in domains)
        hosts.append(VirtualHost(config.name, domains, vhost.routes, vhost.retry_policy))
    return RouteConfig(OUTBOUND, tuple(hosts))


def outbound_listener(address: str, port: int) -> Listener:
    return Listener(
        name=f"{OUTBOUND}_{port}",
        hcm=HttpConnectionManager(rds_name=OUTBOUND, http_filters=(_ROUTER,)),
        address=(address, port),
    )
