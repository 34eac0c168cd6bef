"""Listener decoding: API and port listeners, the HCM, its route source and HTTP filters."""

from __future__ import annotations

from typing import Any

import pytest

# Registers the Lua filter's proto, so JSON can name it: a type sail does not support.
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401

from sail.errors import ResourceError
from sail.model import (
    CidrRange,
    FaultAbort,
    FaultPolicy,
    FilterChain,
    FilterChainMatch,
    HttpFilter,
    RouteConfig,
    SourceType,
    VirtualHost,
)
from sail.xds.codec import decode_listener, parse_resource
from sail.xds.codec.encode import encode_listener

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
CORS = T + "envoy.extensions.filters.http.cors.v3.Cors"
ROUTER_FILTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
RDS = {"config_source": {"ads": {}}, "route_config_name": "reviews-routes"}


def hcm(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"@type": HCM, "stat_prefix": "in", "http_filters": [ROUTER_FILTER]}
    if "route_config" not in fields and "scoped_routes" not in fields:
        body["rds"] = RDS
    body.update(fields)
    return body


def api_listener(name: str = "reviews", **hcm_fields: Any) -> dict[str, Any]:
    return {"name": name, "api_listener": {"api_listener": hcm(**hcm_fields)}}


def decode(data: dict[str, Any]) -> Any:
    return decode_listener(parse_resource("Listener", data))


def nack(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode(data)
    assert info.value.type_name == "Listener"
    return info.value.reason


def test_api_listener_with_rds() -> None:
    listener = decode(api_listener())
    assert listener.name == "reviews"
    assert listener.address is None
    assert listener.hcm.rds_name == "reviews-routes"
    assert listener.hcm.route_config is None
    assert listener.hcm.http_filters == (HttpFilter("envoy.filters.http.router", ROUTER),)


def test_api_listener_with_inline_route_config() -> None:
    inline = {
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
            }
        ]
    }
    listener = decode(api_listener(route_config=inline))
    config = listener.hcm.route_config
    assert isinstance(config, RouteConfig)
    assert config.name == ""
    assert config.virtual_hosts[0] == VirtualHost("vh", ("*",), config.virtual_hosts[0].routes)
    assert config.cluster_names() == frozenset({"c"})


def test_port_listener_keeps_address_and_decodes_its_hcm() -> None:
    listener = decode(
        {
            "name": "ingress",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm(),
                        }
                    ]
                }
            ],
        }
    )
    assert listener.address == ("0.0.0.0", 10000)
    assert listener.hcm.rds_name == "reviews-routes"


def port_listener(*chains: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "inbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 1}},
        "filter_chains": list(chains),
        **fields,
    }


def chain(rds: str, **match: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"filters": [{"name": "hcm", "typed_config": hcm(
        rds={"route_config_name": rds, "config_source": {"ads": {}}})}]}
    if match:
        out["filter_chain_match"] = match
    return out


def test_port_listener_keeps_every_filter_chain_and_its_match() -> None:
    listener = decode(port_listener(
        chain("local", prefix_ranges=[{"address_prefix": "10.0.0.0", "prefix_len": 8}],
              source_type="SAME_IP_OR_LOOPBACK", source_ports=[9, 7],
              transport_protocol="raw_buffer"),
        chain("tls", transport_protocol="tls"),
        chain("sni", server_names=["a.example"]),
        default_filter_chain=chain("fallback"),
    ))
    assert [c.hcm.rds_name for c in listener.chains()] == ["local", "tls", "sni", "fallback"]
    assert listener.hcm.rds_name == "local"
    first = listener.filter_chains[0].match
    assert first == FilterChainMatch(
        prefix_ranges=(CidrRange("10.0.0.0", 8),),
        source_type=SourceType.SAME_IP_OR_LOOPBACK,
        source_ports=(7, 9),
        raw_buffer=True,
    )
    # fields an in-process server can never match (gRFC A36)
    assert [c.match.never for c in listener.chains()] == [False, True, True, False]
    assert listener.route_keys() == (
        "inbound", "inbound#chain-1", "inbound#chain-2", "inbound#chain-3"
    )
    assert decode_listener(encode_listener(listener)) == listener


def test_a_single_match_all_chain_is_the_listener_hcm() -> None:
    listener = decode(port_listener(chain("only")))
    assert listener.filter_chains == () and listener.default_filter_chain is None
    assert listener.chains() == (FilterChain(listener.hcm),)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (port_listener(), "filter_chains: a port listener needs a filter chain"),
        (port_listener(chain("a", source_ports=[1]), chain("b", source_ports=[1])),
         "filter_chains[1].filter_chain_match: is the same as filter_chains[0]'s"),
        (port_listener(chain("a", prefix_ranges=[{"address_prefix": "ten"}])),
         "filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix: "
         "'ten' is not an IP address"),
        (port_listener(chain("a", source_prefix_ranges=[
            {"address_prefix": "10.0.0.1", "prefix_len": 33}])),
         "filter_chains[0].filter_chain_match.source_prefix_ranges[0].prefix_len: "
         "33 is longer than the address"),
        (port_listener(chain("a"), listener_filters=[{"name": "tls_inspector"}]),
         "listener_filters: are not supported (gRFC A36)"),
    ],
)
def test_bad_filter_chains_are_rejected_naming_the_field(
    data: dict[str, Any], reason: str
) -> None:
    assert nack(data) == reason


def test_listener_needs_api_listener_or_address() -> None:
    assert nack({"name": "x"}) == "a listener needs an api_listener or an address.socket_address"


def test_listener_needs_a_name() -> None:
    assert nack(api_listener(name="")) == "name: must not be empty"


