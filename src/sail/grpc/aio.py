"""`AioMeshChannel`: the `grpc.aio.Channel` twin of `sail.grpc.channel.MeshChannel`.

The same routing, balancing, deadlines, retries, circuit breakers and outlier detection,
for asyncio code: `mesh.aio_grpc_channel("ratings:9090")`. Calls are awaitables (unary
responses) and async iterators (streamed ones), as grpc.aio's are, and a failed call raises
`grpc.aio.AioRpcError` (sail's own failures: `AioMeshRpcError`, which is both that and a
`sail.SailError`). Waiting - for discovery, a back-off, an injected delay - never blocks
the event loop.

Streamed requests are kept for retries as in the sync channel: from a request iterator
(sync or async), or from `write()` calls, up to `REPLAY_LIMIT` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import grpc
import grpc.aio

from sail.grpc._core import (
    REPLAY_LIMIT,
    SUBCHANNEL_GRACE,
    Attempts,
    ChannelCore,
    MeshRpcError,
    Metadata,
    check_method,
    message_size,
    prepare,
)

if TYPE_CHECKING:
    from sail.resilience.call import CallInfo
    from sail.seam import MeshSeam

__all__ = ["AioMeshChannel", "AioMeshRpcError"]

_EOF = grpc.aio.EOF


class AioMeshRpcError(MeshRpcError, grpc.aio.AioRpcError):  # type: ignore[misc]
    """`MeshRpcError` for asyncio code: also a `grpc.aio.AioRpcError`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        MeshRpcError.__init__(self, code, details)
        grpc.aio.AioRpcError.__init__(self, code, None, None, details, details)

    @classmethod
    def from_error(cls, error: MeshRpcError) -> AioMeshRpcError:
        converted = cls(error.code(), error.details())
        converted.__cause__ = error.__cause__
        return converted

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"


