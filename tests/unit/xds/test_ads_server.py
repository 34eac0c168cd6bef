"""The ADS server against a raw ADS client: the protocol edge cases real peers rely on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sail import testing
from sail.xds.resolver import CDS, EDS, LDS
from tests.helpers import wait_until

NO_ANSWER = 0.4


class RawStream:
    """One ADS stream driven by hand: `send` requests, `recv` responses (or None)."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[Any] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._responses = stub.StreamAggregatedResources(iter(self._requests.get, None))
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._first = True

        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._responses:
                self._inbox.put(response)
        except grpc.RpcError:
            pass

    def send(self, type_url: str, names: list[str], *, version: str = "", nonce: str = "",
             error: str | None = None, node_id: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if node_id is not None or self._first:
            request.node.id = node_id or "raw"  # on the first request only, as clients do
            self._first = False
        if error is not None:
            request.error_detail.message = error
            request.error_detail.code = 3
        self._requests.put(request)

    def recv(self, timeout: float = 5.0) -> Any:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, response: Any, names: list[str]) -> None:
        self.send(response.type_url, names, version=response.version_info, nonce=response.nonce)

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()
        self._channel.close()


def names_of(response: Any) -> list[str]:
    from sail.xds.codec.types import resource_name, unpack

    return sorted(resource_name(unpack(r)[1]) for r in response.resources)


@pytest.fixture
def server() -> Iterator[testing.XdsServer]:
    resources = testing.service("reviews", {"r1": [("127.0.0.1", 1)]})
    with testing.XdsServer(resources) as srv:
        yield srv


@pytest.fixture
def stream(server: testing.XdsServer) -> Iterator[RawStream]:
    raw = RawStream(server.address)
    yield raw
    raw.close()


def test_ack_sends_nothing_more_and_a_name_change_is_answered(
    server: testing.XdsServer, stream: RawStream
) -> None:
    stream.send(EDS, ["r1"])
    first = stream.recv()
    assert names_of(first) == ["r1"]
    stream.ack(first, ["r1"])
    assert stream.recv(NO_ANSWER) is None  # an ACK with the same names gets no answer
    server.put(testing.load_assignment("r2", [("127.0.0.1", 2)]))
    stream.send(EDS, ["r1", "r2"], version=first.version_info, nonce=first.nonce)
    widened = stream.recv()
    assert names_of(widened) == ["r1", "r2"]


def test_stale_nonce_is_ignored(server: testing.XdsServer, stream: RawStream) -> None:
    stream.send(EDS, ["r1"])
    first = stream.recv()
    server.put(testing.load_assignment("r1", [("127.0.0.1", 3)]))
    second = stream.recv()
    assert second.nonce != first.nonce
    # A request answering the older response asks for more names: it is stale, ignored.
    stream.send(EDS, ["r1", "zzz"], version=first.version_info, nonce=first.nonce)
    assert stream.recv(NO_ANSWER) is None
    stream.ack(second, ["r1"])
    wait_until(
        lambda: ("raw", EDS) in server.acks and server.acks[("raw", EDS)].nonce == second.nonce
    )


def test_nack_is_recorded_with_node_and_reason_and_the_stream_goes_on(
    server: testing.XdsServer, stream: RawStream
) -> None:
    stream.send(CDS, ["r1"], node_id="nacker")
    response = stream.recv()
    stream.send(CDS, ["r1"], nonce=response.nonce, error="Cluster 'r1': no good")
    nack = wait_until(lambda: server.nacks and server.nacks[-1])
    assert (nack.node_id, nack.type_url, nack.error) == ("nacker", CDS, "Cluster 'r1': no good")
    server.put(testing.eds_cluster("r1", lb_policy="RANDOM"))
    assert names_of(stream.recv()) == ["r1"]  # still served after the NACK


def test_resource_requested_before_it_exists_is_sent_when_it_appears(
    server: testing.XdsServer, stream: RawStream
) -> None:
    stream.send(LDS, ["ratings"])
    empty = stream.recv()
    assert names_of(empty) == []
    stream.ack(empty, ["ratings"])
    server.put(*testing.service("ratings", {"ra": [("127.0.0.1", 4)]}))
    appeared = stream.recv()
    assert names_of(appeared) == ["ratings"]


def test_unsubscribe_stops_updates_for_that_name(
    server: testing.XdsServer, stream: RawStream
) -> None:
    server.put(testing.load_assignment("r2", [("127.0.0.1", 2)]))
    stream.send(EDS, ["r1", "r2"])
    both = stream.recv()
    stream.ack(both, ["r1", "r2"])
    stream.send(EDS, ["r1"], version=both.version_info, nonce=both.nonce)
    narrowed = stream.recv()
    assert names_of(narrowed) == ["r1"]
    stream.ack(narrowed, ["r1"])
    server.put(testing.load_assignment("r2", [("127.0.0.1", 9)]))
    assert stream.recv(NO_ANSWER) is None  # r2 changed, but nobody here asks for it


def test_wildcard_lds_stays_wildcard_on_empty_acks(
    server: testing.XdsServer, stream: RawStream
) -> None:
    stream.send(LDS, [])
    first = stream.recv()
    assert names_of(first) == ["reviews"]
    stream.ack(first, [])  # Envoy keeps sending empty names: still wildcard
    server.put(testing.api_listener("ratings"))
    assert names_of(stream.recv()) == ["ratings", "reviews"]
