"""The request path of one gRPC call, written once for both channels: a decision object,
with no I/O, that the sync channel's shell and the aio channel's drive.

The shell asks the flow what to do, does it, and tells the flow what happened, until the
flow says the call is done or has failed: the loop of tenacity's `Retrying.__call__`, for
gRPC. The two shells' loops differ only by `await`; threads, tasks, timers and grpcio's
calls stay in the shells.

```python
action = flow.start()                 # the routing prelude, then the first action
while True:
    if type(action) is Send:          # attempt `number` to `endpoint`
        try:
            response = <call action.endpoint with action.timeout and action.metadata>
        except grpc.RpcError as error:
            action = flow.failed(error)
        except BaseException:         # the caller gave up, or the send itself failed
            flow.cancel()
            raise
        else:
            action = flow.answered(response)
    elif type(action) is Done:
        return action.value
    elif type(action) is Sleep:       # a back-off, or an injected delay
        <sleep action.seconds>; action = flow.waited()
    elif type(action) is Wait:        # the control plane's first answer about the target
        <wait on action.event, at most action.seconds>; action = flow.waited()
    elif type(action) is Outside:     # not a mesh target: one plain grpcio call
        return <the call on the target's own grpcio channel>
    else:                             # Fail: one of sail's errors, or the attempt's own
        raise <the channel's form of action.error>    # grpc.RpcError (sail.grpc._errors)
```

`UnaryFlow` is a call with one response, retried whole. `StreamFlow` is a call whose
responses stream: the shell reports each message (`received()`) and the call is committed
at the first one (gRFC A6); after that `failed()` hands the error back as it is. Both take
the `Replay` of a call whose requests stream: once it has overflowed, the call is not
retried.

The prelude (`start`, then `waited` after a `Wait`), for every call of both channels: the
fork check, whether the target is the mesh's (waiting for the control plane's first
answer about a new name, at most the discovery timeout), then `prepare` (route, deadline,
`Call`, faults), then the fault filter's delay and abort.

Accounting, for every attempt: `Call.begin` when the flow says `Send`; then exactly one of
`Call.end` (the outcome: `answered`, `failed`, a stream's commit) or `Call.abandon` (the
caller cancelled it in flight: `cancel`); `Call.release` once its RPC is over (a unary
attempt when it ends; a stream's when the shell says its inner call is `closed`, since a
stream outlives its commit); `Call.finish` once the call is over, which gives back a
retry reserved for an attempt that never came. A flow is not shared between threads: a
shell that reports to it from several (a future's callbacks, another thread's `cancel()`)
holds a lock around each report.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import TYPE_CHECKING, Any

import grpc

from sail.dataplane import DataplaneState, repick
from sail.errors import DeadlineExceeded, NoHealthyUpstream, RequestError
from sail.grpc._errors import StatusError, http_to_grpc
from sail.grpc._route import prepare
from sail.grpc._tls import attempt_identity, identity_error
from sail.resilience.call import CallInfo
from sail.resilience.classify import Local, Outcome

if TYPE_CHECKING:
    from sail.balancing.stats import HostStats
    from sail.dataplane import Target, UpstreamTlsRuntime
    from sail.grpc._core import ChannelCore
    from sail.grpc._replay import Replay
    from sail.grpc._route import Metadata
    from sail.model import Endpoint
    from sail.resilience.call import Call
    from sail.resilience.fault import FaultDecision
    from sail.security.spiffe import SpiffeId

__all__ = [
    "OUTSIDE",
    "Action",
    "Done",
    "Fail",
    "Outside",
    "Send",
    "Sleep",
    "StreamFlow",
    "UnaryFlow",
    "Wait",
    "rpc_outcome",
]


# -- actions ------------------------------------------------------------------------------


class Send:
    """Send attempt `number` (1, 2...) to `endpoint` on its subchannel, with `timeout`
    (`None`: none) and `metadata`. `host` is the endpoint's counters, `started` when the
    attempt began (the flow's clock), `tls` the cluster's TLS (`None`: plaintext) and
    `peer` the identity its handshake checks."""

    __slots__ = (
        "endpoint", "host", "metadata", "number", "peer", "released", "started", "timeout",
        "tls",
    )

    def __init__(
        self, number: int, endpoint: Endpoint, timeout: float | None,
        metadata: Metadata | None, host: HostStats, started: float,
        tls: UpstreamTlsRuntime | None = None, peer: SpiffeId | None = None,
    ) -> None:
        self.number = number
        self.endpoint = endpoint
        self.tls = tls
        self.peer = peer
        self.timeout = timeout
        self.metadata = metadata
        self.host = host
        self.started = started
        self.released = False

    def __repr__(self) -> str:
        return f"Send({self.number}, {self.endpoint.authority}, timeout={self.timeout})"


class Sleep:
    """Sleep `seconds` (a retry's back-off, the fault filter's delay), then `waited()`."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Sleep({self.seconds})"


class Wait:
    """Wait for the control plane's first answer about the target: until `event` is set,
    at most `seconds`; then `waited()`."""

    __slots__ = ("event", "seconds")

    def __init__(self, event: threading.Event, seconds: float) -> None:
        self.event = event
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Wait({self.seconds})"


class Outside:
    """The target is not the mesh's: send the call once, as given, on the target's own
    grpcio channel (the flow is over)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OUTSIDE"


OUTSIDE = Outside()


class Done:
    """The call is over: `value` is what the successful attempt returned."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Done({self.value!r})"


class Fail:
    """The call is over: raise `error` to the caller (in the channel's form: see
    `sail.grpc._errors`). One of sail's errors, or the last attempt's `grpc.RpcError`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Fail({self.error!r})"


Action = Send | Sleep | Wait | Outside | Done | Fail

# The stages of a flow.
_ROUTING = "routing"  # not started
_DISCOVERING = "discovering"  # said Wait
_DELAYING = "delaying"  # said Sleep for the fault filter's delay
_ATTEMPTING = "attempting"  # said Send: the attempt has begun and not ended
_BACKING_OFF = "backing off"  # said Sleep before a retry
_COMMITTED = "committed"  # a stream's first message came: over for the flow
_OVER = "over"  # done, failed, outside the mesh, or cancelled

_OK = Outcome(200)
_CANCELLED = "Locally cancelled by application!"  # grpcio's words


class _Flow:
    """What the unary and the streaming flow share: the prelude, the attempts, giving up
    and cancelling (see the module docstring)."""

    __slots__ = (
        "call",
        "core",
        "endpoint",
        "fault",
        "metadata",
        "method",
        "method_error",
        "replay",
        "sent",
        "stage",
        "target",
        "timeout",
    )

    endpoint: Endpoint  # the next attempt's (set once routed)

    def __init__(
        self,
        core: ChannelCore,
        method: str,
        method_error: StatusError | None,
        metadata: Metadata | None,
        timeout: float | None,
        replay: Replay | None = None,
    ) -> None:
        self.core = core
        self.method = method
        self.method_error = method_error
        self.metadata = metadata
        self.timeout = timeout
        self.replay = replay
        self.stage = _ROUTING
        self.target: Target | None = None
        self.call: Call | None = None
        self.fault: FaultDecision | None = None
        self.sent: Send | None = None

    @property
    def info(self) -> CallInfo | None:
        """The call's attempts so far (`None` before it is routed, or outside the mesh)."""
        target, call = self.target, self.call
        if target is None or call is None:
            return None
        return CallInfo(target.service, target.route.cluster or "", tuple(call.attempts))

    # -- what the shell reports ---------------------------------------------------------------

    def start(self) -> Action:
        """Route the call: `Outside`, `Wait`, `Sleep` (an injected delay), `Send` (the
        first attempt) or `Fail`."""
        if self.stage is not _ROUTING:  # cancelled before it started
            return self._cancelled()
        core = self.core
        try:
            where = core.locate()
        except RequestError as exc:
            return self._fail(exc)
        if type(where) is DataplaneState:
            return self._route(where)
        if where is None:
            self.stage = _OVER
            return OUTSIDE
        assert isinstance(where, threading.Event)
        self.stage = _DISCOVERING
        return Wait(where, core.discovery_limit(self.timeout))

    def waited(self) -> Action:
        """The `Wait` or `Sleep` asked for is over: what comes next."""
        stage = self.stage
        if stage is _BACKING_OFF:
            return self._next()
        if stage is _DELAYING:
            return self._delayed()
        if stage is _DISCOVERING:
            try:
                state = self.core.settled()
            except RequestError as exc:
                return self._fail(exc)
            if state is None:
                self.stage = _OVER
                return OUTSIDE
            return self._route(state)
        return self._cancelled()

    def cancel(self) -> None:
        """The caller gave up (it cancelled, was interrupted, or sending raised): the
        attempt in flight is abandoned (reported to the observers, no outcome) and what the
        call holds is given back. Idempotent; after it, every report but a stream's
        `closed` answers `Fail` (a `CANCELLED` `StatusError`, or the error reported)."""
        stage = self.stage
        if stage is _OVER or stage is _COMMITTED:
            return
        self.stage = _OVER
        call = self.call
        if stage is _ATTEMPTING:
            sent = self.sent
            assert call is not None and sent is not None
            self._drop(sent)
            call.abandon(sent.endpoint.authority, monotonic())
        elif stage is _DELAYING:
            assert self.fault is not None
            self.fault.finish()
        if call is not None:
            call.finish()

    # -- the steps ----------------------------------------------------------------------------

    def _route(self, state: DataplaneState) -> Action:
        if self.method_error is not None:
            return self._fail(self.method_error)
        core = self.core
        try:
            target, call, metadata, fault = prepare(
                core.dataplane, state, core.service, self.method, self.metadata, self.timeout,
                monotonic(),
            )
        except RequestError as exc:
            return self._fail(exc)
        self.target = target
        self.call = call
        self.metadata = metadata
        assert target.endpoint is not None
        self.endpoint = target.endpoint
        if fault is not None:
            self.fault = fault
            if fault.delay:
                self.stage = _DELAYING
                return Sleep(fault.delay)
            return self._delayed()
        return self._send()

    def _delayed(self) -> Action:
        """After the fault filter's delay (if any): its abort, or the first attempt."""
        fault = self.fault
        assert fault is not None
        fault.finish()
        if fault.abort:
            code = (
                _CODES.get(fault.grpc_status, grpc.StatusCode.UNKNOWN)
                if fault.grpc_status is not None
                else http_to_grpc(fault.http_status or 503)
            )
            return self._fail(
                StatusError(code, f"service {self.core.service!r}: fault filter abort")
            )
        return self._send()

    def _send(self) -> Action:
        """Begin an attempt to `endpoint` (circuit breakers, deadline, observers)."""
        call = self.call
        target = self.target
        assert call is not None and target is not None and target.cluster is not None
        endpoint = self.endpoint
        tls = target.cluster.tls
        peer = None
        if tls is not None:  # the identity this attempt's handshake checks
            try:
                peer = attempt_identity(self.core.service, target.cluster.cluster.name, tls,
                                        endpoint)
            except RequestError as exc:
                return self._fail(exc)
        now = monotonic()
        host = target.cluster.hosts.host(endpoint)
        try:
            timeout = call.begin(now, host, endpoint.authority)
        except RequestError as exc:
            return self._fail(exc)
        self.stage = _ATTEMPTING
        sent = self.sent = Send(
            call.started, endpoint, timeout, self.metadata, host, now, tls, peer
        )
        return sent

    def _failed(self, sent: Send, error: grpc.RpcError) -> Action:
        """Attempt `sent` ended with `error`: retry (after a back-off), or give up."""
        call = self.call
        assert call is not None
        now = monotonic()
        replay = self.replay
        if replay is not None and replay.overflowed:
            call.max_attempts = 0  # what was sent cannot be sent again
        outcome = rpc_outcome(error.code(), error.details(), sent.timeout, now - sent.started)
        wait = call.end(sent.endpoint.authority, outcome, now)
        if wait is None:
            self.stage = _OVER
            call.finish()
            failure = identity_error(sent.peer, sent.endpoint.authority, error)
            return Fail(self._give_up(call, failure, now))
        if wait > 0:
            self.stage = _BACKING_OFF
            return Sleep(wait)
        return self._next()

    def _next(self) -> Action:
        """After a back-off: pick the next attempt's endpoint and begin it."""
        assert self.target is not None and self.call is not None
        try:
            self.endpoint = repick(self.target, self.call)
        except NoHealthyUpstream as exc:
            return self._fail(exc)
        return self._send()

    def _give_up(self, call: Call, error: BaseException, now: float) -> BaseException:
        """What the call fails with after its last attempt failed with `error`."""
        if call.expired(now) and not _is_deadline(error):
            return DeadlineExceeded(call.describe("the deadline passed"))
        if len(call.attempts) > 1:
            error.add_note(f"sail: {call.describe('gave up')}")
        return error

    def _fail(self, error: BaseException) -> Fail:
        self.stage = _OVER
        if self.call is not None:
            self.call.finish()
        return Fail(error)

    def _cancelled(self) -> Fail:
        return Fail(StatusError(
            grpc.StatusCode.CANCELLED, f"service {self.core.service!r}: {_CANCELLED}"
        ))

    def _drop(self, sent: Send) -> None:
        """An attempt in flight is cancelled: what it holds that the shell will not give
        back itself."""


class UnaryFlow(_Flow):
    """The flow of a call with one response (unary-unary, stream-unary): attempts are
    retried whole. Reports: `start`, `waited`, `answered`, `failed`, `cancel`."""

    __slots__ = ()

    def answered(self, value: Any) -> Action:
        """The attempt answered `value` (OK): `Done(value)`."""
        if self.stage is not _ATTEMPTING:
            return self._cancelled()
        sent = self.sent
        call = self.call
        assert sent is not None and call is not None
        self.stage = _OVER
        call.release(sent.host)
        call.end(sent.endpoint.authority, _OK, monotonic())
        call.finish()
        return Done(value)

    def failed(self, error: grpc.RpcError) -> Action:
        """The attempt failed with `error` (its status, as grpcio reports it): `Sleep`
        before a retry, `Send` (a retry at once), or `Fail`."""
        if self.stage is not _ATTEMPTING:
            return Fail(error)
        sent = self.sent
        assert sent is not None and self.call is not None
        self.call.release(sent.host)
        return self._failed(sent, error)

    def _drop(self, sent: Send) -> None:
        assert self.call is not None
        self.call.release(sent.host)


class StreamFlow(_Flow):
    """The flow of a call whose responses stream (unary-stream, stream-stream): retried
    until its first response message, committed from then on (gRFC A6). Reports: `start`,
    `waited`, `received`, `failed`, `closed`, `cancel`."""

    __slots__ = ()

    @property
    def committed(self) -> bool:
        """Whether the first response message has come (no retry from now on)."""
        return self.stage is _COMMITTED

    def received(self) -> None:
        """A response message came, or the stream ended without error: the first commits
        the call (its attempt ends OK)."""
        if self.stage is _ATTEMPTING:
            sent = self.sent
            call = self.call
            assert sent is not None and call is not None
            self.stage = _COMMITTED
            call.end(sent.endpoint.authority, _OK, monotonic())
            call.finish()

    def failed(self, error: grpc.RpcError) -> Action:
        """Reading the stream failed with `error`: before the commit, as `UnaryFlow.failed`;
        after it (or once cancelled), `Fail(error)`."""
        if self.stage is not _ATTEMPTING:
            return Fail(error)
        sent = self.sent
        assert sent is not None
        return self._failed(sent, error)

    def closed(self, sent: Send) -> None:
        """The inner call of attempt `sent` is over (its done callback, or at once when
        sending raised): its counters go back. Once per `Send`."""
        if not sent.released:
            sent.released = True
            assert self.call is not None
            self.call.release(sent.host)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _is_deadline(error: BaseException) -> bool:
    code = getattr(error, "code", None)
    return callable(code) and code() is grpc.StatusCode.DEADLINE_EXCEEDED


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
