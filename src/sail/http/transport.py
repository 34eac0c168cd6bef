"""httpx transports that send mesh requests through sail and leave the rest alone.

A transport sends exactly one request (httpx's contract): it resolves the request's
authority to a mesh service, routes and balances it, and hands it to a pooled
`httpx.HTTPTransport` of the chosen endpoint, one pool per endpoint. Requests to hosts that
are not in the mesh go to the ordinary transport untouched.

The caller keeps seeing its own URL: the endpoint address is swapped into `request.url`
only while the inner transport sends, and the Host header stays the service's name (as
Envoy preserves it), unless the route rewrites it.

Each mesh request is a `sail.resilience.call.Call`: the transport sends attempts, classifies
what came back, and follows the call's decision - retry on another endpoint after a
back-off, or return. Every attempt carries `x-envoy-expected-rq-timeout-ms` (the time it
has), its timeouts are capped by the call's deadline, and the response returned has
`response.extensions["sail"]`, a `CallInfo` listing the attempts. An attempt counts
against the cluster's circuit breakers until its response is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import httpx

from sail.dataplane import pick, repick
from sail.errors import DeadlineExceeded, NoHealthyUpstream, RequestError
from sail.http.errors import to_httpx
from sail.model import RouteAction
from sail.resilience.call import Call, CallInfo
from sail.resilience.classify import Local, Outcome
from sail.resilience.deadline import EXPECTED_TIMEOUT_HEADER, call_deadline
from sail.resilience.fault import FaultDecision
from sail.resilience.retry import DEFAULT_POLICY, REPLAY_LIMIT
from sail.routing.mirror import mirrors, shadow_authority

if TYPE_CHECKING:
    from sail.balancing.stats import HostStats
    from sail.dataplane import ClusterRuntime, Dataplane, DataplaneState, Target
    from sail.model import Endpoint
    from sail.seam import MeshSeam

__all__ = ["AsyncMeshTransport", "MeshTransport"]


def service_name(url: httpx.URL) -> str:
    """The listener a URL asks for: `host`, or `host:port` when a non-default port is given
    (as gRPC names its listener after the `xds:///` target)."""
    port = url.port
    return url.host if port is None else f"{url.host}:{port}"


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
) -> list[tuple[str, httpx.Request]]:
    """Copies of `request` for the route's `request_mirror_policies` that fire this time:
    `(endpoint authority, request)` each, with Host suffixed `-shadow` as Envoy sends them.
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
        try:
            endpoint = pick(cluster, target.hash.value)
        except NoHealthyUpstream:
            continue
        headers = request.headers.copy()
        headers["host"] = host
        copies.append((endpoint.authority, httpx.Request(
            request.method,
            httpx.URL(scheme="http", host=endpoint.address, port=endpoint.port,
                      raw_path=target.route.path.encode("ascii")),
            headers=headers,
            stream=request.stream,
        )))
    return copies


def _resolve(
    dataplane: Dataplane, state: DataplaneState, request: httpx.Request, name: str
) -> Target:
    """Route and balance `request` on `state`; sail's errors leave as httpx ones."""
    try:
        return dataplane.resolve(
            name,
            request.headers.get("host", name),
            request.url.raw_path.decode("ascii"),
            request.headers,
            request.method,
            state,
        )
    except RequestError as exc:
        raise to_httpx(exc, request) from None


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
        return f"http://{self.raw_host.decode()}:{self.port}{self.raw_path.decode()}"


def _host_for(target: Target, endpoint: Endpoint) -> str | None:
    """The Host to send to `endpoint`: the route's rewrite, or for a retry's endpoint under
    `auto_host_rewrite`, that endpoint's own hostname (`None`: keep the caller's)."""
    if endpoint is not target.endpoint and endpoint.hostname:
        action = target.route.route.action
        if isinstance(action, RouteAction) and action.auto_host_rewrite:
            return endpoint.hostname
    return target.host


