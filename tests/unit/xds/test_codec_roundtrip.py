"""The codec's central property: `decode(encode(x)) == x` for every decodable model object.

Each test also serialises the message to bytes and back, as the wire does.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import ResourceError
from sail.xds.codec import RESOURCE_TYPES, encode_listener
from sail.xds.codec.types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
)
from tests.unit.xds.strategies import (
    clusters,
    listeners,
    load_assignments,
    registered_policies,
    route_configs,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sail.model import Cluster, ClusterLoadAssignment, Listener, RouteConfig


@pytest.fixture(autouse=True, scope="module")
def _policies() -> Iterator[None]:
    with registered_policies():
        yield


def round_trip(type_url: str, obj: Any) -> Any:
    rtype = RESOURCE_TYPES[type_url]
    wire = rtype.encode(obj).SerializeToString()
    message = rtype.message_class.FromString(wire)
    return rtype.decode(message)


@settings(max_examples=150, deadline=None)
@given(listeners)
def test_listener_round_trip(listener: Listener) -> None:
    assert round_trip(LISTENER, listener) == listener


@settings(max_examples=150, deadline=None)
@given(route_configs())
def test_route_configuration_round_trip(config: RouteConfig) -> None:
    assert round_trip(ROUTE_CONFIGURATION, config) == config


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_cluster_round_trip(cluster: Cluster) -> None:
    assert round_trip(CLUSTER, cluster) == cluster


@settings(max_examples=150, deadline=None)
@given(load_assignments())
def test_cluster_load_assignment_round_trip(assignment: ClusterLoadAssignment) -> None:
    assert round_trip(CLUSTER_LOAD_ASSIGNMENT, assignment) == assignment


@settings(deadline=None)
@given(listeners)
def test_encoded_hcm_always_ends_with_a_typed_router(listener: Listener) -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    msg = encode_listener(listener)
    packed = (
        msg.api_listener.api_listener
        if listener.address is None
        else msg.filter_chains[0].filters[0].typed_config
    )
    hcm = hcm_pb2.HttpConnectionManager()
    assert packed.Unpack(hcm)
    assert hcm.stat_prefix
    last = hcm.http_filters[-1]
    assert last.typed_config.type_url.endswith("envoy.extensions.filters.http.router.v3.Router")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(LISTENER), listeners),
        st.tuples(st.just(ROUTE_CONFIGURATION), route_configs()),
        st.tuples(st.just(CLUSTER), clusters()),
        st.tuples(st.just(CLUSTER_LOAD_ASSIGNMENT), load_assignments()),
    ),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_decoders_raise_only_resource_error_on_corrupted_input(
    case: tuple[str, Any], flips: list[tuple[int, int]]
) -> None:
    """Flip a few bytes of a valid resource: whatever still parses as protobuf must decode
    or be NACKed with a `ResourceError`, never crash the ADS client's decoder."""
    type_url, obj = case
    rtype = RESOURCE_TYPES[type_url]
    wire = bytearray(rtype.encode(obj).SerializeToString())
    if not wire:
        return
    for position, value in flips:
        wire[position % len(wire)] = value
    try:
        message = rtype.message_class.FromString(bytes(wire))
    except DecodeError:
        return
    with contextlib.suppress(ResourceError):
        rtype.decode(message)
