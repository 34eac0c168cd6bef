"""One HTTP request through the mesh, written once, with no I/O: the exchange that the sync
and the async httpx transports both drive (`sail.http.transport`).

`exchange(...)` is a generator. It yields what to do - send this request to that endpoint's
pool, read a response's body, sleep, close a response, send a shadow copy, start a hedged
attempt, wait for one - and is sent back what happened: a response or the
`httpx.TransportError` of a `Send` (or of a `Read`), the finished `Launched` attempt of a
`Wait` (or `None` when it timed out). It returns the response for the caller, or raises:
sail's own `RequestError`s (the shell maps them to httpx's at its one boundary,
`sail.http.errors.to_httpx`) or the last attempt's own transport error. A shell that is
interrupted while it performs an action (a cancellation, a KeyboardInterrupt) throws that
into the generator, which gives back what the attempt held and re-raises.

```python
flow = exchange(dataplane, state, request, name)
result = None
while True:
    try:
        action = flow.send(result)
    except StopIteration as done:
        return done.value                   # the response
    result = perform(action)                # the shell's I/O: sync, or with await
```

The stages of one request, in order, and why each sits where it does:

1. **route** (`sail.dataplane.resolve`): the listener named by the authority, the virtual
   host by Host, the first matching route, the weighted cluster, the first pick. Everything
   after needs the route's policy, so it comes first.
2. **faults** (Envoy's HTTP fault filter sits before the router): the delay, then an
   injected abort answered locally. Before any header change or attempt, so an aborted
   request is never sent, mirrored or counted against a cluster.
3. **direct response**: a route that answers itself ends here.
4. **request header changes, then mirrors**: the shadow copies carry the changed headers,
   as Envoy's router mirrors what it forwards; they are fire and forget.
5. **attempts** (`sail.resilience.call.Call`): each attempt passes the circuit breakers and
   the deadline (`Call.begin`, where attempt observers hear it start), gets its share of
   the deadline, is sent on the **endpoint connection** (the pool of the picked endpoint),
   has a small body of known length read whole (`Read`: so that a body cut off is the
   attempt's failure, retried, not the caller's), and is classified (`Call.end`, where
   observers hear it end): return it, or retry on a re-pick (`sail.dataplane.pick`) after a
   back-off. With `hedge_on_per_try_timeout` the attempts overlap instead (`_hedged`).
6. **response**: the attempts made (`CallInfo`), the hash policy's cookie, the route's
   response header changes; a body read whole has released the attempt's counters, a
   streamed one releases them when it is closed.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, NamedTuple

import httpx

from sail.dataplane import pick, repick, start_call
from sail.errors import (
    DeadlineExceeded,
    NoCredentials,
    NoHealthyUpstream,
    PeerIdentityMismatch,
    UnsupportedRequest,
)
from sail.model import RouteAction
from sail.resilience.call import Call, CallInfo
from sail.resilience.classify import Local, Outcome
from sail.resilience.deadline import EXPECTED_TIMEOUT_HEADER, call_deadline
from sail.resilience.retry import IDEMPOTENT_METHODS, REPLAY_LIMIT
from sail.routing.mirror import mirrors, shadow_authority
from sail.security.tls import PeerIdentityError

if TYPE_CHECKING:
    from sail.balancing.stats import HostStats
    from sail.dataplane import (
        ClusterRuntime,
        Dataplane,
        DataplaneState,
        Target,
        UpstreamTlsRuntime,
    )
    from sail.model import Endpoint
    from sail.resilience.fault import FaultDecision

__all__ = [
    "RETRY_BODY_LIMIT",
    "Close",
    "Flow",
    "Launch",
    "Launched",
    "Mirror",
    "Read",
    "Send",
    "Sleep",
    "Wait",
    "exchange",
]


# -- the actions a shell performs ------------------------------------------------------------


class Send(NamedTuple):
    """Send `request` on the pool of `authority` (with `tls`, on TLS connections made with
    its current context); answer with the response, or the `httpx.TransportError` it
    raised."""

    authority: str
    request: httpx.Request
    tls: UpstreamTlsRuntime | None = None


class Sleep(NamedTuple):
    """Sleep `seconds` (a fault's delay, a retry's back-off); answer `None`."""

    seconds: float


class Close(NamedTuple):
    """Close `response` (an attempt that is retried or lost); answer `None`."""

    response: httpx.Response


class Mirror(NamedTuple):
    """Send the shadow copy `request` on the pool of `authority` (with `tls` as `Send`
    says), fire and forget (its answer and errors are dropped); answer `None` at once."""

    authority: str
    request: httpx.Request
    tls: UpstreamTlsRuntime | None = None


class Launch(NamedTuple):
    """Start sending `attempt.request` on the pool of `attempt.endpoint.authority` while the
    exchange goes on (a hedged attempt); answer `None` at once. When it ends, set
    `attempt.response` or `attempt.error` and hand it to the next `Wait`."""

    attempt: Launched


class Wait(NamedTuple):
    """Wait for the next launched attempt to end, for at most `timeout` seconds (`None`: no
    limit); answer that `Launched`, or `None` when the time ran out."""

    timeout: float | None


class Read(NamedTuple):
    """Read the whole body of `response` now (a small one of known length: see
    `READ_AHEAD`); answer `None`, or the `httpx.TransportError` that cut it off (the shell
    has closed the response then)."""

    response: httpx.Response


Action = Send | Sleep | Close | Mirror | Launch | Wait | Read

READ_AHEAD = 64 * 1024
"""A response whose `content-length` is at most this is read whole before the attempt is
classified, so that a body cut off mid-way (the endpoint died while sending it) is the
attempt's failure, a reset, retried as one (for idempotent requests, by default), instead
of an error after the response was handed over. Envoy streams such a body and loses the
request. A known, small length bounds the wait; a body of unknown length (chunked) or a
larger one streams to the caller, and a cut-off there is reported to outlier detection
when it happens (`Releasing`)."""
Flow = Generator[Action, object, httpx.Response]


def exchange(
    dataplane: Dataplane, state: DataplaneState, request: httpx.Request, name: str
) -> Flow:
    """The exchange of one request to mesh service `name` on `state` (see the module
    docstring for the stages)."""
    target = dataplane.resolve(
        name,
        _host_header(request.headers, name),
        request.url.raw_path.decode("ascii"),
        request.headers,
        request.method,
        state,
    )
    if target.faults is not None:
        decision = target.faults.decide(target.route, request.headers)
        if decision is not None:
            try:
                if decision.delay:
                    yield Sleep(decision.delay)
                if decision.abort:
                    return _abort_response(decision, request)
            finally:
                decision.finish()
    if target.endpoint is None:
        return _direct_response(target, request)
    cluster = target.cluster
    assert cluster is not None
    tls = cluster.tls
    if tls is not None and tls.context is None:
        raise NoCredentials(
            f"service {name!r}: cluster {cluster.cluster.name!r} asks for TLS and this "
            f"workload has no credentials for it: {tls.why}"
        )
    if tls is None and request.url.scheme == "https":
        raise UnsupportedRequest(
            f"service {name!r}: https:// is refused: cluster {cluster.cluster.name!r} has "
            "no TLS, and sail never downgrades a request to plaintext (the cluster's TLS, "
            "from its DestinationRule or PeerAuthentication, decides; use http://)"
        )
    plan = target.route.policy
    if plan.headers is not None:
        _mutate_request(target, request)
    if plan.mirrors:
        for authority, copy, mirror_tls in _mirror_requests(target, request, state):
            yield Mirror(authority, copy, mirror_tls)
    deadline = call_deadline(plan.timeout, request.headers, time.monotonic())
    call = start_call(
        target, deadline, dataplane.observer, _replayable(request),
        request.method in IDEMPOTENT_METHODS,
    )
    if plan.hedge and call.policy.per_try_timeout is not None:
        return (yield from _hedged(call, target, request))
    # Attempts one after the other: retry on a re-pick after a back-off, or return. Written
    # here, not in a generator of its own: a request is one generator, resumed per action.
    url = request.url
    endpoint = target.endpoint
    timeouts = _connect_capped(request, cluster)
    try:
        while True:
            host = _begin(call, request, timeouts, cluster, endpoint)
            authority = endpoint.authority
            request.url = _to_endpoint(request, target, endpoint, tls)
            try:
                # `tuple.__new__`, not `Send(...)`: the same object without the Python-level
                # `__new__` a NamedTuple runs.
                result = yield tuple.__new__(Send, (authority, request, tls))
            except BaseException:  # interrupted: the attempt is over all the same
                call.release(host)
                call.abandon(authority, time.monotonic())
                raise
            finally:
                request.url = url
            read = isinstance(result, httpx.Response) and _small(result)
            if read:
                cut = yield tuple.__new__(Read, (result,))
                if cut is not None:  # the body was cut off: the attempt failed
                    assert isinstance(cut, httpx.TransportError)
                    result = cut
            if isinstance(result, httpx.Response):
                wait = call.end(authority, _response_outcome(result, call), time.monotonic())
                if wait is None:
                    if read:  # the body is in memory: the attempt is over
                        call.release(host)
                    else:
                        result.stream = Releasing(
                            result.stream,  # type: ignore[arg-type]
                            call,
                            host,
                            authority,
                        )
                    _finish(result, target, call)
                    return result
                try:
                    yield Close(result)
                finally:
                    call.release(host)
            else:
                assert isinstance(result, httpx.TransportError)
                call.release(host)
                wait = _after_error(call, authority, result)
            if wait > 0:
                yield Sleep(wait)
            endpoint = repick(target, call)
    finally:
        call.finish()


def _hedged(call: Call, target: Target, request: httpx.Request) -> Flow:
    """Attempts that overlap (Envoy's `hedge_on_per_try_timeout`): when the latest
    attempt's per-try timeout fires, it goes on and another starts (if `Call.hedge`
    allows). The first response that is not a retriable failure wins; a retriable one
    starts a retry if the call allows, else is kept to be returned if nothing better
    comes; when every attempt has ended without a winner, the last kept response is
    returned, or the last error raised. When the exchange ends, the shell closes and
    releases what is left: the attempts still out, and `Hedge.leftovers()`."""
    hedge = Hedge(call, target, request)
    try:
        assert target.endpoint is not None
        yield Launch(hedge.begin(target.endpoint))
        while True:
            item = yield Wait(hedge.until_hedge())
            if item is None:
                if hedge.should_hedge():
                    yield Launch(hedge.begin(repick(target, call)))
                continue
            assert isinstance(item, Launched)
            verdict = hedge.settle(item)
            for lost in hedge.take_discarded():
                yield from _dispose(lost)
            if isinstance(verdict, Launched):
                response = verdict.response
                assert response is not None
                response.stream = Releasing(
                    response.stream,  # type: ignore[arg-type]
                    call,
                    verdict.host,
                    verdict.endpoint.authority,
                )
                _finish(response, target, call)
                return response
            if verdict is not None:
                if verdict > 0:
                    yield Sleep(verdict)
                yield Launch(hedge.begin(repick(target, call)))
    finally:
        call.finish()


def _dispose(item: Launched) -> Generator[Action, object, None]:
    """Close a finished attempt that lost, and end its share of the counters."""
    try:
        if item.response is not None:
            yield Close(item.response)
    finally:
        item.release()


# -- one hedged attempt ----------------------------------------------------------------------


class Launched:
    """One attempt of a hedged call, sent by the shell while the exchange goes on; the
    shell sets `response` or `error` when it ends."""

    __slots__ = ("call", "ended", "endpoint", "error", "hedge", "host", "request", "response",
                 "tls", "token")

    def __init__(
        self, hedge: Hedge, endpoint: Endpoint, host: HostStats, request: httpx.Request
    ) -> None:
        self.hedge = hedge
        call = self.call = hedge.call
        self.endpoint = endpoint
        self.host = host
        self.request = request
        self.tls = hedge.cluster.tls
        self.token = call.token
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.ended = False

    def release(self) -> None:
        """The attempt is over and its response (if any) closed: end its share of the
        counters (and tell the observers, if it never ended with an outcome)."""
        self.call.release(self.host)
        if not self.ended:
            self.ended = True
            self.call.abandon(self.endpoint.authority, time.monotonic(), self.token)


class Hedge:
    """The bookkeeping of a hedged call, for `_hedged` (the decisions) and the shell
    (`leftovers`: what to close when the exchange is over)."""

    __slots__ = ("call", "cluster", "discard", "hedge_at", "kept", "pending", "request",
                 "target", "timeouts")

    def __init__(self, call: Call, target: Target, request: httpx.Request) -> None:
        assert target.cluster is not None
        self.call = call
        self.target = target
        self.cluster = target.cluster
        self.request = request
        self.timeouts = _connect_capped(request, self.cluster)
        self.pending = 0
        self.hedge_at = math.inf
        self.kept: Launched | None = None
        self.discard: list[Launched] = []

    def begin(self, endpoint: Endpoint) -> Launched:
        host = self.cluster.hosts.host(endpoint)
        now = time.monotonic()
        self.call.begin(now, host, endpoint.authority)
        request = _hedged_request(self.request, self.target, endpoint, self.timeouts)
        deadline = self.call.deadline
        if deadline is not None:  # the per-try timeout starts a hedge; it cuts nothing
            left = max(deadline - now, 0.001)
            if isinstance(self.timeouts, dict):
                request.extensions["timeout"] = {
                    k: left if v is None or v > left else v for k, v in self.timeouts.items()
                }
            request.headers[EXPECTED_TIMEOUT_HEADER] = str(max(1, int(left * 1000)))
        per_try = self.call.policy.per_try_timeout
        self.hedge_at = now + per_try if per_try is not None else math.inf
        self.pending += 1
        return Launched(self, endpoint, host, request)

    def until_hedge(self) -> float | None:
        """Seconds until the latest attempt's per-try timeout (`None`: none pending)."""
        if self.hedge_at == math.inf:
            return None
        return max(0.0, self.hedge_at - time.monotonic())

    def should_hedge(self) -> bool:
        self.hedge_at = math.inf
        return self.call.hedge(time.monotonic())

    def settle(self, item: Launched) -> Launched | float | None:
        """An attempt ended: the winning attempt, a wait before a retry, or `None` (keep
        waiting for the attempts still out)."""
        self.pending -= 1
        call = self.call
        response, error = item.response, item.error
        if response is None:
            assert error is not None
            outcome = _local_outcome(error) if isinstance(error, httpx.TransportError) else None
            if outcome is None:
                item.release()
                raise error
        else:
            outcome = _response_outcome(response, call)
        item.ended = True
        wait = call.end(item.endpoint.authority, outcome, time.monotonic(), item.token)
        good = outcome.answered and wait is None
        if response is not None and (good or wait is None):
            if self.kept is not None:
                self.discard.append(self.kept)
            self.kept = None
            if good:
                return item
            self.kept = item
        elif response is not None:
            self.discard.append(item)
        else:
            item.release()
        if wait is not None:
            return wait
        if self.pending:
            return None
        if self.kept is not None:
            kept, self.kept = self.kept, None
            return kept
        assert isinstance(error, httpx.TransportError)
        raise _failed(call, error, item.endpoint.authority)

    def take_discarded(self) -> list[Launched]:
        """Finished attempts that lost, for the exchange to close and release."""
        out, self.discard = self.discard, []
        return out

    def leftovers(self) -> list[Launched]:
        """When the exchange is over: the finished attempts it still holds, for the shell
        to close and release (with those still out, which the shell holds)."""
        out, self.discard = self.discard, []
        if self.kept is not None:
            out.append(self.kept)
            self.kept = None
        return out


