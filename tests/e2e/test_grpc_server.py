"""gRPC servers as mesh workloads: `Mesh.grpc_server()` (grpcio) and `Mesh.aio_grpc_server()`
(grpc.aio), served for real on 127.0.0.1 and called with plain grpcio channels.

Each test runs against both servers. The aio server lives on sail's background loop (one
long-lived loop: grpc.aio dislikes loops that close while others use it), driven from the
test's thread, so both twins share the test bodies.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sail
from sail import testing
from sail._loop import background_loop
from sail.model import HealthStatus
from sail.resilience.deadline import inherited_deadline
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SERVICE = "sail.test.Probe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def seen() -> dict[str, Any]:
    """What a handler sees of the mesh, as JSON-able data."""
    ctx = sail.current_request()
    deadline = inherited_deadline.get()
    return {
        "ctx": None if ctx is None else {
            "service": ctx.service,
            "port": ctx.workload.port,
            "method": ctx.method,
            "path": ctx.path,
            "headers": dict(ctx.headers),
            "deadline_is_inherited": ctx.deadline == deadline,
        },
        "left": None if deadline is None else deadline - time.monotonic(),
    }


def dump(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- the handlers, sync and aio ---------------------------------------------------------------


class SyncProbe:
    def __init__(self) -> None:
        self.entered = threading.Event()

    def context(self, request: bytes, context: Any) -> bytes:
        return dump(seen())

    def slow(self, request: bytes, context: Any) -> bytes:
        self.entered.set()
        time.sleep(float(request))
        return b"done"

    def stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(3):
            yield dump(seen())

    def collect(self, requests: Iterator[bytes], context: Any) -> bytes:
        return dump([seen() for _ in requests])

    def echo(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for _ in requests:
            yield dump(seen())

    def handler(self) -> grpc.GenericRpcHandler:
        return methods(self.context, self.slow, self.stream, self.collect, self.echo)


class AioProbe:
    def __init__(self) -> None:
        self.entered = threading.Event()

    async def context(self, request: bytes, context: Any) -> bytes:
        return dump(seen())

    async def slow(self, request: bytes, context: Any) -> bytes:
        self.entered.set()
        await asyncio.sleep(float(request))
        return b"done"

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield dump(seen())

    async def collect(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        return dump([seen() async for _ in requests])

    async def echo(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield dump(seen())

    def handler(self) -> grpc.GenericRpcHandler:
        # grpc.aio also runs sync handlers (in a thread pool): SyncStream is one.
        sync_stream = SyncProbe().stream
        return methods(self.context, self.slow, self.stream, self.collect, self.echo,
                       sync_stream=sync_stream)


def methods(context: Any, slow: Any, stream: Any, collect: Any, echo: Any,
            sync_stream: Any = None) -> grpc.GenericRpcHandler:
    table = {
        "Context": grpc.unary_unary_rpc_method_handler(context),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }
    if sync_stream is not None:
        table["SyncStream"] = grpc.unary_stream_rpc_method_handler(sync_stream)
    return grpc.method_handlers_generic_handler(SERVICE, table)


# -- one driver for both servers --------------------------------------------------------------


class Running:
    """A started server of either kind, driven from the test's thread."""

    def __init__(self, kind: str, mesh: sail.Mesh, **options: Any) -> None:
        self.kind = kind
        self.probe: SyncProbe | AioProbe
        if kind == "sync":
            self.probe = SyncProbe()
            self.server: Any = mesh.grpc_server("ratings", labels={"version": "v1"}, **options)
            self.server.add_generic_rpc_handlers((self.probe.handler(),))
        else:
            self.probe = AioProbe()

            async def make() -> Any:
                server = mesh.aio_grpc_server("ratings", labels={"version": "v1"}, **options)
                server.add_generic_rpc_handlers((self.probe.handler(),))
                return server

            self.server = self._on_loop(make()).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")

    @staticmethod
    def _on_loop(coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, background_loop())

    def start(self) -> None:
        if self.kind == "sync":
            self.server.start()
        else:
            self._on_loop(self.server.start()).result(10)

    def stop(self, grace: float | None = None) -> Any:
        """Begin stopping; the result has `.wait(timeout) -> bool` (True once stopped)."""
        if self.kind == "sync":
            return self.server.stop(grace)
        return _Waitable(self._on_loop(self.server.stop(grace)))

    def health(self, service: str = "") -> Any:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def call(self, method: str, request: bytes = b"", **kwargs: Any) -> Any:
        return json.loads(self.channel.unary_unary(f"/{SERVICE}/{method}")(request, **kwargs))

    def close(self) -> None:
        self.stop(None).wait(15)
        self.channel.close()


class _Waitable:
    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self._future.result(timeout)
        except TimeoutError:
            return False
        return True


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[sail.Mesh]:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(testing.service("x", {"x": [("127.0.0.1", 1)]})))
    registrar = sail.InProcessRegistrar()
    with sail.Mesh.local(path, poll_interval=0, registrar=registrar) as mesh:
        yield mesh


