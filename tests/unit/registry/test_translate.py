"""Istio objects + workloads → sail model resources, checked against the codec and the router."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from sail.errors import NoRoute
from sail.model import (
    DEFAULT_CONNECT_TIMEOUT,
    CircuitBreakers,
    Cluster,
    ClusterWeight,
    DiscoveryType,
    Endpoint,
    HashPolicy,
    HealthStatus,
    HttpConnectionManager,
    LbPolicy,
    Listener,
    Locality,
    LocalityEndpoints,
    OutlierDetection,
    PathMatchKind,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    Thresholds,
)
from sail.registration import Workload
from sail.registry.istio import IstioConfigError, load_documents, validate
from sail.registry.translate import FAULT_FILTER, ROUTER_FILTER, Resources, translate
from sail.resilience.limits import DEFAULT_BUDGET
from sail.resilience.outlier import DEFAULT_ACCRUAL
from sail.routing import Router
from sail.xds.codec.encode import encode_cluster
from sail.xds.codec.types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
)
from tests.unit.registry.test_istio_parse import BOOKINFO
from tests.unit.xds.strategies import registered_policies

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sail.registry.istio import IstioObject

HEALTHY, DRAINING = HealthStatus.HEALTHY, HealthStatus.DRAINING
EAST_A, EAST_B = Locality("us-east", "a"), Locality("us-east", "b")

WORKLOADS = [
    (Workload("productpage", "10.1.0.1", 9080, {"app": "productpage"}), HEALTHY),
    (Workload("details", "10.1.0.2", 9080), HEALTHY),
    (Workload("reviews", "10.1.1.1", 9080, {"version": "v1"}, EAST_A), HEALTHY),
    (Workload("reviews", "10.1.1.2", 9080, {"version": "v2"}, EAST_B, weight=2), HEALTHY),
    (Workload("reviews", "10.1.1.3", 9080, {"version": "v3"}, EAST_B), DRAINING),
    (Workload("reviews", "10.1.1.4", 9080, {"version": "v2", "canary": "yes"}, EAST_A), HEALTHY),
    (Workload("ratings", "10.1.2.1", 9080, {"version": "v1"}), HEALTHY),
    (Workload("ratings", "10.1.2.1", 9090, {"version": "v1"}), HEALTHY),
]

PORT_RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - match:
    - port: 9090
      uri: {prefix: /admin}
    route:
    - destination: {host: ratings}
  - route:
    - destination: {host: details}
"""


@pytest.fixture(autouse=True)
def _policies() -> Iterator[None]:
    with registered_policies("round_robin", "random", "least_request"):
        yield


def objects(text: str = BOOKINFO) -> list[IstioObject]:
    return load_documents(text, "mesh.yaml")


def bookinfo() -> Resources:
    return translate(objects(), WORKLOADS)


def by_name(resources: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in (resources.listeners, resources.route_configs, resources.clusters):
        for item in group:
            out.setdefault(item.name, []).append(item)
    for cla in resources.load_assignments:
        out[f"cla:{cla.cluster_name}"] = [cla]
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def route_config(resources: Resources, name: str) -> RouteConfig:
    return next(rc for rc in resources.route_configs if rc.name == name)


def cluster(resources: Resources, name: str) -> Cluster:
    return next(c for c in resources.clusters if c.name == name)


def assignment_endpoints(resources: Resources, name: str) -> list[tuple[str, str, int, int]]:
    cla = next(a for a in resources.load_assignments if a.cluster_name == name)
    return [
        (str(group.locality), e.address, e.port, group.weight)
        for group in cla.localities
        for e in group.endpoints
    ]


def route(resources: Resources, listener: str, path: str, rand: float = 0.5, **headers: str) -> str:
    """The cluster `listener`'s routes pick for `path` (`end_user=` sends `end-user:`)."""
    router = Router.build(route_config(resources, listener))
    sent = httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()})
    result = router.route(listener, path, sent, lambda: rand)
    assert result.cluster is not None
    return result.cluster


