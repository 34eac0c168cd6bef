"""The assembled registry: the start-up grace, status and CSDS, and a bad stored config."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

import sail
from sail._loop import background_loop
from sail.balancing import registry as balancing_registry
from sail.bootstrap import parse_bootstrap
from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.server import Registry
from sail.xds.codec.decode_listener import decode_listener
from sail.xds.codec.extensions import ROUTER
from sail.xds.codec.types import unpack
from sail.xds.resolver import CDS, LDS
from tests.helpers import wait_until

REVIEWS = Workload("reviews", "127.0.0.1", 8001, {"version": "v1"}, service_port=9080)


def run(coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, background_loop()).result(10)


def on_loop(fn: Any) -> Any:
    """Run `fn()` on the registry's loop; awaited if it returns an awaitable."""

    async def call() -> Any:
        result = fn()
        return await result if inspect.isawaitable(result) else result

    return run(call())


class Running:
    def __init__(self, **kwargs: Any) -> None:
        self.registry = Registry(**kwargs)
        self.port = run(self.registry.start("127.0.0.1:0"))
        self.address = f"127.0.0.1:{self.port}"

    def bootstrap(self, node_id: str) -> sail.Bootstrap:
        return parse_bootstrap(
            {
                "xds_servers": [
                    {"server_uri": self.address, "channel_creds": [{"type": "insecure"}]}
                ],
                "node": {"id": node_id, "cluster": "unit"},
            }
        )


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(registration_grace=0)
    on_loop(lambda: r.registry.store.put_workload(REVIEWS, HealthStatus.HEALTHY, 30))
    try:
        yield r
    finally:
        run(r.registry.stop(0))


def first_response(address: str, timeout: float) -> Any:
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield discovery_pb2.DiscoveryRequest(type_url=LDS, resource_names=["reviews"])
        done.wait(timeout + 10)  # keep the stream open past the deadline, as clients do

    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        responses = stub.StreamAggregatedResources(requests(), timeout=timeout)
        try:
            return next(iter(responses))
        except grpc.RpcError as exc:
            return exc
        finally:
            done.set()


def test_nothing_is_served_during_the_registration_grace() -> None:
    start = time.monotonic()  # before the registry starts its grace timer
    r = Running(registration_grace=3.0)
    try:
        on_loop(lambda: r.registry.store.put_workload(REVIEWS, HealthStatus.HEALTHY, 30))
        early = first_response(r.address, timeout=0.5)
        assert isinstance(early, grpc.RpcError)  # no answer, not an empty one
        assert early.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        response = first_response(r.address, timeout=5)
        assert time.monotonic() - start >= 3.0
        assert [a.type_url for a in response.resources] == [LDS]
    finally:
        run(r.registry.stop(0))


def test_status_and_csds_report_acks_and_nacks(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client without a least_request policy (as sail before the resilience work): it
    # NACKs a cluster that asks for one, which Envoy and gRPC accept.
    monkeypatch.delitem(balancing_registry._POLICIES, "least_request")
    with sail.Mesh.from_bootstrap(running.bootstrap("unit-client")) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")

        def row() -> dict[str, str] | None:
            status = on_loop(running.registry.status)
            rows = [c for c in status["clients"] if c["node_id"] == "unit-client"]
            return rows[0] if rows else None

        wait_until(lambda: (r := row()) is not None and r["state"] == "SYNCED")
        # LEAST_REQUEST is served; this client NACKs the cluster, and status and CSDS say so.
        on_loop(
            lambda: running.registry.store.put_config(
                "lb.yaml",
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                "metadata: {name: reviews}\nspec:\n  host: reviews\n"
                "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n",
            )
        )
        nacked = wait_until(lambda: (r := row()) is not None and r["state"] == "NACKED" and r)
        assert "least_request" in nacked["reason"]
        with grpc.insecure_channel(running.address) as channel:
            stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
            response = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
        (config,) = [c for c in response.config if c.node.id == "unit-client"]
        by_type = {g.type_url: g for g in config.generic_xds_configs}
        assert by_type[LDS].client_status == config_dump_shared_pb2.ACKED
        assert by_type[CDS].client_status == config_dump_shared_pb2.NACKED
        assert "least_request" in by_type[CDS].error_state.details


def test_bad_stored_config_keeps_the_last_good_resources(running: Running) -> None:
    version = on_loop(lambda: running.registry.resources.version)
    on_loop(lambda: running.registry.store.put_config("broken.yaml", "kind: [unclosed"))
    wait_until(lambda: on_loop(lambda: running.registry.last_error))
    assert "broken.yaml" in on_loop(lambda: running.registry.last_error)
    assert on_loop(lambda: running.registry.resources.version) == version
    assert on_loop(running.registry.status)["config_error"]


def test_mesh_register_true_registers_with_the_bootstrap_registry(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAIL_REGISTRY_TOKEN", raising=False)  # the fixture's registry: no auth

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": message["type"] + ".complete"})

    mesh = sail.Mesh.from_bootstrap(running.bootstrap("worker"), register=True)
    wrapped = mesh.service("ratings", port=9999, labels={"version": "v1"}, drain=0)(app)

    async def startup() -> None:
        sent: list[Any] = []

        async def receive() -> dict[str, str]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            sent.append(message)

        await wrapped({"type": "lifespan"}, receive, send)

    asyncio.run(startup())
    try:
        wait_until(
            lambda: "ratings" in {w.service for w, _ in on_loop(running.registry.store.workloads)}
        )
    finally:
        mesh.registrar.close()  # type: ignore[attr-defined]
        mesh.close()


def lds_answer(address: str, names: list[str]) -> Any:
    """The first LDS answer to a stream asking for `names` (`[]`: a wildcard)."""
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield discovery_pb2.DiscoveryRequest(
            type_url=LDS, resource_names=names, node={"id": "lds-probe"}
        )
        done.wait(15)

    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        try:
            return next(iter(stub.StreamAggregatedResources(requests(), timeout=5)))
        finally:
            done.set()


def test_server_listeners_go_only_to_who_asks_for_them_by_name(running: Running) -> None:
    wildcard = lds_answer(running.address, [])
    assert sorted(decode_listener(unpack(a)[1]).name for a in wildcard.resources) == [
        "127.0.0.1_9080", "reviews", "reviews:9080"  # and Envoy's port listener
    ]
    name = "grpc/server?xds.resource.listening_address=127.0.0.1:8001"
    wild = "grpc/server?xds.resource.listening_address=[::]:8001"
    asked = lds_answer(running.address, [name, wild])
    listeners = sorted(
        (decode_listener(unpack(a)[1]) for a in asked.resources), key=lambda x: x.name
    )
    assert [x.address for x in listeners] == [("127.0.0.1", 8001), ("::", 8001)]
    (route,) = listeners[0].hcm.route_config.virtual_hosts[0].routes
    assert route.action is None  # non_forwarding: the server handles the call itself
    # only the router: grpcio refuses a server listener with the (client-only) fault filter
    assert [f.type_url for f in listeners[0].hcm.http_filters] == [ROUTER]
