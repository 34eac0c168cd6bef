"""`MeshChannel`: a `grpc.Channel` that balances each call over a mesh service's endpoints.

`mesh.grpc_channel("ratings:9090")` returns one. Generated stubs take it as they take any
channel. Each call is routed by the service's routes (path `/package.Service/Method`,
header matches on its metadata), given a deadline, and sent to an endpoint its cluster's
balancer picks, on that endpoint's own grpcio channel (a *subchannel*, opened on first use
and closed once the endpoint has left the mesh). A call that fails is retried on another
endpoint as its route's retry policy says, within its deadline and the cluster's retry
budget, counted by its circuit breakers and reported to outlier detection: the same
`sail.resilience.call.Call` the httpx transports drive.

* Unary calls (`__call__`, `with_call`, `future`) are retried whole.
* A call whose responses stream is retried only until its first response message: after
  that the caller has seen data, and the call is committed (as gRPC's retries, gRFC A6).
* A call whose requests stream keeps the messages it sent (up to `REPLAY_LIMIT` bytes) to
  send them again on a retry; past that it is not retried.

A target that is not a mesh name (an IP address, `localhost`, a name with a dot outside
the mesh domains) gets a plain grpcio channel, so one `mesh.grpc_channel` serves both.

This module is the sync shell of the request path: what a call does next is the flow's
(`sail.grpc._flow`); here it is done with blocking waits (a blocking call, a stream's
reads), or with grpcio's done callbacks and timers (a `future()`, so that no thread waits
on it). A call's failures reach its caller through one boundary, `_caller_error`: sail's
errors as `MeshRpcError`s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

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
from sail.grpc._replay import Replay, read

if TYPE_CHECKING:
    from sail.grpc._flow import Action
    from sail.grpc._route import Metadata
    from sail.resilience.call import CallInfo

__all__ = ["MeshChannel"]

log = logging.getLogger("sail")


def _caller_error(error: BaseException) -> BaseException:
    """The sync channel's error boundary: what its callers get for a failure, sail's own
    errors as `MeshRpcError`s (`sail.grpc._errors.mesh_error`), an attempt's own
    `grpc.RpcError` as it is."""
    return mesh_error(error, MeshRpcError)


class MeshChannel(ChannelCore, grpc.Channel):  # type: ignore[misc]
    """A `grpc.Channel` over the endpoints of mesh service `target` (see the module
    docstring). Made by `Mesh.grpc_channel`; close it when done (or use it as a context
    manager).

    `credentials` (`grpc.ChannelCredentials`), `options` and `compression` are those of
    `grpc.secure_channel`/`grpc.insecure_channel`, applied to every subchannel.
    """

    # -- grpc.Channel ----------------------------------------------------------------------

    def unary_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, UNARY_UNARY, method, request_serializer,
                           response_deserializer, _registered_method)

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self, UNARY_STREAM, method, request_serializer,
                            response_deserializer, _registered_method)

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, STREAM_UNARY, method, request_serializer,
                            response_deserializer, _registered_method)

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return _StreamStream(self, STREAM_STREAM, method, request_serializer,
                             response_deserializer, _registered_method)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Connectivity of the channel: that of the first endpoint's subchannel, once the
        mesh knows the service (what `grpc.channel_ready_future` waits on)."""
        threading.Thread(
            target=self._watch, args=(callback, try_to_connect), name="sail-grpc-connectivity",
            daemon=True,
        ).start()

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        for sub in list(self._subchannels.values()):
            with contextlib.suppress(KeyError, ValueError):
                sub.channel.unsubscribe(callback)
        if self._outside is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._outside.unsubscribe(callback)

    def _open(
        self, target: str, tls: tuple[grpc.ChannelCredentials, tuple[tuple[str, Any], ...]]
        | None = None,
    ) -> grpc.Channel:
        if tls is not None:
            return grpc.secure_channel(target, tls[0], tls[1], self._compression)
        if self._credentials is not None:
            return grpc.secure_channel(target, self._credentials, self._options, self._compression)
        return grpc.insecure_channel(target, self._options, self._compression)

    def _close_later(self, channel: grpc.Channel) -> None:
        timer = threading.Timer(SUBCHANNEL_GRACE, channel.close)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        """Close every subchannel (calls still running on them are cancelled)."""
        self._closed = True
        for sub in list(self._subchannels.values()):
            sub.channel.close()
        self._subchannels.clear()
        if self._outside is not None:
            self._outside.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the mesh's side -------------------------------------------------------------------

    # -- the mesh's side -------------------------------------------------------------------

    def _watch(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool
    ) -> None:
        try:
            callback(grpc.ChannelConnectivity.IDLE)
            channel = self._any_channel()
            if channel is not None:
                channel.subscribe(callback, try_to_connect)
        except Exception:
            log.exception("sail: watching the connectivity of %r failed", self.service)

    def _any_channel(self) -> grpc.Channel | None:
        """The subchannel whose connectivity stands for the channel's (or the plain
        channel of a target outside the mesh). Raises `UnknownService`."""
        where = self.locate()
        if isinstance(where, threading.Event):
            where.wait(self._mesh.discovery_timeout)
            where = self.settled()
        if where is None:
            return self._plain()
        found = self._some_endpoint()
        return None if found is None else self._subchannel(*found).channel