# -- listeners and route configurations -------------------------------------------------


def test_a_listener_per_service_and_per_port() -> None:
    resources = bookinfo()
    names = [listener.name for listener in resources.listeners]
    assert names == [
        "details", "details:9080",
        "httpbin.org", "httpbin.org:80",
        "legacy.internal", "legacy.internal:8080",
        "productpage", "productpage:9080",
        "ratings", "ratings:9080", "ratings:9090",
        "reviews", "reviews:9080",
    ]  # fmt: skip
    assert [rc.name for rc in resources.route_configs] == names


def test_listeners_are_api_listeners_over_rds_with_the_router() -> None:
    listener = by_name(bookinfo())["reviews:9080"][0]
    assert listener == Listener(
        "reviews:9080",
        HttpConnectionManager(rds_name="reviews:9080", http_filters=(FAULT_FILTER, ROUTER_FILTER)),
    )
    assert FAULT_FILTER.name == "envoy.filters.http.fault"
    assert FAULT_FILTER.type_url.endswith("envoy.extensions.filters.http.fault.v3.HTTPFault")
    assert ROUTER_FILTER.name == "envoy.filters.http.router"
    assert ROUTER_FILTER.type_url.endswith("envoy.extensions.filters.http.router.v3.Router")


def test_virtual_host_domains() -> None:
    (vh,) = route_config(bookinfo(), "reviews:9080").virtual_hosts
    assert vh.domains == (
        "reviews", "reviews:9080",
        "reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local:9080",
        "*",
    )  # fmt: skip
    (vh,) = route_config(bookinfo(), "httpbin.org").virtual_hosts
    assert vh.domains == ("httpbin.org", "httpbin.org:80", "*")


def test_header_route_and_canary_split() -> None:
    resources = bookinfo()
    (vh,) = route_config(resources, "reviews:9080").virtual_hosts
    jason, canary = vh.routes
    assert jason.name == "jason"
    assert [
        (h.name, h.string_match.value if h.string_match else None) for h in jason.match.headers
    ] == [("end-user", "jason")]
    assert jason.action == RouteAction(cluster="outbound|9080|v2|reviews")
    assert canary.match.path.kind is PathMatchKind.PREFIX and canary.match.path.value == "/"
    assert canary.action == RouteAction(
        weighted_clusters=(
            ClusterWeight("outbound|9080|v1|reviews", 90),
            ClusterWeight("outbound|9080|v3|reviews", 10),
        ),
        timeout=10.0,
        retry_policy=RetryPolicy(
            retry_on=frozenset({"5xx", "connect-failure"}), num_retries=3, per_try_timeout=2.0
        ),
    )
    assert route(resources, "reviews:9080", "/reviews/1", end_user="jason") == (
        "outbound|9080|v2|reviews"
    )
    assert route(resources, "reviews", "/reviews/1", rand=0.0) == "outbound|9080|v1|reviews"
    assert route(resources, "reviews", "/reviews/1", rand=0.95) == "outbound|9080|v3|reviews"


def test_the_bare_listener_routes_like_the_first_port() -> None:
    resources = bookinfo()
    assert route_config(resources, "ratings").virtual_hosts == (
        route_config(resources, "ratings:9080").virtual_hosts
    )
    assert route(resources, "ratings:9090", "/ratings/1") == "outbound|9090|v1|ratings"
    with pytest.raises(NoRoute):  # the ratings VirtualService only routes /ratings
        route(resources, "ratings:9080", "/other")


def test_without_virtual_service_one_default_route() -> None:
    (vh,) = route_config(bookinfo(), "details:9080").virtual_hosts
    (only,) = vh.routes
    assert only.name == "default"
    assert only.match.path.value == "/"
    assert only.action == RouteAction(cluster="outbound|9080||details")


