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
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

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

__all__ = ["MeshChannel"]

log = logging.getLogger("sail")

_UNARY_UNARY, _UNARY_STREAM, _STREAM_UNARY, _STREAM_STREAM = (
    "unary_unary", "unary_stream", "stream_unary", "stream_stream"
)


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
        return _UnaryUnary(self, _UNARY_UNARY, method, request_serializer,
                           response_deserializer, _registered_method)

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self, _UNARY_STREAM, method, request_serializer,
                            response_deserializer, _registered_method)

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, _STREAM_UNARY, method, request_serializer,
                            response_deserializer, _registered_method)

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return _StreamStream(self, _STREAM_STREAM, method, request_serializer,
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

    def _open(self, target: str) -> grpc.Channel:
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
        channel of a target outside the mesh)."""
        verdict = self._verdict()
        if not isinstance(verdict, bool):
            verdict.wait(self._mesh.discovery_timeout)
            verdict = self._settled()
        if not verdict:
            return self._plain()
        authority = self._some_endpoint()
        return None if authority is None else self._subchannel(authority).channel

    def _attempts(
        self, method: str, error: MeshRpcError | None, metadata: Metadata | None,
        timeout: float | None,
    ) -> Attempts | None:
        """Route a call: its attempts, or `None` for a target outside the mesh."""
        self._mesh.check_fork()
        state = self._dataplane.state
        if self.service not in state.services:
            verdict = self._verdict()
            if not isinstance(verdict, bool):
                limit = self._mesh.discovery_timeout
                verdict.wait(limit if timeout is None else min(timeout, limit))
                verdict = self._settled()
            if not verdict:
                return None
            state = self._dataplane.state
        if error is not None:
            raise error
        attempts = prepare(self._dataplane, state, self.service, method, metadata, timeout)
        fault = attempts.fault
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            abort = attempts.fault_error()
            if abort is not None:
                raise abort
        return attempts

class _MultiCallable:
    """What the four kinds of multicallable share: the method, and its inner multicallables
    on each subchannel."""

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
        self, channel: MeshChannel, kind: str, method: str, serializer: Any,
        deserializer: Any, registered: bool,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._error = check_method(channel.service, method)

    def _on(self, channel: grpc.Channel) -> Any:
        make = getattr(channel, self._kind)
        return make(self._method, self._serializer, self._deserializer,
                    _registered_method=self._registered)

    def _inner(self, attempts: Attempts) -> Any:
        """The inner multicallable on the subchannel of the attempt's endpoint."""
        return self._channel._method(attempts.endpoint.authority, self, self._on)

    def _route(self, metadata: Metadata | None, timeout: float | None) -> Attempts | None:
        return self._channel._attempts(self._method, self._error, metadata, timeout)

    def _outside(self) -> Any:
        return self._on(self._channel._plain())


