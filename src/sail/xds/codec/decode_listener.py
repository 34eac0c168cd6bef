"""`Listener` → `Listener`, and the `HttpConnectionManager` inside it.

Two shapes are accepted:

* **Client (API) listeners**, as gRPC receives them: `api_listener.api_listener` holds an
  `HttpConnectionManager` packed in an `Any`. The listener's name is the service authority.
* **Port listeners**, as Envoy and xDS-enabled gRPC servers (gRFC A36) receive them:
  `address.socket_address` plus filter chains (and maybe a `default_filter_chain`), each
  with exactly one network filter, an `HttpConnectionManager`. Each chain's
  `filter_chain_match` is kept for the server to match connections against
  (`sail.grpc.xds_server`), read as A36 does: `destination_port`, `server_names` and
  `application_protocols` can never match, nor can a `transport_protocol` other than
  `raw_buffer`. `listener_filters` are NACKed (A36), as are two chains with the same match
  (Envoy refuses them too). A chain's `transport_socket` is plaintext or a
  `DownstreamTlsContext` with certificate provider instances (gRFC A29,
  `sail.xds.codec.decode_tls`); `transport_protocol: tls` marks a chain for TLS
  connections (`FilterChainMatch.tls`).

The HCM takes its routes from RDS (`rds`, whose `config_source` must be `ads` or `self`, since
sail has a single ADS stream) or inline (`route_config`). Its HTTP filters follow gRFC A39:
the router filter must be present and last; a filter type sail does not know is a NACK
unless the filter is `is_optional`, in which case it is skipped. As in gRPC, the known types
depend on the side: a client (API) listener knows only the filters a client applies, the
router and fault (`CLIENT_HTTP_FILTERS`); a server-only filter there (RBAC, gRFC A41; CORS)
is a NACK naming it, since a client would ignore it, unless it is `is_optional`. Port
listeners also know RBAC and CORS (`HTTP_FILTERS`), which an xDS-enabled server refuses to
serve with (`sail.grpc.xds_server`). Filters that are
`disabled` are skipped too (nothing in sail turns them on per route), except the fault
filter, which routes can configure by name: a disabled one is NACKed, as is a second one.
The fault filter's own `HTTPFault` config is decoded into `HttpFilter.config`
(`decode_fault`; `None` when it injects nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from sail.model import (
    CidrRange,
    FaultPolicy,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    SourceType,
)
from sail.xds.codec.decode_address import decode_socket_address
from sail.xds.codec.decode_fault import decode_fault_config
from sail.xds.codec.decode_route import decode_route_config
from sail.xds.codec.extensions import (
    CLIENT_HTTP_FILTERS,
    FAULT,
    HCM,
    HTTP_FILTERS,
    ROUTER,
    SERVER_ONLY_FILTERS,
    configured_type,
    unpack_into,
)
from sail.xds.codec.transport_socket import downstream_socket
from sail.xds.codec.validation import Invalid, at, resource
from sail.xds.codec.wellknown import duration_seconds

__all__ = ["decode_http_connection_manager", "decode_listener"]

_NO_FAULT = FaultPolicy()
_MATCH_ALL = FilterChainMatch()


def decode_listener(msg: Any, providers: Collection[str] = ()) -> Listener:
    """Decode an LDS resource; raises `ResourceError` naming the invalid field. A server
    chain's `DownstreamTlsContext` may name the certificate provider instances
    `providers` (the bootstrap's)."""
    with resource("Listener", msg.name):
        if not msg.name:
            raise Invalid("name", "must not be empty")
        if msg.HasField("api_listener"):
            with at("api_listener"):
                hcm = _packed_hcm(msg.api_listener, "api_listener", client=True)
            return Listener(name=msg.name, hcm=hcm)
        if msg.address.WhichOneof("address") is not None:
            with at("address"):
                address = decode_socket_address(msg.address, allow_port_zero=True)
            return _port_listener(msg, address, providers)
        raise Invalid("", "a listener needs an api_listener or an address.socket_address")


def _port_listener(
    msg: Any, address: tuple[str, int], providers: Collection[str]
) -> Listener:
    if msg.listener_filters:
        raise Invalid("listener_filters", "are not supported (gRFC A36)")
    chains: list[FilterChain] = []
    seen: dict[FilterChainMatch, int] = {}
    for i, chain in enumerate(msg.filter_chains):
        with at("filter_chains", i):
            decoded = _filter_chain(chain, providers)
            if decoded.match.never:  # never taken: no clash with anything
                chains.append(decoded)
                continue
            if decoded.match in seen:
                raise Invalid(
                    "filter_chain_match",
                    f"is the same as filter_chains[{seen[decoded.match]}]'s",
                )
            seen[decoded.match] = i
            chains.append(decoded)
    default = None
    if msg.HasField("default_filter_chain"):
        with at("default_filter_chain"):
            default = _filter_chain(msg.default_filter_chain, providers)
    if not chains and default is None:
        raise Invalid("filter_chains", "a port listener needs a filter chain")
    first = chains[0] if chains else default
    assert first is not None
    if (default is None and len(chains) == 1 and chains[0].match == _MATCH_ALL
            and chains[0].tls is None):
        return Listener(name=msg.name, hcm=first.hcm, address=address)  # the common shape
    return Listener(
        name=msg.name, hcm=first.hcm, address=address, filter_chains=tuple(chains),
        default_filter_chain=default,
    )


def _filter_chain(chain: Any, providers: Collection[str]) -> FilterChain:
    match = _MATCH_ALL
    if chain.HasField("filter_chain_match"):
        with at("filter_chain_match"):
            match = _filter_chain_match(chain.filter_chain_match)
    filters = chain.filters
    if len(filters) != 1:
        raise Invalid(
            "filters",
            "exactly one network filter (an HttpConnectionManager) is supported, "
            f"got {len(filters)}",
        )
    with at("filters", 0):
        if filters[0].WhichOneof("config_type") != "typed_config":
            raise Invalid("typed_config", "is required")
        hcm = _packed_hcm(filters[0], "typed_config", client=False)
    tls = None
    if chain.HasField("transport_socket"):
        tls = downstream_socket(chain.transport_socket, "transport_socket", providers)
    return FilterChain(hcm, match, str(chain.name), tls)


def _filter_chain_match(m: Any) -> FilterChainMatch:
    never = (
        m.HasField("destination_port")
        or bool(m.server_names)
        or bool(m.application_protocols)
        or m.transport_protocol not in ("", "raw_buffer")
    )
    prefixes = _cidr_ranges("prefix_ranges", m.prefix_ranges)
    sources = _cidr_ranges("source_prefix_ranges", m.source_prefix_ranges)
    try:
        source_type = SourceType(m.source_type)
    except ValueError:
        raise Invalid("source_type", f"{m.source_type} is not a source type") from None
    for i, port in enumerate(m.source_ports):
        if not 1 <= port <= 65535:
            raise Invalid(f"source_ports[{i}]", f"{port} is not a port (1-65535)")
    return FilterChainMatch(
        prefix_ranges=prefixes,
        source_type=source_type,
        source_prefix_ranges=sources,
        source_ports=tuple(sorted(set(m.source_ports))),
        raw_buffer=m.transport_protocol == "raw_buffer",
        never=never,
        tls=m.transport_protocol == "tls",
    )


def _cidr_ranges(field: str, ranges: Any) -> tuple[CidrRange, ...]:
    out = []
    for i, r in enumerate(ranges):
        with at(field, i):
            try:
                ip = ipaddress.ip_address(r.address_prefix)
            except ValueError:
                raise Invalid(
                    "address_prefix", f"{r.address_prefix!r} is not an IP address"
                ) from None
            length = r.prefix_len.value if r.HasField("prefix_len") else ip.max_prefixlen
            if length > ip.max_prefixlen:
                raise Invalid("prefix_len", f"{length} is longer than the address")
            out.append(CidrRange(str(ip), length))
    return tuple(out)


def _packed_hcm(holder: Any, field: str, *, client: bool) -> HttpConnectionManager:
    packed = getattr(holder, field)
    with at(field):
        if packed.type_url != HCM:
            got = packed.type_url or "nothing"
            raise Invalid("", f"expected an HttpConnectionManager ({HCM}), got {got}")
        hcm = unpack_into(packed, hcm_pb2.HttpConnectionManager())
        return decode_http_connection_manager(hcm, client=client)


def decode_http_connection_manager(h: Any, *, client: bool) -> HttpConnectionManager:
    """Decode an `HttpConnectionManager`, raising `Invalid`. `client` says it is a client
    (API) listener's, which knows only the HTTP filters a client applies."""
    rds_name = None
    route_config = None
    which = h.WhichOneof("route_specifier")
    if which == "rds":
        with at("rds"):
            rds_name = _rds_name(h.rds)
    elif which == "route_config":
        with at("route_config"):
            route_config = decode_route_config(h.route_config)
    elif which == "scoped_routes":
        raise Invalid("scoped_routes", "scoped routes are not supported; use rds or route_config")
    else:
        raise Invalid("", "one of rds or route_config is required")
    max_stream = None
    if h.HasField("common_http_protocol_options"):
        with at("common_http_protocol_options"):
            max_stream = duration_seconds(h.common_http_protocol_options, "max_stream_duration")
    return HttpConnectionManager(
        rds_name=rds_name,
        route_config=route_config,
        http_filters=_http_filters(h.http_filters, client),
        max_stream_duration=max_stream,
    )


def _rds_name(rds: Any) -> str:
    with at("config_source"):
        source = rds.config_source.WhichOneof("config_source_specifier")
        if source not in ("ads", "self"):
            raise Invalid("", f"must be ads or self, got {source or 'nothing'}")
    if not rds.route_config_name:
        raise Invalid("route_config_name", "must not be empty")
    return str(rds.route_config_name)


def _http_filters(filters: Any, client: bool) -> tuple[HttpFilter, ...]:
    out: list[HttpFilter] = []
    names: set[str] = set()
    router_index: int | None = None
    fault_index: int | None = None
    for i, f in enumerate(filters):
        with at("http_filters", i):
            if router_index is not None:
                raise Invalid(
                    "",
                    f"filter {f.name!r} comes after the router filter "
                    f"(http_filters[{router_index}]); the router must be last",
                )
            if not f.name:
                raise Invalid("name", "must not be empty")
            if f.name in names:
                raise Invalid("name", f"duplicate filter name {f.name!r}")
            names.add(f.name)
            type_url = _filter_type(f, client)
            if type_url is None:
                continue
            config = None
            if type_url == ROUTER:
                if f.disabled:
                    raise Invalid("disabled", "the router filter cannot be disabled")
                router_index = i
            elif type_url == FAULT:
                if f.disabled:
                    raise Invalid("disabled", "a disabled fault filter is not supported")
                if fault_index is not None:
                    raise Invalid(
                        "", f"only one fault filter is supported (also http_filters[{fault_index}])"
                    )
                fault_index = i
                with at("typed_config"):
                    policy = decode_fault_config(f.typed_config)
                config = None if policy == _NO_FAULT else policy
            elif f.disabled:
                continue
            out.append(HttpFilter(f.name, type_url, f.is_optional, config))
    if router_index is None:
        raise Invalid("http_filters", f"the router filter ({ROUTER}) is required, and must be last")
    return tuple(out)


def _filter_type(f: Any, client: bool) -> str | None:
    """The filter's config type URL, or `None` for an optional filter sail skips."""
    which = f.WhichOneof("config_type")
    if which == "config_discovery":
        if f.is_optional:
            return None
        raise Invalid("config_discovery", "filter config discovery (ECDS) is not supported")
    if which is None:
        raise Invalid("typed_config", "is required")
    with at("typed_config"):
        type_url, _ = configured_type(f.typed_config)
    if type_url in (CLIENT_HTTP_FILTERS if client else HTTP_FILTERS):
        return type_url
    if f.is_optional:
        return None
    if client and type_url in SERVER_ONLY_FILTERS:
        raise Invalid(
            "typed_config",
            f"filter {f.name!r} ({type_url.rsplit('/', 1)[-1]}) {SERVER_ONLY_FILTERS[type_url]}:"
            " a client listener does not apply it, so it is refused rather than ignored"
            " (set is_optional to skip it)",
        )
    raise Invalid(
        "typed_config",
        f"filter {f.name!r} has unsupported type {type_url} (set is_optional to skip it)",
    )
