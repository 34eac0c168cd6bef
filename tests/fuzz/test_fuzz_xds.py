"""The ADS decoders on hostile input: any Listener, RouteConfiguration, Cluster or
ClusterLoadAssignment decodes to a model object or raises exactly `ResourceError` (a NACK),
never another exception and never a logged traceback.

Inputs are valid resources (from the codec's model strategies, encoded, and from
`sail.testing`'s builders) with a few fields anywhere set to hostile values, raw bytes
parsed as each message type, and `Any`s of any type for the ADS client's `unpack`."""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from sail import testing
from sail.errors import ResourceError
from sail.xds.codec.encode import (
    encode_cluster,
    encode_cluster_load_assignment,
    encode_listener,
    encode_route_configuration,
)
from sail.xds.codec.envoy_json import load_resources
from sail.xds.codec.types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    unpack,
)
from tests.fuzz.mutate import (
    KNOWN_TYPE_URLS,
    expect_only,
    fuzz_settings,
    garbage_anys,
    mutated_messages,
)
from tests.fuzz.seeds import CLUSTERS, ROUTES
from tests.unit.xds import strategies as model
from tests.unit.xds.strategies import registered_policies


def _parsed(*resources: dict[str, Any]) -> list[Any]:
    return load_resources(list(resources))


_SEEDS: dict[str, st.SearchStrategy[Any]] = {
    LISTENER: st.one_of(
        model.listeners.map(encode_listener),
        st.sampled_from(_parsed(
            testing.api_listener("l"),
            testing.api_listener("l", routes=testing.route_config("l", ROUTES)),
            testing.server_listener("127.0.0.1", 8080),
            testing.server_listener("0.0.0.0", 8080, routes=ROUTES[:2]),
        )),
    ),
    ROUTE_CONFIGURATION: st.one_of(
        model.route_configs().map(encode_route_configuration),
        st.sampled_from(_parsed(testing.route_config("r", ROUTES, domains=["a", "*.b"]))),
    ),
    CLUSTER: st.one_of(model.clusters().map(encode_cluster), st.sampled_from(_parsed(*CLUSTERS))),
    CLUSTER_LOAD_ASSIGNMENT: st.one_of(
        model.load_assignments().map(encode_cluster_load_assignment),
        st.sampled_from(_parsed(
            testing.load_assignment("e", [("10.0.0.1", 80, 3), ("fd00::1", 81)]),
        )),
    ),
}


def _decode(type_url: str, message: Any) -> Any:
    with registered_policies("my_policy"):  # the custom policy the model strategies use
        return RESOURCE_TYPES[type_url].decode(message)


def _check(type_url: str, message: Any) -> None:
    expect_only(ResourceError, lambda: _decode(type_url, message))


@fuzz_settings(scale=2)
@given(mutated_messages(_SEEDS[LISTENER]))
def test_mutated_listener(message: Any) -> None:
    _check(LISTENER, message)


@fuzz_settings(scale=2)
@given(mutated_messages(_SEEDS[ROUTE_CONFIGURATION]))
def test_mutated_route_configuration(message: Any) -> None:
    _check(ROUTE_CONFIGURATION, message)


@fuzz_settings(scale=2)
@given(mutated_messages(_SEEDS[CLUSTER]))
def test_mutated_cluster(message: Any) -> None:
    _check(CLUSTER, message)


@fuzz_settings(scale=1.5)
@given(mutated_messages(_SEEDS[CLUSTER_LOAD_ASSIGNMENT]))
def test_mutated_cluster_load_assignment(message: Any) -> None:
    _check(CLUSTER_LOAD_ASSIGNMENT, message)


@st.composite
def _damaged_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    """A type URL and bytes: random, or a seed's serialization with bytes flipped, cut or
    inserted."""
    type_url = draw(st.sampled_from(sorted(_SEEDS)))
    if draw(st.booleans()):
        return type_url, draw(st.binary(max_size=200))
    data = bytearray(draw(_SEEDS[type_url]).SerializeToString())
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return type_url, bytes(data)


@fuzz_settings()
@given(_damaged_bytes())
def test_raw_bytes(case: tuple[str, bytes]) -> None:
    """Bytes that protobuf parses as the type decode or NACK; the ADS client's `unpack` of
    an `Any` holding them either way is a value or a `ResourceError`."""
    type_url, data = case
    unpacked = expect_only(
        ResourceError, lambda: unpack(any_pb2.Any(type_url=type_url, value=data))
    )
    try:
        message = RESOURCE_TYPES[type_url].message_class.FromString(data)
    except DecodeError:
        assert unpacked is None  # unpack refuses what does not parse
        return
    _check(type_url, message)


@fuzz_settings(scale=0.5)
@given(st.one_of(garbage_anys(), st.builds(any_pb2.Any, type_url=st.sampled_from(KNOWN_TYPE_URLS))))
def test_unpack_any(resource: Any) -> None:
    """An `Any` of any type in a DiscoveryResponse: unpacked and decoded, or refused."""
    unpacked = expect_only(ResourceError, lambda: unpack(resource))
    if unpacked is not None:
        type_url, message = unpacked
        _check(type_url, message)
