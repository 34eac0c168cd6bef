"""The two shells that drive the flows - `MeshChannel` (threads) and `AioMeshChannel` (the
event loop) - over fake inner calls: each endpoint's subchannel holds a stub in place of
grpcio's multicallable, so no grpcio channel is opened and no server runs. What is checked
is the shells' side: they perform what the flow says, cancel where the caller does, and
hand failures over through their one error boundary."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

import sail
from sail.errors import UpstreamOverflow
from sail.grpc import MeshRpcError
from sail.grpc._core import ChannelCore, Subchannel
from sail.grpc.aio import AioMeshChannel, AioMeshRpcError
from tests.unit.grpc.grpc_helpers import (
    ENDPOINTS,
    FAULT_TYPE,
    METHOD,
    RETRY,
    SERVICE,
    Observer,
    RpcFailure,
    assert_clean,
    unavailable,
)

MakeMesh = Callable[..., sail.Mesh]
SLOW_BACK_OFF = {**RETRY, "retry_back_off": {"base_interval": "5s", "max_interval": "5s"}}
FAST_BACK_OFF = {**RETRY, "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.001s"}}


class Closable:
    """A grpcio channel that only closes (sync or aio)."""

    def __init__(self, aio: bool) -> None:
        self.aio = aio

    def close(self, grace: float | None = None) -> Any:
        return asyncio.sleep(0) if self.aio else None


def install(channel: ChannelCore, multicallable: object, stub: object) -> None:
    """`stub` as the inner multicallable of `multicallable` on every endpoint."""
    aio = isinstance(channel, AioMeshChannel)
    for address, port in ENDPOINTS:
        key = (f"{address}:{port}", None, None)
        sub = channel._subchannels.setdefault(key, Subchannel(Closable(aio)))
        sub.methods[multicallable] = stub


def aio_unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "the server says no")


# -- sync ------------------------------------------------------------------------------------


class Script:
    """A sync unary stub: fails the first `failures` attempts, then answers `b"ok"`."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float | None] = []

    def __call__(self, request: Any, timeout: float | None, *rest: Any) -> Any:
        self.calls.append(timeout)
        if len(self.calls) <= self.failures:
            raise unavailable()
        return b"ok"

    def with_call(self, request: Any, timeout: float | None, *rest: Any) -> Any:
        return self(request, timeout), "the call"


def test_sync_blocking_calls_retry_and_tell_their_attempts(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})
    observer = Observer()
    mesh.observe(observer)
    with mesh.grpc_channel(SERVICE) as channel:
        hello = channel.unary_unary(METHOD)
        install(channel, hello, Script(failures=2))
        assert hello(b"x", timeout=5) == b"ok"
        install(channel, hello, Script(failures=1))
        response, call = hello.with_call(b"x")
        assert response == b"ok"
        assert call.sail.retried and len(call.sail.attempts) == 2
        install(channel, hello, Script(failures=5))
        with pytest.raises(grpc.RpcError) as raised:
            hello(b"x")
        assert isinstance(raised.value, RpcFailure)  # the attempt's own error
        assert not isinstance(raised.value, sail.SailError)
        assert "gave up after 3 attempt(s)" in raised.value.__notes__[0]
    assert not observer.open
    assert_clean(mesh)


