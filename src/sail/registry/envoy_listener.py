"""The port listener Envoy clients use.

gRPC and sail ask for one API listener per service; Envoy subscribes to every listener and
ignores API listeners, so the registry also serves one *port* listener for Envoy sidecars:
an HCM on `address:port` whose routes (`sail_outbound`, over RDS) hold one virtual host
per service, chosen by the Host header, as Istio's outbound listener does. Each virtual host
carries the same routes (and virtual-host level settings) as that service's own route
configuration, and its HCM the same HTTP filters (fault, then router), so a VirtualService's
faults, mirrors and headers apply in Envoy too.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from sail.model import HttpConnectionManager, Listener, RouteConfig, VirtualHost
from sail.registry.translate import HTTP_FILTERS

__all__ = ["OUTBOUND", "outbound_listener", "outbound_routes"]

OUTBOUND = "sail_outbound"


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
        hosts.append(attrs.evolve(vhost, name=config.name, domains=domains))
    return RouteConfig(OUTBOUND, tuple(hosts))


def outbound_listener(address: str, port: int) -> Listener:
    return Listener(
        name=f"{OUTBOUND}_{port}",
        hcm=HttpConnectionManager(rds_name=OUTBOUND, http_filters=HTTP_FILTERS),
        address=(address, port),
    )