def _to_endpoint(request: httpx.Request, target: Target, endpoint: Endpoint) -> httpx.URL:
    """What to put in `request.url` while `endpoint`'s pool sends it; sets Host if the
    route rewrites it (for a retry's endpoint, `auto_host_rewrite` takes its hostname)."""
    host = _host_for(target, endpoint)
    if host is not None:
        request.headers["host"] = host
    url = _EndpointURL(
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


def _start_call(request: httpx.Request, target: Target) -> Call:
    plan = target.route.policy  # resolved once per route when the router was built
    cluster = target.cluster
    assert cluster is not None
    limits = cluster.limits
    if plan.priority and cluster.high_limits is not None:
        limits = cluster.high_limits  # a HIGH priority route has thresholds of its own
    return Call(
        plan.retry or DEFAULT_POLICY,
        limits,
        call_deadline(plan.timeout, request.headers, time.monotonic()),
        _replayable(request),
        outlier=cluster.outlier,
    )


def _begin(
    call: Call, request: httpx.Request, timeouts: object, cluster: ClusterRuntime,
    endpoint: Endpoint,
) -> HostStats:
    """Start an attempt: circuit breakers, the endpoint's in-flight count, and this
    attempt's share of the deadline in its timeouts and in `x-envoy-expected-rq-timeout-ms`.
    Returns the endpoint's counters, for `call.release`."""
    host = cluster.hosts.host(endpoint)
    try:
        timeout = call.begin(time.monotonic(), host)
    except RequestError as exc:
        raise to_httpx(exc, request) from None
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
        httpx.URL(scheme="http", host=endpoint.address, port=endpoint.port,
                  raw_path=target.route.path.encode("ascii")),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )


def _hedges(target: Target, call: Call) -> bool:
    """Whether this call hedges: `hedge_on_per_try_timeout` on the route's action (else its
    virtual host's), with a per-try timeout in the retry policy."""
    return target.route.policy.hedge and call.policy.per_try_timeout is not None


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


def _response_outcome(response: httpx.Response, call: Call) -> Outcome:
    """The outcome of a response. Its `grpc-status` header is read only for a policy with
    gRPC conditions (a gRPC call over httpx, where the trailers-only answer carries it)."""
    if not call.grpc_aware:
        return Outcome(response.status_code, None, None, response.headers)
    grpc = response.headers.get("grpc-status")
    grpc_status = int(grpc) if grpc is not None and grpc.isdigit() else None
    return Outcome(response.status_code, None, grpc_status or None, response.headers)


def _after_error(
    call: Call, host: HostStats, authority: str, exc: httpx.TransportError,
    request: httpx.Request,
) -> float:
    """An attempt to `authority` failed with `exc`: the wait before the next attempt.
    Raises when the call ends here (`exc` itself when it is not the upstream's doing)."""
    outcome = _local_outcome(exc)
    call.release(host)
    if outcome is None:
        raise exc
    wait = call.end(authority, outcome, time.monotonic())
    if wait is None:
        raise _failed(call, exc, request) from exc
    return wait


def _before_send(
    target: Target, request: httpx.Request, state: DataplaneState,
    mirror: Callable[[str, httpx.Request], None],
) -> None:
    """The route's request header changes, and its shadow copies handed to `mirror`."""
    plan = target.route.policy
    if plan.headers is not None:
        _mutate_request(target, request)
    if plan.mirrors:
        for authority, copy in _mirror_requests(target, request, state):
            mirror(authority, copy)


def _failed(call: Call, exc: httpx.TransportError, request: httpx.Request) -> Exception:
    """The error a call ends with after `exc` ended its last attempt."""
    if call.expired(time.monotonic()):
        return to_httpx(DeadlineExceeded(call.describe("the deadline passed")), request)
    exc.add_note(f"sail: {call.describe('gave up')}")
    return exc


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


def _next_endpoint(target: Target, call: Call, request: httpx.Request) -> Endpoint:
    try:
        return repick(target, call)
    except NoHealthyUpstream as exc:
        raise to_httpx(exc, request) from None


_Result = tuple["Endpoint", "HostStats", httpx.Response | None, httpx.TransportError | None]
"""How one attempt of a hedged call ended: endpoint, its counters, response or error."""


