from __future__ import annotations

from sail.model import PathMatch, PathMatchKind, Route, RouteAction, RouteConfig, RouteMatch
from sail.model import VirtualHost as VH
from sail.registry.envoy_listener import OUTBOUND, outbound_listener, outbound_routes


def config(name: str, *domains: str) -> RouteConfig:
    route = Route(RouteMatch(PathMatch(PathMatchKind.PREFIX, "/")), RouteAction(cluster=name))
    return RouteConfig(name, (VH(name, domains, (route,)),))


def test_one_virtual_host_per_service_chosen_by_host() -> None:
    merged = outbound_routes(
        [
            config("reviews", "reviews", "reviews:9080", "*"),
            config("reviews:9080", "reviews", "reviews:9080", "*"),
            config("ratings", "ratings", "ratings:9080", "*"),
        ]
    )
    assert merged.name == OUTBOUND
    assert [(v.name, v.domains) for v in merged.virtual_hosts] == [
        ("ratings", ("ratings", "ratings:9080")),
        ("reviews", ("reviews", "reviews:9080")),
    ]


def test_a_domain_claimed_twice_stays_with_the_first() -> None:
    merged = outbound_routes([config("a", "a", "shared"), config("b", "b", "Shared")])
    assert [v.domains for v in merged.virtual_hosts] == [("a", "shared"), ("b",)]


def test_port_listener_uses_rds_and_the_router() -> None:
    listener = outbound_listener("127.0.0.1", 15001)
    assert listener.address == ("127.0.0.1", 15001)
    assert listener.hcm.rds_name == OUTBOUND
    assert listener.hcm.http_filters[-1].type_url.endswith("router.v3.Router")