# -- the multicallables: grpc's signatures over the one shape ----------------------------------


class _UnaryUnary(MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return _blocking(self, request, None, False, timeout, metadata, credentials,
                         wait_for_ready, compression)

    def with_call(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        return _blocking(self, request, None, True, timeout, metadata,  # type: ignore[no-any-return]
                         credentials, wait_for_ready, compression)

    def future(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.Future:
        return _future(self, request, None, timeout, metadata, credentials, wait_for_ready,
                       compression)


class _StreamUnary(MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> Any:
        return _blocking(self, request_iterator, _replay(request_iterator), False, timeout,
                         metadata, credentials, wait_for_ready, compression)

    def with_call(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        return _blocking(  # type: ignore[no-any-return]
            self, request_iterator, _replay(request_iterator), True, timeout, metadata,
            credentials, wait_for_ready, compression,
        )

    def future(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> grpc.Future:
        return _future(self, request_iterator, _replay(request_iterator), timeout, metadata,
                       credentials, wait_for_ready, compression)


class _UnaryStream(MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return _stream(self, request, None, timeout, metadata, credentials, wait_for_ready,
                       compression)


class _StreamStream(MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> Any:
        return _stream(self, request_iterator, _replay(request_iterator), timeout, metadata,
                       credentials, wait_for_ready, compression)


def _replay(requests: Iterator[Any]) -> Replay:
    return Replay(iter(requests), threading.Lock())


# -- the shell: the flows driven with threads --------------------------------------------------

_NO_LOCK = contextlib.nullcontext()


def _waited(
    flow: UnaryFlow | StreamFlow, action: Action, sleep: Callable[[float], Any] = time.sleep,
    lock: contextlib.AbstractContextManager[Any] = _NO_LOCK,
) -> Send | Outside:
    """Do the flow's waits in this thread (`sleep`; the discovery wait) until it says `Send`
    or `Outside`; raise its `Fail` as this channel's callers see it (`_caller_error`). `lock`
    is held around each report to the flow."""
    while True:
        if type(action) is Send or type(action) is Outside:
            return action
        if type(action) is Sleep:
            try:
                sleep(action.seconds)
            except BaseException:
                with lock:
                    flow.cancel()
                raise
        elif type(action) is Wait:
            action.event.wait(action.seconds)
        else:
            assert isinstance(action, Fail)  # Done comes only from `answered`
            raise _caller_error(action.error)
        with lock:
            action = flow.waited()


def _located(flow: UnaryFlow | StreamFlow) -> Action:
    """The flow's first action, after the discovery wait (in this thread) if it asks one."""
    action = flow.start()
    if type(action) is Wait:
        action.event.wait(action.seconds)
        action = flow.waited()
    return action


def _blocking(
    mc: MultiCallable, first: Any, replay: Replay | None, with_call: bool,
    timeout: float | None, metadata: Metadata | None,
    credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
    compression: grpc.Compression | None,
) -> Any:
    """A blocking unary call (`__call__`, `with_call`): its flow, driven in the caller's
    thread. `first` is the request, or the request iterator kept in `replay`."""
    flow = UnaryFlow(mc._channel, mc._method, mc._error, metadata, timeout, replay)
    action = flow.start()
    while True:
        if type(action) is Send:
            try:
                fn = mc._inner(action)
                request = first if replay is None else read(replay)
                if with_call:
                    result = fn.with_call(request, action.timeout, action.metadata,
                                          credentials, wait_for_ready, compression)
                else:
                    result = fn(request, action.timeout, action.metadata, credentials,
                                wait_for_ready, compression)
            except grpc.RpcError as exc:
                action = flow.failed(exc)
                continue
            except BaseException:
                flow.cancel()
                raise
            action = flow.answered(result)
        elif type(action) is Done:
            if with_call:
                response, call = action.value
                return response, _MeshCall(call, flow)
            return action.value
        elif type(action := _waited(flow, action)) is Outside:
            fn = mc._outside()
            if with_call:
                return fn.with_call(first, timeout, metadata, credentials, wait_for_ready,
                                    compression)
            return fn(first, timeout, metadata, credentials, wait_for_ready, compression)


def _future(
    mc: MultiCallable, first: Any, replay: Replay | None, timeout: float | None,
    metadata: Metadata | None, credentials: grpc.CallCredentials | None,
    wait_for_ready: bool | None, compression: grpc.Compression | None,
) -> grpc.Future:
    """A unary call's `future()`: its flow, driven by its attempts' done callbacks."""
    flow = UnaryFlow(mc._channel, mc._method, mc._error, metadata, timeout, replay)
    action = _located(flow)
    if type(action) is Outside:
        return mc._outside().future(first, timeout, metadata, credentials, wait_for_ready,
                                    compression)

    def send(attempt: Send) -> Any:
        return mc._inner(attempt).future(
            first if replay is None else read(replay), attempt.timeout, attempt.metadata,
            credentials, wait_for_ready, compression,
        )

    return _FutureCall(flow, action, send)


def _stream(
    mc: MultiCallable, first: Any, replay: Replay | None, timeout: float | None,
    metadata: Metadata | None, credentials: grpc.CallCredentials | None,
    wait_for_ready: bool | None, compression: grpc.Compression | None,
) -> Any:
    """A call whose responses stream: its flow, driven by the caller's reads."""
    flow = StreamFlow(mc._channel, mc._method, mc._error, metadata, timeout, replay)
    action = _located(flow)
    if type(action) is Outside:
        return mc._outside()(first, timeout, metadata, credentials, wait_for_ready,
                             compression)

    def send(attempt: Send) -> Any:
        return mc._inner(attempt)(
            first if replay is None else read(replay), attempt.timeout, attempt.metadata,
            credentials, wait_for_ready, compression,
        )

    return _ResponseStream(flow, action, send)


# -- calls -----------------------------------------------------------------------------------


class _MeshCall(grpc.Call):  # type: ignore[misc]
    """The `grpc.Call` of a finished unary call: the last attempt's, plus `sail`, the
    call's attempts (`sail.CallInfo`)."""

    def __init__(self, call: grpc.Call, flow: UnaryFlow) -> None:
        self._call = call
        self._flow = flow

    @property
    def sail(self) -> CallInfo | None:
        return self._flow.info

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        return self._call.is_active()  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        return self._call.cancel()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._call.add_callback(callback)  # type: ignore[no-any-return]


class _FutureCall(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A unary call's `future()`: each attempt is started from the previous one's done
    callback (after the back-off, on a timer), so no thread waits on the call. The flow
    hears from the caller's thread, grpcio's callback threads and timers: one lock (an
    `RLock`: a done callback may run at once, in the thread that added it) serializes
    them."""

    def __init__(self, flow: UnaryFlow, action: Action, send: Callable[[Send], Any]) -> None:
        self._flow = flow
        self._send = send
        self._outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inner: Any = None
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()
        with self._lock:
            self._perform(action)

    @property
    def sail(self) -> CallInfo | None:
        return self._flow.info

    def _perform(self, action: Action) -> None:
        """Do what the flow says (the lock held)."""
        if self._outcome.done():  # cancelled by the caller
            return
        if type(action) is Send:
            try:
                inner = self._inner = self._send(action)
            except BaseException as exc:
                self._flow.cancel()
                self._outcome.set_exception(exc)
                return
            inner.add_done_callback(self._ended)
        elif type(action) is Sleep:
            timer = self._timer = threading.Timer(action.seconds, self._woke)
            timer.daemon = True
            timer.start()
        elif type(action) is Done:
            self._outcome.set_result(action.value)
        elif type(action) is Fail:
            self._outcome.set_exception(_caller_error(action.error))
        else:  # `Wait` and `Outside` come before the call is made (`_future`)
            raise AssertionError(action)

    def _ended(self, inner: Any) -> None:
        """An attempt's done callback."""
        with self._lock:
            if self._outcome.done():
                return
            flow = self._flow
            try:
                if inner.cancelled():  # not by us: the subchannel closed under it
                    flow.cancel()
                    self._outcome.cancel()
                    return
                error = inner.exception()
                action = flow.answered(inner.result()) if error is None else flow.failed(error)
            except BaseException as exc:  # never lose the call in a callback thread
                flow.cancel()
                self._outcome.set_exception(exc)
                return
            self._perform(action)

    def _woke(self) -> None:
        """The back-off's (or the injected delay's) timer."""
        with self._lock:
            if not self._outcome.done():
                self._perform(self._flow.waited())

    # grpc.Future
    def cancel(self) -> bool:
        with self._lock:
            if not self._outcome.cancel():
                return False
            self._flow.cancel()
            if self._timer is not None:
                self._timer.cancel()
            if self._inner is not None:
                self._inner.cancel()
        return True

    def cancelled(self) -> bool:
        return self._outcome.cancelled()

    def running(self) -> bool:
        return not self._outcome.done()

    def done(self) -> bool:
        return self._outcome.done()

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._outcome.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._outcome.add_done_callback(lambda _: fn(self))

    # grpc.Call: the latest attempt's (or sail's own error's)
    def _call(self) -> Any:
        if self._outcome.done() and not self._outcome.cancelled():
            error = self._outcome.exception()
            if isinstance(error, MeshRpcError) or self._inner is None:
                return error
        return self._inner

    def initial_metadata(self) -> Any:
        self._outcome.exception()  # wait for the end, as grpcio's future does
        return self._call().initial_metadata()

    def trailing_metadata(self) -> Any:
        self._outcome.exception()
        return self._call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        if self._outcome.cancelled():
            return grpc.StatusCode.CANCELLED
        self._outcome.exception()
        return self._call().code()

    def details(self) -> str:
        if self._outcome.cancelled():
            return "Locally cancelled by application!"
        self._outcome.exception()
        return self._call().details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        return not self._outcome.done()

    def time_remaining(self) -> float | None:
        call = self._call()
        return None if call is None else call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._outcome.done():
            return False
        self._outcome.add_done_callback(lambda _: callback())
        return True


class _ResponseStream(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call whose responses stream: an iterator of them, and the latest attempt's
    `grpc.Call`. Failures before the first response message are retried. The flow hears
    from the reading thread, another thread's `cancel()` (under one lock) and, for
    `closed`, grpcio's done callbacks."""

    def __init__(self, flow: StreamFlow, action: Action, send: Callable[[Send], Any]) -> None:
        self._flow = flow
        self._send = send
        self._inner: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._wake: threading.Event | None = None
        self._open(action)

    @property
    def sail(self) -> CallInfo | None:
        return self._flow.info

    def _open(self, action: Action) -> None:
        """Do what the flow says until an attempt is open. A failure is kept for the next
        read, as a grpcio stream fails: on read."""
        flow = self._flow
        try:
            send = _waited(flow, action, self._sleep, self._lock)
        except grpc.RpcError as exc:  # an attempt's, or sail's as a MeshRpcError
            self._error = exc
            return
        assert type(send) is Send  # `Outside` comes before the stream is made
        try:
            inner = self._send(send)
        except BaseException:
            flow.closed(send)
            with self._lock:
                flow.cancel()
            raise
        inner.add_done_callback(lambda _: flow.closed(send))
        self._inner = inner

    def _sleep(self, seconds: float) -> None:
        """A back-off, which `cancel()` cuts short."""
        wake = self._wake = threading.Event()
        if not self._cancelled:
            wake.wait(seconds)

    def __iter__(self) -> _ResponseStream:
        return self

    def __next__(self) -> Any:
        flow = self._flow
        while True:
            if self._error is not None:
                raise self._error
            try:
                message = next(self._inner)
            except StopIteration:
                with self._lock:
                    flow.received()
                raise
            except grpc.RpcError as exc:
                with self._lock:
                    action = flow.failed(exc)
                self._open(action)
                continue
            with self._lock:
                flow.received()
            return message

    next = __next__

    def _call(self) -> Any:
        if self._inner is None or isinstance(self._error, MeshRpcError):
            return self._error
        return self._inner

    # grpc.Call
    def initial_metadata(self) -> Any:
        return self._call().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call().code()

    def details(self) -> str:
        return self._call().details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        return self._inner is not None and self._inner.is_active()

    def time_remaining(self) -> float | None:
        return self._call().time_remaining()  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        self._cancelled = True
        with self._lock:
            self._flow.cancel()
        wake = self._wake
        if wake is not None:
            wake.set()
        return self._inner is not None and self._inner.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._call().add_callback(callback)  # type: ignore[no-any-return]

    # grpc.Future
    def cancelled(self) -> bool:
        return self._inner is not None and self._inner.cancelled()

    def running(self) -> bool:
        return self._inner is not None and self._inner.running()

    def done(self) -> bool:
        return self._inner is None or self._inner.done()

    def result(self, timeout: float | None = None) -> Any:
        return self._call().result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call().exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call().traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call().add_done_callback(lambda _: fn(self))