# -- the stages' steps -----------------------------------------------------------------------


def _direct_response(target: Target, request: httpx.Request) -> httpx.Response:
    action = target.route.route.action
    status, body = (action.status, action.body) if action is not None else (404, b"")  # type: ignore[union-attr]
    response = httpx.Response(status, content=body, request=request)
    _mutate_response(target, response)
    return response


def _abort_response(decision: FaultDecision, request: httpx.Request) -> httpx.Response:
    """The local answer of an injected abort, as Envoy's fault filter writes it."""
    if decision.grpc_status is not None:
        headers = {
            "content-type": "application/grpc",
            "grpc-status": str(decision.grpc_status),
            "grpc-message": "fault filter abort",
        }
        return httpx.Response(200, headers=headers, request=request)
    assert decision.http_status is not None
    return httpx.Response(
        decision.http_status, text="fault filter abort", request=request,
        headers={"content-type": "text/plain"},
    )


def _mutate_request(target: Target, request: httpx.Request) -> None:
    """The route's request header changes (`request_headers_to_add/remove`)."""
    mutation = target.route.policy.headers
    if mutation is not None and mutation.request:
        request.headers = httpx.Headers(mutation.apply_request(request.headers.multi_items()))


def _mutate_response(target: Target, response: httpx.Response) -> None:
    """The route's response header changes (`response_headers_to_add/remove`)."""
    mutation = target.route.policy.headers
    if mutation is not None and mutation.response:
        response.headers = httpx.Headers(mutation.apply_response(response.headers.multi_items()))


