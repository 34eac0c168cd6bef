"""What the sync and asyncio gRPC channels share: routing a call, its deadline, and the
attempts of one call driven through `sail.resilience.call.Call` - the same core as the
httpx transports, with gRPC's statuses where HTTP has responses.

A call is routed as Envoy and gRPC's xDS clients route it: the authority is the channel's
target, the path is the method (`/package.Service/Method`), the method is `POST`, and the
headers are the call's metadata (plus `content-type: application/grpc`; `-bin` entries are
not matched, as gRFC A28 says).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from sail.dataplane import pick, repick
from sail.errors import (
    DeadlineExceeded,
    NoHealthyUpstream,
    RequestError,
    SailError,
)
from sail.model import RouteAction
from sail.resilience.call import Call, CallInfo
from sail.resilience.classify import Local, Outcome
from sail.resilience.deadline import inherited_deadline
from sail.resilience.retry import DEFAULT_POLICY, REPLAY_LIMIT

if TYPE_CHECKING:
    from sail.balancing.stats import HostStats
    from sail.dataplane import Dataplane, DataplaneState, Target
    from sail.model import Endpoint
    from sail.resilience.fault import FaultDecision
    from sail.seam import MeshSeam

__all__ = [
    "REPLAY_LIMIT",
    "SUBCHANNEL_GRACE",
    "Attempts",
    "ChannelCore",
    "MeshRpcError",
    "MetadataHeaders",
    "Subchannel",
    "check_method",
    "http_to_grpc",
    "message_size",
    "prepare",
    "rpc_outcome",
    "target_name",
]

Metadata = Sequence[tuple[str, "str | bytes"]]

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_METHOD = re.compile(r"/[^/]+/[^/]+")


class MeshRpcError(SailError, grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A gRPC call that sail failed itself, before or between attempts: no route, no
    endpoint, a circuit breaker, the deadline, an injected fault. It is a `grpc.RpcError`
    and a `grpc.Call` (`code()`, `details()`), as grpcio's own errors are, so code that
    handles those handles it; `details()` names the service and the reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    @classmethod
    def of(cls, exc: RequestError) -> MeshRpcError:
        """The gRPC form of one of sail's request errors."""
        code = (
            grpc.StatusCode.DEADLINE_EXCEEDED
            if isinstance(exc, DeadlineExceeded)
            else grpc.StatusCode.UNAVAILABLE
        )
        error = cls(code, str(exc))
        error.__cause__ = exc
        return error

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return f"{self._code.name}: {self._details}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Any) -> bool:
        return False

    # grpc.Future: a call that has failed
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> MeshRpcError:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