def _blocking(
    mc: _MultiCallable, attempts: Attempts, with_call: bool, request: Any,
    replay: _Replay | None, credentials: grpc.CallCredentials | None,
    wait_for_ready: bool | None, compression: grpc.Compression | None,
) -> Any:
    """Drive a blocking call's attempts, each sent on the inner multicallable of its
    endpoint (`with_call` or not; the requests of `replay` when given). Returns what the
    successful attempt returned."""
    md = attempts.metadata
    while True:
        timeout = attempts.begin()
        host = attempts.host
        try:
            fn = mc._inner(attempts)
            if replay is not None:
                request = replay.view()
            if with_call:
                result = fn.with_call(request, timeout, md, credentials, wait_for_ready,
                                      compression)
            else:
                result = fn(request, timeout, md, credentials, wait_for_ready, compression)
        except grpc.RpcError as exc:
            attempts.release(host)
            wait = attempts.failed(exc.code(), exc.details())
            if wait is None:
                raise attempts.give_up(exc) from None
            if wait > 0:
                time.sleep(wait)
            attempts.advance()
            continue
        except BaseException:
            attempts.release(host)
            attempts.stop()
            raise
        attempts.ok(host)
        return result


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        attempts = self._channel._attempts(self._method, self._error, metadata, timeout)
        if attempts is None:
            return self._outside()(request, timeout, metadata, credentials, wait_for_ready,
                                   compression)
        return _blocking(self, attempts, False, request, None, credentials, wait_for_ready,
                         compression)

    def with_call(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        attempts = self._channel._attempts(self._method, self._error, metadata, timeout)
        if attempts is None:
            return self._outside().with_call(  # type: ignore[no-any-return]
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
        response, call = _blocking(self, attempts, True, request, None, credentials,
                                   wait_for_ready, compression)
        return response, _MeshCall(call, attempts)

    def future(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.Future:
        try:
            attempts = self._route(metadata, timeout)
        except MeshRpcError as exc:
            return exc
        if attempts is None:
            return self._outside().future(request, timeout, metadata, credentials,
                                          wait_for_ready, compression)
        md = attempts.metadata
        return _FutureCall(
            attempts,
            lambda t: self._inner(attempts).future(
                request, t, md, credentials, wait_for_ready, compression
            ),
        )


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> Any:
        return self.with_call(request_iterator, timeout, metadata, credentials,
                              wait_for_ready, compression)[0]

    def with_call(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        attempts = self._route(metadata, timeout)
        if attempts is None:
            return self._outside().with_call(  # type: ignore[no-any-return]
                request_iterator, timeout, metadata, credentials, wait_for_ready, compression
            )
        replay = _Replay(request_iterator, attempts)
        response, call = _blocking(self, attempts, True, None, replay, credentials,
                                   wait_for_ready, compression)
        return response, _MeshCall(call, attempts)

    def future(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> grpc.Future:
        try:
            attempts = self._route(metadata, timeout)
        except MeshRpcError as exc:
            return exc
        if attempts is None:
            return self._outside().future(request_iterator, timeout, metadata, credentials,
                                          wait_for_ready, compression)
        md = attempts.metadata
        replay = _Replay(request_iterator, attempts)
        return _FutureCall(
            attempts,
            lambda t: self._inner(attempts).future(
                replay.view(), t, md, credentials, wait_for_ready, compression
            ),
        )


class _UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        try:
            attempts = self._route(metadata, timeout)
        except MeshRpcError as exc:
            return _ResponseStream.failed(exc)
        if attempts is None:
            return self._outside()(request, timeout, metadata, credentials, wait_for_ready,
                                   compression)
        md = attempts.metadata
        return _ResponseStream(
            attempts,
            lambda t: self._inner(attempts)(
                request, t, md, credentials, wait_for_ready, compression
            ),
        )


class _StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(
        self, request_iterator: Iterator[Any], timeout: float | None = None,
        metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None, compression: grpc.Compression | None = None,
    ) -> Any:
        try:
            attempts = self._route(metadata, timeout)
        except MeshRpcError as exc:
            return _ResponseStream.failed(exc)
        if attempts is None:
            return self._outside()(request_iterator, timeout, metadata, credentials,
                                   wait_for_ready, compression)
        md = attempts.metadata
        replay = _Replay(request_iterator, attempts)
        return _ResponseStream(
            attempts,
            lambda t: self._inner(attempts)(
                replay.view(), t, md, credentials, wait_for_ready, compression
            ),
        )


# -- calls -----------------------------------------------------------------------------------


class _MeshCall(grpc.Call):  # type: ignore[misc]
    """The `grpc.Call` of a finished unary call: the last attempt's, plus `sail`, the
    call's attempts (`sail.CallInfo`)."""

    def __init__(self, call: grpc.Call, attempts: Attempts) -> None:
        self._call = call
        self._attempts = attempts

    @property
    def sail(self) -> CallInfo:
        return self._attempts.info

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
    """A unary call's `future()`: attempts are started from the previous one's completion
    callback (after the back-off, on a timer), so no thread waits on the call."""

    def __init__(self, attempts: Attempts, send: Callable[[float | None], Any]) -> None:
        self._attempts = attempts
        self._send = send
        self._outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inner: Any = None
        self._timer: threading.Timer | None = None
        self._attempt()

    @property
    def sail(self) -> CallInfo:
        return self._attempts.info

    def _attempt(self) -> None:
        attempts = self._attempts
        try:
            timeout = attempts.begin()
        except MeshRpcError as exc:
            self._fail(exc)
            return
        host = attempts.host
        try:
            inner = self._inner = self._send(timeout)
        except BaseException as exc:
            attempts.release(host)
            attempts.stop()
            self._fail(exc)
            return
        inner.add_done_callback(lambda done: self._ended(done, host))

    def _ended(self, inner: Any, host: Any) -> None:
        attempts = self._attempts
        attempts.release(host)
        if self._outcome.done():  # cancelled by the caller
            return
        try:
            if inner.cancelled():
                attempts.stop()
                self._outcome.cancel()
                return
            error = inner.exception()
            if error is None:
                attempts.succeeded()
                self._outcome.set_result(inner.result())
                return
            wait = attempts.failed(error.code(), error.details())
            if wait is None:
                self._fail(attempts.give_up(error))
            elif wait > 0:
                self._timer = threading.Timer(wait, self._retry)
                self._timer.daemon = True
                self._timer.start()
            else:
                self._retry()
        except BaseException as exc:  # never lose the call in a callback thread
            attempts.stop()
            self._fail(exc)

    def _retry(self) -> None:
        if self._outcome.done():
            return
        try:
            self._attempts.advance()
        except MeshRpcError as exc:
            self._fail(exc)
            return
        self._attempt()

    def _fail(self, error: BaseException) -> None:
        if not self._outcome.done():
            self._outcome.set_exception(error)

    # grpc.Future
    def cancel(self) -> bool:
        if not self._outcome.cancel():
            return False
        if self._timer is not None:
            self._timer.cancel()
        if self._inner is not None:
            self._inner.cancel()
        self._attempts.stop()
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
            if isinstance(error, MeshRpcError):
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
    `grpc.Call`. Failures before the first response message are retried."""

    def __init__(
        self, attempts: Attempts | None, send: Callable[[float | None], Any] | None
    ) -> None:
        self._attempts = attempts
        self._send = send
        self._committed = False
        self._inner: Any = None
        self._error: BaseException | None = None
        if attempts is not None:
            try:
                self._inner = self._open()
            except MeshRpcError as exc:
                self._error = exc

    @classmethod
    def failed(cls, error: MeshRpcError) -> _ResponseStream:
        """A stream that fails at once with `error`, as grpcio's does: on first read."""
        stream = cls(None, None)
        stream._error = error
        return stream

    @property
    def sail(self) -> CallInfo | None:
        return None if self._attempts is None else self._attempts.info

    def _open(self) -> Any:
        attempts = self._attempts
        assert attempts is not None and self._send is not None
        timeout = attempts.begin()
        host = attempts.host
        try:
            inner = self._send(timeout)
        except BaseException:
            attempts.release(host)
            attempts.stop()
            raise
        inner.add_done_callback(lambda _: attempts.release(host))
        return inner

    def __iter__(self) -> _ResponseStream:
        return self

    def __next__(self) -> Any:
        while True:
            if self._error is not None:
                raise self._error
            attempts = self._attempts
            assert attempts is not None
            try:
                message = next(self._inner)
            except StopIteration:
                self._commit()
                raise
            except grpc.RpcError as exc:
                if self._committed:
                    raise
                self._committed = True
                wait = attempts.failed(exc.code(), exc.details())
                if wait is None:
                    raise attempts.give_up(exc) from None
                if wait > 0:
                    time.sleep(wait)
                try:
                    attempts.advance()
                    self._inner = self._open()
                except MeshRpcError as error:
                    self._error = error
                    raise
                self._committed = False
                continue
            self._commit()
            return message

    next = __next__

    def _commit(self) -> None:
        if not self._committed:
            self._committed = True
            assert self._attempts is not None
            self._attempts.succeeded()

    def _call(self) -> Any:
        return self._error if self._inner is None else self._inner

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
        if self._attempts is not None and not self._committed:
            self._committed = True
            self._attempts.stop()
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


class _Replay:
    """The request messages of a streaming call, kept for retries: every attempt reads
    them through its own `view()`, from the start. Past `REPLAY_LIMIT` bytes they are no
    longer kept and the call is no longer retried (only the latest view goes on)."""

    def __init__(self, source: Iterator[Any], attempts: Attempts) -> None:
        self._source = iter(source)
        self._attempts = attempts
        self._kept: list[Any] = []
        self._size = 0
        self._lock = threading.Lock()
        self._views = itertools.count(1)
        self._latest = 0
        self._ended = False
        self.overflowed = False

    def view(self) -> Iterator[Any]:
        self._latest = view = next(self._views)
        return self._read(view)

    def _read(self, view: int) -> Iterator[Any]:
        index = 0
        while True:
            with self._lock:  # grpcio reads each attempt's view on a thread of its own
                if not self.overflowed and index < len(self._kept):
                    message = self._kept[index]
                elif self._ended or (self.overflowed and view != self._latest):
                    return
                else:
                    try:
                        message = next(self._source)
                    except StopIteration:
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
            self._attempts.call.max_attempts = 0  # what was sent cannot be sent again
        else:
            self._kept.append(message)
