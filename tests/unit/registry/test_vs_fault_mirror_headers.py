"""VirtualService `fault`, `mirror` / `mirrorPercentage` / `mirrors` and `headers`: parsed,
validated and translated into the xDS a sail client, gRPC and Envoy all apply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sail.model import (
    ClusterWeight,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    FractionalPercent,
    HeaderAppendAction,
    HeaderMutations,
    HeaderValueOption,
    MirrorPolicy,
    Route,
    RouteAction,
    RouteConfig,
)
from sail.registry.envoy_listener import outbound_listener, outbound_routes
from sail.registry.istio import IstioConfigError, load_documents, validate
from sail.registry.translate import FAULT_FILTER, ROUTER_FILTER, Resources, translate
from sail.resilience.fault import FaultFilter
from sail.routing import Router
from sail.routing.mirror import mirrors
from sail.xds.codec.types import LISTENER, RESOURCE_TYPES, ROUTE_CONFIGURATION
from tests.unit.registry.test_translate import WORKLOADS
from tests.unit.xds.strategies import registered_policies

SET = HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
ADD = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
MILLION = 1_000_000
FAULT_NAME = "envoy.filters.http.fault"

RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
"""


@pytest.fixture(autouse=True)
def _policies() -> Iterator[None]:
    with registered_policies("round_robin", "random", "least_request"):
        yield


def vs(http: str) -> str:
    return RULES + http


def resources(http: str) -> Resources:
    objects = load_documents(vs(http), "mesh.yaml")
    validate(objects, {w.service for w, _ in WORKLOADS})
    return translate(objects, WORKLOADS)


def problem(http: str) -> str:
    with pytest.raises(IstioConfigError) as info:
        objects = load_documents(vs(http), "mesh.yaml")
        validate(objects, {w.service for w, _ in WORKLOADS})
    return str(info.value)


def reviews_config(res: Resources, name: str = "reviews:9080") -> RouteConfig:
    return next(rc for rc in res.route_configs if rc.name == name)


def first_route(res: Resources) -> Route:
    return reviews_config(res).virtual_hosts[0].routes[0]


def action_of(route: Route) -> RouteAction:
    assert isinstance(route.action, RouteAction)
    return route.action


# -- fault ------------------------------------------------------------------------------

FAULT = """\
  - fault:
      delay: {fixedDelay: 1.5s, percentage: {value: 12.5}}
      abort: {httpStatus: 503, percentage: {value: 50}}
    route:
    - destination: {host: reviews, subset: v1}
"""


def test_fault_becomes_a_per_route_fault_config() -> None:
    route = first_route(resources(FAULT))
    assert route.typed_per_filter_config == (
        (
            FAULT_NAME,
            FaultPolicy(
                delay=FaultDelay(1.5, FractionalPercent(125_000, MILLION)),
                abort=FaultAbort(http_status=503, percentage=FractionalPercent(500_000, MILLION)),
            ),
        ),
    )


def test_grpc_status_and_missing_percentage() -> None:
    http = """\
  - fault: {abort: {grpcStatus: UNAVAILABLE}}
    route:
    - destination: {host: reviews}
"""
    ((_, policy),) = first_route(resources(http)).typed_per_filter_config
    # as in Istio, a fault without percentage injects nothing: Envoy's 0 %
    assert policy == FaultPolicy(abort=FaultAbort(grpc_status=14, percentage=FractionalPercent(0)))


def test_every_listener_lists_the_fault_filter_before_the_router() -> None:
    res = resources(FAULT)
    for listener in res.listeners:
        assert listener.hcm.http_filters == (FAULT_FILTER, ROUTER_FILTER), listener.name
    assert FAULT_FILTER.name == FAULT_NAME
    envoy = outbound_listener("127.0.0.1", 15001)
    assert envoy.hcm.http_filters == (FAULT_FILTER, ROUTER_FILTER)


def test_translated_fault_survives_xds_and_drives_a_decision() -> None:
    res = resources(FAULT)
    listener = next(x for x in res.listeners if x.name == "reviews:9080")
    listener_type = RESOURCE_TYPES[LISTENER]
    routes_type = RESOURCE_TYPES[ROUTE_CONFIGURATION]
    decoded_listener = listener_type.decode(listener_type.encode(listener))
    decoded_routes = routes_type.decode(routes_type.encode(reviews_config(res)))
    assert decoded_listener == listener
    assert decoded_routes == reviews_config(res)
    faults = FaultFilter.from_hcm(decoded_listener.hcm)
    assert faults is not None
    result = Router.build(decoded_routes).route("reviews:9080", "/", httpx.Headers())
    draws = iter([0.9, 0.4])  # delay: not picked (12.5 %); abort: picked (50 %)
    decision = faults.decide(result, httpx.Headers(), lambda: next(draws))
    assert decision is not None
    assert (decision.delay, decision.http_status) == (0.0, 503)
    decision.finish()


# -- headers ----------------------------------------------------------------------------


