"""ClusterLoadAssignment decoding: localities, weights, priorities, endpoint addresses."""

from __future__ import annotations

from typing import Any

import pytest

from sail.errors import ResourceError
from sail.model import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
)
from sail.xds.codec import decode_cluster_load_assignment, parse_resource


def lb_endpoint(address: str = "10.0.0.1", port: int = 8080, **fields: Any) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}},
        **fields,
    }


def locality(*endpoints: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"locality": {"zone": "a"}, "lb_endpoints": list(endpoints), **fields}


def cla(*localities: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"cluster_name": "reviews", "endpoints": list(localities), **fields}


def decode(data: dict[str, Any]) -> ClusterLoadAssignment:
    return decode_cluster_load_assignment(parse_resource("ClusterLoadAssignment", data))


def nack(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode(data)
    assert info.value.type_name == "ClusterLoadAssignment"
    return info.value.reason


def test_a_typical_assignment() -> None:
    data = cla(
        {
            "locality": {"region": "eu", "zone": "eu-1a", "sub_zone": "rack1"},
            "load_balancing_weight": 3,
            "lb_endpoints": [
                lb_endpoint(load_balancing_weight=2, health_status="HEALTHY"),
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": "::1", "port_value": 9}},
                        "hostname": "reviews-1",
                    },
                    "health_status": "DRAINING",
                },
            ],
        },
        locality(lb_endpoint("10.0.1.1"), priority=1),
        policy={"overprovisioning_factor": 200},
    )
    assert decode(data) == ClusterLoadAssignment(
        "reviews",
        (
            LocalityEndpoints(
                Locality("eu", "eu-1a", "rack1"),
                (
                    Endpoint("10.0.0.1", 8080, weight=2, health=HealthStatus.HEALTHY),
                    Endpoint("::1", 9, health=HealthStatus.DRAINING, hostname="reviews-1"),
                ),
                weight=3,
            ),
            LocalityEndpoints(Locality(zone="a"), (Endpoint("10.0.1.1", 8080),), priority=1),
        ),
        overprovisioning_factor=200,
    )


def test_defaults() -> None:
    assignment = decode(cla(locality(lb_endpoint())))
    (group,) = assignment.localities
    assert group.weight == 1  # gRPC would drop this locality; sail keeps it (documented)
    assert group.endpoints[0].weight == 1
    assert group.endpoints[0].health is HealthStatus.UNKNOWN
    assert assignment.overprovisioning_factor == 140


def test_empty_assignment_is_valid() -> None:
    assert decode(cla()) == ClusterLoadAssignment("reviews")


def test_zero_locality_weight_is_rejected() -> None:
    assert nack(cla(locality(lb_endpoint(), load_balancing_weight=0))) == (
        "endpoints[0].load_balancing_weight: must be at least 1 (leave it unset for 1)"
    )


def test_zero_endpoint_weight_is_rejected() -> None:
    assert nack(cla(locality(lb_endpoint(load_balancing_weight=0)))) == (
        "endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1 "
        "(leave it unset for 1)"
    )


def test_endpoint_without_address_is_rejected() -> None:
    assert nack(cla(locality(lb_endpoint(), {"endpoint": {"hostname": "x"}}))) == (
        "endpoints[0].lb_endpoints[1].endpoint.address: is required"
    )


def test_endpoint_without_port_is_rejected() -> None:
    missing_port = {"endpoint": {"address": {"socket_address": {"address": "10.0.0.9"}}}}
    assert nack(cla(locality(missing_port))) == (
        "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: "
        "is required (1-65535)"
    )


def test_named_port_is_rejected() -> None:
    named = {"endpoint": {"address": {"socket_address": {"address": "a", "named_port": "http"}}}}
    assert nack(cla(locality(named))) == (
        "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port: "
        "is not supported; use port_value"
    )


def test_pipe_address_is_rejected() -> None:
    pipe = {"endpoint": {"address": {"pipe": {"path": "/tmp/sock"}}}}
    assert nack(cla(locality(pipe))) == (
        "endpoints[0].lb_endpoints[0].endpoint.address.pipe: only socket_address is supported"
    )


def test_non_contiguous_priorities_are_rejected() -> None:
    data = cla(locality(lb_endpoint("10.0.0.1")), locality(lb_endpoint("10.0.0.2"), priority=2))
    assert nack(data) == "endpoints: priorities must be contiguous from 0: got 0, 2, missing 1"


def test_priorities_must_start_at_zero() -> None:
    assert nack(cla(locality(lb_endpoint(), priority=1))) == (
        "endpoints: priorities must be contiguous from 0: got 1, missing 0"
    )


def test_duplicate_locality_in_a_priority_is_rejected() -> None:
    data = cla(locality(lb_endpoint("10.0.0.1")), locality(lb_endpoint("10.0.0.2")))
    assert nack(data) == (
        "endpoints[1].locality: duplicate locality a in priority 0 (also endpoints[0])"
    )


def test_same_locality_in_two_priorities_is_fine() -> None:
    data = cla(locality(lb_endpoint("10.0.0.1")), locality(lb_endpoint("10.0.0.2"), priority=1))
    assert len(decode(data).localities) == 2


def test_duplicate_endpoint_address_is_rejected() -> None:
    data = cla(locality(lb_endpoint()), locality(lb_endpoint(), priority=1))
    assert nack(data) == (
        "endpoints[1].lb_endpoints[0].endpoint.address: duplicate endpoint 10.0.0.1:8080 "
        "(also endpoints[0].lb_endpoints[0])"
    )


def test_named_endpoints_are_rejected() -> None:
    assert nack(cla(locality({"endpoint_name": "e1"}))) == (
        "endpoints[0].lb_endpoints[0].endpoint_name: named endpoints are not supported"
    )


def test_zero_overprovisioning_factor_is_rejected() -> None:
    assert nack(cla(policy={"overprovisioning_factor": 0})) == (
        "policy.overprovisioning_factor: must be greater than 0"
    )


def test_cluster_name_is_required() -> None:
    with pytest.raises(ResourceError) as info:
        decode({"endpoints": []})
    assert str(info.value) == "ClusterLoadAssignment '': cluster_name: must not be empty"


def test_load_balancer_endpoints_list_is_accepted() -> None:
    data = cla({"load_balancer_endpoints": {"lb_endpoints": [lb_endpoint()]}})
    assert decode(data).endpoints == (Endpoint("10.0.0.1", 8080),)


def test_an_endpoint_identity_comes_from_its_sail_metadata() -> None:
    spiffe = "spiffe://example.org/ns/default/sa/reviews"
    meta = {"metadata": {"filter_metadata": {"sail": {"identity": spiffe},
                                             "istio": {"workload": "reviews-v1"}}}}
    decoded = decode(cla(locality(lb_endpoint(**meta), lb_endpoint("10.0.0.2"))))
    first, second = decoded.localities[0].endpoints
    assert (first.identity, second.identity) == (spiffe, "")
    # the registry writes it so, and reads it back
    from sail.xds.codec.encode import encode_cluster_load_assignment
    assert decode_cluster_load_assignment(encode_cluster_load_assignment(decoded)) == decoded


@pytest.mark.parametrize(("identity", "reason"), [
    ("reviews", "does not start with 'spiffe://'"),
    (7, "must be a string"),
])
def test_a_bad_endpoint_identity_is_a_nack_naming_the_field(identity: Any, reason: str) -> None:
    meta = {"metadata": {"filter_metadata": {"sail": {"identity": identity}}}}
    message = nack(cla(locality(lb_endpoint(**meta))))
    assert "metadata.filter_metadata.sail.identity" in message and reason in message
