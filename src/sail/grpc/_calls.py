"""The per-call side of sail's gRPC servers: the interceptor that runs every call (but
health checks) with a `sail.RequestContext` and the caller's deadline, refuses the calls an
xDS-enabled server must not serve, and keeps the in-flight count a drain waits on.

It wraps the method handler's behaviour (all four kinds; for streamed responses each step
of the generator runs within the context). Per call it costs a dict built from the
metadata, two context variable sets and resets, and no lock.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from sail.context import RequestContext, _current, _deadline
from sail.grpc._tls import peer_of, refused_peer
from sail.grpc.xds_server import ServingWatch
from sail.registration import Workload
from sail.resilience.deadline import inherited_deadline

if TYPE_CHECKING:
    from sail.security.tls import ServerTls

__all__ = ["AioInterceptor", "Interceptor", "Scope", "Traffic", "drain_wait"]

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Sync grpcio's `time_remaining()` without a deadline is the distance to gpr's infinite
# future (~2**63 ns, about 292 years); grpc.aio's is `None`. Anything this far is no deadline.
_NO_DEADLINE = 1e8
POLL = 0.05  # how often a drain looks at the traffic
_CACHE_LIMIT = 1024
_END = object()

_Tokens = tuple[
    contextvars.Token[RequestContext | None], contextvars.Token[float | None]
]


# -- traffic and drain (no I/O) -----------------------------------------------------------------


class Traffic:
    """The calls in flight and when the last one arrived or ended: what a drain waits on.

    Handlers run on many threads (the sync server's pool, grpc.aio's migration pool) and
    `n += 1` is not atomic there; `list.append` and `list.pop` are, so the list's length is
    the in-flight count without a lock.
    """

    __slots__ = ("_calls", "last")

    def __init__(self) -> None:
        self._calls: list[None] = []
        self.last = 0.0

    @property
    def inflight(self) -> int:
        return len(self._calls)

    def begin(self) -> None:
        self._calls.append(None)
        self.last = time.monotonic()

    def end(self) -> None:
        self._calls.pop()
        self.last = time.monotonic()

    def quiet_for(self, now: float, quiet: float) -> bool:
        """No call in flight, and none arrived or ended in the last `quiet` seconds."""
        return not self._calls and now - self.last >= quiet


def drain_wait(traffic: Traffic, start: float, now: float, drain: float, quiet: float) -> float:
    """How long to keep serving before looking again; `0` once the drain is over.

    Always serves `min(quiet, drain)` first (the DRAINING news takes a moment to reach the
    clients, and calls already on the wire still land), then until the traffic is quiet
    for `quiet` seconds, and never past `start + drain`.
    """
    left = start + drain - now
    if left <= 0:
        return 0.0
    first = start + min(quiet, drain) - now
    if first > 0:
        return first
    if traffic.quiet_for(now, quiet):
        return 0.0
    return min(POLL, left)


# -- the per-call part ------------------------------------------------------------------------


class Scope:
    """What the interceptor needs: the workload, the traffic, and the wrapped handlers."""

    __slots__ = ("_wrapped", "tls", "traffic", "watch", "workload")

    def __init__(self) -> None:
        self.workload: Workload | None = None  # set once the port is bound
        self.traffic = Traffic()
        self.watch: ServingWatch | None = None  # xDS-enabled servers only
        self.tls: ServerTls | None = None  # servers serving the mesh's mTLS only
        # method -> (the handler grpc found, its wrapped twin): handlers are the same
        # object call after call, so each is wrapped once.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def request_context(self, method: str, context: Any) -> RequestContext:
        workload = self.workload
        assert workload is not None  # calls arrive only once bound
        # gRPC metadata keys are lower-case on the wire already (grpc rejects others).
        headers = {
            key: value for key, value in context.invocation_metadata() if not key.endswith("-bin")
        }
        remaining = context.time_remaining()
        if remaining is not None and remaining < _NO_DEADLINE:
            deadline: float | None = time.monotonic() + remaining
        else:
            deadline = _deadline(headers)  # an Envoy-style caller's header, if any
        return RequestContext(
            service=workload.service,
            workload=workload,
            method="POST",
            path=method,
            headers=headers,
            deadline=deadline,
            peer=peer_of(context, self.tls is not None),
        )

    def admit(self, method: str, context: Any) -> RequestContext:
        """The call's request context; a call the server must not serve is aborted here
        (`refused`; grpc's sync `abort` raises)."""
        ctx = self.request_context(method, context)
        refused = self.refused(ctx, context)
        if refused is not None:
            context.abort(*refused)
        return ctx

    async def admit_async(self, method: str, context: Any) -> RequestContext:
        """`admit` for grpc.aio, whose `abort` is a coroutine."""
        ctx = self.request_context(method, context)
        refused = self.refused(ctx, context)
        if refused is not None:
            await context.abort(*refused)
        return ctx

    def refused(
        self, ctx: RequestContext, context: Any
    ) -> tuple[grpc.StatusCode, str] | None:
        """The status and reason to fail this call with: UNAUTHENTICATED for a caller the
        server's mTLS verified but does not accept (`sail.grpc._tls.refused_peer`),
        UNAVAILABLE for a call an xDS-enabled server must not serve (its Listener, filter
        chain or route says so); None to serve it."""
        tls = self.tls
        if tls is not None and ctx.peer is not None:
            why = refused_peer(ctx.peer, tls)
            if why is not None:
                return grpc.StatusCode.UNAUTHENTICATED, why
        watch = self.watch
        if watch is None:
            return None
        why = watch.check(ctx.path, ctx.headers, context.peer())
        return None if why is None else (grpc.StatusCode.UNAVAILABLE, why)

    def wrap(self, handler: Any, details: Any) -> Any:
        """The handler grpc found for the call, wrapped; health checks are left alone (a
        long `Watch` is no traffic to drain, and probes must not keep a drain from ending)."""
        method = details.method
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        self.traffic.last = time.monotonic()  # arrived (it may wait for a pool thread)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(handler, method, self)
        if len(self._wrapped) >= _CACHE_LIMIT:  # a catch-all generic handler: stay bounded
            self._wrapped.clear()
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _enter(ctx: RequestContext) -> _Tokens:
    return _current.set(ctx), inherited_deadline.set(ctx.deadline)


def _leave(tokens: _Tokens) -> None:
    inherited_deadline.reset(tokens[1])
    _current.reset(tokens[0])


_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., Any]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _wrap_handler(handler: Any, method: str, scope: Scope) -> Any:
    """A method handler of the same kind whose behaviour runs with the request context.

    The wrapper is of the same flavour as the behaviour (coroutine function, async
    generator function, or plain function), since that is what grpc.aio dispatches on."""
    streaming = bool(handler.response_streaming)
    attr, factory = _KINDS[bool(handler.request_streaming), streaming]
    behavior = getattr(handler, attr)
    if behavior is None or getattr(behavior, "experimental_non_blocking", False):
        return handler  # answers through a callback after returning: nothing to wrap
    if inspect.isasyncgenfunction(behavior):
        wrapped: Callable[..., Any] = _async_stream(behavior, method, scope)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _async_call(behavior, method, scope)
    elif streaming:
        wrapped = _sync_stream(behavior, method, scope)
    else:
        wrapped = _sync_call(behavior, method, scope)
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _sync_call(behavior: Callable[..., Any], method: str, scope: Scope) -> Callable[..., Any]:
    traffic = scope.traffic

    def call(request: Any, context: Any) -> Any:
        ctx = scope.admit(method, context)
        tokens = _enter(ctx)
        traffic.begin()
        try:
            return behavior(request, context)
        finally:
            traffic.end()
            _leave(tokens)

    return call


