"""Header mutations (`request_headers_to_add` & co.) and request mirror policies in xDS: what
is decoded at each level, what Envoy's format strings become, round trips, and NACKs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import ResourceError
from sail.model import (
    ClusterWeight,
    FractionalPercent,
    HeaderAppendAction,
    HeaderMutations,
    HeaderValueOption,
    MirrorPolicy,
    Route,
    RouteAction,
    RouteConfig,
    VirtualHost,
    escape_header_value,
    literal_header_value,
)
from sail.xds.codec import decode_route_configuration, encode_route_configuration, parse_resource
from tests.unit.xds.strategies import fractions, route_matches

APPEND = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
OVERWRITE = HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def routes(
    route_extra: dict[str, Any] | None = None,
    vhost_extra: dict[str, Any] | None = None,
    config_extra: dict[str, Any] | None = None,
    action: dict[str, Any] | None = None,
) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": action or {"cluster": "c"}, **(route_extra or {})}
    vhost = {"name": "vh", "domains": ["*"], "routes": [route], **(vhost_extra or {})}
    return {"name": "r", "virtual_hosts": [vhost], **(config_extra or {})}


def decode(data: dict[str, Any]) -> RouteConfig:
    return decode_route_configuration(parse_resource("RouteConfiguration", data))


def nack(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode(data)
    return info.value.reason


def add(key: str, value: str, **fields: Any) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, **fields}


def test_every_level_keeps_its_mutations() -> None:
    mutations = {
        "request_headers_to_add": [
            add("X-A", "1"),
            add("x-b", "2", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
            add("x-c", "", keep_empty_value=True, append_action="ADD_IF_ABSENT"),
            add("x-d", "4", append_action="OVERWRITE_IF_EXISTS"),
        ],
        "request_headers_to_remove": ["X-Gone"],
        "response_headers_to_add": [add("x-r", "100%% sure")],
        "response_headers_to_remove": ["server"],
    }
    expected = HeaderMutations(
        request_headers_to_add=(
            HeaderValueOption("x-a", "1"),
            HeaderValueOption("x-b", "2", OVERWRITE),
            HeaderValueOption("x-c", "", HeaderAppendAction.ADD_IF_ABSENT, keep_empty_value=True),
            HeaderValueOption("x-d", "4", HeaderAppendAction.OVERWRITE_IF_EXISTS),
        ),
        request_headers_to_remove=("x-gone",),
        response_headers_to_add=(HeaderValueOption("x-r", "100% sure"),),
        response_headers_to_remove=("server",),
    )
    weighted = {
        "weighted_clusters": {
            "clusters": [{"name": "a", "weight": 1, **mutations}, {"name": "b", "weight": 1}]
        }
    }
    config = decode(
        routes(
            route_extra=mutations,
            vhost_extra=mutations,
            config_extra={**mutations, "most_specific_header_mutations_wins": True},
            action=weighted,
        )
    )
    assert config.header_mutations == expected
    assert config.most_specific_header_mutations_wins
    (vhost,) = config.virtual_hosts
    assert vhost.header_mutations == expected
    (route,) = vhost.routes
    assert route.header_mutations == expected
    assert isinstance(route.action, RouteAction)
    a, b = route.action.weighted_clusters
    assert a.header_mutations == expected
    assert b.header_mutations is None


def test_no_mutations_is_none() -> None:
    config = decode(routes())
    assert config.header_mutations is None
    assert config.virtual_hosts[0].header_mutations is None
    assert config.virtual_hosts[0].routes[0].header_mutations is None
    assert not HeaderMutations()


def test_deprecated_append_maps_to_an_action() -> None:
    config = decode(
        routes(
            route_extra={
                "request_headers_to_add": [
                    add("x-a", "1", append=True),
                    add("x-b", "2", append=False),
                ]
            }
        )
    )
    mutations = config.virtual_hosts[0].routes[0].header_mutations
    assert mutations is not None
    assert [o.append_action for o in mutations.request_headers_to_add] == [APPEND, OVERWRITE]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            {"request_headers_to_add": [add(":path", "/x")]},
            "request_headers_to_add[0].header.key: ':path': pseudo-headers may not be modified "
            "(use the route's rewrites)",
        ),
        (
            {"request_headers_to_add": [add("Host", "x")]},
            "request_headers_to_add[0].header.key: 'Host': the host header may not be modified "
            "(use the route's host_rewrite_literal)",
        ),
        (
            {"response_headers_to_remove": [":status"]},
            "response_headers_to_remove[0]: ':status': pseudo-headers may not be removed",
        ),
        (
            {"request_headers_to_remove": ["host"]},
            "request_headers_to_remove[0]: 'host': the host header may not be removed (use the "
            "route's host_rewrite_literal)",
        ),
        (
            {"request_headers_to_add": [add("x a", "1")]},
            "request_headers_to_add[0].header.key: 'x a' is not a valid header name",
        ),
        (
            {"request_headers_to_add": [add("x-up", "%UPSTREAM_REMOTE_ADDRESS%")]},
            "request_headers_to_add[0].header.value: '%UPSTREAM_REMOTE_ADDRESS%': formatter "
            "variable %UPSTREAM_REMOTE_ADDRESS% is not supported (only literal values; write "
            "'%%' for a '%')",
        ),
        (
            {"response_headers_to_add": [add("x-p", "100%")]},
            "response_headers_to_add[0].header.value: '100%': un-escaped '%' at position 3 "
            "(write '%%' for a '%')",
        ),
        (
            {"request_headers_to_add": [add("x-a", "1\r\nx-b: 2")]},
            "request_headers_to_add[0].header.value: '1\\r\\nx-b: 2' contains NUL, CR or LF",
        ),
        (
            {
                "request_headers_to_add": [
                    add("x-a", "1", append=True, append_action="ADD_IF_ABSENT")
                ]
            },
            "request_headers_to_add[0].append: cannot be combined with append_action",
        ),
        (
            {"request_headers_to_add": [{"header": {"key": "x-a", "raw_value": "MQ=="}}]},
            "request_headers_to_add[0].header.raw_value: is not supported; use value",
        ),
        (
            {"request_headers_to_add": [{"append_action": "ADD_IF_ABSENT"}]},
            "request_headers_to_add[0].header: is required",
        ),
    ],
)
def test_bad_header_mutations_are_nacked(extra: dict[str, Any], reason: str) -> None:
    assert nack(routes(route_extra=extra)) == f"virtual_hosts[0].routes[0].{reason}"


def test_bad_mutation_on_config_and_weighted_cluster_names_the_field() -> None:
    assert nack(routes(config_extra={"request_headers_to_remove": [""]})) == (
        "request_headers_to_remove[0]: must not be empty"
    )
    weighted = {
        "weighted_clusters": {
            "clusters": [{"name": "a", "weight": 1, "request_headers_to_add": [add(":x", "1")]}]
        }
    }
    assert nack(routes(action=weighted)).startswith(
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].request_headers_to_add[0]"
        ".header.key: ':x': pseudo-headers"
    )


def test_literal_values_and_escaping() -> None:
    assert literal_header_value("plain") == "plain"
    assert literal_header_value("100%%") == "100%"
    assert literal_header_value("%%%%x") == "%%x"
    assert escape_header_value("100% %x%") == "100%% %%x%%"
    with pytest.raises(ValueError, match="formatter variable %REQ"):
        literal_header_value("a %REQ(x)% b")
    encoded = encode_route_configuration(
        RouteConfig(
            "r",
            (),
            header_mutations=HeaderMutations(
                response_headers_to_add=(HeaderValueOption("x-p", "50%"),)
            ),
        )
    )
    assert encoded.response_headers_to_add[0].header.value == "50%%"


# -- mirror policies --------------------------------------------------------------------


def test_mirror_policies_are_decoded() -> None:
    action = {
        "cluster": "c",
        "request_mirror_policies": [
            {"cluster": "shadow"},
            {
                "cluster": "half",
                "runtime_fraction": {
                    "default_value": {"numerator": 50},
                    "runtime_key": "ignored",
                },
                "trace_sampled": False,
            },
        ],
    }
    route = decode(routes(action=action)).virtual_hosts[0].routes[0]
    assert isinstance(route.action, RouteAction)
    assert route.action.request_mirror_policies == (
        MirrorPolicy("shadow"),
        MirrorPolicy("half", FractionalPercent(50)),
    )


def test_mirror_clusters_are_needed_by_the_route_config() -> None:
    action = {"cluster": "c", "request_mirror_policies": [{"cluster": "shadow"}]}
    assert decode(routes(action=action)).cluster_names() == {"c", "shadow"}


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ({"cluster_header": "x-c"}, "cluster_header: is not supported; name the cluster"),
        ({}, "cluster: must not be empty"),
        (
            {"cluster": "s", "disable_shadow_host_suffix_append": True},
            "disable_shadow_host_suffix_append: is not supported",
        ),
        ({"cluster": "s", "host_rewrite_literal": "h"}, "host_rewrite_literal: is not supported"),
        (
            {"cluster": "s", "request_headers_mutations": [{"remove": "x"}]},
            "request_headers_mutations: is not supported",
        ),
        (
            {"cluster": "s", "runtime_fraction": {"runtime_key": "k"}},
            "runtime_fraction.default_value: is required",
        ),
        (
            {"cluster": "s", "runtime_fraction": {"default_value": {"denominator": 7}}},
            "runtime_fraction.default_value.denominator: unknown denominator 7",
        ),
    ],
)
def test_bad_mirror_policies_are_nacked(policy: dict[str, Any], reason: str) -> None:
    action = {"cluster": "c", "request_mirror_policies": [policy]}
    assert nack(routes(action=action)) == (
        f"virtual_hosts[0].routes[0].route.request_mirror_policies[0].{reason}"
    )


def test_mirror_policies_elsewhere_are_nacked() -> None:
    mirror = {"request_mirror_policies": [{"cluster": "s"}]}
    assert nack(routes(vhost_extra=mirror)) == (
        "virtual_hosts[0].request_mirror_policies: is not supported here; set it on the route "
        "action"
    )
    assert nack(routes(config_extra=mirror)) == (
        "request_mirror_policies: is not supported here; set it on the route action"
    )


# -- round trips ------------------------------------------------------------------------

header_names = st.text("abcxyz-0123", min_size=1, max_size=8).filter(lambda n: n != "host")
header_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00\r\n"), max_size=10)
options = st.builds(
    HeaderValueOption,
    name=header_names,
    value=header_values,
    append_action=st.sampled_from(list(HeaderAppendAction)),
    keep_empty_value=st.booleans(),
)
mutations = st.none() | st.builds(
    HeaderMutations,
    request_headers_to_add=st.lists(options, max_size=3).map(tuple),
    request_headers_to_remove=st.lists(header_names, max_size=2).map(tuple),
    response_headers_to_add=st.lists(options, max_size=3).map(tuple),
    response_headers_to_remove=st.lists(header_names, max_size=2).map(tuple),
).filter(bool)
mirror_policies = st.lists(
    st.builds(MirrorPolicy, st.text("mno", min_size=1, max_size=4), st.none() | fractions),
    max_size=3,
).map(tuple)


@st.composite
def header_route_configs(draw: st.DrawFn) -> RouteConfig:
    weights = draw(
        st.lists(
            st.builds(
                ClusterWeight,
                st.text("xyz", min_size=1, max_size=3),
                st.integers(1, 100),
                header_mutations=mutations,
            ),
            min_size=1,
            max_size=3,
        )
    )
    action = draw(
        st.sampled_from([RouteAction(cluster="c"), RouteAction(weighted_clusters=tuple(weights))])
    )
    action = RouteAction(
        cluster=action.cluster,
        weighted_clusters=action.weighted_clusters,
        request_mirror_policies=draw(mirror_policies),
    )
    route = Route(draw(route_matches), action, header_mutations=draw(mutations))
    vhost = VirtualHost("vh", ("*",), (route,), header_mutations=draw(mutations))
    return RouteConfig(
        "r",
        (vhost,),
        header_mutations=draw(mutations),
        most_specific_header_mutations_wins=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None)
@given(header_route_configs())
def test_route_config_with_headers_and_mirrors_round_trips(config: RouteConfig) -> None:
    message = encode_route_configuration(config)
    wire = type(message).FromString(message.SerializeToString())
    assert decode_route_configuration(wire) == config