@pytest.fixture(params=["sync", "aio"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def workloads(mesh: sail.Mesh) -> dict[str, tuple[sail.Workload, HealthStatus]]:
    assert isinstance(mesh.registrar, sail.InProcessRegistrar)
    return dict(mesh.registrar.workloads)


# -- the tests --------------------------------------------------------------------------------


def test_start_registers_the_bound_port_and_serves_health(kind: str, mesh: sail.Mesh) -> None:
    running = Running(kind, mesh)
    try:
        assert running.server.port > 0  # port=0: grpc picked one, and it is the one registered
        assert workloads(mesh) == {}
        running.start()
        key = f"ratings/127.0.0.1:{running.server.port}"
        workload, health = workloads(mesh)[key]
        assert health is HealthStatus.HEALTHY
        assert workload.port == running.server.port
        assert workload.labels == {"version": "v1"}
        assert running.server.workload == workload
        assert running.health() == SERVING
        assert running.health(SERVICE) == SERVING  # learnt from the generic handler
        with pytest.raises(grpc.RpcError) as info:
            running.health("no.such.Service")
        assert info.value.code() is grpc.StatusCode.NOT_FOUND

        stopped = running.stop(None)
        again = running.stop(None)  # a second stop is harmless
        assert stopped.wait(15) and again.wait(15)
        assert workloads(mesh) == {}
        with pytest.raises(grpc.RpcError):
            running.health()
    finally:
        running.close()


def test_stop_drains_in_flight_calls_then_deregisters(kind: str, mesh: sail.Mesh) -> None:
    history: list[HealthStatus | None] = []
    registrar = mesh.registrar
    assert isinstance(registrar, sail.InProcessRegistrar)
    running = Running(kind, mesh, drain=8.0, quiet=0.3)
    try:
        running.start()
        key = f"ratings/127.0.0.1:{running.server.port}"
        registrar.subscribe(lambda w: history.append(w[key][1] if key in w else None))
        slow = running.channel.unary_unary(f"/{SERVICE}/Slow").future(b"1.5", timeout=10)
        assert running.probe.entered.wait(5)
        started = time.monotonic()
        # grace=None: grpc itself would cancel the call at once; the drain must wait for it.
        stopped = running.stop(None)

        wait_until(lambda: workloads(mesh).get(key, (None, None))[1] is HealthStatus.DRAINING)
        assert running.health() == NOT_SERVING
        assert running.health(SERVICE) == NOT_SERVING
        # Still serving while draining: calls that arrive now are answered.
        assert running.call("Context")["ctx"]["path"] == f"/{SERVICE}/Context"
        assert not stopped.wait(0)

        assert slow.result(10) == b"done"  # the call in flight finished without an error
        assert stopped.wait(10)
        took = time.monotonic() - started
        assert workloads(mesh) == {}
        assert history[-2:] == [HealthStatus.DRAINING, None]  # drained, then removed
        # Ended by quiet traffic after the slow call (~1.5 s + 0.3 s), not by the 8 s cap.
        assert 1.2 < took < 6.0
    finally:
        running.close()


def test_handler_sees_request_context_and_inherited_deadline(
    kind: str, mesh: sail.Mesh
) -> None:
    running = Running(kind, mesh)
    try:
        running.start()
        assert sail.current_request() is None
        got = running.call(
            "Context",
            timeout=5,
            metadata=(("end-user", "jason"), ("trace-bin", b"\x00\x01")),
        )
        ctx = got["ctx"]
        assert ctx["service"] == "ratings"
        assert ctx["port"] == running.server.port
        assert ctx["method"] == "POST"
        assert ctx["path"] == f"/{SERVICE}/Context"
        assert ctx["headers"]["end-user"] == "jason"
        assert "trace-bin" not in ctx["headers"]
        assert ctx["deadline_is_inherited"]
        assert 4.0 < got["left"] <= 5.1  # the client's 5 s, less the trip here

        without = running.call("Context")
        assert without["left"] is None
        assert without["ctx"]["path"] == f"/{SERVICE}/Context"
    finally:
        running.close()


def test_streaming_handlers_see_the_context(kind: str, mesh: sail.Mesh) -> None:
    running = Running(kind, mesh)
    channel = running.channel
    try:
        running.start()
        metadata = (("end-user", "jason"),)

        def check(item: dict[str, Any], method: str) -> None:
            assert item["ctx"]["path"] == f"/{SERVICE}/{method}", item
            assert item["ctx"]["headers"]["end-user"] == "jason"
            assert 4.0 < item["left"] <= 5.1

        stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=5, metadata=metadata)
        items = [json.loads(m) for m in stream]
        assert len(items) == 3
        for item in items:
            check(item, "Stream")

        collected = channel.stream_unary(f"/{SERVICE}/Collect")(
            iter([b"a", b"b"]), timeout=5, metadata=metadata
        )
        items = json.loads(collected)
        assert len(items) == 2
        for item in items:
            check(item, "Collect")

        echoed = channel.stream_stream(f"/{SERVICE}/Echo")(
            iter([b"a", b"b", b"c"]), timeout=5, metadata=metadata
        )
        items = [json.loads(m) for m in echoed]
        assert len(items) == 3
        for item in items:
            check(item, "Echo")

        if kind == "aio":  # a sync generator on grpc.aio: stepped on a pool thread
            stream = channel.unary_stream(f"/{SERVICE}/SyncStream")(
                b"", timeout=5, metadata=metadata
            )
            items = [json.loads(m) for m in stream]
            assert len(items) == 3
            for item in items:
                check(item, "SyncStream")
        assert running.server.inflight == 0
    finally:
        running.close()