def test_uri_and_method_matches() -> None:
    resources = bookinfo()
    (vh,) = route_config(resources, "productpage").virtual_hosts
    assert [(r.match.path.kind, r.match.path.value) for r in vh.routes] == [
        (PathMatchKind.EXACT, "/productpage"),
        (PathMatchKind.PREFIX, "/static/"),
        (PathMatchKind.REGEX, "/api/v1/products/[0-9]+"),
    ]
    assert [h.name for h in vh.routes[2].match.headers] == [":method"]
    router = Router.build(route_config(resources, "productpage"))
    assert router.route("productpage", "/api/v1/products/7", httpx.Headers()).cluster == (
        "outbound|9080||productpage"
    )
    with pytest.raises(NoRoute):
        router.route("productpage", "/api/v1/products/7", httpx.Headers(), method="POST")
    with pytest.raises(NoRoute):
        router.route("productpage", "/productpage/x", httpx.Headers())


def test_port_matches_apply_to_their_port_only() -> None:
    resources = translate(
        objects(BOOKINFO + "---\n" + PORT_RULES),
        [*WORKLOADS, (Workload("details", "10.1.0.2", 9090), HEALTHY)],
    )
    assert route(resources, "details:9090", "/admin/x") == "outbound|9090||ratings"
    assert route(resources, "details:9080", "/admin/x") == "outbound|9080||details"
    assert route(resources, "details", "/admin/x") == "outbound|9080||details"


def test_query_params_rewrites_and_retry_defaults() -> None:
    text = BOOKINFO.replace(
        "    - uri: {prefix: /ratings}\n",
        "    - uri: {prefix: /ratings}\n"
        "      queryParams: {debug: {exact: '1'}, v: {regex: '[0-9]+'}}\n"
        "    rewrite: {uri: /v2/ratings, authority: ratings.internal}\n"
        "    retries: {attempts: 2, retryOn: 'gateway-error,429,503'}\n",
    ).replace('perTryTimeout: 2s, retryOn: "5xx,connect-failure"', "perTryTimeout: 100ms")
    resources = translate(objects(text), WORKLOADS)
    (vh,) = route_config(resources, "ratings:9080").virtual_hosts
    (r,) = vh.routes
    kinds = [(q.name, q.string_match and q.string_match.kind.name) for q in r.match.query_params]
    assert kinds == [("debug", "EXACT"), ("v", "REGEX")]
    assert isinstance(r.action, RouteAction)
    assert (r.action.prefix_rewrite, r.action.host_rewrite_literal) == (
        "/v2/ratings",
        "ratings.internal",
    )
    assert r.action.retry_policy == RetryPolicy(
        retry_on=frozenset({"gateway-error", "retriable-status-codes"}),
        num_retries=2,
        retriable_status_codes=frozenset({429, 503}),
    )
    result = Router.build(route_config(resources, "ratings")).route(
        "ratings", "/ratings/7?debug=1&v=2", httpx.Headers()
    )
    assert (result.path, result.host) == ("/v2/ratings/7?debug=1&v=2", "ratings.internal")
    (vh,) = route_config(resources, "reviews").virtual_hosts
    policy = vh.routes[1].action.retry_policy  # type: ignore[union-attr]
    assert policy == RetryPolicy(  # Istio's default retryOn
        retry_on=frozenset(
            {
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            }
        ),
        num_retries=3,
        per_try_timeout=0.1,
        retriable_status_codes=frozenset({503}),
    )


# -- clusters ---------------------------------------------------------------------------


