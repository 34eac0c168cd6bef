"""The four xDS v3 resource types sail speaks, each as `{type_url, decoder, encoder}`.

The ADS client is generic over this table (as grpc-go's xDS client is over its resource
types): it unpacks each `Any` of a response into `message_class`, names it with
`resource_name`, and calls `decode`, which returns a frozen model object or raises
`sail.errors.ResourceError` (a NACK). The registry goes the other way with `encode`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from sail.errors import ResourceError
from sail.model import Cluster, ClusterLoadAssignment, Listener, RouteConfig
from sail.xds.codec.decode_cluster import decode_cluster
from sail.xds.codec.decode_endpoint import decode_cluster_load_assignment
from sail.xds.codec.decode_listener import decode_listener
from sail.xds.codec.decode_route import decode_route_configuration
from sail.xds.codec.encode import (
    encode_cluster,
    encode_cluster_load_assignment,
    encode_listener,
    encode_route_configuration,
)
from sail.xds.codec.extensions import type_url_of

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

__all__ = [
    "CLUSTER",
    "CLUSTER_LOAD_ASSIGNMENT",
    "LISTENER",
    "RESOURCE_TYPES",
    "ROUTE_CONFIGURATION",
    "Message",
    "ModelObject",
    "ResourceType",
    "resource_name",
    "resource_type",
    "resource_types",
    "unpack",
]

Message: TypeAlias = Any
"""A generated protobuf message (the protobuf stubs are untyped here)."""

ModelObject: TypeAlias = Listener | RouteConfig | Cluster | ClusterLoadAssignment

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

_RESOURCE_WRAPPER = type_url_of(discovery_pb2.Resource)


@attrs.frozen
class ResourceType:
    """One xDS resource type.

    **Parameters**

    * `type_url` - the v3 type URL, as in `DiscoveryRequest.type_url`.
    * `short_name` - `Listener`, `RouteConfiguration`, `Cluster` or `ClusterLoadAssignment`;
      the `type_name` of the `ResourceError`s its decoder raises.
    * `message_class` - the generated protobuf class.
    * `decode` - message → model object; raises `ResourceError`.
    * `encode` - model object (of this type) → message.
    """

    type_url: str
    short_name: str
    message_class: Any
    decode: Callable[[Message], ModelObject]
    encode: Callable[[Any], Message]


RESOURCE_TYPES: Mapping[str, ResourceType] = {
    t.type_url: t
    for t in (
        ResourceType(LISTENER, "Listener", listener_pb2.Listener, decode_listener, encode_listener),
        ResourceType(
            ROUTE_CONFIGURATION,
            "RouteConfiguration",
            route_pb2.RouteConfiguration,
            decode_route_configuration,
            encode_route_configuration,
        ),
        ResourceType(CLUSTER, "Cluster", cluster_pb2.Cluster, decode_cluster, encode_cluster),
        ResourceType(
            CLUSTER_LOAD_ASSIGNMENT,
            "ClusterLoadAssignment",
            endpoint_pb2.ClusterLoadAssignment,
            decode_cluster_load_assignment,
            encode_cluster_load_assignment,
        ),
    )
}
"""The supported resource types by type URL."""


def resource_types(providers: Collection[str]) -> Mapping[str, ResourceType]:
    """The supported resource types, with TLS contexts allowed to name the certificate
    provider instances `providers` (a bootstrap's `certificate_providers`; gRFC A29 NACKs
    any other name). `RESOURCE_TYPES` is this with none."""
    if not providers:
        return RESOURCE_TYPES
    names = frozenset(providers)
    return {
        **RESOURCE_TYPES,
        LISTENER: attrs.evolve(RESOURCE_TYPES[LISTENER],
                               decode=functools.partial(decode_listener, providers=names)),
        CLUSTER: attrs.evolve(RESOURCE_TYPES[CLUSTER],
                              decode=functools.partial(decode_cluster, providers=names)),
    }


def resource_type(type_url_or_short_name: str) -> ResourceType | None:
    """The resource type for a type URL or a short name (`Cluster`), or `None`."""
    found = RESOURCE_TYPES.get(type_url_or_short_name)
    if found is None:
        for t in RESOURCE_TYPES.values():
            if t.short_name == type_url_or_short_name:
                return t
    return found


def unpack(any_msg: Message) -> tuple[str, Message]:
    """Unpack one resource from a `DiscoveryResponse` into `(type_url, message)`.

    A resource wrapped in `envoy.service.discovery.v3.Resource` (as servers send it for TTLs
    or named resources) is unwrapped first. An unknown type or undecodable bytes raise
    `ResourceError`.
    """
    if any_msg.type_url == _RESOURCE_WRAPPER:
        wrapper = discovery_pb2.Resource()
        try:
            any_msg.Unpack(wrapper)
        except DecodeError as exc:
            raise ResourceError("Resource", "", f"cannot unpack: {exc}") from None
        if not wrapper.HasField("resource"):
            raise ResourceError("Resource", wrapper.name, "resource: is required")
        any_msg = wrapper.resource
    rtype = RESOURCE_TYPES.get(any_msg.type_url)
    if rtype is None:
        raise ResourceError("Resource", "", f"unsupported type URL {any_msg.type_url!r}")
    message = rtype.message_class()
    try:
        any_msg.Unpack(message)
    except DecodeError as exc:
        raise ResourceError(rtype.short_name, "", f"cannot unpack: {exc}") from None
    return rtype.type_url, message


def resource_name(msg: Message) -> str:
    """The name of a resource message: `name`, or `cluster_name` for a
    `ClusterLoadAssignment`."""
    if msg.DESCRIPTOR.fields_by_name.get("cluster_name") is not None:
        return str(msg.cluster_name)
    return str(msg.name)
