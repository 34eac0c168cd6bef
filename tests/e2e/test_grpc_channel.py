"""sail's gRPC channels end to end: real grpcio servers on loopback, config over a real ADS
server, calls through `mesh.grpc_channel` and `mesh.aio_grpc_channel`.

Each server answers `/sail.test.Greeter/*` with its own name and fails as the test scripts
it (`Greeter.script`): UNAVAILABLE for the next N calls, a delay, a stream that breaks.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

import sail
from sail import testing
from sail.grpc.aio import AioMeshRpcError
from sail.grpc.channel import MeshChannel
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

HELLO = "/sail.test.Greeter/Hello"
STREAM = "/sail.test.Greeter/Stream"
COLLECT = "/sail.test.Greeter/Collect"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


class Greeter:
    """A grpcio server on 127.0.0.1 that counts calls and fails as scripted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.unavailable = 0  # the next N calls fail with UNAVAILABLE
        self.delay = 0.0
        self.break_after: int | None = None  # Stream aborts after this many messages
        self.seen: list[Mapping[str, str]] = []
        self.time_left: list[float | None] = []
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "sail.test.Greeter",
            {
                "Hello": grpc.unary_unary_rpc_method_handler(self.hello),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            },
        ),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def reset(self) -> None:
        with self._lock:
            self.calls, self.unavailable, self.delay, self.break_after = 0, 0, 0.0, None
            self.seen, self.time_left = [], []

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            self.seen.append(dict(context.invocation_metadata()))
            self.time_left.append(context.time_remaining())
            fail = self.unavailable > 0
            if fail:
                self.unavailable -= 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is unavailable")
        if self.delay:
            time.sleep(self.delay)

    def hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter(context)
        return self.name.encode()

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(context)
        for i in range(3):
            if self.break_after is not None and i == self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} broke the stream")
            yield f"{self.name}-{i}".encode()

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        body = b"+".join(requests)  # all of them, then maybe fail: a retry must replay
        self._enter(context)
        return self.name.encode() + b":" + body

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture(scope="module")
def greeters() -> Iterator[dict[str, Greeter]]:
    servers = {name: Greeter(name) for name in ("a", "b", "c")}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.server.stop(0)


@pytest.fixture(scope="module")
def xds() -> Iterator[testing.XdsServer]:
    with testing.XdsServer() as server:
        yield server