def test_sync_sail_errors_reach_the_caller_as_mesh_rpc_errors(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(cluster={"circuit_breakers": {"thresholds": [{"max_requests": 0}]}})
    with mesh.grpc_channel(SERVICE) as channel:
        hello = channel.unary_unary(METHOD)
        install(channel, hello, Script(failures=0))
        with pytest.raises(MeshRpcError) as raised:
            hello(b"x")
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "max_requests" in raised.value.details()
        assert isinstance(raised.value.__cause__, UpstreamOverflow)
        future = hello.future(b"x")
        assert isinstance(future.exception(), MeshRpcError)
        assert future.code() is grpc.StatusCode.UNAVAILABLE
        stream = channel.unary_stream(METHOD)(b"x")
        with pytest.raises(MeshRpcError):
            next(stream)
        with pytest.raises(MeshRpcError) as bad:
            channel.unary_unary("nope")(b"x")
        assert bad.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert_clean(mesh)


class DoneFuture:
    """A grpcio future that is already over: answered `value`, or failed with `error`."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.error

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


def test_sync_future_retries_from_callbacks_and_timers(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})

    class Futures:
        def __init__(self) -> None:
            self.n = 0

        def future(self, *args: Any) -> DoneFuture:
            self.n += 1
            return DoneFuture(error=unavailable()) if self.n <= 2 else DoneFuture(b"ok")

    with mesh.grpc_channel(SERVICE) as channel:
        hello = channel.unary_unary(METHOD)
        install(channel, hello, Futures())
        future = hello.future(b"x")
        assert future.result(timeout=5) == b"ok"
        assert len(future.sail.attempts) == 3
    assert_clean(mesh)


def test_sync_future_cancelled_during_its_back_off(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": SLOW_BACK_OFF})
    observer = Observer()
    mesh.observe(observer)

    class Failing:
        def future(self, *args: Any) -> DoneFuture:
            return DoneFuture(error=unavailable())

    with mesh.grpc_channel(SERVICE) as channel:
        hello = channel.unary_unary(METHOD)
        install(channel, hello, Failing())
        future = hello.future(b"x")
        limits = mesh._dataplane.state.clusters["svc"].limits
        assert limits.stats.rq_total == 1 and limits.active == 0  # backing off
        assert future.cancel() and future.cancelled()
        assert future.code() is grpc.StatusCode.CANCELLED
    assert observer.reasons == ["200 grpc-status 14"]
    assert_clean(mesh)


class FakeStream:
    """A grpcio response stream: `messages`, then the end or `error`; done callbacks are
    called once it is over."""

    def __init__(self, messages: list[bytes], error: BaseException | None = None) -> None:
        self._messages = iter(messages)
        self._error = error
        self._callbacks: list[Callable[[Any], None]] = []
        self.over = False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._callbacks.append(fn)

    def _end(self) -> None:
        if not self.over:
            self.over = True
            for fn in self._callbacks:
                fn(self)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        for message in self._messages:
            return message
        self._end()
        if self._error is not None:
            raise self._error
        raise StopIteration

    def cancel(self) -> bool:
        self._end()
        return True


def test_sync_stream_retried_before_its_first_message_only(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})
    observer = Observer()
    mesh.observe(observer)
    streams = [FakeStream([], unavailable()), FakeStream([b"1", b"2"], unavailable("broke"))]

    def open_stream(*args: Any) -> FakeStream:
        return streams.pop(0)

    with mesh.grpc_channel(SERVICE) as channel:
        multicallable = channel.unary_stream(METHOD)
        install(channel, multicallable, open_stream)
        received = []
        with pytest.raises(grpc.RpcError) as raised:
            for message in multicallable(b"x"):
                received.append(message)
        assert received == [b"1", b"2"]
        assert raised.value.details() == "broke"  # committed: not retried
    assert observer.reasons == ["200 grpc-status 14", "200"]
    assert_clean(mesh)


def test_sync_stream_cancelled_during_its_back_off(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": SLOW_BACK_OFF})

    def open_stream(*args: Any) -> FakeStream:
        return FakeStream([], unavailable())

    with mesh.grpc_channel(SERVICE) as channel:
        multicallable = channel.stream_stream(METHOD)
        install(channel, multicallable, open_stream)
        stream = multicallable(iter([b"a", b"b"]))
        outcome: list[BaseException] = []

        def consume() -> None:
            try:
                next(stream)
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=consume)
        start = time.monotonic()
        reader.start()
        limits = mesh._dataplane.state.clusters["svc"].limits
        while limits.stats.rq_total == 0 or limits.active:  # until it backs off
            time.sleep(0.002)
        stream.cancel()
        reader.join(5)
        assert time.monotonic() - start < 2, "the back-off was cut short"
        (error,) = outcome
        assert isinstance(error, MeshRpcError) and error.code() is grpc.StatusCode.CANCELLED
    assert_clean(mesh)


# -- aio -------------------------------------------------------------------------------------


class AioUnary:
    """A grpc.aio unary call: answers `value` or fails with `error` after `delay` (or only
    when told: `delay=None`)."""

    def __init__(self, value: Any = None, error: BaseException | None = None,
                 delay: float | None = 0.0) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self._settle, value, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if not self.future.done():
            if error is None:
                self.future.set_result(value)
            else:
                self.future.set_exception(error)

    def __await__(self) -> Any:
        return self.future.__await__()

    def cancel(self) -> bool:
        return self.future.cancel()

    async def code(self) -> grpc.StatusCode:
        await asyncio.wait([self.future])
        error = self.future.exception()
        return grpc.StatusCode.OK if error is None else error.code()


class AioScript:
    def __init__(self, failures: int, delay: float | None = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.tasks: list[asyncio.Task[Any] | None] = []

    def __call__(self, request: Any, **options: Any) -> AioUnary:
        self.tasks.append(asyncio.current_task())
        if len(self.tasks) <= self.failures:
            return AioUnary(error=aio_unavailable(), delay=self.delay)
        return AioUnary(b"ok", delay=self.delay)


def test_aio_awaited_call_runs_inline_and_retries(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            hello = channel.unary_unary(METHOD)
            script = AioScript(failures=2)
            install(channel, hello, script)
            call = hello(b"x")
            assert await call == b"ok"
            assert script.tasks == [asyncio.current_task()] * 3, "inline: the awaiter's task"
            assert call.sail is not None and len(call.sail.attempts) == 3
            assert await call.code() is grpc.StatusCode.OK
            install(channel, hello, AioScript(failures=5))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await hello(b"x")
            assert not isinstance(raised.value, AioMeshRpcError)  # the attempt's own

    asyncio.run(main())
    assert_clean(mesh)


def test_aio_cancelled_in_flight_abandons_the_attempt(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    observer = Observer()
    mesh.observe(observer)

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            hello = channel.unary_unary(METHOD)
            install(channel, hello, AioScript(failures=0, delay=None))  # never answers
            call = hello(b"x")
            asyncio.get_running_loop().call_later(0.02, call.cancel)
            with pytest.raises(asyncio.CancelledError):
                await call
            assert call.cancelled() and await call.code() is grpc.StatusCode.CANCELLED
            # as a task (not awaited at once), cancelled from outside
            task_call = hello(b"x")
            await asyncio.sleep(0.01)
            assert task_call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task_call

    asyncio.run(main())
    assert observer.reasons == ["cancelled", "cancelled"] and not observer.open
    assert_clean(mesh)


def test_aio_cancelled_during_a_back_off_gives_the_retry_back(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": SLOW_BACK_OFF})
    observer = Observer()
    mesh.observe(observer)

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            hello = channel.unary_unary(METHOD)
            install(channel, hello, AioScript(failures=5))
            call = hello(b"x")
            limits = mesh._dataplane.state.clusters["svc"].limits

            async def cancel_in_back_off() -> None:
                while limits.stats.rq_total == 0 or limits.active:  # until it backs off
                    await asyncio.sleep(0.002)
                call.cancel()

            canceller = asyncio.create_task(cancel_in_back_off())
            start = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert time.monotonic() - start < 2
            await canceller

    asyncio.run(main())
    assert observer.reasons == ["200 grpc-status 14"] and not observer.open
    assert_clean(mesh)


def test_aio_sail_errors_are_aio_mesh_rpc_errors(make_mesh: MakeMesh) -> None:
    fault = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": FAULT_TYPE, "abort": {"grpc_status": 8, "percentage": {"numerator": 100}},
    }}
    mesh = make_mesh(http_filters=[fault])

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            call = channel.unary_unary(METHOD)(b"x")
            with pytest.raises(AioMeshRpcError) as raised:
                await call
            assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(AioMeshRpcError):
                await channel.unary_stream(METHOD)(b"x").read()

    asyncio.run(main())


class AioStream:
    """A grpc.aio streaming call: `messages`, then EOF or `error`; remembers writes."""

    def __init__(self, messages: list[bytes], error: BaseException | None = None) -> None:
        self._messages = list(messages)
        self._error = error
        self._callbacks: list[Callable[[Any], None]] = []
        self.written: list[bytes] = []
        self.closed_writes = False
        self.over = False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._callbacks.append(fn)

    def _end(self) -> None:
        if not self.over:
            self.over = True
            for fn in self._callbacks:
                fn(self)

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if self._messages:
            return self._messages.pop(0)
        self._end()
        if self._error is not None:
            raise self._error
        return grpc.aio.EOF

    async def write(self, message: bytes) -> None:
        self.written.append(message)

    async def done_writing(self) -> None:
        self.closed_writes = True

    def cancel(self) -> bool:
        self._end()
        return True

    def done(self) -> bool:
        return self.over


def test_aio_stream_replays_its_writes_and_commits_at_the_first_message(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})
    observer = Observer()
    mesh.observe(observer)
    calls = [AioStream([], aio_unavailable()), AioStream([b"r1"], aio_unavailable())]
    opened: list[AioStream] = []

    def open_stream(first: Any, **options: Any) -> AioStream:
        assert first is None  # write() calls
        opened.append(calls.pop(0))
        return opened[-1]

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            multicallable = channel.stream_stream(METHOD)
            install(channel, multicallable, open_stream)
            call = multicallable()
            await call.write(b"w1")
            await call.write(b"w2")
            await call.done_writing()
            assert await call.read() == b"r1"  # the first attempt failed: retried
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()  # committed: this failure is the caller's

    asyncio.run(main())
    first, second = opened
    assert first.written == [b"w1", b"w2"] and first.closed_writes
    assert second.written == [b"w1", b"w2"] and second.closed_writes  # replayed
    assert observer.reasons == ["200 grpc-status 14", "200"]
    assert_clean(mesh)


def test_aio_stream_from_an_async_iterator_is_replayed(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(route={"retry_policy": FAST_BACK_OFF})
    seen: list[list[bytes]] = []
    calls = [AioStream([], aio_unavailable()), AioStream([b"r"])]

    def open_stream(requests: Any, **options: Any) -> AioStream:
        stream = calls.pop(0)

        async def drain() -> None:  # grpc.aio reads the requests on its own
            seen.append([m async for m in requests])

        asyncio.get_running_loop().create_task(drain())
        return stream

    async def parts() -> Any:
        for part in (b"1", b"2"):
            yield part

    async def main() -> None:
        async with mesh.aio_grpc_channel(SERVICE) as channel:
            multicallable = channel.stream_stream(METHOD)
            install(channel, multicallable, open_stream)
            assert [m async for m in multicallable(parts())] == [b"r"]
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert seen == [[b"1", b"2"], [b"1", b"2"]]
    assert_clean(mesh)