def _sync_stream(
    behavior: Callable[..., Any], method: str, scope: Scope
) -> Callable[..., Iterator[Any]]:
    traffic = scope.traffic

    # A generator does not keep a context of its own, and grpc may step it on any thread:
    # each step runs within the request context, which is put back in between.
    def call(request: Any, context: Any) -> Iterator[Any]:
        ctx = scope.admit(method, context)
        traffic.begin()
        responses: Iterator[Any] | None = None
        try:
            tokens = _enter(ctx)
            try:
                responses = iter(behavior(request, context))
            finally:
                _leave(tokens)
            while True:
                tokens = _enter(ctx)
                try:
                    response = next(responses, _END)
                finally:
                    _leave(tokens)
                if response is _END:
                    return
                yield response
        finally:
            traffic.end()
            close = getattr(responses, "close", None)
            if close is not None:  # cancelled: let the handler's own cleanup run now
                tokens = _enter(ctx)
                try:
                    close()
                finally:
                    _leave(tokens)

    return call


def _async_call(behavior: Callable[..., Any], method: str, scope: Scope) -> Callable[..., Any]:
    traffic = scope.traffic

    async def call(request: Any, context: Any) -> Any:
        ctx = await scope.admit_async(method, context)
        tokens = _enter(ctx)
        traffic.begin()
        try:
            return await behavior(request, context)
        finally:
            traffic.end()
            _leave(tokens)

    return call


def _async_stream(
    behavior: Callable[..., Any], method: str, scope: Scope
) -> Callable[..., AsyncIterator[Any]]:
    traffic = scope.traffic

    # Set and reset per step, not across yields: an abandoned async generator is finalized
    # in another task, where resetting a token taken here would fail.
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        ctx = await scope.admit_async(method, context)
        traffic.begin()
        responses: Any = None
        try:
            tokens = _enter(ctx)
            try:
                responses = behavior(request, context)
            finally:
                _leave(tokens)
            while True:
                tokens = _enter(ctx)
                try:
                    response = await anext(responses, _END)
                finally:
                    _leave(tokens)
                if response is _END:
                    return
                yield response
        finally:
            traffic.end()
            if responses is not None:
                tokens = _enter(ctx)
                try:
                    await responses.aclose()
                finally:
                    _leave(tokens)

    return call


class Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        return self._scope.wrap(continuation(details), details)


class AioInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        return self._scope.wrap(await continuation(details), details)
