"""`AioMeshChannel`: the `grpc.aio.Channel` twin of `sail.grpc.channel.MeshChannel`.

The same routing, balancing, deadlines, retries, circuit breakers and outlier detection,
for asyncio code: `mesh.aio_grpc_channel("ratings:9090")`. Calls are awaitables (unary
responses) and async iterators (streamed ones), as grpc.aio's are, and a failed call raises
`grpc.aio.AioRpcError` (sail's own failures: `AioMeshRpcError`, which is both that and a
`sail.SailError`). Waiting - for discovery, a back-off, an injected delay - never blocks
the event loop.

Streamed requests are kept for retries as in the sync channel: from a request iterator
(sync or async), or from `write()` calls, up to `REPLAY_LIMIT` bytes.

This module is the aio shell of the request path: what a call does next is the flow's
(`sail.grpc._flow`), done here with `await`, the same loop as the sync shell's. A call's
failures reach its caller through one boundary, `_caller_error`: sail's errors as
`AioMeshRpcError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import grpc
import grpc.aio

from sail.errors import RequestError
from sail.grpc._core import (
    STREAM_STREAM,
    STREAM_UNARY,
    SUBCHANNEL_GRACE,
    UNARY_STREAM,
    UNARY_UNARY,
    ChannelCore,
    MultiCallable,
)
from sail.grpc._errors import MeshRpcError, mesh_error
from sail.grpc._flow import Done, Fail, Outside, Send, Sleep, StreamFlow, UnaryFlow, Wait
from sail.grpc._replay import Replay, aread, done_writing, rewrite, write

if TYPE_CHECKING:
    from sail.grpc._flow import Action
    from sail.grpc._route import Metadata
    from sail.resilience.call import CallInfo
    from sail.seam import MeshSeam

__all__ = ["AioMeshChannel", "AioMeshRpcError"]

_EOF = grpc.aio.EOF


class AioMeshRpcError(MeshRpcError, grpc.aio.AioRpcError):  # type: ignore[misc]
    """`MeshRpcError` for asyncio code: also a `grpc.aio.AioRpcError`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        MeshRpcError.__init__(self, code, details)
        grpc.aio.AioRpcError.__init__(self, code, None, None, details, details)

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"