def _mirror_requests(
    target: Target, request: httpx.Request, state: DataplaneState
) -> list[tuple[str, httpx.Request, UpstreamTlsRuntime | None]]:
    """Copies of `request` for the route's `request_mirror_policies` that fire this time:
    `(endpoint authority, request, the mirror cluster's TLS)` each, with Host suffixed
    `-shadow` as Envoy sends them.
    A streamed body cannot be copied, so such a request is not mirrored."""
    action = target.route.route.action
    if not isinstance(action, RouteAction) or not action.request_mirror_policies:
        return []
    if not isinstance(request.stream, httpx.ByteStream):
        return []
    copies = []
    host = shadow_authority(request.headers.get("host", target.service))
    for name in mirrors(action):
        cluster = state.clusters.get(name)
        if cluster is None:
            continue
        tls = cluster.tls
        if (tls is None and request.url.scheme == "https") or (
            tls is not None and tls.context is None
        ):
            continue  # never a plaintext copy of a TLS request; none without credentials
        try:
            endpoint = pick(cluster, target.hash.value)
        except NoHealthyUpstream:
            continue
        headers = request.headers.copy()
        headers["host"] = host
        copies.append((endpoint.authority, httpx.Request(
            request.method,
            httpx.URL(scheme=_scheme(tls), host=endpoint.address, port=endpoint.port,
                      raw_path=target.route.path.encode("ascii")),
            headers=headers,
            stream=request.stream,
        ), tls))
    return copies