def http_to_grpc(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP status a route answers with itself (a direct response, a
    fault abort), as Envoy and gRPC map them (gRPC's http-grpc-status-mapping.md)."""
    return _HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)


_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


class MetadataHeaders:
    """A call's metadata as routing reads headers (`sail.routing.request.Headers`)."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: Metadata | None) -> None:
        self._metadata = metadata or ()

    def get(self, name: str, default: None = None, /) -> str | None:
        values = self.get_list(name)
        return ",".join(values) if values else None

    def get_list(self, name: str) -> list[str]:
        name = name.lower()
        values = [v for k, v in self._metadata if k.lower() == name and isinstance(v, str)]
        if not values and name == "content-type":
            return ["application/grpc"]
        return values


def target_name(target: str) -> tuple[str, str]:
    """`(host, listener name)` of a channel target: `ratings`, `ratings:9090`, or either
    after `xds:///` (so one target string serves grpcio's resolver and sail alike)."""
    name = target.removeprefix("xds:///")
    host = name
    if name.startswith("["):
        host = name[1:name.find("]")]
    elif name.count(":") == 1:
        host = name.partition(":")[0]
    return host, name


def check_method(service: str, method: str) -> MeshRpcError | None:
    """The error of a call to `method` when it is not a gRPC method path."""
    if _METHOD.fullmatch(method):
        return None
    return MeshRpcError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"service {service!r}: {method!r} is not a gRPC method path (/package.Service/Method)",
    )


def prepare(
    dataplane: Dataplane,
    state: DataplaneState,
    service: str,
    method: str,
    metadata: Metadata | None,
    timeout: float | None,
) -> Attempts:
    """Route one call and set up its attempts. Raises `MeshRpcError` when the call cannot
    be sent (no route, no endpoint, a route that answers itself)."""
    headers = MetadataHeaders(metadata) if metadata else _NO_METADATA
    try:
        target = dataplane.resolve(service, service, method, headers, "POST", state)
    except RequestError as exc:
        raise MeshRpcError.of(exc) from None
    cluster = target.cluster
    if cluster is None:  # a direct response or redirect: answered without an upstream
        action = target.route.route.action
        status = getattr(action, "status", 404)
        raise MeshRpcError(
            http_to_grpc(status),
            f"service {service!r}: the route for {method!r} answers {status} itself",
        )
    plan = target.route.policy
    now = time.monotonic()
    deadline = now + timeout if timeout is not None else None
    cap = plan.grpc_timeout
    if cap is None:
        runtime = state.services.get(service)
        hcm = runtime.hcm if runtime is not None else None
        cap = hcm.max_stream_duration if hcm is not None else None
    if cap:  # A31: max_stream_duration caps the caller's deadline; 0 is no cap
        deadline = now + cap if deadline is None else min(deadline, now + cap)
    inherited = inherited_deadline.get()
    if inherited is not None:
        deadline = inherited if deadline is None else min(deadline, inherited)
    limits = cluster.limits
    if plan.priority and cluster.high_limits is not None:
        limits = cluster.high_limits
    call = Call(
        plan.retry or DEFAULT_POLICY, limits, deadline, outlier=cluster.outlier,
        observer=dataplane.observer, service=service,
    )
    if plan.headers is not None:
        metadata = _mutated(target, metadata)
    fault = None
    faults = target.faults
    # The filter decides only when some config applies (its own, or the route's): else
    # `decide` would say None.
    if faults is not None and (faults.policy is not None or plan.faults):
        fault = faults.decide(target.route, headers)
    return Attempts(target, call, metadata, fault)


_NO_METADATA = MetadataHeaders(None)  # immutable: shared by the calls without metadata


def _mutated(target: Target, metadata: Metadata | None) -> Metadata:
    """The route's request header changes applied to the call's metadata (binary entries
    are kept as they are)."""
    mutation = target.route.policy.headers
    assert mutation is not None
    items = list(metadata or ())
    text = [(k, v) for k, v in items if isinstance(v, str)]
    binary = [(k, v) for k, v in items if not isinstance(v, str)]
    return [*mutation.apply_request(text), *binary]


class Attempts:
    """The attempts of one routed gRPC call, for a channel to drive (no I/O here).

    ```python
    attempts = prepare(...)
    attempts.fault_error()         # an injected abort (after `fault.delay`), or None
    while True:
        timeout = attempts.begin()             # counts the attempt; may raise
        <send to attempts.endpoint with timeout, metadata=attempts.metadata>
        ok:      attempts.release(host); attempts.succeeded(); return
        failed:  attempts.release(host); wait = attempts.failed(code, details)
                 if wait is None: raise attempts.give_up(error)
                 <sleep wait>; attempts.advance()
    ```
    """

    __slots__ = ("call", "endpoint", "fault", "host", "metadata", "started", "target", "timeout")

    def __init__(
        self, target: Target, call: Call, metadata: Metadata | None, fault: FaultDecision | None
    ) -> None:
        assert target.endpoint is not None
        self.target = target
        self.call = call
        self.metadata = metadata
        self.fault = fault
        self.endpoint: Endpoint = target.endpoint
        self.host: HostStats | None = None
        self.timeout: float | None = None
        self.started = 0.0

    @property
    def info(self) -> CallInfo:
        """The call's attempts so far."""
        target = self.target
        return CallInfo(target.service, target.route.cluster or "", tuple(self.call.attempts))

    def fault_error(self) -> MeshRpcError | None:
        """The error of an injected abort (the delay, if any, already waited), else `None`;
        leaves the fault filter's gauge either way."""
        fault = self.fault
        if fault is None:
            return None
        fault.finish()
        if not fault.abort:
            return None
        self.call.finish()
        code = (
            _CODES.get(fault.grpc_status, grpc.StatusCode.UNKNOWN)
            if fault.grpc_status is not None
            else http_to_grpc(fault.http_status or 503)
        )
        return MeshRpcError(code, "fault filter abort")

    def begin(self) -> float | None:
        """Start an attempt to `endpoint`: its timeout (`None`: none). Raises `MeshRpcError`
        past the deadline or over a circuit breaker."""
        cluster = self.target.cluster
        assert cluster is not None
        now = time.monotonic()
        host = self.host = cluster.hosts.host(self.endpoint)
        try:
            timeout = self.call.begin(now, host, self.endpoint.authority)
        except RequestError as exc:
            self.call.finish()
            raise MeshRpcError.of(exc) from None
        self.started = now
        self.timeout = timeout
        return timeout

    def release(self, host: HostStats | None) -> None:
        """The attempt that counted against `host` has ended (its RPC is over)."""
        self.call.release(host)

    def ok(self, host: HostStats | None) -> None:
        """The attempt that counted against `host` answered OK: `release` and `succeeded`
        at once (a unary call's common end)."""
        call = self.call
        call.release(host)
        call.end(self.endpoint.authority, _OK, time.monotonic())
        call.finish()

    def succeeded(self) -> None:
        """The attempt answered (OK, or a streaming call's first message): the result."""
        self.call.end(self.endpoint.authority, _OK, time.monotonic())
        self.call.finish()

    def failed(self, code: grpc.StatusCode, details: str | None) -> float | None:
        """The attempt ended with `code`: the wait before the next one, or `None` when the
        call ends here."""
        now = time.monotonic()
        outcome = rpc_outcome(code, details, self.timeout, now - self.started)
        wait = self.call.end(self.endpoint.authority, outcome, now)
        if wait is None:
            self.call.finish()
        return wait

    def advance(self) -> None:
        """Pick the next attempt's endpoint."""
        try:
            self.endpoint = repick(self.target, self.call)
        except NoHealthyUpstream as exc:
            self.call.finish()
            raise MeshRpcError.of(exc) from None

    def give_up(self, error: BaseException) -> BaseException:
        """What the call raises after its last attempt failed with `error`."""
        if self.call.expired(time.monotonic()) and not _is_deadline(error):
            return MeshRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, self.call.describe("the deadline passed")
            )
        if len(self.call.attempts) > 1:
            error.add_note(f"sail: {self.call.describe('gave up')}")
        return error

    def stop(self) -> None:
        """The caller cancelled the call: give back what it holds."""
        self.call.finish()