def _caller_error(error: BaseException) -> BaseException:
    """The aio channel's error boundary: what its callers get for a failure, sail's own
    errors as `AioMeshRpcError`s (`sail.grpc._errors.mesh_error`), an attempt's own
    `grpc.aio.AioRpcError` as it is."""
    return mesh_error(error, AioMeshRpcError)


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
        return _UnaryUnary(self, UNARY_UNARY, method, request_serializer,
                           response_deserializer, bool(_registered_method))

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable:
        return _UnaryStream(self, UNARY_STREAM, method, request_serializer,
                            response_deserializer, bool(_registered_method))

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable:
        return _StreamUnary(self, STREAM_UNARY, method, request_serializer,
                            response_deserializer, bool(_registered_method))

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable:
        return _StreamStream(self, STREAM_STREAM, method, request_serializer,
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

    def _open(
        self, target: str, tls: tuple[grpc.ChannelCredentials, tuple[tuple[str, Any], ...]]
        | None = None,
    ) -> grpc.aio.Channel:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if tls is not None:
            return grpc.aio.secure_channel(target, tls[0], tls[1], self._compression)
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

    async def _representative(self) -> grpc.aio.Channel | None:
        try:
            where = self.locate()
            if isinstance(where, threading.Event):
                await anyio.to_thread.run_sync(where.wait, self._mesh.discovery_timeout)
                where = self.settled()
        except RequestError as exc:
            raise _caller_error(exc) from exc
        if where is None:
            return self._plain()
        found = self._some_endpoint()
        return None if found is None else self._subchannel(*found).channel


# -- the multicallables: grpc.aio's signatures over the one shape ------------------------------


class _UnaryUnary(MultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _UnaryCall:
        return _UnaryCall(self, request, None, timeout, metadata, credentials, wait_for_ready,
                          compression)


class _StreamUnary(MultiCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Any = None, timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> _UnaryCall:
        if request_iterator is None:
            raise ValueError("sail's stream-unary calls take a request iterator")
        return _UnaryCall(self, request_iterator, _replay(request_iterator), timeout,
                          metadata, credentials, wait_for_ready, compression)


class _UnaryStream(MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _StreamCall:
        options = _Options(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamCall(self, request, None, options)


class _StreamStream(MultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Any = None, timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> _StreamCall:
        options = _Options(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamCall(self, request_iterator, _replay(request_iterator), options)


def _replay(requests: Any) -> Replay:
    """The replay buffer of a call's streamed requests: from an iterator (sync or async),
    or from `write()` calls (`requests` is `None`)."""
    if requests is None:
        source = None
    elif hasattr(requests, "__aiter__"):
        source = requests.__aiter__()
    else:
        source = iter(requests)
    return Replay(source, asyncio.Lock())


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


# -- the shell: the flows driven with await ----------------------------------------------------


async def _waited(call: _Call, flow: UnaryFlow | StreamFlow, action: Action) -> Send | Outside:
    """Do the flow's waits without blocking the loop (`cancel()` cuts them short) until it
    says `Send` or `Outside`; raise its `Fail` as this channel's callers see it
    (`_caller_error`)."""
    while True:
        if type(action) is Send or type(action) is Outside:
            return action
        if type(action) is Fail:
            raise _caller_error(action.error)
        try:
            if type(action) is Sleep:
                await call._pause(action.seconds)
            else:
                assert type(action) is Wait  # Done comes only from `answered`
                waiting = call._waiting = asyncio.ensure_future(
                    anyio.to_thread.run_sync(action.event.wait, action.seconds)
                )
                try:
                    await waiting
                finally:
                    call._waiting = None
            if call._cancelling:  # cancel() came during the wait
                raise asyncio.CancelledError
        except BaseException:
            flow.cancel()
            raise
        action = flow.waited()


class _Call:
    """What the unary and streaming call objects share: the flow that runs the call, and
    the `grpc.aio.Call` methods answered from the latest attempt."""

    _inner: Any
    _flow: UnaryFlow | StreamFlow | None
    _error: BaseException | None
    _waiting: Any  # what the call waits on besides `_inner` (a back-off...), for `cancel()`
    _cancelling: bool  # cancel() was called

    @property
    def sail(self) -> CallInfo | None:
        """The call's attempts so far (`None` for a target outside the mesh)."""
        return None if self._flow is None else self._flow.info

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


def _wake(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


_PENDING, _RUNNING, _DONE = "pending", "running", "done"


class _UnaryCall(_Call, grpc.aio.UnaryUnaryCall, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    """A call with one response. It starts at once, as grpc.aio's calls do, but without a
    task of its own when it can do without one: awaited right away (`await
    stub.Method(request)`, the common case), it runs in the awaiting task, routed then and
    there and awaiting its attempts' grpc.aio calls inline. Otherwise (not awaited before
    the event loop's next turn) it runs as a task. A second awaiter, `done()` callbacks
    and the `grpc.aio.Call` methods wait on a future made only when asked for.

    `cancel()` while the call runs in its awaiter's task interrupts what the call waits
    on (the attempt's grpc.aio call, a back-off, a delay, discovery), never the awaiter's
    task itself: the awaiter gets `CancelledError` from the call, as from a cancelled task.
    """

    # What most calls never change, left to the class (fewer stores per call).
    _inner: Any = None
    _flow: UnaryFlow | None = None
    _error: BaseException | None = None
    _task: asyncio.Task[Any] | None = None
    _future: asyncio.Future[Any] | None = None
    _waiting: Any = None
    _cancelling = False
    _response: Any = None
    _exception: BaseException | None = None

    def __init__(
        self, mc: MultiCallable, first: Any, replay: Replay | None, timeout: float | None,
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

    async def _run(self) -> Any:
        """Run the call to its end: its flow, driven in this task."""
        mc = self._mc
        first = self._first
        replay = self._replay
        try:
            flow = self._flow = UnaryFlow(
                mc._channel, mc._method, mc._error, self._metadata, self._timeout, replay
            )
            action = flow.start()
            while True:
                if type(action) is Send:
                    try:
                        inner = self._inner = mc._inner(action)(
                            first if replay is None else aread(replay),
                            timeout=action.timeout, metadata=action.metadata,
                            credentials=self._credentials, wait_for_ready=self._wait_for_ready,
                            compression=self._compression,
                        )
                        response = await inner
                        if self._cancelling:  # cancelled once answered, before it was read
                            raise asyncio.CancelledError
                    except grpc.aio.AioRpcError as exc:
                        action = flow.failed(exc)
                        continue
                    except BaseException:
                        flow.cancel()
                        if self._inner is not None:
                            self._inner.cancel()
                        raise
                    action = flow.answered(response)
                elif type(action) is Done:
                    response = action.value
                    break
                elif type(action := await _waited(self, flow, action)) is Outside:
                    inner = self._inner = mc._outside()(
                        first, timeout=self._timeout, metadata=self._metadata,
                        credentials=self._credentials, wait_for_ready=self._wait_for_ready,
                        compression=self._compression,
                    )
                    response = await inner
                    break
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            self._end(None, exc)
            raise
        self._end(response, None)
        return response


class _StreamCall(_Call, grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    """A call whose responses stream: started on first use (`read`, iteration, `write`),
    retried until its first response message."""

    _flow: StreamFlow

    def __init__(
        self, mc: MultiCallable, first: Any, replay: Replay | None, options: _Options
    ) -> None:
        self._mc = mc
        self._first = first
        self._replay = replay
        self._options = options
        self._flow = StreamFlow(
            mc._channel, mc._method, mc._error, options.metadata, options.timeout, replay
        )
        self._inner = None
        self._error = None
        self._started = False
        self._cancelling = False
        self._waiting = None
        self._callbacks: list[Callable[[Any], None]] = []

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._error is not None:  # cancelled before it started
            raise self._error
        try:
            await self._open(self._flow.start())
        except BaseException as exc:
            self._error = exc
            raise

    async def _open(self, action: Action) -> None:
        """Do what the flow says until an attempt is open (or, for a target outside the
        mesh, the plain call)."""
        flow = self._flow
        options = self._options
        if type(action) is not Send:
            action = await _waited(self, flow, action)
        if isinstance(action, Outside):
            self._replay = None  # write() goes straight to the plain call
            inner = self._inner = options.send(self._mc._outside(), self._first,
                                               options.timeout, options.metadata)
            self._watch(inner)
            return
        sent = action
        replay = self._replay
        first = self._first
        if replay is not None:
            first = None if replay.source is None else aread(replay)
        try:
            inner = options.send(self._mc._inner(sent), first, sent.timeout,
                                 sent.metadata)
        except BaseException:
            flow.closed(sent)
            flow.cancel()
            raise
        inner.add_done_callback(lambda _: flow.closed(sent))
        self._inner = inner
        self._watch(inner)
        if replay is not None and replay.source is None:  # the write() calls so far
            await rewrite(replay, inner)

    def _watch(self, inner: Any) -> None:
        for callback in self._callbacks:
            inner.add_done_callback(lambda _, cb=callback: cb(self))

    async def read(self) -> Any:
        await self._start()
        flow = self._flow
        while True:
            if self._error is not None:
                raise self._error
            try:
                message = await self._inner.read()
            except grpc.aio.AioRpcError as exc:
                try:
                    await self._open(flow.failed(exc))
                except BaseException as error:
                    self._error = error
                    raise
                continue
            flow.received()
            return message

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
        replay = self._replay
        if replay is None or replay.source is not None:
            await self._inner.write(request)
            return
        await write(replay, lambda: self._inner, request)

    async def done_writing(self) -> None:
        await self._start()
        replay = self._replay
        if replay is None or replay.source is not None:
            await self._inner.done_writing()
            return
        await done_writing(replay, lambda: self._inner)

    async def _settle(self) -> None:
        with contextlib.suppress(BaseException):
            await self._start()
        if self._inner is not None:
            with contextlib.suppress(BaseException):
                await self._inner.wait_for_connection()

    def cancel(self) -> bool:
        self._cancelling = True
        if self._waiting is not None:  # a back-off: cut it short
            self._waiting.cancel()
        self._flow.cancel()
        if self._inner is None:
            self._error = asyncio.CancelledError()
            return True
        return self._inner.cancel()  # type: ignore[no-any-return]

    def cancelled(self) -> bool:
        return self._cancelling

    def done(self) -> bool:
        if self._inner is None:
            return self._error is not None
        return self._inner.done()  # type: ignore[no-any-return]

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)
        if self._inner is not None:
            self._inner.add_done_callback(lambda _: callback(self))