def _scheme(tls: UpstreamTlsRuntime | None) -> str:
    return "http" if tls is None else "https"


def _host_header(headers: httpx.Headers, default: str) -> str:
    """`headers.get("host", default)`, read off httpx's header list when the request has
    at most one Host and it is ASCII (always, but for a caller's odd headers):
    `Headers.get` first decodes every header to choose their encoding, which costs more
    than routing the request."""
    entries: object = getattr(headers, "_list", None)
    if isinstance(entries, list):
        hosts = 0
        found = b""
        for _, key, value in entries:
            if key == b"host":
                hosts += 1
                found = value
        if hosts == 0:
            return default
        if hosts == 1 and found.isascii():
            return found.decode("ascii")
    host: str = headers.get("host", default)  # repeated (httpx joins them), or not ASCII
    return host


class _EndpointURL:
    """The parts of a URL that `httpx.HTTPTransport` reads to send a request (`raw_scheme`,
    `raw_host`, `port`, `raw_path`), for the picked endpoint.

    Building a real `httpx.URL` re-parses and re-validates it: about 30 µs a request,
    most of what sail added to a request before. This costs well under 1 µs.
    `tests/e2e/test_http_mesh.py` would fail at once if httpx stopped reading just these.
    """

    __slots__ = ("port", "raw_host", "raw_path")
    raw_scheme = b"http"

    def __init__(self, raw_host: bytes, port: int, raw_path: bytes) -> None:
        self.raw_host = raw_host
        self.port = port
        self.raw_path = raw_path

    def __str__(self) -> str:
        scheme = self.raw_scheme.decode()
        return f"{scheme}://{self.raw_host.decode()}:{self.port}{self.raw_path.decode()}"