class _Hedge:
    """The bookkeeping of a hedged call (Envoy's `hedge_on_per_try_timeout`), shared by
    the sync transport (attempts in threads) and the async one (attempts as tasks).

    When the latest attempt's per-try timeout fires, that attempt goes on and another
    starts (if `Call.hedge` allows). The first response that is not a retriable failure
    wins; a retriable one starts a retry if the call allows, else is kept to be returned if
    nothing better comes; when every attempt has ended without a winner, the last kept
    response is returned, or the last error raised. Attempts left over when a winner is
    chosen are closed and released (`drain`, `finished`).
    """

    def __init__(self, call: Call, target: Target, request: httpx.Request) -> None:
        assert target.endpoint is not None and target.cluster is not None
        self.call = call
        self.target = target
        self.cluster = target.cluster
        self.request = request
        self.timeouts = request.extensions.get("timeout")
        self.first: Endpoint = target.endpoint
        self.pending = 0
        self.hedge_at = math.inf
        self.kept: _Result | None = None
        self.discard: list[_Result] = []
        self.lock = threading.Lock()  # sync only: a late thread vs. the call's end
        self.done = False

    def begin(self, endpoint: Endpoint) -> tuple[HostStats, httpx.Request]:
        host = self.cluster.hosts.host(endpoint)
        now = time.monotonic()
        try:
            self.call.begin(now, host)
        except RequestError as exc:
            raise to_httpx(exc, self.request) from None
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
        return host, request

    def until_hedge(self) -> float | None:
        """Seconds until the latest attempt's per-try timeout (`None`: none pending)."""
        if self.hedge_at == math.inf:
            return None
        return max(0.0, self.hedge_at - time.monotonic())

    def should_hedge(self) -> bool:
        self.hedge_at = math.inf
        return self.call.hedge(time.monotonic())

    def next_endpoint(self) -> Endpoint:
        return _next_endpoint(self.target, self.call, self.request)

    def settle(self, item: _Result) -> _Result | float | None:
        """An attempt ended: the winning result, a wait before a retry, or `None` (keep
        waiting for the attempts still out)."""
        self.pending -= 1
        endpoint, host, response, error = item
        call = self.call
        if response is None:
            assert error is not None
            outcome = _local_outcome(error)
            if outcome is None:
                call.release(host)
                raise error
        else:
            outcome = _response_outcome(response, call)
        wait = call.end(endpoint.authority, outcome, time.monotonic())
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
            call.release(host)
        if wait is not None:
            return wait
        if self.pending:
            return None
        if self.kept is not None:
            kept, self.kept = self.kept, None
            return kept
        assert error is not None
        raise _failed(call, error, self.request) from error

    def take_discarded(self, final: bool = False) -> list[_Result]:
        """Responses that lost, for the transport to close and then `call.release` (with
        the one kept, when the call is over)."""
        out, self.discard = self.discard, []
        if final and self.kept is not None:
            out.append(self.kept)
            self.kept = None
        return out


class _Releasing(httpx.SyncByteStream):
    """A response body that ends its attempt's share of the circuit counters on close."""

    __slots__ = ("_call", "_host", "_stream")

    def __init__(self, stream: httpx.SyncByteStream, call: Call, host: HostStats) -> None:
        self._stream = stream
        self._call: Call | None = call
        self._host = host

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)  # no generator of our own between httpx and the body

    def close(self) -> None:
        call, self._call = self._call, None
        try:
            self._stream.close()
        finally:
            if call is not None:
                call.release(self._host)


class _AsyncReleasing(httpx.AsyncByteStream):
    """The asyncio twin of `_Releasing`."""

    __slots__ = ("_call", "_host", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, call: Call, host: HostStats) -> None:
        self._stream = stream
        self._call: Call | None = call
        self._host = host

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        call, self._call = self._call, None
        try:
            await self._stream.aclose()
        finally:
            if call is not None:
                call.release(self._host)


P = TypeVar("P", httpx.HTTPTransport, httpx.AsyncHTTPTransport)

#: How long a departed endpoint's connections may finish their requests before they are
#: closed anyway. Like Envoy, sail never cuts a request short when a host leaves EDS: idle
#: connections close at once, busy ones when they finish, and only this cap overrides that.
DRAIN_GRACE = 60.0
REAP_INTERVAL = 1.0


