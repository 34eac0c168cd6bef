"""The xDS codec: Envoy v3 protobuf resources ⇄ the frozen `sail.model` objects.

* `types` - the four resource types (`RESOURCE_TYPES` by type URL), `unpack`, `resource_name`.
* `decode_*` - validate one message into a model object, or raise `sail.errors.ResourceError`
  whose reason names the field path (`virtual_hosts[0].routes[3].match.safe_regex.regex: ...`),
  which the ADS client sends back as the NACK's error detail.
* `encode` - model objects → messages that Envoy and gRPC accept, for the registry.
* `envoy_json` - resources written as Envoy JSON/YAML dicts → messages.

Protobuf stops here: nothing outside `sail.xds` sees a generated message.
"""

from __future__ import annotations

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
from sail.xds.codec.envoy_json import load_resources, parse_resource
from sail.xds.codec.types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    ResourceType,
    resource_name,
    resource_type,
    unpack,
)

__all__ = [
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
]
