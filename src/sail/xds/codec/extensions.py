"""The extension types sail knows by type URL: HTTP filters and load-balancing policies.

Importing this module also registers every protobuf message sail supports (and the typed
configs inside them) in the default descriptor pool, which `google.protobuf.json_format`
needs to parse an `Any` written as `{"@type": ..., ...}` in Envoy's JSON.

`TypedStruct` (`xds.type.v3.TypedStruct`, and the older `udpa.type.v1.TypedStruct`) is how a
control plane sends the config of an extension whose proto the client may not have: a type
URL plus a JSON-like `Struct`. Decoders look through it (`configured_type`), as gRPC does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2 as cswrr_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.pick_first.v3 import pick_first_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2

from sail.xds.codec.validation import Invalid

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CLIENT_HTTP_FILTERS",
    "CORS",
    "FAULT",
    "HCM",
    "HCM_FILTER_NAME",
    "HTTP_FILTERS",
    "LB_POLICIES",
    "RBAC",
    "ROUTER",
    "ROUTER_NAME",
    "SERVER_ONLY_FILTERS",
    "TYPE_PREFIX",
    "WRR_LOCALITY",
    "configured_type",
    "type_url_of",
    "unpack_into",
]

TYPE_PREFIX = "type.googleapis.com/"


def type_url_of(message_class: Any) -> str:
    """`type.googleapis.com/<full name>` of a generated message class."""
    return TYPE_PREFIX + str(message_class.DESCRIPTOR.full_name)


HCM = type_url_of(hcm_pb2.HttpConnectionManager)
HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"

ROUTER = type_url_of(router_pb2.Router)
ROUTER_NAME = "envoy.filters.http.router"
FAULT = type_url_of(fault_pb2.HTTPFault)
RBAC = type_url_of(rbac_pb2.RBAC)
CORS = type_url_of(cors_pb2.Cors)

HTTP_FILTERS: frozenset[str] = frozenset({ROUTER, FAULT, RBAC, CORS})
"""HTTP filter types a port (server) listener may have. The router and the fault filter are
applied (the fault filter on the client side); RBAC and CORS are kept in the model of a port
listener, where an xDS-enabled server refuses to serve with them (`sail.grpc.xds_server`).
Any other type is a NACK unless the filter is `is_optional`."""

CLIENT_HTTP_FILTERS: frozenset[str] = frozenset({ROUTER, FAULT})
"""HTTP filter types a client (API) listener may have: those a sail client applies. As in
gRPC (gRFC A39), a client knows its own set of filters; any other type is a NACK unless the
filter is `is_optional`."""

SERVER_ONLY_FILTERS: Mapping[str, str] = {
    RBAC: "is server-only (gRFC A41: RBAC authorizes the calls a server receives)",
    CORS: "is server-only (CORS answers browsers' requests to a server)",
}
"""Filters a client listener refuses with a reason of their own, since a client would ignore
them (an authorization policy ignored would allow every call)."""

WRR_LOCALITY = type_url_of(wrr_locality_pb2.WrrLocality)

LB_POLICIES: Mapping[str, str] = {
    type_url_of(round_robin_pb2.RoundRobin): "round_robin",
    type_url_of(random_pb2.Random): "random",
    type_url_of(least_request_pb2.LeastRequest): "least_request",
    type_url_of(ring_hash_pb2.RingHash): "ring_hash",
    type_url_of(maglev_pb2.Maglev): "maglev",
    type_url_of(cswrr_pb2.ClientSideWeightedRoundRobin): "weighted_round_robin",
    type_url_of(pick_first_pb2.PickFirst): "pick_first",
}
"""Typed load-balancing policy configs and the `sail.balancing.registry` name each selects.
`client_side_weighted_round_robin` is `weighted_round_robin`, its name in gRPC as well."""

_TYPED_STRUCTS = frozenset(
    {type_url_of(typed_struct_pb2.TypedStruct), type_url_of(udpa_typed_struct_pb2.TypedStruct)}
)


def unpack_into(config: Any, message: Any) -> Any:
    """Unpack the `Any` `config` into `message` (and return it), raising `Invalid` when the
    type differs or the bytes do not parse."""
    try:
        ok = config.Unpack(message)
    except DecodeError as exc:
        raise Invalid("", f"cannot unpack {config.type_url}: {exc}") from None
    if not ok:
        raise Invalid("", f"cannot unpack {config.type_url} as {message.DESCRIPTOR.full_name}")
    return message


def configured_type(config: Any) -> tuple[str, Any | None]:
    """The type URL an `Any` configures, looking through a `TypedStruct`.

    Returns `(type_url, struct)` where `struct` is the `TypedStruct`'s `google.protobuf.Struct`
    value, or `None` for a plain `Any`.
    """
    if config.type_url not in _TYPED_STRUCTS:
        return config.type_url, None
    holder = (
        typed_struct_pb2.TypedStruct()
        if config.type_url.startswith(TYPE_PREFIX + "xds.")
        else udpa_typed_struct_pb2.TypedStruct()
    )
    unpack_into(config, holder)
    return holder.type_url, holder.value if holder.HasField("value") else struct_pb2.Struct()