def _idle(pool: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> bool:
    connections = getattr(getattr(pool, "_pool", None), "connections", None)
    if connections is None:
        return True
    return all(c.is_idle() or c.is_closed() for c in connections)


class _Draining(Generic[P]):
    __slots__ = ("checked", "deadline", "pool", "was_idle")

    def __init__(self, pool: P, deadline: float) -> None:
        self.pool: P = pool
        self.deadline = deadline
        self.was_idle = False
        self.checked = float("-inf")


class _PoolSet(Generic[P]):
    """One inner transport per endpoint authority, created on first use; pools of departed
    endpoints drain before they close."""

    def __init__(self, factory: Callable[[], P]) -> None:
        self._factory: Callable[[], P] = factory
        self._pools: dict[str, P] = {}
        self._draining: list[_Draining[P]] = []
        self._lock = threading.Lock()  # taken only when a pool is created or retired

    def get(self, authority: str) -> P:
        pool = self._pools.get(authority)
        if pool is None:
            with self._lock:
                pool = self._pools.get(authority)
                if pool is None:
                    pool = self._pools[authority] = self._factory()
        return pool

    def retire(self, live: frozenset[str]) -> bool:
        """Move the pools of endpoints no longer in any cluster to draining; True if any
        is draining."""
        with self._lock:
            deadline = time.monotonic() + DRAIN_GRACE
            for authority in [a for a in self._pools if a not in live]:
                self._draining.append(_Draining(self._pools.pop(authority), deadline))
            return bool(self._draining)

    def reapable(self) -> list[P]:
        """Draining pools that may be closed now: idle at this check and the one before
        (a request that took the pool just before it was retired has had a whole reap
        interval to claim a connection), or past their deadline."""
        now = time.monotonic()
        done: list[P] = []
        with self._lock:
            keep: list[_Draining[P]] = []
            for item in self._draining:
                if item.deadline <= now:
                    done.append(item.pool)
                    continue
                if now - item.checked < REAP_INTERVAL:
                    keep.append(item)
                    continue
                idle = _idle(item.pool)
                if idle and item.was_idle:
                    done.append(item.pool)
                else:
                    item.was_idle = idle
                    item.checked = now
                    keep.append(item)
            self._draining = keep
        return done

    @property
    def draining(self) -> bool:
        return bool(self._draining)

    def drain(self) -> list[P]:
        with self._lock:
            pools = list(self._pools.values()) + [d.pool for d in self._draining]
            self._pools.clear()
            self._draining.clear()
            return pools


class MeshTransport(httpx.BaseTransport):
    """The sync transport behind `Mesh.client()`.

    **Parameters**

    * `seam` - what the transport sees of its mesh.
    * `passthrough` - the transport for hosts outside the mesh.
    * `pool_options` - keyword arguments for each endpoint's `httpx.HTTPTransport`.
    """

    def __init__(
        self,
        seam: MeshSeam,
        passthrough: httpx.BaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = seam
        self._dataplane = seam.dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools: _PoolSet[httpx.HTTPTransport] = _PoolSet(
            lambda: httpx.HTTPTransport(**options)  # type: ignore[arg-type]
        )
        self._reaper: threading.Timer | None = None
        self._shadows: concurrent.futures.ThreadPoolExecutor | None = None
        seam.track(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._mesh.check_fork()
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services:
            if not self._mesh.is_mesh_host(url.host, name):
                return self._passthrough.handle_request(request)
            state = self._dataplane.state
        target = _resolve(self._dataplane, state, request, name)
        if target.faults is not None:
            decision = target.faults.decide(target.route, request.headers)
            if decision is not None:
                try:
                    if decision.delay:
                        time.sleep(decision.delay)
                    if decision.abort:
                        return _abort_response(decision, request)
                finally:
                    decision.finish()
        if target.endpoint is None:
            return _direct_response(target, request)
        _before_send(target, request, state, self._mirror)
        return self._send(request, target, url)

    def _mirror(self, authority: str, request: httpx.Request) -> None:
        """Send a shadow copy and forget it (its answer and errors are dropped)."""
        pool = self._pools.get(authority)

        def send() -> None:
            with contextlib.suppress(Exception):
                pool.handle_request(request).close()

        if self._shadows is None:
            self._shadows = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="sail-mirror"
            )
        self._shadows.submit(send)

    def _send(self, request: httpx.Request, target: Target, url: httpx.URL) -> httpx.Response:
        call = _start_call(request, target)
        if _hedges(target, call):
            return self._send_hedged(request, target, call)
        endpoint = target.endpoint
        assert endpoint is not None and target.cluster is not None
        timeouts = request.extensions.get("timeout")
        try:
            while True:
                host = _begin(call, request, timeouts, target.cluster, endpoint)
                authority = endpoint.authority
                pool = self._pools.get(authority)
                request.url = _to_endpoint(request, target, endpoint)
                wait: float | None
                try:
                    response = pool.handle_request(request)
                except httpx.TransportError as exc:
                    wait = _after_error(call, host, authority, exc, request)
                except BaseException:
                    call.release(host)  # interrupted: the attempt is over all the same
                    raise
                else:
                    wait = call.end(authority, _response_outcome(response, call), time.monotonic())
                    if wait is None:
                        response.stream = _Releasing(
                            response.stream,  # type: ignore[arg-type]
                            call,
                            host,
                        )
                        _finish(response, target, call)
                        return response
                    response.close()
                    call.release(host)
                finally:
                    request.url = url
                if wait > 0:
                    time.sleep(wait)
                endpoint = _next_endpoint(target, call, request)
        finally:
            call.finish()

    def _send_hedged(self, request: httpx.Request, target: Target, call: Call) -> httpx.Response:
        """Attempts in threads, so that one whose per-try timeout fired goes on while the
        next starts; the first good response wins (see `_Hedge`)."""
        hedge = _Hedge(call, target, request)
        done: queue.SimpleQueue[_Result] = queue.SimpleQueue()

        def close(results: list[_Result]) -> None:
            for _, host, response, _ in results:
                if response is not None:
                    response.close()
                call.release(host)

        def attempt(endpoint: Endpoint, host: HostStats, req: httpx.Request) -> None:
            pool = self._pools.get(endpoint.authority)
            try:
                item: _Result = (endpoint, host, pool.handle_request(req), None)
            except httpx.TransportError as exc:
                item = (endpoint, host, None, exc)
            except BaseException:
                call.release(host)
                raise
            with hedge.lock:
                if not hedge.done:
                    done.put(item)
                    return
            close([item])  # the call is over: a late loser

        def launch(endpoint: Endpoint) -> None:
            host, req = hedge.begin(endpoint)
            threading.Thread(target=attempt, args=(endpoint, host, req), daemon=True).start()

        try:
            launch(hedge.first)
            while True:
                try:
                    item = done.get(timeout=hedge.until_hedge())
                except queue.Empty:
                    if hedge.should_hedge():
                        launch(hedge.next_endpoint())
                    continue
                verdict = hedge.settle(item)
                close(hedge.take_discarded())
                if isinstance(verdict, tuple):
                    _, host, response, _ = verdict
                    assert response is not None
                    response.stream = _Releasing(
                        response.stream,  # type: ignore[arg-type]
                        call,
                        host,
                    )
                    _finish(response, target, call)
                    return response
                if verdict is not None:
                    if verdict > 0:
                        time.sleep(verdict)
                    launch(hedge.next_endpoint())
        finally:
            call.finish()
            with hedge.lock:
                hedge.done = True
            leftovers = hedge.take_discarded(final=True)
            while not done.empty():
                leftovers.append(done.get_nowait())
            close(leftovers)

    def retire(self, live: frozenset[str]) -> None:
        if self._pools.retire(live) and self._reaper is None:
            self._reap()

    def _reap(self) -> None:
        for pool in self._pools.reapable():
            pool.close()
        self._reaper = None
        if self._pools.draining:
            self._reaper = threading.Timer(REAP_INTERVAL, self._reap)
            self._reaper.daemon = True
            self._reaper.start()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._shadows is not None:
            self._shadows.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.drain():
            pool.close()
        self._passthrough.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of `MeshTransport`, behind `Mesh.async_client()`.

    Pools of departed endpoints are closed on this transport's own event loop, at a later
    request once they are idle, since another thread cannot await them.
    """

    def __init__(
        self,
        seam: MeshSeam,
        passthrough: httpx.AsyncBaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = seam
        self._dataplane = seam.dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools: _PoolSet[httpx.AsyncHTTPTransport] = _PoolSet(
            lambda: httpx.AsyncHTTPTransport(**options)  # type: ignore[arg-type]
        )
        self._shadows: set[asyncio.Task[None]] = set()
        seam.track(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._pools.draining:
            await self._reap()
        self._mesh.check_fork()
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services:
            if not await self._mesh.ais_mesh_host(url.host, name):
                return await self._passthrough.handle_async_request(request)
            state = self._dataplane.state
        target = _resolve(self._dataplane, state, request, name)
        if target.faults is not None:
            decision = target.faults.decide(target.route, request.headers)
            if decision is not None:
                try:
                    if decision.delay:
                        await anyio.sleep(decision.delay)
                    if decision.abort:
                        return _abort_response(decision, request)
                finally:
                    decision.finish()
        if target.endpoint is None:
            return _direct_response(target, request)
        _before_send(target, request, state, self._mirror)
        return await self._send(request, target, url)

    def _mirror(self, authority: str, request: httpx.Request) -> None:
        """Send a shadow copy as a task of its own and forget it (its answer and errors
        are dropped)."""
        pool = self._pools.get(authority)

        async def send() -> None:
            with contextlib.suppress(Exception):
                await (await pool.handle_async_request(request)).aclose()

        task = asyncio.get_running_loop().create_task(send())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _send(
        self, request: httpx.Request, target: Target, url: httpx.URL
    ) -> httpx.Response:
        call = _start_call(request, target)
        if _hedges(target, call):
            return await self._send_hedged(request, target, call)
        endpoint = target.endpoint
        assert endpoint is not None and target.cluster is not None
        timeouts = request.extensions.get("timeout")
        try:
            while True:
                host = _begin(call, request, timeouts, target.cluster, endpoint)
                authority = endpoint.authority
                pool = self._pools.get(authority)
                request.url = _to_endpoint(request, target, endpoint)
                wait: float | None
                try:
                    response = await pool.handle_async_request(request)
                except httpx.TransportError as exc:
                    wait = _after_error(call, host, authority, exc, request)
                except BaseException:
                    call.release(host)  # cancelled
                    raise
                else:
                    wait = call.end(authority, _response_outcome(response, call), time.monotonic())
                    if wait is None:
                        response.stream = _AsyncReleasing(
                            response.stream,  # type: ignore[arg-type]
                            call,
                            host,
                        )
                        _finish(response, target, call)
                        return response
                    await response.aclose()
                    call.release(host)
                finally:
                    request.url = url
                if wait > 0:
                    await anyio.sleep(wait)
                endpoint = _next_endpoint(target, call, request)
        finally:
            call.finish()

    async def _send_hedged(
        self, request: httpx.Request, target: Target, call: Call
    ) -> httpx.Response:
        """Attempts as tasks, so that one whose per-try timeout fired goes on while the
        next starts; the first good response wins (see `_Hedge`)."""
        hedge = _Hedge(call, target, request)
        send, receive = anyio.create_memory_object_stream[_Result](max_buffer_size=64)

        async def close(results: list[_Result]) -> None:
            for _, host, response, _ in results:
                if response is not None:
                    await response.aclose()
                call.release(host)

        try:
            async with anyio.create_task_group() as tasks:

                async def attempt(endpoint: Endpoint, host: HostStats, req: httpx.Request) -> None:
                    pool = self._pools.get(endpoint.authority)
                    try:
                        item: _Result = (
                            endpoint, host, await pool.handle_async_request(req), None
                        )
                    except httpx.TransportError as exc:
                        item = (endpoint, host, None, exc)
                    except BaseException:
                        call.release(host)  # cancelled: a losing attempt
                        raise
                    send.send_nowait(item)

                def launch(endpoint: Endpoint) -> None:
                    host, req = hedge.begin(endpoint)
                    tasks.start_soon(attempt, endpoint, host, req)

                launch(hedge.first)
                while True:
                    item = None
                    with anyio.move_on_after(hedge.until_hedge()):
                        item = await receive.receive()
                    if item is None:
                        if hedge.should_hedge():
                            launch(hedge.next_endpoint())
                        continue
                    verdict = hedge.settle(item)
                    await close(hedge.take_discarded())
                    if isinstance(verdict, tuple):
                        tasks.cancel_scope.cancel()
                        _, host, response, _ = verdict
                        assert response is not None
                        response.stream = _AsyncReleasing(
                            response.stream,  # type: ignore[arg-type]
                            call,
                            host,
                        )
                        _finish(response, target, call)
                        return response
                    if verdict is not None:
                        if verdict > 0:
                            await anyio.sleep(verdict)
                        launch(hedge.next_endpoint())
            raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
        finally:
            call.finish()
            leftovers = hedge.take_discarded(final=True)
            while True:
                try:
                    leftovers.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await close(leftovers)
            send.close()
            receive.close()

    def retire(self, live: frozenset[str]) -> None:
        self._pools.retire(live)

    async def _reap(self) -> None:
        for pool in self._pools.reapable():
            await pool.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.drain():
            await pool.aclose()
        await self._passthrough.aclose()