@pytest.fixture
def mesh(
    xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> Iterator[sail.Mesh]:
    for server in greeters.values():
        server.reset()
    with sail.Mesh.from_bootstrap(xds.bootstrap(), discovery_timeout=5.0) as mesh:
        yield mesh


def serve(
    xds: testing.XdsServer,
    clusters: Mapping[str, Sequence[tuple[str, int]]],
    routes: Sequence[Mapping[str, Any]],
    *,
    service: str = "greeter:50051",
    cluster_fields: Mapping[str, Any] | None = None,
    http_filters: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Serve `service` with `routes` over `clusters` (EDS, round robin)."""
    listener = testing.api_listener(service)
    if http_filters:
        hcm = listener["api_listener"]["api_listener"]
        hcm["http_filters"] = [*http_filters, *hcm["http_filters"]]
    resources: list[dict[str, Any]] = [
        listener, testing.route_config(service, list(routes))
    ]
    for name, endpoints in clusters.items():
        resources.append(testing.eds_cluster(name, **(cluster_fields or {})))
        resources.append(testing.load_assignment(name, endpoints))
    xds.set(resources)


def names(channel: grpc.Channel, n: int, **kwargs: Any) -> collections.Counter[str]:
    hello = channel.unary_unary(HELLO)
    return collections.Counter(hello(b"hi", **kwargs).decode() for _ in range(n))


RETRY_UNAVAILABLE = {"retry_on": "unavailable", "num_retries": 2}


# -- balancing and routing ---------------------------------------------------------------


def test_calls_are_balanced_per_call_over_every_endpoint(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    serve(xds, {"greeter": [g.endpoint for g in greeters.values()]}, [testing.route("greeter")])
    with mesh.grpc_channel("greeter:50051") as channel:
        counts = names(channel, 300, timeout=5)
        assert set(counts) == {"a", "b", "c"}
        assert all(90 <= n <= 110 for n in counts.values()), counts
        # one grpcio subchannel per endpoint, no more
        assert isinstance(channel, MeshChannel)
        assert len(channel._subchannels) == 3


def test_weighted_split_and_header_route(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    jason = testing.route("v2", headers=[{"name": "end-user", "string_match": {"exact": "jason"}}])
    serve(
        xds,
        {"v1": [greeters["a"].endpoint], "v2": [greeters["b"].endpoint]},
        [jason, testing.route({"v1": 80, "v2": 20})],
    )
    with mesh.grpc_channel("xds:///greeter:50051") as channel:
        counts = names(channel, 2000)
        assert counts["a"] / 2000 == pytest.approx(0.80, abs=0.03), counts
        assert names(channel, 100, metadata=(("end-user", "jason"),)) == {"b": 100}


def test_route_by_method_path(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    serve(
        xds,
        {"streams": [greeters["c"].endpoint], "rest": [greeters["a"].endpoint]},
        [testing.route("streams", prefix=STREAM), testing.route("rest")],
    )
    with mesh.grpc_channel("greeter:50051") as channel:
        assert list(channel.unary_stream(STREAM)(b"x")) == [b"c-0", b"c-1", b"c-2"]
        assert channel.unary_unary(HELLO)(b"x") == b"a"


# -- retries ------------------------------------------------------------------------------


def test_unavailable_is_retried_on_another_endpoint_as_the_route_says(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a, b = greeters["a"], greeters["b"]
    serve(xds, {"greeter": [a.endpoint, b.endpoint]},
          [testing.route("greeter", retry_policy=RETRY_UNAVAILABLE)])
    b.unavailable = 10**6
    with mesh.grpc_channel("greeter:50051") as channel:
        hello = channel.unary_unary(HELLO)
        assert names(channel, 50) == {"a": 50}
        assert b.calls > 0  # b was picked, failed, and the call went on to a
        _, call = hello.with_call(b"x")
        info = call.sail
        assert info.attempts[-1].endpoint == f"127.0.0.1:{a.port}"


def test_without_a_policy_an_answer_is_not_retried(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")])
    a.unavailable = 1
    with mesh.grpc_channel("greeter:50051") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(HELLO)(b"x")
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert a.calls == 1


def test_a_refused_connection_is_retried_by_default(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens here
    serve(xds, {"greeter": [dead, greeters["a"].endpoint]}, [testing.route("greeter")])
    with mesh.grpc_channel("greeter:50051") as channel:
        assert names(channel, 40, timeout=5) == {"a": 40}


def test_future_retries_without_blocking(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", retry_policy=RETRY_UNAVAILABLE)])
    a.unavailable = 2
    with mesh.grpc_channel("greeter:50051") as channel:
        future = channel.unary_unary(HELLO).future(b"x", timeout=5)
        assert future.result(timeout=5) == b"a"
        assert len(future.sail.attempts) == 3
        assert future.code() is grpc.StatusCode.OK


def test_a_stream_is_retried_only_before_its_first_message(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", retry_policy=RETRY_UNAVAILABLE)])
    with mesh.grpc_channel("greeter:50051") as channel:
        stream = channel.unary_stream(STREAM)
        a.unavailable = 1  # fails before any message: retried
        assert list(stream(b"x")) == [b"a-0", b"a-1", b"a-2"]
        assert a.calls == 2
        a.break_after = 1  # one message, then UNAVAILABLE: committed, not retried
        received = []
        with pytest.raises(grpc.RpcError) as info:
            for message in stream(b"x"):
                received.append(message)
        assert received == [b"a-0"]
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert a.calls == 3


def test_streamed_requests_are_replayed_on_a_retry(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", retry_policy=RETRY_UNAVAILABLE)])
    a.unavailable = 1
    pulled = []

    def requests() -> Iterator[bytes]:
        for part in (b"1", b"2", b"3"):
            pulled.append(part)
            yield part

    with mesh.grpc_channel("greeter:50051") as channel:
        assert channel.stream_unary(COLLECT)(requests(), timeout=5) == b"a:1+2+3"
    assert a.calls == 2
    assert pulled == [b"1", b"2", b"3"]  # the source was read once


# -- deadlines, breakers, outliers, faults -----------------------------------------------------


def test_max_stream_duration_caps_the_deadline(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", max_stream_duration={"max_stream_duration": "0.3s"})])
    a.delay = 1.0
    with mesh.grpc_channel("greeter:50051") as channel:
        hello = channel.unary_unary(HELLO)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            hello(b"x", timeout=10)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 < time.monotonic() - start < 0.9
        a.delay = 0.0
        assert hello(b"x") == b"a"  # the cap applies without a caller's deadline too


def test_the_deadline_reaches_the_server_as_grpc_timeout(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", max_stream_duration={"grpc_timeout_header_max": "4s"})])
    with mesh.grpc_channel("greeter:50051") as channel:
        hello = channel.unary_unary(HELLO)
        hello(b"x", timeout=2.5)
        hello(b"x", timeout=60)  # capped by grpc_timeout_header_max
        hello(b"x")  # no deadline of the caller's: the cap is the deadline
    first, capped, uncapped = a.time_left
    assert first is not None and 2.0 < first <= 2.55
    assert capped is not None and 3.5 < capped <= 4.05
    assert uncapped is not None and 3.5 < uncapped <= 4.05


def test_max_requests_fails_fast_with_a_clear_error(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(
        xds, {"greeter": [a.endpoint]}, [testing.route("greeter")],
        cluster_fields={"circuit_breakers": {"thresholds": [{"max_requests": 1}]}},
    )
    a.delay = 0.5
    with mesh.grpc_channel("greeter:50051") as channel:
        hello = channel.unary_unary(HELLO)
        slow = hello.future(b"x", timeout=5)
        wait_until(lambda: a.calls == 1, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            hello(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "max_requests" in info.value.details()
        assert isinstance(info.value, sail.SailError)
        assert slow.result(timeout=5) == b"a"


def test_consecutive_failures_eject_an_endpoint(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a, b = greeters["a"], greeters["b"]
    serve(
        xds, {"greeter": [a.endpoint, b.endpoint]}, [testing.route("greeter")],
        cluster_fields={"outlier_detection": {
            "consecutive_5xx": 3, "interval": "0.1s", "base_ejection_time": "30s",
            "max_ejection_percent": 50,
        }},
    )
    b.unavailable = 3
    with mesh.grpc_channel("greeter:50051") as channel:
        hello = channel.unary_unary(HELLO)
        failures = 0
        for _ in range(10):
            try:
                hello(b"x")
            except grpc.RpcError:
                failures += 1
        assert failures == 3
        assert names(channel, 40) == {"a": 40}  # b is out for 30 s


def test_fault_filter_aborts_with_the_grpc_status(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    fault = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": FAULT_TYPE,
        "abort": {"grpc_status": 8, "percentage": {"numerator": 100}},
    }}
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")], http_filters=[fault])
    with mesh.grpc_channel("greeter:50051") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(HELLO)(b"x")
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert a.calls == 0


# -- bad input ---------------------------------------------------------------------------------


def test_an_unknown_service_fails_fast_naming_it(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    serve(xds, {"greeter": [greeters["a"].endpoint]}, [testing.route("greeter")])
    with mesh.grpc_channel("nosuch:50051") as channel:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(HELLO)(b"x", timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "nosuch:50051" in info.value.details()
        assert time.monotonic() - start < 6  # the discovery timeout, never the call's


def test_no_endpoints_and_bad_method_paths(
    mesh: sail.Mesh, xds: testing.XdsServer
) -> None:
    serve(xds, {"greeter": []}, [testing.route("greeter")])
    with mesh.grpc_channel("greeter:50051") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(HELLO)(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "greeter:50051" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("Hello")(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "'Hello' is not a gRPC method path" in info.value.details()


def test_a_target_outside_the_mesh_is_a_plain_channel(
    mesh: sail.Mesh, greeters: dict[str, Greeter]
) -> None:
    with mesh.grpc_channel(f"127.0.0.1:{greeters['c'].port}") as channel:
        assert channel.unary_unary(HELLO)(b"x", timeout=5) == b"c"


def test_subchannels_of_departed_endpoints_are_retired(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a, b = greeters["a"], greeters["b"]
    serve(xds, {"greeter": [a.endpoint, b.endpoint]}, [testing.route("greeter")])
    with mesh.grpc_channel("greeter:50051") as channel:
        assert isinstance(channel, MeshChannel)
        assert set(names(channel, 10)) == {"a", "b"}
        serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")])
        wait_until(lambda: list(channel._subchannels) == [(f"127.0.0.1:{a.port}", None, None)])
        assert names(channel, 10) == {"a": 10}


# -- asyncio ---------------------------------------------------------------------------------


def test_aio_balancing_retries_and_streams(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a, b = greeters["a"], greeters["b"]
    serve(xds, {"greeter": [a.endpoint, b.endpoint]},
          [testing.route("greeter", retry_policy=RETRY_UNAVAILABLE)])

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            hello = channel.unary_unary(HELLO)
            counts = collections.Counter([(await hello(b"x")).decode() for _ in range(100)])
            assert counts == {"a": 50, "b": 50}
            b.unavailable = 10**6
            counts = collections.Counter([(await hello(b"x")).decode() for _ in range(20)])
            assert counts == {"a": 20}
            call = hello(b"x")
            assert await call == b"a"
            assert await call.code() is grpc.StatusCode.OK
            a.unavailable = 1
            b.unavailable = 0
            messages = [m async for m in channel.unary_stream(STREAM)(b"x")]
            assert messages in ([b"a-0", b"a-1", b"a-2"], [b"b-0", b"b-1", b"b-2"])

            async def parts() -> Any:
                for part in (b"1", b"2"):
                    yield part

            b.unavailable = 1
            a.unavailable = 1
            reply = await channel.stream_unary(COLLECT)(parts())
            assert reply in (b"a:1+2", b"b:1+2")

    asyncio.run(main())


def test_aio_errors_are_aio_rpc_errors(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]},
          [testing.route("greeter", max_stream_duration={"max_stream_duration": "0.3s"})])
    a.delay = 1.0

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(HELLO)(b"x", timeout=10)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(AioMeshRpcError) as bad:
                await channel.unary_unary("nope")(b"x")
            assert bad.value.code() is grpc.StatusCode.UNIMPLEMENTED
        async with mesh.aio_grpc_channel("nosuch") as unknown:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await unknown.unary_unary(HELLO)(b"x")
            assert missing.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "'nosuch'" in (missing.value.details() or "")

    asyncio.run(main())


def test_a_servers_outgoing_call_inherits_the_time_left(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: dict[str, Greeter]
) -> None:
    """client → front (a sail server) → greeter: the front's own call through the mesh
    carries only what is left of the client's deadline."""
    a = greeters["a"]
    front = mesh.grpc_server("front", max_workers=4)

    def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(0.5)
        with mesh.grpc_channel("greeter:50051") as onward:
            return onward.unary_unary(HELLO)(request)  # no timeout of its own

    front.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "sail.test.Front", {"Relay": grpc.unary_unary_rpc_method_handler(relay)}),))
    front.start()
    try:
        listener = testing.api_listener("front:1")
        xds.set([
            *[r for r in testing.service("greeter:50051", {"greeter": [a.endpoint]})],
            listener, testing.route_config("front:1", [testing.route("front")]),
            testing.eds_cluster("front"),
            testing.load_assignment("front", [("127.0.0.1", front.port)]),
        ])
        with mesh.grpc_channel("front:1") as channel:
            assert channel.unary_unary("/sail.test.Front/Relay")(b"x", timeout=3) == b"a"
    finally:
        front.stop(0).wait(5)
    (left,) = a.time_left
    assert left is not None and 2.0 < left < 2.55


