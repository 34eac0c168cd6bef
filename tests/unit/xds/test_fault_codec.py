"""The HTTP fault filter's config in xDS: in the HCM (the filter's own) and per filter name on
the route configuration, virtual host, route and weighted cluster; round trips and NACKs."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import ResourceError
from sail.model import (
    ClusterWeight,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    FractionalPercent,
    HeaderMatcher,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    PathMatch,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
)
from sail.resilience.fault import FAULT_TYPE_URL
from sail.xds.codec import (
    decode_listener,
    decode_route_configuration,
    encode_listener,
    encode_route_configuration,
    parse_resource,
)
from sail.xds.codec.extensions import FAULT, ROUTER, ROUTER_NAME
from tests.unit.xds.strategies import fractions, header_matchers, positive_durations, route_matches

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_FILTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
FILTER_CONFIG = T + "envoy.config.route.v3.FilterConfig"
NAME = "envoy.filters.http.fault"


def fault(**fields: Any) -> dict[str, Any]:
    return {"@type": FAULT, **fields}


def listener(*filters: dict[str, Any]) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": "x",
        "rds": {"config_source": {"ads": {}}, "route_config_name": "r"},
        "http_filters": [*filters, ROUTER_FILTER],
    }
    return {"name": "reviews", "api_listener": {"api_listener": hcm}}


def decode_l(data: dict[str, Any]) -> Listener:
    return decode_listener(parse_resource("Listener", data))


def nack_l(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode_l(data)
    return info.value.reason


def routes(
    route_extra: dict[str, Any] | None = None,
    vhost_extra: dict[str, Any] | None = None,
    config_extra: dict[str, Any] | None = None,
    action: dict[str, Any] | None = None,
) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": action or {"cluster": "c"}, **(route_extra or {})}
    vhost = {"name": "vh", "domains": ["*"], "routes": [route], **(vhost_extra or {})}
    return {"name": "r", "virtual_hosts": [vhost], **(config_extra or {})}


def decode_r(data: dict[str, Any]) -> RouteConfig:
    return decode_route_configuration(parse_resource("RouteConfiguration", data))


def nack_r(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode_r(data)
    return info.value.reason


def per_route(config: dict[str, Any]) -> dict[str, Any]:
    return {"typed_per_filter_config": {NAME: config}}


def test_fault_type_url_is_the_codecs() -> None:
    assert FAULT_TYPE_URL == FAULT


# -- the filter's own config ------------------------------------------------------------


def test_fault_filter_config_is_decoded() -> None:
    config = fault(
        delay={"fixed_delay": "0.5s", "percentage": {"numerator": 25}},
        abort={"http_status": 503, "percentage": {"numerator": 10, "denominator": "TEN_THOUSAND"}},
        headers=[{"name": "X-Canary", "string_match": {"exact": "1"}}],
        upstream_cluster="c",
        max_active_faults=7,
        delay_percent_runtime="ignored.key",
        disable_downstream_cluster_stats=True,
    )
    (f, _) = decode_l(listener({"name": "fault", "typed_config": config})).hcm.http_filters
    assert f == HttpFilter(
        "fault",
        FAULT,
        config=FaultPolicy(
            delay=FaultDelay(0.5, FractionalPercent(25)),
            abort=FaultAbort(http_status=503, percentage=FractionalPercent(10, 10_000)),
            headers=(HeaderMatcher("x-canary", StringMatcher(StringMatchKind.EXACT, "1")),),
            upstream_cluster="c",
            max_active_faults=7,
        ),
    )


def test_empty_fault_filter_has_no_config() -> None:
    (f, _) = decode_l(listener({"name": "f", "typed_config": fault()})).hcm.http_filters
    assert f == HttpFilter("f", FAULT)
    assert f.config is None


def test_header_controlled_faults_and_grpc_status() -> None:
    config = fault(
        delay={"header_delay": {}, "percentage": {"numerator": 100}},
        abort={"header_abort": {}, "percentage": {"numerator": 100}},
    )
    (f, _) = decode_l(listener({"name": "f", "typed_config": config})).hcm.http_filters
    assert f.config == FaultPolicy(
        delay=FaultDelay(None, FractionalPercent(100)),
        abort=FaultAbort(percentage=FractionalPercent(100)),
    )
    assert f.config.delay is not None and f.config.delay.header_delay
    assert f.config.abort is not None and f.config.abort.header_abort
    grpc = fault(abort={"grpc_status": 14})
    (g, _) = decode_l(listener({"name": "f", "typed_config": grpc})).hcm.http_filters
    assert g.config == FaultPolicy(abort=FaultAbort(grpc_status=14))


def test_percentage_left_out_is_zero_as_in_envoy() -> None:
    config = fault(abort={"http_status": 500})
    (f, _) = decode_l(listener({"name": "f", "typed_config": config})).hcm.http_filters
    assert f.config == FaultPolicy(
        abort=FaultAbort(http_status=500, percentage=FractionalPercent(0))
    )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            fault(downstream_nodes=["a"]),
            "http_filters[0].typed_config.downstream_nodes: is not supported",
        ),
        (
            fault(response_rate_limit={"fixed_limit": {"limit_kbps": 1}}),
            "http_filters[0].typed_config.response_rate_limit: is not supported",
        ),
        (
            fault(abort={"http_status": 600}),
            "http_filters[0].typed_config.abort.http_status: 600 is not in [200, 600)",
        ),
        (
            fault(abort={"percentage": {"numerator": 1}}),
            "http_filters[0].typed_config.abort: one of http_status, grpc_status or "
            "header_abort is required",
        ),
        (
            fault(delay={"percentage": {"numerator": 1}}),
            "http_filters[0].typed_config.delay: one of fixed_delay or header_delay is required",
        ),
        (
            fault(delay={"fixed_delay": "0s"}),
            "http_filters[0].typed_config.delay.fixed_delay: must be greater than 0",
        ),
        (
            fault(headers=[{"name": ":path", "present_match": True}]),
            "http_filters[0].typed_config.headers[0].name: ':path': matching pseudo-headers or "
            "host in a fault filter is not supported",
        ),
    ],
)
def test_bad_fault_filter_config_is_nacked(config: dict[str, Any], reason: str) -> None:
    assert nack_l(listener({"name": "f", "typed_config": config})) == (
        f"api_listener.api_listener.{reason}"
    )


def test_disabled_or_second_fault_filter_is_nacked() -> None:
    disabled = {"name": "f", "typed_config": fault(), "disabled": True}
    assert nack_l(listener(disabled)) == (
        "api_listener.api_listener.http_filters[0].disabled: a disabled fault filter is not "
        "supported"
    )
    one, two = ({"name": n, "typed_config": fault()} for n in ("a", "b"))
    assert nack_l(listener(one, two)) == (
        "api_listener.api_listener.http_filters[1]: only one fault filter is supported "
        "(also http_filters[0])"
    )


# -- per-filter configs -----------------------------------------------------------------


def test_per_filter_configs_at_each_level() -> None:
    abort = fault(abort={"http_status": 503, "percentage": {"numerator": 50}})
    delay = fault(delay={"fixed_delay": "1s", "percentage": {"numerator": 100}})
    weighted = {
        "weighted_clusters": {
            "clusters": [
                {"name": "a", "weight": 1, **per_route(fault(abort={"grpc_status": 2}))},
                {"name": "b", "weight": 1},
            ]
        }
    }
    decoded = decode_r(
        routes(
            route_extra=per_route(abort),
            vhost_extra=per_route(delay),
            config_extra=per_route({"@type": FILTER_CONFIG, "disabled": True}),
            action=weighted,
        )
    )
    assert decoded.typed_per_filter_config == ((NAME, None),)
    (vhost,) = decoded.virtual_hosts
    assert vhost.typed_per_filter_config == (
        (NAME, FaultPolicy(delay=FaultDelay(1.0, FractionalPercent(100)))),
    )
    (route,) = vhost.routes
    assert route.typed_per_filter_config == (
        (NAME, FaultPolicy(abort=FaultAbort(http_status=503, percentage=FractionalPercent(50)))),
    )
    assert isinstance(route.action, RouteAction)
    a, b = route.action.weighted_clusters
    assert a.typed_per_filter_config == ((NAME, FaultPolicy(abort=FaultAbort(grpc_status=2))),)
    assert b.typed_per_filter_config == ()


def test_filter_config_wrapper_and_typed_struct_are_read() -> None:
    wrapped = {"@type": FILTER_CONFIG, "config": fault(abort={"http_status": 418})}
    struct = {
        "@type": T + "xds.type.v3.TypedStruct",
        "type_url": FAULT,
        "value": {"abort": {"http_status": 429}},
    }
    (route,) = (
        decode_r(routes(route_extra={"typed_per_filter_config": {"a": wrapped, "b": struct}}))
        .virtual_hosts[0]
        .routes
    )
    assert route.typed_per_filter_config == (
        ("a", FaultPolicy(abort=FaultAbort(http_status=418))),
        ("b", FaultPolicy(abort=FaultAbort(http_status=429))),
    )


def test_per_filter_configs_of_other_filters_are_refused_unless_optional() -> None:
    rbac = {"@type": T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}
    reason = nack_r(routes(route_extra={"typed_per_filter_config": {"rbac": rbac}}))
    assert reason.startswith(
        "virtual_hosts[0].routes[0].typed_per_filter_config[rbac]: "
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute: sail does not apply"
    )
    optional = {"@type": FILTER_CONFIG, "config": rbac, "is_optional": True}
    (route,) = (
        decode_r(routes(route_extra={"typed_per_filter_config": {"rbac": optional}}))
        .virtual_hosts[0]
        .routes
    )
    assert route.typed_per_filter_config == ()


def test_bad_per_filter_fault_config_names_the_field() -> None:
    bad = per_route(fault(abort={"http_status": 99}))
    assert nack_r(routes(route_extra=bad)) == (
        "virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.fault]"
        ".abort.http_status: 99 is not in [200, 600)"
    )
    wrapped = per_route({"@type": FILTER_CONFIG, "config": fault(downstream_nodes=["n"])})
    assert nack_r(routes(vhost_extra=wrapped)) == (
        "virtual_hosts[0].typed_per_filter_config[envoy.filters.http.fault].config"
        ".downstream_nodes: is not supported"
    )
    weighted = {
        "weighted_clusters": {
            "clusters": [{"name": "a", "weight": 1, **per_route(fault(delay={}))}]
        }
    }
    assert nack_r(routes(action=weighted)) == (
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]"
        ".typed_per_filter_config[envoy.filters.http.fault].delay: one of fixed_delay or "
        "header_delay is required"
    )


# -- round trips ------------------------------------------------------------------------

fault_delays = st.builds(
    FaultDelay, fixed_delay=st.none() | positive_durations, percentage=fractions
)
fault_aborts = st.one_of(
    st.builds(FaultAbort, http_status=st.integers(200, 599), percentage=fractions),
    st.builds(FaultAbort, grpc_status=st.integers(0, 2**32 - 1), percentage=fractions),
    st.builds(FaultAbort, percentage=fractions),
)
fault_policies = st.builds(
    FaultPolicy,
    delay=st.none() | fault_delays,
    abort=st.none() | fault_aborts,
    headers=st.lists(header_matchers().filter(lambda m: m.name != "host"), max_size=2).map(tuple),
    upstream_cluster=st.just("") | st.text("abc|:", min_size=1, max_size=8),
    max_active_faults=st.none() | st.integers(0, 2**32 - 1),
)
filter_configs = st.lists(
    st.tuples(st.text("abcdef.", min_size=1, max_size=6), st.none() | fault_policies),
    max_size=2,
    unique_by=lambda kv: kv[0],
).map(lambda kvs: tuple(sorted(kvs)))


@st.composite
def fault_route_configs(draw: st.DrawFn) -> RouteConfig:
    weights = draw(
        st.lists(
            st.builds(
                ClusterWeight,
                st.text("xyz", min_size=1, max_size=3),
                st.integers(1, 100),
                typed_per_filter_config=filter_configs,
            ),
            min_size=1,
            max_size=3,
        )
    )
    route = Route(
        draw(route_matches),
        RouteAction(weighted_clusters=tuple(weights)),
        typed_per_filter_config=draw(filter_configs),
    )
    vhost = VirtualHost("vh", ("*",), (route,), typed_per_filter_config=draw(filter_configs))
    return RouteConfig("r", (vhost,), typed_per_filter_config=draw(filter_configs))


@settings(max_examples=100, deadline=None)
@given(fault_route_configs())
def test_route_config_with_faults_round_trips(config: RouteConfig) -> None:
    wire = encode_route_configuration(config).SerializeToString()
    message = type(encode_route_configuration(config)).FromString(wire)
    assert decode_route_configuration(message) == config


@settings(max_examples=100, deadline=None)
@given(fault_policies.filter(lambda p: p != FaultPolicy()))
def test_listener_with_fault_filter_round_trips(policy: FaultPolicy) -> None:
    listener = Listener(
        "reviews",
        HttpConnectionManager(
            rds_name="r",
            http_filters=(HttpFilter(NAME, FAULT, config=policy), HttpFilter(ROUTER_NAME, ROUTER)),
        ),
    )
    message = encode_listener(listener)
    assert decode_listener(type(message).FromString(message.SerializeToString())) == listener


def test_encoded_fault_is_what_envoy_reads() -> None:
    policy = FaultPolicy(
        delay=FaultDelay(None, FractionalPercent(5, 1_000_000)),
        abort=FaultAbort(http_status=503, percentage=FractionalPercent(500_000, 1_000_000)),
        max_active_faults=3,
    )
    route = Route(
        RouteMatch(PathMatch(PathMatchKind.PREFIX, "/")),
        RouteAction(cluster="c"),
        typed_per_filter_config=((NAME, policy),),
    )
    config = RouteConfig("r", (VirtualHost("vh", ("*",), (route,)),))
    encoded = encode_route_configuration(config).virtual_hosts[0].routes[0]
    packed = encoded.typed_per_filter_config[NAME]
    assert packed.type_url == FAULT
    msg = fault_pb2.HTTPFault()
    assert packed.Unpack(msg)
    assert msg.abort.http_status == 503
    assert msg.abort.percentage.numerator == 500_000
    assert msg.abort.percentage.denominator == 2  # MILLION
    assert msg.delay.HasField("header_delay")
    assert msg.max_active_faults.value == 3
