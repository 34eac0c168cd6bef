"""Listeners: the entry of a service (a client `api_listener`, or Envoy's port listener)."""

from __future__ import annotations

import enum

import attrs

from sail.model.fault import FaultPolicy
from sail.model.route import RouteConfig
from sail.model.tls import DownstreamTls

__all__ = [
    "FAULT_TYPE_URL",
    "ROUTER_TYPE_URL",
    "CidrRange",
    "FilterChain",
    "FilterChainMatch",
    "HttpConnectionManager",
    "HttpFilter",
    "Listener",
    "SourceType",
]


ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
"""The type URL of Envoy's router filter, the last HTTP filter of every HCM."""
FAULT_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
"""The type URL of Envoy's HTTP fault filter, which sail's clients apply."""


@attrs.frozen
class HttpFilter:
    """One HTTP filter by name and type URL of its `typed_config`.

    `config` is the filter's own config where sail reads it: a fault filter's
    `FaultPolicy`, `None` when it injects nothing (routes may still configure faults for it
    by its `name`)."""

    name: str
    type_url: str
    is_optional: bool = False
    config: FaultPolicy | None = None

    @property
    def is_router(self) -> bool:
        return self.type_url == ROUTER_TYPE_URL

    @property
    def client_applies(self) -> bool:
        """Whether a sail client applies this filter (or may skip it, being optional):
        the router and the fault filter; a server-only filter such as RBAC is neither."""
        return self.is_optional or self.type_url in (ROUTER_TYPE_URL, FAULT_TYPE_URL)


@attrs.frozen
class HttpConnectionManager:
    """The parts of Envoy's HCM the mesh uses.

    Exactly one of `rds_name` (routes from RDS) and `route_config` (inline) is set.
    """

    rds_name: str | None = None
    route_config: RouteConfig | None = None
    http_filters: tuple[HttpFilter, ...] = ()
    max_stream_duration: float | None = None


class SourceType(enum.Enum):
    """`FilterChainMatch.source_type`: which connections' sources a chain accepts."""

    ANY = 0
    SAME_IP_OR_LOOPBACK = 1
    EXTERNAL = 2


@attrs.frozen
class CidrRange:
    """An address prefix, `address/prefix_len` (`prefix_len` defaults to the full length)."""

    address: str
    prefix_len: int


@attrs.frozen
class FilterChainMatch:
    """What a connection must look like to take a filter chain (Envoy's `FilterChainMatch`
    as gRFC A36 reads it).

    `never` marks a chain no connection to an in-process server can take: one with
    `destination_port` (needs `use_original_dst`), `server_names` or `application_protocols`
    (need listener filters), or a `transport_protocol` other than `raw_buffer`. `tls`
    marks `transport_protocol: tls`: gRPC servers never take such a chain (A36), sail's
    HTTP servers (which tell TLS from plaintext by the first byte) take it for TLS
    connections."""

    prefix_ranges: tuple[CidrRange, ...] = ()
    source_type: SourceType = SourceType.ANY
    source_prefix_ranges: tuple[CidrRange, ...] = ()
    source_ports: tuple[int, ...] = ()
    raw_buffer: bool = False
    never: bool = False
    tls: bool = False


@attrs.frozen
class FilterChain:
    """One filter chain of a port listener: its match, its HTTP connection manager and its
    TLS (`None`: plaintext)."""

    hcm: HttpConnectionManager
    match: FilterChainMatch = FilterChainMatch()
    name: str = ""
    tls: DownstreamTls | None = None


@attrs.frozen
class Listener:
    """A named listener.

    **Parameters**

    * `name` - the resource name; for client listeners the service authority
      (`reviews`, `reviews:9080`).
    * `hcm` - the HTTP connection manager of its `api_listener`; for a port listener, of its
      first filter chain (its default chain when it has none).
    * `address` - `(host, port)` for port listeners, `None` for API listeners.
    * `filter_chains`, `default_filter_chain` - a port listener's chains, when it has more
      than the single plaintext match-all chain `hcm` stands for (empty otherwise).
    """

    name: str
    hcm: HttpConnectionManager
    address: tuple[str, int] | None = None
    filter_chains: tuple[FilterChain, ...] = ()
    default_filter_chain: FilterChain | None = None

    def chains(self) -> tuple[FilterChain, ...]:
        """Every chain, the default last: `(FilterChain(hcm),)` for a listener without any."""
        chains = self.filter_chains
        if self.default_filter_chain is not None:
            chains = (*chains, self.default_filter_chain)
        return chains or (FilterChain(self.hcm),)

    def route_keys(self) -> tuple[str, ...]:
        """The names the snapshot keeps each chain's routes under, in `chains()` order: the
        listener's own name for the first, `name#chain-N` for the N-th after it."""
        return (self.name, *(f"{self.name}#chain-{i}" for i in range(1, len(self.chains()))))