def test_local_mode_names_an_unknown_service(tmp_path: Any) -> None:
    path = tmp_path / "mesh.json"
    path.write_text('{"resources": []}')
    with sail.Mesh.local(path) as mesh:
        with mesh.grpc_channel("nosuch:50051") as channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(HELLO)(b"x", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "'nosuch:50051': the mesh has no listener for it" in info.value.details()


# -- grpc.aio call semantics: inline or task, cancellation, counters back to zero ----------

async def cancelled_soon(call: Any) -> None:
    """Await `call` while another task cancels it 50 ms in: it must end cancelled."""

    async def canceller() -> None:
        await asyncio.sleep(0.05)
        assert call.cancel()

    task = asyncio.create_task(canceller())
    with pytest.raises(asyncio.CancelledError):
        await call
    await task


def limits_of(mesh: sail.Mesh, name: str = "greeter") -> Any:
    return mesh._dataplane.state.clusters[name]


def check_clean(mesh: sail.Mesh) -> None:
    c = limits_of(mesh)
    assert c.limits.active == 0, c.limits.active
    assert c.limits.retries == 0, c.limits.retries
    for key in list(c.hosts._hosts):
        assert c.hosts._hosts[key].active == 0


def test_aio_semantics(mesh: sail.Mesh, xds: testing.XdsServer, greeters: Any) -> None:
    a, b = greeters["a"], greeters["b"]
    back_off = {"base_interval": "0.5s", "max_interval": "0.5s"}
    policy = {**RETRY_UNAVAILABLE, "retry_back_off": back_off}
    serve(xds, {"greeter": [a.endpoint, b.endpoint]},
          [testing.route("greeter", retry_policy=policy)])

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            hello = channel.unary_unary(HELLO)
            assert await hello(b"x") in (b"a", b"b")
            # awaited twice, done, callbacks, code
            call = hello(b"x")
            seen: list[Any] = []
            call.add_done_callback(seen.append)
            r1 = await call
            r2 = await call
            assert r1 == r2 and call.done() and not call.cancelled()
            await asyncio.sleep(0)
            assert seen == [call]
            assert await call.code() is grpc.StatusCode.OK
            assert call.sail is not None and len(call.sail.attempts) == 1
            seen2: list[Any] = []
            call.add_done_callback(seen2.append)
            await asyncio.sleep(0)
            assert seen2 == [call]
            # two made, awaited one after the other: both in flight together
            a.delay = b.delay = 0.3
            t0 = time.monotonic()
            c1, c2 = hello(b"x"), hello(b"x")
            await c1
            await c2
            assert time.monotonic() - t0 < 0.55, time.monotonic() - t0
            # gather / wait_for
            t0 = time.monotonic()
            rs = await asyncio.gather(hello(b"x"), hello(b"x"), hello(b"x"))
            assert len(rs) == 3 and time.monotonic() - t0 < 0.55
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(hello(b"x"), 0.05)
            await asyncio.sleep(0.4)
            check_clean(mesh)
            # cancel while in flight, inline (from another task)
            call = hello(b"x")
            await cancelled_soon(call)
            assert call.cancelled() and call.done()
            assert await call.code() is grpc.StatusCode.CANCELLED
            assert asyncio.current_task().cancelling() == 0
            check_clean(mesh)
            # cancel before it starts
            call = hello(b"x")
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert call.cancelled()
            # cancel of the awaiting task
            async def waiter() -> Any:
                return await hello(b"x")
            t = asyncio.create_task(waiter())
            await asyncio.sleep(0.05)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            check_clean(mesh)
            # task mode: not awaited right away
            call = hello(b"x")
            await asyncio.sleep(0.05)
            assert not call.done()
            assert call._task is not None
            assert await call in (b"a", b"b")
            call = hello(b"x")
            await asyncio.sleep(0.05)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0.05)
            check_clean(mesh)
            a.delay = b.delay = 0.0
            # retry works inline
            a.unavailable = b.unavailable = 1
            call = hello(b"x")
            assert await call in (b"a", b"b")
            assert len(call.sail.attempts) >= 2
            # done callback before it ends
            call = hello(b"x")
            seen3: list[Any] = []
            call.add_done_callback(seen3.append)
            assert not call.done()
            await call
            await asyncio.sleep(0)
            assert seen3 == [call]
            # error: code/details/trailing metadata
            a.unavailable = b.unavailable = 10
            call = hello(b"x")
            with pytest.raises(grpc.aio.AioRpcError):
                await call
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
            assert "unavailable" in (await call.details())
            assert call.done() and not call.cancelled()
            with pytest.raises(grpc.aio.AioRpcError):
                await call
            a.unavailable = b.unavailable = 0
            # initial metadata without awaiting
            call = hello(b"x")
            assert await call.initial_metadata() is not None
            assert await call in (b"a", b"b")
            check_clean(mesh)
            with pytest.raises(AioMeshRpcError):
                call = channel.unary_unary("nope")(b"x")
                await call
            assert await call.code() is grpc.StatusCode.UNIMPLEMENTED
            # stream unary
            async def parts() -> Any:
                yield b"1"
            collect = channel.stream_unary("/sail.test.Greeter/Collect")
            assert await collect(parts()) in (b"a:1", b"b:1")
        gc.collect()

    asyncio.run(main())