def test_cluster_names_and_policies() -> None:
    resources = bookinfo()
    assert [c.name for c in resources.clusters] == sorted([
        "outbound|80||httpbin.org",
        "outbound|8080||legacy.internal",
        "outbound|9080||details",
        "outbound|9080||productpage",
        "outbound|9080||ratings",
        "outbound|9080||reviews",
        "outbound|9080|v1|ratings",
        "outbound|9080|v1|reviews",
        "outbound|9080|v2|reviews",
        "outbound|9080|v3|reviews",
        "outbound|9090||ratings",
        "outbound|9090|v1|ratings",
    ])  # fmt: skip
    assert cluster(resources, "outbound|9080||reviews") == Cluster(
        "outbound|9080||reviews",
        eds_service_name="outbound|9080||reviews",
        lb_policy=LbPolicy("random"),
        # sail's defaults written out, so that Envoy applies them too
        outlier_detection=DEFAULT_ACCRUAL,
        circuit_breakers=CircuitBreakers((Thresholds(retry_budget=DEFAULT_BUDGET),)),
    )
    assert cluster(resources, "outbound|9080|v2|reviews").lb_policy == LbPolicy("round_robin")
    assert cluster(resources, "outbound|9080|v1|reviews").lb_policy == LbPolicy("random")
    ratings = cluster(resources, "outbound|9090|v1|ratings")
    assert ratings.connect_timeout == 0.25
    # no connectTimeout: sail's 1 s, written on the wire so that Envoy uses it too
    served = encode_cluster(cluster(resources, "outbound|9080||reviews"))
    assert served.connect_timeout.ToTimedelta().total_seconds() == DEFAULT_CONNECT_TIMEOUT == 1
    assert ratings.circuit_breakers == CircuitBreakers(
        (
            Thresholds(
                0, max_connections=100, max_pending_requests=10, max_requests=200, max_retries=2
            ),
        )
    )
    assert ratings.outlier_detection == OutlierDetection(
        consecutive_5xx=7,
        interval=5.0,
        base_ejection_time=60.0,
        max_ejection_percent=50,
        enforcing_success_rate=0,  # Istio turns success-rate ejection off
    )
    assert ratings.healthy_panic_threshold == 0.0  # minHealthPercent, 0 unless set


def test_least_request_and_5xx_ejection_off() -> None:
    text = BOOKINFO.replace(
        "loadBalancer: {simple: RANDOM}", "loadBalancer: {simple: LEAST_REQUEST}"
    )
    text = text.replace("consecutive5xxErrors: 7", "consecutive5xxErrors: 0")
    resources = translate(objects(text), WORKLOADS)
    assert cluster(resources, "outbound|9080||reviews").lb_policy == LbPolicy("least_request")
    od = cluster(resources, "outbound|9080||ratings").outlier_detection
    assert od is not None and od.enforcing_consecutive_5xx == 0
    assert od.consecutive_5xx == 0
    round_trip(resources)


@pytest.mark.parametrize(
    ("lb", "policy", "hashing"),
    [
        ("{httpHeaderName: X-User, ringHash: {minimumRingSize: 64}}",
         LbPolicy("ring_hash", (("minimum_ring_size", 64),)), HashPolicy("header", "x-user")),
        ("{httpCookie: {name: sid, path: /, ttl: 60s}, maglev: {tableSize: 65537}}",
         LbPolicy("maglev", (("table_size", 65537),)),
         HashPolicy("cookie", "sid", ttl=60.0, path="/")),
        ("{useSourceIp: true}", LbPolicy("ring_hash"), HashPolicy("connection_properties")),
        ("{httpQueryParameterName: user, minimumRingSize: 128}",
         LbPolicy("ring_hash", (("minimum_ring_size", 128),)),
         HashPolicy("query_parameter", "user")),
    ],
)
def test_consistent_hash(lb: str, policy: LbPolicy, hashing: HashPolicy) -> None:
    """consistentHash: the rule's clusters hash (ring or Maglev), and each route whose
    destinations all share the rule's hashing gets its hash policy. reviews-v2 overrides
    the load balancer with ROUND_ROBIN, so a route that may go to v2 hashes nothing."""
    text = BOOKINFO.replace(
        "loadBalancer: {simple: RANDOM}", f"loadBalancer: {{consistentHash: {lb}}}"
    )
    resources = translate(objects(text), WORKLOADS)
    round_trip(resources)
    assert cluster(resources, "outbound|9080||reviews").lb_policy == policy
    assert cluster(resources, "outbound|9080|v1|reviews").lb_policy == policy
    assert cluster(resources, "outbound|9080|v2|reviews").lb_policy == LbPolicy("round_robin")
    hashed, plain = 0, 0
    for r in route_config(resources, "reviews").virtual_hosts[0].routes:
        action = r.action
        assert isinstance(action, RouteAction)
        if any("|v2|" in c for c in action.cluster_names()):
            assert action.hash_policies == ()
            plain += 1
        else:
            assert action.hash_policies == (hashing,)
            hashed += 1
    assert hashed and plain