def _is_deadline(error: BaseException) -> bool:
    code = getattr(error, "code", None)
    return callable(code) and code() is grpc.StatusCode.DEADLINE_EXCEEDED


_OK = Outcome(200)

# How grpcio words the failures that are the client's own view of the connection, not
# the server's answer (its transport's messages, seen with grpcio 1.60 to 1.85).
_CONNECT_FAILED = ("failed to connect to all addresses", "Connection refused")
_RESET = ("Socket closed", "Connection reset", "Broken pipe", "GOAWAY", "Stream removed",
          "connection error", "Transport closed", "Connection aborted")
_REFUSED = "error code 7"  # RST_STREAM REFUSED_STREAM: the server never processed it


def rpc_outcome(
    code: grpc.StatusCode, details: str | None, timeout: float | None, elapsed: float
) -> Outcome:
    """The outcome of an attempt that ended with gRPC status `code` (not OK).

    grpcio reports the client's own failures as statuses too: a connection that could not
    be made or broke is `UNAVAILABLE` (told apart from a server's `UNAVAILABLE` by
    grpcio's message), a deadline that its timer ended is `DEADLINE_EXCEEDED` after the
    attempt's whole timeout. Those are local failures, as Envoy classifies them, and keep
    the status the caller sees for the gRPC retry conditions."""
    status = code.value[0]
    text = details or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        if any(part in text for part in _CONNECT_FAILED):
            return Outcome(local=Local.CONNECT_FAILURE, grpc_status=status)
        if _REFUSED in text:
            return Outcome(local=Local.REFUSED_STREAM, grpc_status=status)
        if any(part in text for part in _RESET):
            return Outcome(local=Local.RESET, grpc_status=status)
    elif (
        code is grpc.StatusCode.DEADLINE_EXCEEDED
        and timeout is not None
        and elapsed >= timeout * 0.99
    ):
        return Outcome(local=Local.TIMEOUT, grpc_status=status)
    return Outcome(200, None, status)