def test_aio_fault_delay_and_cancel(mesh: sail.Mesh, xds: testing.XdsServer, greeters: Any) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")],
          http_filters=[{"name": "envoy.filters.http.fault", "typed_config": {
              "@type": FAULT_TYPE,
              "delay": {"fixed_delay": "0.3s", "percentage": {"numerator": 100}},
          }}])

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            hello = channel.unary_unary(HELLO)
            t0 = time.monotonic()
            assert await hello(b"x") == b"a"
            assert time.monotonic() - t0 >= 0.29
            call = hello(b"x")
            await cancelled_soon(call)
            assert mesh._dataplane.state.services["greeter:50051"].faults.gauge.active == 0
            check_clean(mesh)

    asyncio.run(main())


def test_aio_outside_and_discovery(mesh: sail.Mesh, xds: testing.XdsServer, greeters: Any) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")])

    async def main() -> None:
        async with mesh.aio_grpc_channel(f"127.0.0.1:{a.port}") as channel:
            assert await channel.unary_unary(HELLO)(b"x") == b"a"
            call = channel.unary_unary(HELLO)(b"x")
            assert await call == b"a"
            assert await call.code() is grpc.StatusCode.OK
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            assert await channel.unary_unary(HELLO)(b"x") == b"a"

    asyncio.run(main())