def ratings_outlier(fields: str) -> Cluster:
    text = BOOKINFO.replace("      maxEjectionPercent: 50\n", fields)
    resources = translate(objects(text), WORKLOADS)
    round_trip(resources)
    return cluster(resources, "outbound|9080||ratings")


def test_outlier_detection_every_istio_field() -> None:
    ratings = ratings_outlier(
        "      maxEjectionPercent: 30\n"
        "      consecutiveGatewayErrors: 3\n"
        "      splitExternalLocalOriginErrors: true\n"
        "      consecutiveLocalOriginFailures: 2\n"
        "      minHealthPercent: 40\n"
    )
    assert ratings.outlier_detection == OutlierDetection(
        consecutive_5xx=7,
        enforcing_consecutive_5xx=100,
        consecutive_gateway_failure=3,
        enforcing_consecutive_gateway_failure=100,
        interval=5.0,
        base_ejection_time=60.0,
        max_ejection_percent=30,
        enforcing_success_rate=0,
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        enforcing_consecutive_local_origin_failure=100,
        enforcing_local_origin_success_rate=0,
    )
    assert ratings.healthy_panic_threshold == 40.0


def test_outlier_detection_zeroes_and_unsplit_local_failures_as_istio_reads_them() -> None:
    ratings = ratings_outlier(
        "      maxEjectionPercent: 0\n"  # Istio cannot tell 0 from unset: Envoy's 10 %
        "      consecutiveGatewayErrors: 0\n"  # off
        "      consecutiveLocalOriginFailures: 2\n"  # ignored without the split
    )
    od = ratings.outlier_detection
    assert od is not None
    assert od.max_ejection_percent == 10
    assert (od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure) == (0, 0)
    assert not od.split_external_local_origin_errors
    assert od.consecutive_local_origin_failure == 5
    assert od.enforcing_local_origin_success_rate == 100


def test_outlier_detection_long_base_ejection_time_raises_the_cap() -> None:
    ratings = ratings_outlier("      maxEjectionPercent: 50\n").outlier_detection
    assert ratings is not None and ratings.max_ejection_time == 300.0
    text = BOOKINFO.replace("baseEjectionTime: 1m", "baseEjectionTime: 10m")
    od = cluster(translate(objects(text), WORKLOADS), "outbound|9080||ratings").outlier_detection
    assert od is not None and od.max_ejection_time == 600.0


def test_clusters_without_outlier_detection_keep_the_panic_threshold() -> None:
    assert cluster(bookinfo(), "outbound|9080||reviews").healthy_panic_threshold == 50.0


# -- endpoints --------------------------------------------------------------------------


def test_load_assignments_by_subset_locality_and_health() -> None:
    resources = bookinfo()
    assert assignment_endpoints(resources, "outbound|9080|v2|reviews") == [
        ("us-east/a", "10.1.1.4", 9080, 1),
        ("us-east/b", "10.1.1.2", 9080, 2),
    ]
    cla = by_name(resources)["cla:outbound|9080||reviews"]
    assert cla.localities == (
        LocalityEndpoints(
            EAST_A,
            (
                Endpoint("10.1.1.1", 9080, health=HEALTHY),
                Endpoint("10.1.1.4", 9080, health=HEALTHY),
            ),
            weight=2,
        ),
        LocalityEndpoints(
            EAST_B,
            (Endpoint("10.1.1.2", 9080, weight=2, health=HEALTHY),
             Endpoint("10.1.1.3", 9080, health=DRAINING)),
            weight=2,  # the draining endpoint does not count
        ),
    )  # fmt: skip
    assert assignment_endpoints(resources, "outbound|9080|v3|reviews") == [
        ("us-east/b", "10.1.1.3", 9080, 1)  # all draining: the locality keeps weight 1
    ]
    assert assignment_endpoints(resources, "outbound|9090||ratings") == [("-", "10.1.2.1", 9090, 1)]