def message_size(message: object) -> int:
    """The size of a request message, for the replay limit (`REPLAY_LIMIT`)."""
    byte_size = getattr(message, "ByteSize", None)
    if callable(byte_size):
        return int(byte_size())
    if isinstance(message, bytes | bytearray | memoryview | str):
        return len(message)
    return 0



#: How long a subchannel of an endpoint that left the mesh stays open for the calls still
#: on it (closing a grpcio channel cancels its calls).
SUBCHANNEL_GRACE = 30.0


class Subchannel:
    """One endpoint's grpcio channel and the inner multicallables made on it (keyed by the
    mesh channel's multicallable)."""

    __slots__ = ("channel", "methods")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.methods: dict[object, Any] = {}


class ChannelCore:
    """What the sync and asyncio mesh channels share: the target, its subchannels, and
    whether the target is the mesh's. Subclasses say how a grpcio channel is opened
    (`_open`) and closed once its endpoint is gone (`_close_later`)."""

    def __init__(
        self,
        mesh: MeshSeam,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
    ) -> None:
        self._mesh = mesh
        self._dataplane = mesh.dataplane
        self._host, self.service = target_name(target)
        self._credentials = credentials
        self._options = tuple(options)
        self._compression = compression
        self._subchannels: dict[str, Subchannel] = {}
        self._outside: Any = None
        self._closed = False
        mesh.classify(self._host, self.service)  # asks the control plane, without waiting
        mesh.track(self)

    def _open(self, target: str) -> Any:
        raise NotImplementedError

    def _close_later(self, channel: Any) -> None:
        raise NotImplementedError

    def retire(self, live: frozenset[str]) -> None:
        """Close (after `SUBCHANNEL_GRACE`) the subchannels of endpoints no longer in the
        mesh. Called by the mesh after every config update."""
        for authority in [a for a in self._subchannels if a not in live]:
            sub = self._subchannels.pop(authority, None)
            if sub is not None:
                self._close_later(sub.channel)

    def _verdict(self) -> bool | threading.Event:
        """Whether the target is a mesh service, or an event to wait on for the control
        plane's answer (then `_settled()`). Raises `MeshRpcError` for a mesh name the mesh
        does not have."""
        verdict = self._mesh.classify(self._host, self.service)
        if verdict is False:
            return self._settled()
        return verdict

    def _settled(self) -> bool:
        """After waiting: whether the target is a mesh service. Raises `MeshRpcError` for a
        mesh name the mesh does not have; `False` is a target outside the mesh."""
        if self.service in self._dataplane.state.snapshot.listeners:
            return True
        if self._mesh.is_candidate(self._host):
            raise MeshRpcError(
                grpc.StatusCode.UNAVAILABLE,
                f"service {self.service!r}: the mesh has no listener for it",
            )
        return False

    def _method(self, authority: str, key: object, make: Callable[[Any], Any]) -> Any:
        """The multicallable `key` on the subchannel of `authority`, made by `make(channel)`
        the first time (two dict probes once both exist)."""
        sub = self._subchannels.get(authority)
        if sub is not None:
            fn = sub.methods.get(key)
            if fn is not None:
                return fn
        sub = self._subchannel(authority)
        fn = sub.methods.get(key)
        if fn is None:
            fn = sub.methods[key] = make(sub.channel)
        return fn

    def _subchannel(self, authority: str) -> Subchannel:
        sub = self._subchannels.get(authority)
        if sub is None:
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            channel = self._open(authority)
            sub = self._subchannels.setdefault(authority, Subchannel(channel))
            if sub.channel is not channel:  # another thread opened it first
                self._close_later(channel)
        return sub

    def _plain(self) -> Any:
        """The grpcio channel of a target outside the mesh."""
        if self._outside is None:
            self._outside = self._open(self.service)
        return self._outside

    def _some_endpoint(self) -> str | None:
        """An endpoint of one of the service's clusters (for connectivity), if any."""
        state = self._dataplane.state
        runtime = state.services.get(self.service)
        if runtime is None:
            return None
        for vhost in runtime.config.virtual_hosts:
            for route in vhost.routes:
                action = route.action
                names = action.cluster_names() if isinstance(action, RouteAction) else ()
                for name in names:
                    cluster = state.clusters.get(name)
                    if cluster is not None and cluster.assignment is not None:
                        try:
                            return pick(cluster).authority
                        except NoHealthyUpstream:
                            continue
        return None