def test_aio_second_awaiter(mesh: sail.Mesh, xds: testing.XdsServer, greeters: Any) -> None:
    a = greeters["a"]
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter")])

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            hello = channel.unary_unary(HELLO)
            a.delay = 0.2
            call = hello(b"x")
            async def second() -> Any:
                return await call
            t = asyncio.create_task(second())
            assert await call == b"a"
            assert await t == b"a"
            # the second awaiter cancelled: the call is cancelled, as a task would be
            call = hello(b"x")
            seen: list[Any] = []
            call.add_done_callback(seen.append)
            t = asyncio.create_task(second())
            async def cancel_soon() -> None:
                await asyncio.sleep(0.05)
                t.cancel()
            c = asyncio.create_task(cancel_soon())
            with pytest.raises(asyncio.CancelledError):
                await call
            with pytest.raises(asyncio.CancelledError):
                await t
            await c
            await asyncio.sleep(0)
            assert seen == [call] and call.cancelled()
            a.delay = 0.0
            await asyncio.sleep(0.3)
            check_clean(mesh)

    asyncio.run(main())


def test_aio_calls_cancelled_during_back_off_give_their_retry_back(
    mesh: sail.Mesh, xds: testing.XdsServer, greeters: Any
) -> None:
    a = greeters["a"]
    # Back-offs are fully jittered, in [0, 5 s): the cancel, sent as soon as the first
    # attempt has failed, lands in one (unless it drew under a few ms: 1 in ~2,000).
    back_off = {"base_interval": "5s", "max_interval": "5s"}
    policy = {**RETRY_UNAVAILABLE, "retry_back_off": back_off}
    serve(xds, {"greeter": [a.endpoint]}, [testing.route("greeter", retry_policy=policy)])

    async def cancel_in_back_off(call: Any, consume: Any) -> None:
        calls = a.calls
        a.unavailable = 1

        async def cancel_soon() -> None:
            while a.calls == calls:
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.02)  # the failure reaches the client
            call.cancel()

        canceller = asyncio.create_task(cancel_soon())
        start = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await consume(call)
        await canceller
        assert time.monotonic() - start < 1.0  # cut short, not after the back-off
        assert a.calls == calls + 1  # and no second attempt
        check_clean(mesh)  # the retry's budget slot and every counter are back

    async def read_all(call: Any) -> list[Any]:
        return [m async for m in call]

    async def main() -> None:
        async with mesh.aio_grpc_channel("greeter:50051") as channel:
            await cancel_in_back_off(channel.unary_unary(HELLO)(b"x"), lambda c: c)
            await cancel_in_back_off(channel.unary_stream(STREAM)(b"x"), read_all)

    asyncio.run(main())