def test_service_entries() -> None:
    resources = bookinfo()
    httpbin = cluster(resources, "outbound|80||httpbin.org")
    assert httpbin.discovery is DiscoveryType.STRICT_DNS
    assert httpbin.load_assignment is not None
    assert httpbin.load_assignment.endpoints == (Endpoint("httpbin.org", 80),)
    assert "cla:outbound|80||httpbin.org" not in by_name(resources)
    assert assignment_endpoints(resources, "outbound|8080||legacy.internal") == [
        ("-", "10.0.0.6", 9090, 1),
        ("us-east/us-east-1a", "10.0.0.5", 8080, 3),
    ]


def test_routes_always_resolve_even_without_workloads() -> None:
    text = BOOKINFO.replace("{host: productpage}", "{host: details, port: {number: 7000}}")
    resources = translate(objects(text), [w for w in WORKLOADS if w[0].service != "details"])
    assert route(resources, "productpage", "/productpage") == "outbound|7000||details"
    assert cluster(resources, "outbound|7000||details").eds_service_name == "outbound|7000||details"
    assert by_name(resources)["cla:outbound|7000||details"].localities == ()
    assert "details" not in by_name(resources)  # no workload, no port: no listener


def test_config_alone_serves_the_service_entries() -> None:
    resources = translate(objects(), [])
    assert [x.name for x in resources.listeners] == [
        "httpbin.org", "httpbin.org:80", "legacy.internal", "legacy.internal:8080",
    ]  # fmt: skip


# -- properties -------------------------------------------------------------------------


def round_trip(resources: Resources) -> None:
    groups = [
        (LISTENER, resources.listeners),
        (ROUTE_CONFIGURATION, resources.route_configs),
        (CLUSTER, resources.clusters),
        (CLUSTER_LOAD_ASSIGNMENT, resources.load_assignments),
    ]
    for type_url, items in groups:
        rtype = RESOURCE_TYPES[type_url]
        for item in items:
            wire = rtype.encode(item).SerializeToString()
            assert rtype.decode(rtype.message_class.FromString(wire)) == item


def test_every_resource_survives_encode_and_decode() -> None:
    round_trip(bookinfo())
    round_trip(translate(objects(BOOKINFO + "---\n" + PORT_RULES), WORKLOADS))


def test_output_is_deterministic() -> None:
    first = bookinfo()
    shuffled_objects = objects()[::-1]
    workloads = list(WORKLOADS)
    random.Random(7).shuffle(workloads)
    assert translate(shuffled_objects, workloads) == first
    assert translate(load_documents(BOOKINFO, "other.yaml"), WORKLOADS) == first


def test_validated_bookinfo_translates() -> None:
    validate(objects(), {w.service for w, _ in WORKLOADS})
    assert bookinfo().listeners


def test_what_cannot_be_translated_is_refused() -> None:
    text = BOOKINFO.replace(
        "    - destination: {host: productpage}\n",
        "    - destination: {host: productpage}\n    rewrite: {uri: /p}\n",
    )
    with pytest.raises(IstioConfigError) as info:
        translate(objects(text), WORKLOADS)
    assert str(info.value) == (
        "mesh.yaml: VirtualService default/productpage: spec.http[0].rewrite.uri: cannot "
        "rewrite a regex uri match (spec.http[0].match[2].uri); Istio rewrites a matched "
        "prefix or exact path"
    )