def test_rule_and_single_destination_headers_go_on_the_route() -> None:
    http = """\
  - headers:
      request:
        set: {X-B: "2", x-a: "1"}
        add: {x-trace: on-%%}
        remove: [x-secret]
      response:
        set: {x-served-by: sail}
        remove: [server]
    route:
    - destination: {host: reviews, subset: v1}
      headers:
        request: {set: {x-subset: v1}}
"""
    route = first_route(resources(http))
    assert route.header_mutations == HeaderMutations(
        request_headers_to_add=(
            HeaderValueOption("x-a", "1", SET),
            HeaderValueOption("x-b", "2", SET),
            HeaderValueOption("x-trace", "on-%", ADD),
            HeaderValueOption("x-subset", "v1", SET),  # the destination's, after the rule's
        ),
        request_headers_to_remove=("x-secret",),
        response_headers_to_add=(HeaderValueOption("x-served-by", "sail", SET),),
        response_headers_to_remove=("server",),
    )
    assert action_of(route).cluster == "outbound|9080|v1|reviews"


def test_destination_headers_go_on_their_weighted_cluster() -> None:
    http = """\
  - headers: {request: {set: {x-rule: "1"}}}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 30
      headers: {request: {set: {x-to: v1}}}
    - destination: {host: reviews, subset: v2}
      weight: 70
"""
    route = first_route(resources(http))
    assert route.header_mutations == HeaderMutations((HeaderValueOption("x-rule", "1", SET),))
    assert action_of(route).weighted_clusters == (
        ClusterWeight(
            "outbound|9080|v1|reviews",
            30,
            header_mutations=HeaderMutations((HeaderValueOption("x-to", "v1", SET),)),
        ),
        ClusterWeight("outbound|9080|v2|reviews", 70),
    )
    router = Router.build(reviews_config(resources(http)))
    to_v1 = router.route("reviews:9080", "/", httpx.Headers(), lambda: 0.1).policy.headers
    assert to_v1 is not None
    assert to_v1.apply_request([("x-to", "caller")]) == [("x-to", "v1"), ("x-rule", "1")]


def test_same_cluster_merges_only_with_equal_headers() -> None:
    http = """\
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 20
      headers: {request: {set: {x-arm: a}}}
    - destination: {host: reviews, subset: v1}
      weight: 30
      headers: {request: {set: {x-arm: b}}}
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {request: {set: {x-arm: b}}}
"""
    weights = action_of(first_route(resources(http))).weighted_clusters
    assert [(w.name, w.weight) for w in weights] == [
        ("outbound|9080|v1|reviews", 20),
        ("outbound|9080|v1|reviews", 80),
    ]


# -- mirror -----------------------------------------------------------------------------


def test_mirror_with_percentage() -> None:
    http = """\
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: ratings, subset: v1}
    mirrorPercentage: {value: 25}
"""
    res = resources(http)
    route = first_route(res)
    assert action_of(route).request_mirror_policies == (
        MirrorPolicy("outbound|9080|v1|ratings", FractionalPercent(250_000, MILLION)),
    )
    # the mirror's cluster is served, and the route config names it
    assert "outbound|9080|v1|ratings" in {c.name for c in res.clusters}
    assert "outbound|9080|v1|ratings" in reviews_config(res).cluster_names()
    assert mirrors(route.action, lambda: 0.2) == ["outbound|9080|v1|ratings"]
    assert mirrors(route.action, lambda: 0.3) == []


def test_mirrors_list_and_mirror_without_percentage() -> None:
    http = """\
  - route:
    - destination: {host: reviews}
    mirrors:
    - destination: {host: ratings, port: {number: 9090}}
    - destination: {host: reviews, subset: v2}
      percentage: {value: 0.5}
  - match: [{uri: {prefix: /all}}]
    route:
    - destination: {host: reviews}
    mirror: {host: ratings}
"""
    first, second = reviews_config(resources(http)).virtual_hosts[0].routes
    assert action_of(first).request_mirror_policies == (
        MirrorPolicy("outbound|9090||ratings"),
        MirrorPolicy("outbound|9080|v2|reviews", FractionalPercent(5_000, MILLION)),
    )
    assert action_of(second).request_mirror_policies == (MirrorPolicy("outbound|9080||ratings"),)


# -- the Envoy port listener ------------------------------------------------------------


def test_envoy_routes_keep_faults_headers_and_mirrors() -> None:
    http = FAULT.replace(
        "    route:\n",
        "    headers: {request: {set: {x-a: '1'}}}\n    mirror: {host: ratings}\n    route:\n",
    )
    res = resources(http)
    merged = outbound_routes(res.route_configs)
    (vhost,) = [v for v in merged.virtual_hosts if v.name == "reviews"]
    assert vhost.routes == reviews_config(res, "reviews").virtual_hosts[0].routes
    route = vhost.routes[0]
    assert route.typed_per_filter_config and route.header_mutations
    assert action_of(route).request_mirror_policies


# -- refused ----------------------------------------------------------------------------

