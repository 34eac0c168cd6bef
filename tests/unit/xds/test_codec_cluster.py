"""Cluster decoding: discovery types, balancing policies (and the registry), limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

# Registers the aggregate cluster's proto, so JSON can name it: a type sail does not support.
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2  # noqa: F401

from sail.balancing import registry
from sail.errors import ResourceError
from sail.model import (
    CircuitBreakers,
    Cluster,
    DiscoveryType,
    Endpoint,
    LbPolicy,
    OutlierDetection,
    Thresholds,
)
from sail.xds.codec import decode_cluster, parse_resource
from tests.unit.xds.strategies import dummy_factory, registered_policies

if TYPE_CHECKING:
    from collections.abc import Iterator

T = "type.googleapis.com/envoy.extensions.load_balancing_policies."
ROUND_ROBIN = T + "round_robin.v3.RoundRobin"
MAGLEV = T + "maglev.v3.Maglev"
PICK_FIRST = T + "pick_first.v3.PickFirst"  # known to xDS, not registered in sail
LEAST_REQUEST = T + "least_request.v3.LeastRequest"
WRR_LOCALITY = T + "wrr_locality.v3.WrrLocality"


@pytest.fixture(autouse=True)
def _policies() -> Iterator[None]:
    with registered_policies("round_robin", "random", "least_request", "ring_hash", "my_policy"):
        yield


def eds(name: str = "reviews", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        **fields,
    }


def decode(data: dict[str, Any]) -> Cluster:
    return decode_cluster(parse_resource("Cluster", data))


def nack(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode(data)
    assert info.value.type_name == "Cluster"
    return info.value.reason


def typed(*policies: dict[str, Any]) -> dict[str, Any]:
    return {
        "policies": [
            {"typed_extension_config": {"name": f"p{i}", "typed_config": p}}
            for i, p in enumerate(policies)
        ]
    }


def test_eds_cluster_with_defaults() -> None:
    cluster = decode(eds())
    assert cluster == Cluster("reviews")
    assert cluster.eds_name == "reviews"
    assert cluster.connect_timeout == 1.0
    assert cluster.healthy_panic_threshold == 50.0


def test_eds_service_name_and_self_config_source() -> None:
    data = eds(eds_cluster_config={"eds_config": {"self": {}}, "service_name": "reviews-v2"})
    assert decode(data).eds_name == "reviews-v2"


def test_eds_config_source_must_be_ads_or_self() -> None:
    data = eds(eds_cluster_config={"eds_config": {"path": "/x"}})
    assert nack(data) == "eds_cluster_config.eds_config: must be ads or self, got path"


def test_static_cluster_takes_its_inline_load_assignment() -> None:
    cluster = decode(
        {
            "name": "db",
            "type": "STATIC",
            "load_assignment": {
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "10.0.0.5",
                                            "port_value": 5432,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ]
            },
        }
    )
    assert cluster.discovery is DiscoveryType.STATIC
    assert cluster.load_assignment is not None
    assert cluster.load_assignment.cluster_name == "db"
    assert cluster.load_assignment.endpoints == (Endpoint("10.0.0.5", 5432),)


def test_static_cluster_needs_load_assignment() -> None:
    assert nack({"name": "db", "type": "STRICT_DNS"}) == (
        "load_assignment: is required for a STRICT_DNS cluster"
    )


def test_logical_dns_cluster_needs_exactly_one_endpoint() -> None:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "db", "port_value": 1}}}}
    other = {"endpoint": {"address": {"socket_address": {"address": "db2", "port_value": 1}}}}
    data = {
        "name": "db",
        "type": "LOGICAL_DNS",
        "load_assignment": {"endpoints": [{"lb_endpoints": [endpoint, other]}]},
    }
    assert nack(data) == "load_assignment: a LOGICAL_DNS cluster needs exactly one endpoint, got 2"


def test_aggregate_cluster_is_rejected() -> None:
    data = {
        "name": "agg",
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": ["a", "b"],
            },
        },
    }
    assert (
        nack(data)
        == "cluster_type: custom cluster type 'envoy.clusters.aggregate' is not supported"
    )


def test_cluster_needs_a_name() -> None:
    assert nack(eds(name="")) == "name: must not be empty"


@pytest.mark.parametrize(
    ("enum", "name"),
    [
        ("ROUND_ROBIN", "round_robin"),
        ("RANDOM", "random"),
        ("LEAST_REQUEST", "least_request"),
        ("RING_HASH", "ring_hash"),
    ],
)
def test_lb_policy_enum_names(enum: str, name: str) -> None:
    assert decode(eds(lb_policy=enum)).lb_policy == LbPolicy(name)


def test_unregistered_lb_policy_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        registry, "_POLICIES", {"random": dummy_factory, "round_robin": dummy_factory}
    )
    assert nack(eds(lb_policy="MAGLEV")) == (
        "lb_policy: no registered policy 'maglev' (registered: random, round_robin)"
    )


def test_cluster_provided_lb_policy_is_rejected() -> None:
    assert nack(eds(lb_policy="CLUSTER_PROVIDED")) == "lb_policy: CLUSTER_PROVIDED is not supported"


def test_legacy_lb_config_options() -> None:
    cluster = decode(eds(lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 3}))
    assert cluster.lb_policy == LbPolicy("least_request", (("choice_count", 3),))
    assert cluster.lb_policy.option("choice_count") == 3
    ring = decode(
        eds(
            lb_policy="RING_HASH",
            ring_hash_lb_config={"minimum_ring_size": "64", "maximum_ring_size": "4096"},
        )
    )
    assert ring.lb_policy == LbPolicy(
        "ring_hash", (("maximum_ring_size", 4096), ("minimum_ring_size", 64))
    )


def test_ring_size_minimum_above_maximum_is_rejected() -> None:
    data = eds(lb_policy="RING_HASH", ring_hash_lb_config={"maximum_ring_size": "100"})
    assert nack(data) == (
        "ring_hash_lb_config.minimum_ring_size: 1024 is above maximum_ring_size 100"
    )


def test_choice_count_below_two_is_rejected() -> None:
    data = eds(load_balancing_policy=typed({"@type": LEAST_REQUEST, "choice_count": 1}))
    assert nack(data) == (
        "load_balancing_policy.policies[0].typed_extension_config.typed_config.choice_count: "
        "1 is less than 2"
    )


def test_load_balancing_policy_takes_the_first_registered() -> None:
    data = eds(
        lb_policy="RANDOM",
        load_balancing_policy=typed(
            {"@type": PICK_FIRST},
            {"@type": LEAST_REQUEST, "choice_count": 4},
            {"@type": ROUND_ROBIN},
        ),
    )
    assert decode(data).lb_policy == LbPolicy("least_request", (("choice_count", 4),))


def test_wrr_locality_uses_its_endpoint_picking_policy() -> None:
    inner = typed({"@type": PICK_FIRST}, {"@type": ROUND_ROBIN})
    data = eds(
        load_balancing_policy=typed({"@type": WRR_LOCALITY, "endpoint_picking_policy": inner})
    )
    assert decode(data).lb_policy == LbPolicy("round_robin")


def test_load_balancing_policy_without_a_registered_entry_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_POLICIES", {"round_robin": dummy_factory})
    data = eds(load_balancing_policy=typed({"@type": MAGLEV}, {"@type": LEAST_REQUEST}))
    assert nack(data) == (
        "load_balancing_policy.policies: no registered policy among 'maglev', "
        "'least_request' (registered: round_robin)"
    )


def test_custom_policy_from_typed_struct() -> None:
    struct = {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/my_policy",
        "value": {"mode": "fast", "spread": [1, 2]},
    }
    policy = decode(eds(load_balancing_policy=typed(struct))).lb_policy
    assert policy.name == "my_policy"
    assert policy.option("mode") == "fast"
    assert policy.option("spread") == (1, 2)


def test_unknown_typed_policy_is_named_by_type_url() -> None:
    struct = {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/not.Registered",
    }
    assert "'not.Registered'" in nack(eds(load_balancing_policy=typed(struct)))


def test_circuit_breakers_with_envoy_defaults() -> None:
    data = eds(
        circuit_breakers={
            "thresholds": [{"max_requests": 100}, {"priority": "HIGH", "max_retries": 10}]
        }
    )
    assert decode(data).circuit_breakers == CircuitBreakers(
        (Thresholds(max_requests=100), Thresholds(priority=1, max_retries=10))
    )


def test_duplicate_circuit_breaker_priority_is_rejected() -> None:
    data = eds(circuit_breakers={"thresholds": [{}, {"priority": "DEFAULT"}]})
    assert nack(data) == (
        "circuit_breakers.thresholds[1].priority: duplicate priority: one entry per priority"
    )


def test_outlier_detection_with_envoy_defaults() -> None:
    data = eds(outlier_detection={"consecutive_5xx": 3, "base_ejection_time": "10s"})
    assert decode(data).outlier_detection == OutlierDetection(
        consecutive_5xx=3, base_ejection_time=10.0
    )
    assert decode(eds(outlier_detection={})).outlier_detection == OutlierDetection()


def test_outlier_max_ejection_percent_above_100_is_rejected() -> None:
    data = eds(outlier_detection={"max_ejection_percent": 101})
    assert nack(data) == "outlier_detection.max_ejection_percent: 101 is more than 100"


OUTLIER_ALL = {
    "consecutive_5xx": 7,
    "interval": "2.5s",
    "base_ejection_time": "20s",
    "max_ejection_percent": 40,
    "enforcing_consecutive_5xx": 90,
    "enforcing_success_rate": 80,
    "success_rate_minimum_hosts": 3,
    "success_rate_request_volume": 20,
    "success_rate_stdev_factor": 1500,
    "consecutive_gateway_failure": 4,
    "enforcing_consecutive_gateway_failure": 70,
    "split_external_local_origin_errors": True,
    "consecutive_local_origin_failure": 2,
    "enforcing_consecutive_local_origin_failure": 60,
    "enforcing_local_origin_success_rate": 50,
    "failure_percentage_threshold": 75,
    "enforcing_failure_percentage": 40,
    "enforcing_failure_percentage_local_origin": 30,
    "failure_percentage_minimum_hosts": 6,
    "failure_percentage_request_volume": 25,
    "max_ejection_time": "60s",
    "max_ejection_time_jitter": "0.5s",
    "always_eject_one_host": True,
    "successful_active_health_check_uneject_host": False,  # accepted, not carried
}


def test_outlier_detection_every_field() -> None:
    assert decode(eds(outlier_detection=OUTLIER_ALL)).outlier_detection == OutlierDetection(
        consecutive_5xx=7,
        interval=2.5,
        base_ejection_time=20.0,
        max_ejection_percent=40,
        enforcing_consecutive_5xx=90,
        enforcing_success_rate=80,
        success_rate_minimum_hosts=3,
        success_rate_request_volume=20,
        success_rate_stdev_factor=1500,
        consecutive_gateway_failure=4,
        enforcing_consecutive_gateway_failure=70,
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        enforcing_consecutive_local_origin_failure=60,
        enforcing_local_origin_success_rate=50,
        failure_percentage_threshold=75,
        enforcing_failure_percentage=40,
        enforcing_failure_percentage_local_origin=30,
        failure_percentage_minimum_hosts=6,
        failure_percentage_request_volume=25,
        max_ejection_time=60.0,
        max_ejection_time_jitter=0.5,
        always_eject_one_host=True,
    )


def test_outlier_envoy_defaults_for_the_newer_fields() -> None:
    od = decode(eds(outlier_detection={})).outlier_detection
    assert od is not None
    assert (od.enforcing_success_rate, od.success_rate_minimum_hosts) == (100, 5)
    assert (od.success_rate_request_volume, od.success_rate_stdev_factor) == (100, 1900)
    assert (od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure) == (5, 0)
    assert not od.split_external_local_origin_errors
    assert (od.consecutive_local_origin_failure, od.enforcing_local_origin_success_rate) == (5, 100)
    assert od.enforcing_consecutive_local_origin_failure == 100
    assert (od.failure_percentage_threshold, od.enforcing_failure_percentage) == (85, 0)
    assert od.enforcing_failure_percentage_local_origin == 0
    assert (od.failure_percentage_minimum_hosts, od.failure_percentage_request_volume) == (5, 50)
    assert (od.max_ejection_time, od.max_ejection_time_jitter) == (300.0, 0.0)
    assert not od.always_eject_one_host


def test_outlier_max_ejection_time_defaults_to_at_least_the_base() -> None:
    od = decode(eds(outlier_detection={"base_ejection_time": "400s"})).outlier_detection
    assert od is not None and od.max_ejection_time == 400.0
    assert od == OutlierDetection(base_ejection_time=400.0)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"enforcing_success_rate": 101},
            "outlier_detection.enforcing_success_rate: 101 is more than 100",
        ),
        (
            {"enforcing_consecutive_gateway_failure": 200},
            "outlier_detection.enforcing_consecutive_gateway_failure: 200 is more than 100",
        ),
        (
            {"enforcing_consecutive_local_origin_failure": 101},
            "outlier_detection.enforcing_consecutive_local_origin_failure: 101 is more than 100",
        ),
        (
            {"enforcing_local_origin_success_rate": 101},
            "outlier_detection.enforcing_local_origin_success_rate: 101 is more than 100",
        ),
        (
            {"failure_percentage_threshold": 101},
            "outlier_detection.failure_percentage_threshold: 101 is more than 100",
        ),
        (
            {"enforcing_failure_percentage": 101},
            "outlier_detection.enforcing_failure_percentage: 101 is more than 100",
        ),
        (
            {"enforcing_failure_percentage_local_origin": 101},
            "outlier_detection.enforcing_failure_percentage_local_origin: 101 is more than 100",
        ),
        (
            {"enforcing_consecutive_5xx": 101},
            "outlier_detection.enforcing_consecutive_5xx: 101 is more than 100",
        ),
        ({"interval": "0s"}, "outlier_detection.interval: must be greater than 0"),
        (
            {"base_ejection_time": "0s"},
            "outlier_detection.base_ejection_time: must be greater than 0",
        ),
        (
            {"max_ejection_time": "0s"},
            "outlier_detection.max_ejection_time: must be greater than 0",
        ),
        (
            {"base_ejection_time": "30s", "max_ejection_time": "10s"},
            "outlier_detection.max_ejection_time: 10.0s is less than base_ejection_time (30.0s),"
            " which Envoy refuses",
        ),
        (
            {"max_ejection_time_jitter": "-1s"},
            "outlier_detection.max_ejection_time_jitter: invalid duration -1s 0ns",
        ),
        (
            {"monitors": [{"name": "m"}]},
            "outlier_detection.monitors: outlier detection extension monitors are not supported",
        ),
    ],
)
def test_outlier_detection_invalid(fields: dict[str, Any], reason: str) -> None:
    assert nack(eds(outlier_detection=fields)) == reason


def test_outlier_detection_round_trips_through_the_encoder() -> None:
    from sail.xds.codec import encode_cluster

    cluster = decode(eds(outlier_detection=OUTLIER_ALL))
    assert decode_cluster(encode_cluster(cluster)) == cluster
    plain = Cluster("reviews", outlier_detection=OutlierDetection())
    message = encode_cluster(plain)
    assert not message.outlier_detection.HasField("always_eject_one_host")
    assert not message.outlier_detection.HasField("max_ejection_time_jitter")
    assert message.outlier_detection.max_ejection_time.seconds == 300
    assert decode_cluster(message) == plain


def test_connect_timeout_and_panic_threshold() -> None:
    cluster = decode(
        eds(connect_timeout="0.25s", common_lb_config={"healthy_panic_threshold": {"value": 0}})
    )
    assert cluster.connect_timeout == 0.25
    assert cluster.healthy_panic_threshold == 0.0


def test_zero_connect_timeout_is_rejected() -> None:
    assert nack(eds(connect_timeout="0s")) == "connect_timeout: must be greater than 0"


def test_static_cluster_endpoints_must_be_ip_addresses() -> None:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "db", "port_value": 1}}}}
    data = {
        "name": "db",
        "type": "STATIC",
        "load_assignment": {"endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    assert nack(data) == (
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "
        "'db' is not an IP address, as a STATIC cluster needs (use STRICT_DNS or LOGICAL_DNS "
        "for host names)"
    )