class _TlsEndpointURL(_EndpointURL):
    """`_EndpointURL` for an endpoint of a TLS cluster."""

    __slots__ = ()
    raw_scheme = b"https"


def _host_for(target: Target, endpoint: Endpoint) -> str | None:
    """The Host to send to `endpoint`: the route's rewrite, or for a retry's endpoint under
    `auto_host_rewrite`, that endpoint's own hostname (`None`: keep the caller's)."""
    if endpoint is not target.endpoint and endpoint.hostname:
        action = target.route.route.action
        if isinstance(action, RouteAction) and action.auto_host_rewrite:
            return endpoint.hostname
    return target.host


def _to_endpoint(
    request: httpx.Request, target: Target, endpoint: Endpoint,
    tls: UpstreamTlsRuntime | None,
) -> httpx.URL:
    """What to put in `request.url` while `endpoint`'s pool sends it; sets Host if the
    route rewrites it (for a retry's endpoint, `auto_host_rewrite` takes its hostname)."""
    host = target.host if endpoint is target.endpoint else _host_for(target, endpoint)
    if host is not None:
        request.headers["host"] = host
    url = (_EndpointURL if tls is None else _TlsEndpointURL)(
        endpoint.address.encode("ascii"), endpoint.port, target.route.path.encode("ascii")
    )
    return url  # type: ignore[return-value]