ROUTE = "    route:\n    - destination: {host: reviews}\n"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "  - fault: {delay: {exponentialDelay: 1s}}\n" + ROUTE,
            "spec.http[0].fault.delay.exponentialDelay: not supported yet",
        ),
        (
            "  - fault: {abort: {http2Error: 1}}\n" + ROUTE,
            "spec.http[0].fault.abort.http2Error: not supported yet",
        ),
        (
            "  - fault: {delay: {fixedDelay: 1s, percent: 5}}\n" + ROUTE,
            "spec.http[0].fault.delay.percent: not supported yet",
        ),
        ("  - fault: {}\n" + ROUTE, "spec.http[0].fault: one of delay, abort is required"),
        (
            "  - fault: {abort: {httpStatus: 503, grpcStatus: INTERNAL}}\n" + ROUTE,
            "spec.http[0].fault.abort: only one of httpStatus, grpcStatus may be set",
        ),
        (
            "  - fault: {abort: {grpcStatus: NOPE}}\n" + ROUTE,
            "spec.http[0].fault.abort.grpcStatus: unknown gRPC status 'NOPE'",
        ),
        (
            "  - fault: {abort: {httpStatus: 100}}\n" + ROUTE,
            "spec.http[0].fault.abort.httpStatus: must be between 200 and 599, got 100",
        ),
        (
            "  - fault: {delay: {fixedDelay: 0s}}\n" + ROUTE,
            "spec.http[0].fault.delay.fixedDelay: must be greater than 0",
        ),
        (
            "  - mirror: {host: ratings}\n    mirrors: [{destination: {host: ratings}}]\n" + ROUTE,
            "spec.http[0].mirrors: only one of mirror, mirrors may be set",
        ),
        (
            "  - mirrorPercentage: {value: 5}\n" + ROUTE,
            "spec.http[0].mirrorPercentage: applies to mirror, which is not set",
        ),
        (
            "  - mirror: {host: ratings}\n    mirrorPercent: 5\n" + ROUTE,
            "spec.http[0].mirrorPercent: not supported yet",
        ),
        (
            "  - mirror: {host: ratings}\n    mirrorPercentage: {value: 101}\n" + ROUTE,
            "spec.http[0].mirrorPercentage.value: must be between 0 and 100, got 101.0",
        ),
        (
            "  - headers: {request: {set: {host: x}}}\n" + ROUTE,
            "spec.http[0].headers.request.set[host]: 'host': not supported (use rewrite.authority)",
        ),
        (
            "  - headers: {request: {remove: [':authority']}}\n" + ROUTE,
            "spec.http[0].headers.request.remove[0]: ':authority': not supported (use "
            "rewrite.authority)",
        ),
        (
            "  - headers: {response: {add: {'x a': b}}}\n" + ROUTE,
            "spec.http[0].headers.response.add[x a]: 'x a' is not a valid header name",
        ),
        (
            "  - headers: {request: {set: {x-ip: '%DOWNSTREAM_REMOTE_ADDRESS%'}}}\n" + ROUTE,
            "spec.http[0].headers.request.set[x-ip]: '%DOWNSTREAM_REMOTE_ADDRESS%': formatter "
            "variable %DOWNSTREAM_REMOTE_ADDRESS% is not supported",
        ),
        (
            "  - route:\n    - destination: {host: reviews}\n      headers: {request: {set: "
            "{x: '50%'}}}\n",
            "spec.http[0].route[0].headers.request.set[x]: '50%': un-escaped '%'",
        ),
        (
            "  - headers: {request: {set: {x-a: 1}}}\n" + ROUTE,
            "spec.http[0].headers.request.set[x-a]: expected a string, got a number (1) (quote it)",
        ),
    ],
)
def test_what_is_still_refused_names_the_field(rule: str, message: str) -> None:
    assert problem(rule).startswith(f"mesh.yaml: VirtualService default/reviews: {message}")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "  - mirror: {host: nowhere}\n" + ROUTE,
            "spec.http[0].mirror.host: unknown host 'nowhere'",
        ),
        (
            "  - mirror: {host: ratings, subset: v9}\n" + ROUTE,
            "spec.http[0].mirror.subset: subset 'v9' is not defined by DestinationRule "
            "default/ratings (defined: v1)",
        ),
        (
            "  - mirrors: [{destination: {host: details, subset: v1}}]\n" + ROUTE,
            "spec.http[0].mirrors[0].destination.subset: subset 'v1': no DestinationRule for "
            "host 'details'",
        ),
    ],
)
def test_mirror_destinations_must_exist(rule: str, message: str) -> None:
    assert problem(rule).startswith(f"mesh.yaml: VirtualService default/reviews: {message}")


def test_registry_output_is_deterministic() -> None:
    http = """\
  - headers: {request: {set: {x-c: '3', x-a: '1', x-b: '2'}}}
    fault: {abort: {httpStatus: 500, percentage: {value: 1}}}
    mirror: {host: ratings}
    route:
    - destination: {host: reviews}
"""
    assert resources(http) == resources(http)
    text: Any = vs(http).replace("{x-c: '3', x-a: '1', x-b: '2'}", "{x-b: '2', x-c: '3', x-a: '1'}")
    objects = load_documents(text, "mesh.yaml")
    assert translate(objects, WORKLOADS) == resources(http)