def test_api_listener_must_hold_an_hcm() -> None:
    data = {"name": "x", "api_listener": {"api_listener": {"@type": ROUTER}}}
    assert nack(data) == (
        f"api_listener.api_listener: expected an HttpConnectionManager ({HCM}), got {ROUTER}"
    )


def test_rds_accepts_self_config_source() -> None:
    rds = {"config_source": {"self": {}}, "route_config_name": "r"}
    assert decode(api_listener(rds=rds)).hcm.rds_name == "r"


def test_rds_config_source_must_be_ads_or_self() -> None:
    rds = {"config_source": {"path": "/etc/routes.json"}, "route_config_name": "r"}
    assert nack(api_listener(rds=rds)) == (
        "api_listener.api_listener.rds.config_source: must be ads or self, got path"
    )


def test_rds_needs_a_route_config_name() -> None:
    rds: dict[str, Any] = {"config_source": {"ads": {}}}
    assert nack(api_listener(rds=rds)) == (
        "api_listener.api_listener.rds.route_config_name: must not be empty"
    )


def test_scoped_routes_are_rejected() -> None:
    scoped = {
        "name": "s",
        "scope_key_builder": {},
        "scoped_rds": {"scoped_rds_config_source": {"ads": {}}},
    }
    assert nack(api_listener(scoped_routes=scoped)) == (
        "api_listener.api_listener.scoped_routes: scoped routes are not supported; "
        "use rds or route_config"
    )


def test_missing_router_filter_is_rejected() -> None:
    fault = {"name": "fault", "typed_config": {"@type": FAULT}}
    assert nack(api_listener(http_filters=[fault])) == (
        f"api_listener.api_listener.http_filters: the router filter ({ROUTER}) is required, "
        "and must be last"
    )


def test_router_filter_must_be_last() -> None:
    fault = {"name": "fault", "typed_config": {"@type": FAULT}}
    assert nack(api_listener(http_filters=[ROUTER_FILTER, fault])) == (
        "api_listener.api_listener.http_filters[1]: filter 'fault' comes after the router "
        "filter (http_filters[0]); the router must be last"
    )


def test_unknown_required_filter_is_rejected() -> None:
    lua = {"name": "lua", "typed_config": {"@type": T + "envoy.extensions.filters.http.lua.v3.Lua"}}
    assert nack(api_listener(http_filters=[lua, ROUTER_FILTER])) == (
        "api_listener.api_listener.http_filters[0].typed_config: filter 'lua' has unsupported "
        f"type {T}envoy.extensions.filters.http.lua.v3.Lua (set is_optional to skip it)"
    )


def test_unknown_optional_filter_is_skipped() -> None:
    lua = {
        "name": "lua",
        "is_optional": True,
        "typed_config": {"@type": T + "envoy.extensions.filters.http.lua.v3.Lua"},
    }
    filters = decode(api_listener(http_filters=[lua, ROUTER_FILTER])).hcm.http_filters
    assert [f.name for f in filters] == ["envoy.filters.http.router"]


def test_known_filters_are_kept_in_order() -> None:
    filters = [
        {"name": "fault", "typed_config": {"@type": FAULT}},
        {"name": "rbac", "typed_config": {"@type": RBAC}, "is_optional": True},
        {"name": "cors", "typed_config": {"@type": CORS}},
        ROUTER_FILTER,
    ]
    server = port_listener({"filters": [{"name": "hcm", "typed_config": hcm(
        http_filters=filters)}]})
    assert decode(server).hcm.http_filters == (
        HttpFilter("fault", FAULT),
        HttpFilter("rbac", RBAC, is_optional=True),
        HttpFilter("cors", CORS),
        HttpFilter("envoy.filters.http.router", ROUTER),
    )
    # a client knows only the filters it applies: optional server-only ones are skipped
    client = decode(api_listener(http_filters=[filters[0], filters[1], ROUTER_FILTER]))
    assert client.hcm.http_filters == (
        HttpFilter("fault", FAULT),
        HttpFilter("envoy.filters.http.router", ROUTER),
    )


def test_typed_struct_filter_config_is_looked_through() -> None:
    fault = {
        "name": "fault",
        "typed_config": {
            "@type": T + "xds.type.v3.TypedStruct",
            "type_url": FAULT,
            "value": {"abort": {"http_status": 503}},
        },
    }
    filters = decode(api_listener(http_filters=[fault, ROUTER_FILTER])).hcm.http_filters
    # the struct is read as the fault filter's own config
    assert filters[0] == HttpFilter(
        "fault", FAULT, config=FaultPolicy(abort=FaultAbort(http_status=503))
    )


def test_duplicate_filter_names_are_rejected() -> None:
    fault = {"name": "f", "typed_config": {"@type": FAULT}}
    assert nack(api_listener(http_filters=[fault, fault, ROUTER_FILTER])) == (
        "api_listener.api_listener.http_filters[1].name: duplicate filter name 'f'"
    )


def test_filter_without_config_is_rejected() -> None:
    assert nack(api_listener(http_filters=[{"name": "f"}, ROUTER_FILTER])) == (
        "api_listener.api_listener.http_filters[0].typed_config: is required"
    )


def test_max_stream_duration_comes_from_common_http_protocol_options() -> None:
    options = {"max_stream_duration": "2.5s"}
    listener = decode(api_listener(common_http_protocol_options=options))
    assert listener.hcm.max_stream_duration == 2.5


def test_errors_inside_inline_routes_name_the_full_path() -> None:
    inline = {"virtual_hosts": [{"name": "vh", "domains": ["a*b"]}]}
    assert nack(api_listener(route_config=inline)) == (
        "api_listener.api_listener.route_config.virtual_hosts[0].domains[0]: invalid domain "
        "'a*b': at most one '*', and only at the start or the end"
    )