#: Request bodies up to this size are kept for retries (a larger or streamed body is only
#: retried when it was never sent: a connect failure).
RETRY_BODY_LIMIT = REPLAY_LIMIT


def _replayable(request: httpx.Request) -> Callable[[], bool]:
    """Whether the body can be sent again: asked only when a retry is being decided."""

    def replayable() -> bool:
        if not isinstance(request.stream, httpx.ByteStream):
            return False
        length = request.headers.get("content-length")
        return length is None or int(length) <= RETRY_BODY_LIMIT

    return replayable


def _connect_capped(request: httpx.Request, cluster: ClusterRuntime) -> object:
    """The request's httpx timeouts with `connect` capped by the cluster's
    `connect_timeout` (set on the request too): what each attempt's timeouts start from."""
    timeouts = request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        connect = cluster.cluster.connect_timeout
        current = timeouts.get("connect")
        if current is None or current > connect:
            timeouts = {**timeouts, "connect": connect}
            request.extensions["timeout"] = timeouts
    return timeouts


def _begin(
    call: Call, request: httpx.Request, timeouts: object, cluster: ClusterRuntime,
    endpoint: Endpoint,
) -> HostStats:
    """Start an attempt: circuit breakers, the endpoint's in-flight count, and this
    attempt's share of the deadline in its timeouts and in `x-envoy-expected-rq-timeout-ms`.
    Returns the endpoint's counters, for `call.release`."""
    host = cluster.hosts.host(endpoint)
    timeout = call.begin(time.monotonic(), host, endpoint.authority)
    if timeout is not None:
        if isinstance(timeouts, dict) and timeout < _shortest(timeouts):
            request.extensions["timeout"] = {
                k: timeout if v is None or v > timeout else v for k, v in timeouts.items()
            }
        _set_expected_timeout(request.headers, timeout)
    return host


_EXPECTED = EXPECTED_TIMEOUT_HEADER.encode()


def _set_expected_timeout(headers: httpx.Headers, timeout: float) -> None:
    """Set `x-envoy-expected-rq-timeout-ms`. On httpx's header list directly when it is
    not there yet (the common case: `__setitem__` re-encodes and scans for duplicates)."""
    value = str(int(timeout * 1000) or 1)
    entries = getattr(headers, "_list", None)
    if isinstance(entries, list):
        for entry in entries:
            if entry[1] == _EXPECTED:
                break
        else:
            entries.append((_EXPECTED, _EXPECTED, value.encode()))
            return
    headers[EXPECTED_TIMEOUT_HEADER] = value


def _shortest(timeouts: dict[str, float | None]) -> float:
    """The shortest of httpx's timeouts (`inf` when none is set)."""
    shortest = math.inf
    for value in timeouts.values():
        if value is not None and value < shortest:
            shortest = value
    return shortest


def _hedged_request(
    request: httpx.Request, target: Target, endpoint: Endpoint, timeouts: object
) -> httpx.Request:
    """A request of its own for one attempt of a hedged call (attempts overlap, so they
    cannot share the caller's request object as sequential attempts do)."""
    headers = request.headers.copy()
    host = _host_for(target, endpoint)
    if host is not None:
        headers["host"] = host
    extensions = dict(request.extensions)
    if isinstance(timeouts, dict):
        extensions["timeout"] = request.extensions.get("timeout", timeouts)
    return httpx.Request(
        request.method,
        httpx.URL(scheme=_scheme(target.cluster.tls if target.cluster else None),
                  host=endpoint.address, port=endpoint.port,
                  raw_path=target.route.path.encode("ascii")),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )


def _local_outcome(exc: httpx.TransportError) -> Outcome | None:
    """What a transport error means for retries, or `None` for errors that are not the
    upstream's doing (a bad URL, an unsupported protocol...)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Outcome(local=Local.CONNECT_FAILURE)
    if isinstance(exc, httpx.TimeoutException):
        return Outcome(local=Local.TIMEOUT)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        if "REFUSED_STREAM" in str(exc):
            return Outcome(local=Local.REFUSED_STREAM)
        return Outcome(local=Local.RESET)
    return None


def _small(response: httpx.Response) -> bool:
    """Whether `response` declares a body of at most `READ_AHEAD` bytes (`Read`)."""
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= READ_AHEAD


def _response_outcome(response: httpx.Response, call: Call) -> Outcome:
    """The outcome of a response. Its `grpc-status` header is read only for a policy with
    gRPC conditions (a gRPC call over httpx, where the trailers-only answer carries it)."""
    if not call.grpc_aware:
        return Outcome(response.status_code, None, None, response.headers)
    grpc = response.headers.get("grpc-status")
    grpc_status = int(grpc) if grpc is not None and grpc.isdigit() else None
    return Outcome(response.status_code, None, grpc_status or None, response.headers)


def _after_error(call: Call, authority: str, exc: httpx.TransportError) -> float:
    """An attempt to `authority` failed with `exc` (its counters released): the wait
    before the next attempt. Raises when the call ends here (`exc` itself when it is not
    the upstream's doing)."""
    outcome = _local_outcome(exc)
    if outcome is None:
        call.abandon(authority, time.monotonic())
        raise exc
    wait = call.end(authority, outcome, time.monotonic())
    if wait is None:
        raise _failed(call, exc, authority)
    return wait


def _failed(call: Call, exc: httpx.TransportError, authority: str) -> Exception:
    """The error a call ends with after `exc` ended its last attempt (chained to it)."""
    if call.expired(time.monotonic()):
        error: Exception = DeadlineExceeded(call.describe("the deadline passed"))
        error.__cause__ = exc
        return error
    mismatch = _peer_identity(exc, authority)
    if mismatch is not None:
        mismatch.add_note(f"sail: {call.describe('gave up')}")
        return mismatch
    exc.add_note(f"sail: {call.describe('gave up')}")
    return exc


def _peer_identity(exc: httpx.TransportError, authority: str) -> PeerIdentityMismatch | None:
    """sail's error for a connect error that was a peer identity check failing in the
    handshake (`sail.security.tls.PeerIdentityError`, under httpcore's and httpx's)."""
    cause: BaseException | None = exc
    for _ in range(4):
        cause = cause.__cause__ or cause.__context__ if cause is not None else None
        if isinstance(cause, PeerIdentityError):
            error = PeerIdentityMismatch.of(cause.expected, cause.presented, authority)
            error.__cause__ = exc
            return error
    return None


def _finish(response: httpx.Response, target: Target, call: Call) -> None:
    """What the returned response carries: the call's attempts, and the cookie a hash
    policy generated (Envoy sets it on the response, so the caller's jar sends it back)."""
    response.extensions["sail"] = CallInfo(
        target.service, target.route.cluster or "", tuple(call.attempts)
    )
    cookies = target.hash.set_cookies
    if cookies:
        response.headers = httpx.Headers(
            [*response.headers.multi_items(), *(("set-cookie", c) for c in cookies)]
        )
    if target.route.policy.headers is not None:
        _mutate_response(target, response)


class Releasing(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that ends its attempt's share of the circuit counters when closed,
    for the sync and the async transport alike (each uses its own half), and tells the
    outlier detector when it is cut off (`Call.cut_off`): a reset or a read timeout while
    it is read."""

    __slots__ = ("_authority", "_call", "_host", "_stream")

    def __init__(
        self, stream: httpx.SyncByteStream, call: Call, host: HostStats, authority: str
    ) -> None:
        self._stream = stream
        self._call: Call | None = call
        self._host = host
        self._authority = authority

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except httpx.TransportError as exc:
            self._cut_off(exc)
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:  # type: ignore[attr-defined]
                yield chunk
        except httpx.TransportError as exc:
            self._cut_off(exc)
            raise

    def _cut_off(self, exc: httpx.TransportError) -> None:
        call = self._call
        if call is not None and _local_outcome(exc) is not None:
            call.cut_off(self._authority)

    def close(self) -> None:
        call, self._call = self._call, None
        try:
            self._stream.close()
        finally:
            if call is not None:
                call.release(self._host)

    async def aclose(self) -> None:
        call, self._call = self._call, None
        try:
            await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            if call is not None:
                call.release(self._host)
