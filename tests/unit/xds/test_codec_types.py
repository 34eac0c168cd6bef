"""The resource type table, `unpack` and `resource_name`."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

import sail.xds.codec as codec
from sail.errors import ResourceError
from sail.xds.codec import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    resource_name,
    resource_type,
    unpack,
)


def packed(message: object) -> any_pb2.Any:
    result = any_pb2.Any()
    result.Pack(message)
    return result


def test_the_four_v3_types() -> None:
    assert {url: t.short_name for url, t in RESOURCE_TYPES.items()} == {
        LISTENER: "Listener",
        ROUTE_CONFIGURATION: "RouteConfiguration",
        CLUSTER: "Cluster",
        CLUSTER_LOAD_ASSIGNMENT: "ClusterLoadAssignment",
    }
    for url, rtype in RESOURCE_TYPES.items():
        assert url == "type.googleapis.com/" + rtype.message_class.DESCRIPTOR.full_name


def test_resource_type_by_short_name() -> None:
    assert resource_type("Cluster") is RESOURCE_TYPES[CLUSTER]
    assert resource_type(CLUSTER) is RESOURCE_TYPES[CLUSTER]
    assert resource_type("Secret") is None


def test_public_api() -> None:
    assert set(codec.__all__) == {
        "CLUSTER",
        "CLUSTER_LOAD_ASSIGNMENT",
        "LISTENER",
        "RESOURCE_TYPES",
        "ROUTE_CONFIGURATION",
        "ResourceType",
        "decode_cluster",
        "decode_cluster_load_assignment",
        "decode_listener",
        "decode_route_configuration",
        "encode_cluster",
        "encode_cluster_load_assignment",
        "encode_listener",
        "encode_route_configuration",
        "load_resources",
        "parse_resource",
        "resource_name",
        "resource_type",
        "unpack",
    }


def test_resource_name() -> None:
    assert resource_name(cluster_pb2.Cluster(name="c")) == "c"
    assert resource_name(route_pb2.RouteConfiguration(name="r")) == "r"
    assert resource_name(endpoint_pb2.ClusterLoadAssignment(cluster_name="e")) == "e"


def test_unpack() -> None:
    type_url, message = unpack(packed(cluster_pb2.Cluster(name="c")))
    assert type_url == CLUSTER
    assert message == cluster_pb2.Cluster(name="c")


def test_unpack_looks_through_the_resource_wrapper() -> None:
    inner = packed(endpoint_pb2.ClusterLoadAssignment(cluster_name="e"))
    wrapper = packed(discovery_pb2.Resource(name="e", resource=inner))
    assert unpack(wrapper) == (CLUSTER_LOAD_ASSIGNMENT, inner_message(inner))


def inner_message(inner: any_pb2.Any) -> endpoint_pb2.ClusterLoadAssignment:
    message = endpoint_pb2.ClusterLoadAssignment()
    inner.Unpack(message)
    return message


def test_unpack_rejects_unknown_types_and_bad_bytes() -> None:
    with pytest.raises(ResourceError, match="unsupported type URL"):
        unpack(any_pb2.Any(type_url="type.googleapis.com/example.Nope"))
    with pytest.raises(ResourceError, match="cannot unpack"):
        unpack(any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff"))


def test_decode_and_encode_are_wired() -> None:
    rtype = RESOURCE_TYPES[CLUSTER_LOAD_ASSIGNMENT]
    model = rtype.decode(endpoint_pb2.ClusterLoadAssignment(cluster_name="e"))
    assert rtype.encode(model).cluster_name == "e"