class AioMeshChannel(ChannelCore, grpc.aio.Channel):  # type: ignore[misc]
    """A `grpc.aio.Channel` over the endpoints of mesh service `target`. Made by
    `Mesh.aio_grpc_channel`; use it inside the event loop it was first used in, and close
    it (`await channel.close()`, or `async with`)."""

    def __init__(
        self,
        mesh: MeshSeam,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
    ) -> None:
        super().__init__(
            mesh, target, credentials=credentials, options=options, compression=compression
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- grpc.aio.Channel ------------------------------------------------------------------

    def unary_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, "unary_unary", method, request_serializer,
                           response_deserializer, bool(_registered_method))

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable:
        return _UnaryStream(self, "unary_stream", method, request_serializer,
                            response_deserializer, bool(_registered_method))

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable:
        return _StreamUnary(self, "stream_unary", method, request_serializer,
                            response_deserializer, bool(_registered_method))

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable:
        return _StreamStream(self, "stream_stream", method, request_serializer,
                             response_deserializer, bool(_registered_method))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The state of one endpoint's subchannel (`IDLE` before any is open)."""
        for sub in list(self._subchannels.values()):
            return sub.channel.get_state(try_to_connect)
        if self._outside is not None:
            return self._outside.get_state(try_to_connect)
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        channel = await self._representative()
        if channel is not None:
            await channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the mesh knows the service and one endpoint's subchannel is ready."""
        channel = await self._representative()
        while channel is None:  # known, but no endpoint yet
            await asyncio.sleep(0.05)
            channel = await self._representative()
        await channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close every subchannel, letting calls on them run for up to `grace` seconds."""
        self._closed = True
        channels = [sub.channel for sub in self._subchannels.values()]
        self._subchannels.clear()
        if self._outside is not None:
            channels.append(self._outside)
        await asyncio.gather(*(c.close(grace) for c in channels), *self._closing,
                             return_exceptions=True)

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the mesh's side -------------------------------------------------------------------

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._credentials is not None:
            return grpc.aio.secure_channel(
                target, self._credentials, self._options, self._compression
            )
        return grpc.aio.insecure_channel(target, self._options, self._compression)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        """Close `channel` on its loop (this runs on the mesh's config thread), letting its
        calls finish for up to `SUBCHANNEL_GRACE`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def close() -> None:
            task = loop.create_task(channel.close(SUBCHANNEL_GRACE))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            loop.call_soon_threadsafe(close)

    async def _is_mesh(self, timeout: float | None) -> bool:
        verdict = self._verdict()
        if isinstance(verdict, bool):
            return verdict
        limit = self._mesh.discovery_timeout
        if timeout is not None:
            limit = min(timeout, limit)
        await anyio.to_thread.run_sync(verdict.wait, limit)
        return self._settled()

    async def _representative(self) -> grpc.aio.Channel | None:
        try:
            if not await self._is_mesh(None):
                return self._plain()
        except MeshRpcError as exc:
            raise AioMeshRpcError.from_error(exc) from None
        authority = self._some_endpoint()
        return None if authority is None else self._subchannel(authority).channel

    def _route(
        self, method: str, error: MeshRpcError | None, metadata: Metadata | None,
        timeout: float | None,
    ) -> Attempts | threading.Event | None:
        """Route a call without waiting: its attempts (an injected fault, if any, still to
        apply: `attempts.fault`), `None` for a target outside the mesh, or an event to wait
        on for the control plane's answer (then `_attempts`). Raises `AioMeshRpcError`."""
        try:
            self._mesh.check_fork()
            state = self._dataplane.state
            if self.service not in state.services:
                verdict = self._verdict()
                if not isinstance(verdict, bool):
                    return verdict
                if not verdict:
                    return None
                state = self._dataplane.state
            if error is not None:
                raise error
            return prepare(self._dataplane, state, self.service, method, metadata, timeout)
        except MeshRpcError as exc:
            raise _aio(exc) from None

    async def _attempts(
        self, method: str, error: MeshRpcError | None, metadata: Metadata | None,
        timeout: float | None,
    ) -> Attempts | None:
        """Route a call: its attempts, or `None` for a target outside the mesh. Raises
        `AioMeshRpcError`."""
        try:
            self._mesh.check_fork()
            state = self._dataplane.state
            if self.service not in state.services:
                if not await self._is_mesh(timeout):
                    return None
                state = self._dataplane.state
            if error is not None:
                raise error
            attempts = prepare(self._dataplane, state, self.service, method, metadata, timeout)
            if attempts.fault is not None:
                await _apply_fault(attempts, asyncio.sleep)
        except MeshRpcError as exc:
            if isinstance(exc, AioMeshRpcError):
                raise
            raise AioMeshRpcError.from_error(exc) from None
        return attempts


def _aio(error: MeshRpcError) -> AioMeshRpcError:
    return error if isinstance(error, AioMeshRpcError) else AioMeshRpcError.from_error(error)


class _MultiCallable:
    __slots__ = (
        "__weakref__",
        "_channel",
        "_deserializer",
        "_error",
        "_kind",
        "_method",
        "_registered",
        "_serializer",
    )

    def __init__(
        self, channel: AioMeshChannel, kind: str, method: str, serializer: Any,
        deserializer: Any, registered: bool,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._error = check_method(channel.service, method)

    def _on(self, channel: grpc.aio.Channel) -> Any:
        return getattr(channel, self._kind)(
            self._method, self._serializer, self._deserializer,
            _registered_method=self._registered,
        )

    def _inner(self, attempts: Attempts) -> Any:
        """The inner multicallable on the subchannel of the attempt's endpoint."""
        return self._channel._method(attempts.endpoint.authority, self, self._on)

    def _outside(self) -> Any:
        return self._on(self._channel._plain())


class _Options:
    """A call's options, as given to the multicallable."""

    __slots__ = ("compression", "credentials", "metadata", "timeout", "wait_for_ready")

    def __init__(
        self, timeout: float | None, metadata: Metadata | None,
        credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression

    def send(self, fn: Any, first: Any, timeout: float | None, metadata: Metadata | None) -> Any:
        return fn(first, timeout=timeout, metadata=metadata, credentials=self.credentials,
                  wait_for_ready=self.wait_for_ready, compression=self.compression)


class _Call:
    """What the unary and streaming call objects share: the task or attempts that run the
    call, and the `grpc.aio.Call` methods answered from the latest attempt."""

    _inner: Any
    _attempts: Attempts | None
    _error: BaseException | None
    _waiting: Any  # what the call waits on besides `_inner` (a back-off...), for `cancel()`

    @property
    def sail(self) -> CallInfo | None:
        """The call's attempts so far (`None` for a target outside the mesh)."""
        return None if self._attempts is None else self._attempts.info

    async def _settle(self) -> None:
        raise NotImplementedError

    def _current(self) -> Any:
        return self._inner if self._inner is not None else self._error

    async def initial_metadata(self) -> Any:
        await self._settle()
        current = self._current()
        return () if current is None else await _maybe(current.initial_metadata())

    async def trailing_metadata(self) -> Any:
        await self._settle()
        current = self._current()
        return () if current is None else await _maybe(current.trailing_metadata())

    async def code(self) -> grpc.StatusCode:
        await self._settle()
        if isinstance(self._error, MeshRpcError):
            return self._error.code()
        if isinstance(self._error, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return await _maybe(self._inner.code())

    async def details(self) -> str:
        await self._settle()
        if isinstance(self._error, MeshRpcError):
            return self._error.details()
        if isinstance(self._error, asyncio.CancelledError):
            return "Locally cancelled by application!"
        return await _maybe(self._inner.details())  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        await self._settle()

    def time_remaining(self) -> float | None:
        return None if self._inner is None else self._inner.time_remaining()

    async def _pause(self, delay: float) -> None:
        """`asyncio.sleep(delay)` that `cancel()` cuts short by cancelling `_waiting`."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting = loop.create_future()
        timer = loop.call_later(delay, _wake, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._waiting = None


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or asyncio.isfuture(value) else value


_PENDING, _RUNNING, _DONE = "pending", "running", "done"


class _UnaryCall(_Call, grpc.aio.UnaryUnaryCall, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    """A call with one response. It starts at once, as grpc.aio's calls do, but without a
    task of its own when it can do without one: awaited right away (`await
    stub.Method(request)`, the common case), it runs in the awaiting task, routed then and
    there and awaiting its attempts' grpc.aio calls inline. Otherwise (not awaited before
    the event loop's next turn) it runs as a task, as before. A second awaiter, `done()`
    callbacks and the `grpc.aio.Call` methods wait on a future made only when asked for.

    `cancel()` while the call runs in its awaiter's task interrupts what the call waits
    on (the attempt's grpc.aio call, a back-off, a delay, discovery), never the awaiter's
    task itself: the awaiter gets `CancelledError` from the call, as from a cancelled task.
    """

    # What most calls never change, left to the class (fewer stores per call).
    _inner: Any = None
    _attempts: Attempts | None = None
    _error: BaseException | None = None
    _task: asyncio.Task[Any] | None = None
    _future: asyncio.Future[Any] | None = None
    _waiting: Any = None  # what the call waits on besides `_inner`, for `cancel()`
    _cancelling = False
    _response: Any = None
    _exception: BaseException | None = None

    def __init__(
        self, mc: _MultiCallable, first: Any, replay: bool, timeout: float | None,
        metadata: Metadata | None, credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None, compression: grpc.Compression | None,
    ) -> None:
        self._mc = mc
        self._first = first
        self._replay = replay
        self._timeout = timeout
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = wait_for_ready
        self._compression = compression
        self._state = _PENDING
        self._loop = loop = asyncio.get_running_loop()
        loop.call_soon(self._kick)

    def _kick(self) -> None:
        """Not awaited before the loop's next turn: run as a task from here on."""
        if self._state is _PENDING:
            self._state = _RUNNING
            self._task = self._loop.create_task(self._run())

    def __await__(self) -> Any:
        if self._state is _PENDING:
            self._state = _RUNNING
            return self._run().__await__()
        if self._state is _RUNNING and self._task is None:
            return self._join().__await__()
        return self._outcome().__await__()

    async def _join(self) -> Any:
        """Await a call that runs in another awaiter's task: as awaiting a task, this
        awaiter's cancellation cancels the call."""
        try:
            return await asyncio.shield(self._outcome())
        except asyncio.CancelledError:
            if self._state is not _DONE:
                self.cancel()
            raise

    def _outcome(self) -> asyncio.Future[Any]:
        """The call's outcome as a future: its task, or one made on demand."""
        if self._task is not None:
            return self._task
        future = self._future
        if future is None:
            future = self._future = self._loop.create_future()
            if self._state is _DONE:
                self._resolve(future)
        return future

    def _resolve(self, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        error = self._exception
        if error is None:
            future.set_result(self._response)
        elif isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
            future.exception()  # raised to the awaiter already: nothing to log

    def _end(self, response: Any, error: BaseException | None) -> None:
        self._state = _DONE
        self._response = response
        self._exception = error
        if self._future is not None:
            self._resolve(self._future)

    async def _settle(self) -> None:
        if self._state is _PENDING:
            self._kick()
        if self._state is not _DONE:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._outcome())

    def cancel(self) -> bool:
        if self._task is not None:
            return self._task.cancel()
        if self._state is _DONE:
            return False
        if self._state is _PENDING:
            self._error = error = asyncio.CancelledError()
            self._end(None, error)
            return True
        self._cancelling = True  # running in its awaiter's task: interrupt what it awaits
        waiting = self._waiting if self._waiting is not None else self._inner
        if waiting is not None:
            waiting.cancel()
        return True

    def cancelled(self) -> bool:
        if self._task is not None:
            return self._task.cancelled()
        return self._state is _DONE and isinstance(self._exception, asyncio.CancelledError)

    def done(self) -> bool:
        if self._task is not None:
            return self._task.done()
        return self._state is _DONE

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._outcome().add_done_callback(lambda _: callback(self))

    async def write(self, request: Any) -> None:
        raise asyncio.InvalidStateError("sail's stream-unary calls take a request iterator")

    async def done_writing(self) -> None:
        raise asyncio.InvalidStateError("sail's stream-unary calls take a request iterator")

    async def _sleep(self, delay: float) -> None:
        """`asyncio.sleep`, which `cancel()` can interrupt."""
        await self._pause(delay)
        if self._cancelling:
            raise asyncio.CancelledError

    async def _run(self) -> Any:
        """Run the call to its end (retrying as its route says)."""
        mc = self._mc
        try:
            channel = mc._channel
            routed = channel._route(mc._method, mc._error, self._metadata, self._timeout)
            if routed is not None and not isinstance(routed, Attempts):
                # The control plane has yet to answer: wait where `cancel()` can reach.
                waiting = self._waiting = asyncio.ensure_future(channel._attempts(
                    mc._method, mc._error, self._metadata, self._timeout
                ))
                try:
                    routed = await waiting
                finally:
                    self._waiting = None
                if self._cancelling:
                    if routed is not None:
                        routed.stop()
                    raise asyncio.CancelledError
            elif routed is not None and routed.fault is not None:
                await self._fault(routed)
            if routed is None:  # outside the mesh
                inner = self._inner = mc._outside()(
                    self._first, timeout=self._timeout, metadata=self._metadata,
                    credentials=self._credentials, wait_for_ready=self._wait_for_ready,
                    compression=self._compression,
                )
                response = await inner
            else:
                attempts = self._attempts = routed
                md = attempts.metadata
                first = self._first
                requests = _Replay(first, attempts) if self._replay else None
                while True:
                    try:
                        timeout = attempts.begin()
                    except MeshRpcError as exc:
                        raise _aio(exc) from None
                    host = attempts.host
                    try:
                        inner = self._inner = mc._inner(attempts)(
                            first if requests is None else requests.view(),
                            timeout=timeout, metadata=md, credentials=self._credentials,
                            wait_for_ready=self._wait_for_ready, compression=self._compression,
                        )
                        response = await inner
                        if self._cancelling:  # cancelled once answered, before it was read
                            raise asyncio.CancelledError
                    except grpc.aio.AioRpcError as exc:
                        attempts.release(host)
                        wait = attempts.failed(exc.code(), exc.details())
                        if wait is None:
                            final = attempts.give_up(exc)
                            if isinstance(final, MeshRpcError):
                                final = _aio(final)
                            raise final from None
                        try:
                            if wait > 0:
                                await self._sleep(wait)
                            if self._cancelling:
                                raise asyncio.CancelledError
                            attempts.advance()
                        except MeshRpcError as exc2:
                            raise _aio(exc2) from None
                        except BaseException:
                            attempts.stop()
                            raise
                        continue
                    except BaseException:
                        attempts.release(host)
                        attempts.stop()
                        if self._inner is not None:
                            self._inner.cancel()
                        raise
                    attempts.ok(host)
                    break
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            self._end(None, exc)
            raise
        self._end(response, None)
        return response

    async def _fault(self, attempts: Attempts) -> None:
        """Apply the call's injected fault: its delay, then its abort (raised)."""
        await _apply_fault(attempts, self._sleep)


async def _apply_fault(attempts: Attempts, sleep: Callable[[float], Awaitable[Any]]) -> None:
    """An injected fault: sleep its delay (the fault ends and the call stops if that is
    interrupted), then raise its abort, if any."""
    fault = attempts.fault
    assert fault is not None
    if fault.delay:
        try:
            await sleep(fault.delay)
        except BaseException:
            fault.finish()
            attempts.stop()
            raise
    abort = attempts.fault_error()
    if abort is not None:
        raise _aio(abort)


def _wake(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _UnaryCall:
        return _UnaryCall(self, request, False, timeout, metadata, credentials, wait_for_ready,
                          compression)


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Any = None, timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> _UnaryCall:
        if request_iterator is None:
            raise ValueError("sail's stream-unary calls take a request iterator")
        return _UnaryCall(self, request_iterator, True, timeout, metadata, credentials,
                          wait_for_ready, compression)


class _StreamCall(_Call, grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    """A call whose responses stream: started on first use (`read`, iteration, `write`),
    retried until its first response message."""

    def __init__(
        self, mc: _MultiCallable, first: Any, options: _Options, streams_requests: bool
    ) -> None:
        self._mc = mc
        self._first = first
        self._options = options
        self._streams_requests = streams_requests
        self._inner = None
        self._attempts = None
        self._error = None
        self._replay: _Replay | None = None
        self._writes: _Writes | None = None
        self._started = False
        self._outside = False
        self._committed = False
        self._cancelled = False
        self._waiting = None
        self._callbacks: list[Callable[[Any], None]] = []

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        mc = self._mc
        options = self._options
        try:
            attempts = await mc._channel._attempts(
                mc._method, mc._error, options.metadata, options.timeout
            )
        except BaseException as exc:
            self._error = exc
            self._committed = True
            raise
        if attempts is None:
            self._outside = True
            self._committed = True
            self._inner = options.send(mc._outside(), self._first, options.timeout,
                                       options.metadata)
            self._watch(self._inner)
            return
        self._attempts = attempts
        if self._streams_requests:
            if self._first is None:
                self._writes = _Writes(attempts)
            else:
                self._replay = _Replay(self._first, attempts)
        await self._open()

    async def _open(self) -> None:
        attempts = self._attempts
        assert attempts is not None
        try:
            timeout = attempts.begin()
        except MeshRpcError as exc:
            self._error = error = _aio(exc)
            self._committed = True
            raise error from None
        host = attempts.host
        first = self._first
        if self._replay is not None:
            first = self._replay.view()
        elif self._writes is not None:
            first = None
        inner = self._options.send(self._mc._inner(attempts), first, timeout,
                                   attempts.metadata)
        inner.add_done_callback(lambda _: attempts.release(host))
        self._inner = inner
        self._watch(inner)
        if self._writes is not None:
            await self._writes.replay(inner)

    def _watch(self, inner: Any) -> None:
        for callback in self._callbacks:
            inner.add_done_callback(lambda _, cb=callback: cb(self))

    async def read(self) -> Any:
        await self._start()
        while True:
            if self._error is not None:
                raise self._error
            try:
                message = await self._inner.read()
            except grpc.aio.AioRpcError as exc:
                if self._committed or self._cancelled:
                    raise
                await self._retry(exc)
                continue
            if not self._committed:
                self._committed = True
                assert self._attempts is not None
                self._attempts.succeeded()
            return message

    async def _retry(self, exc: grpc.aio.AioRpcError) -> None:
        attempts = self._attempts
        assert attempts is not None
        self._committed = True  # until the next attempt is open
        wait = attempts.failed(exc.code(), exc.details())
        if wait is None:
            error = attempts.give_up(exc)
            self._error = _aio(error) if isinstance(error, MeshRpcError) else error
            raise self._error from None
        try:
            if wait > 0:
                await self._pause(wait)
            if self._cancelled:  # cancel() came during the back-off
                raise asyncio.CancelledError
        except BaseException:
            attempts.stop()  # the retry's budget slot and the call's counters go back
            self._error = asyncio.CancelledError()
            raise
        try:
            attempts.advance()
        except MeshRpcError as exc2:
            self._error = error2 = _aio(exc2)
            raise error2 from None
        await self._open()
        self._committed = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is _EOF:
                return
            yield message

    async def write(self, request: Any) -> None:
        await self._start()
        if self._writes is None:
            await self._inner.write(request)
            return
        await self._writes.write(request, lambda: self._inner)

    async def done_writing(self) -> None:
        await self._start()
        if self._writes is None:
            await self._inner.done_writing()
            return
        await self._writes.done(lambda: self._inner)

    async def _settle(self) -> None:
        with contextlib.suppress(BaseException):
            await self._start()
        if self._inner is not None:
            with contextlib.suppress(BaseException):
                await self._inner.wait_for_connection()

    def cancel(self) -> bool:
        self._cancelled = True
        if self._waiting is not None:  # a back-off: cut it short
            self._waiting.cancel()
        if self._attempts is not None and not self._committed:
            self._committed = True
            self._attempts.stop()
        if self._inner is None:
            self._error = asyncio.CancelledError()
            return True
        return self._inner.cancel()  # type: ignore[no-any-return]

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        if self._inner is None:
            return self._error is not None
        return self._inner.done()  # type: ignore[no-any-return]

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)
        if self._inner is not None:
            self._inner.add_done_callback(lambda _: callback(self))


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _StreamCall:
        options = _Options(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamCall(self, request, options, streams_requests=False)


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Any = None, timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> _StreamCall:
        options = _Options(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamCall(self, request_iterator, options, streams_requests=True)


class _Replay:
    """Request messages from an iterator (sync or async), kept for retries: each attempt
    reads them from the start through its own `view()` (see the sync `_Replay`)."""

    def __init__(self, source: Any, attempts: Attempts) -> None:
        self._async = hasattr(source, "__aiter__")
        self._source = source.__aiter__() if self._async else iter(source)
        self._attempts = attempts
        self._kept: list[Any] = []
        self._size = 0
        self._lock = asyncio.Lock()
        self._latest = 0
        self._ended = False
        self.overflowed = False

    def view(self) -> AsyncIterator[Any]:
        self._latest += 1
        return self._read(self._latest)

    async def _read(self, view: int) -> AsyncIterator[Any]:
        index = 0
        while True:
            async with self._lock:  # one attempt at a time pulls from the source
                if not self.overflowed and index < len(self._kept):
                    message = self._kept[index]
                elif self._ended or (self.overflowed and view != self._latest):
                    return
                else:
                    try:
                        if self._async:
                            message = await self._source.__anext__()
                        else:
                            message = next(self._source)
                    except (StopIteration, StopAsyncIteration):
                        self._ended = True
                        return
                    self._keep(message)
            index += 1
            yield message

    def _keep(self, message: Any) -> None:
        if self.overflowed:
            return
        self._size += message_size(message)
        if self._size > REPLAY_LIMIT:
            self.overflowed = True
            self._kept.clear()
            self._attempts.call.max_attempts = 0
        else:
            self._kept.append(message)


class _Writes:
    """Messages given to `write()`, kept for retries and written again to each new attempt
    (a lock keeps a write and an attempt's replay from interleaving)."""

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts
        self._kept: list[Any] = []
        self._size = 0
        self._finished = False
        self._lock = asyncio.Lock()

    async def replay(self, inner: Any) -> None:
        async with self._lock:
            for message in self._kept:
                await inner.write(message)
            if self._finished:
                await inner.done_writing()

    async def write(self, message: Any, inner: Callable[[], Any]) -> None:
        async with self._lock:
            self._size += message_size(message)
            if self._size > REPLAY_LIMIT:
                self._kept.clear()
                self._attempts.call.max_attempts = 0
            elif self._attempts.call.max_attempts:
                self._kept.append(message)
            await inner().write(message)

    async def done(self, inner: Callable[[], Any]) -> None:
        async with self._lock:
            self._finished = True
            await inner().done_writing()
