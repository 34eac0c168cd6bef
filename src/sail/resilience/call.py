"""One call through the mesh, attempt by attempt, with no I/O: the state machine that the
httpx transports (and the gRPC channels) drive.

```python
call = Call(policy, limits, deadline, replayable)
while True:
    timeout = call.begin(now())          # raises UpstreamOverflow / DeadlineExceeded
    outcome = <send the attempt with `timeout`, to an endpoint not in call.tried>
    wait = call.end(endpoint, outcome, now())
    if wait is None:                      # done: return this outcome to the caller
        break                             # (call.release() once its response is closed)
    call.release()                        # this attempt's response is dropped
    <sleep wait>                          # (call.finish() if the call is abandoned here)
```

`begin` counts the attempt against the cluster's circuit breakers
(`sail.resilience.limits`), lets the cluster's outlier detector tick, and gives the attempt
its timeout: what is left of the deadline, capped by the policy's `per_try_timeout`. `end`
reports the outcome to the outlier detector (`sail.resilience.outlier`) and decides whether
to retry (`sail.resilience.retry`, `sail.resilience.classify`): the policy's condition
must match, attempts must remain, the body must be replayable (or never sent), the wait
must end before the deadline, and the cluster's retry budget must have room. `release`
ends the attempt's share of the counters.

`begin` and `end` are also where a mesh's attempt observers hear of each attempt
(`sail.resilience.events`): every shell drives this one object, so an observer sees every
attempt of every protocol. Without an observer (`observer=None`) an attempt costs one
`None` check more.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from sail.errors import DeadlineExceeded, UpstreamOverflow
from sail.resilience.classify import (
    ANSWER_CONDITIONS,
    GRPC_CONDITIONS,
    Local,
    Outcome,
    retry_condition,
)
from sail.resilience.outlier import Result, grpc_to_http_status
from sail.resilience.retry import backoff, rate_limited_wait, testing_attempts

if TYPE_CHECKING:
    from sail.balancing.stats import HostStats
    from sail.model import RetryPolicy
    from sail.resilience.events import AttemptObserver
    from sail.resilience.limits import ClusterLimits
    from sail.resilience.outlier import OutlierDetector

__all__ = ["Attempt", "Call", "CallInfo"]

_TIMED_OUT = Outcome(local=Local.TIMEOUT)
_CANCELLED = Outcome(local=Local.CANCELLED)
_LATEST: object = object()  # "the latest attempt's token", as opposed to a token of None


class Attempt(NamedTuple):
    """One attempt of a call: the endpoint (`host:port`) and how it ended."""

    endpoint: str
    outcome: Outcome

    def __str__(self) -> str:
        return f"{self.outcome.reason} from {self.endpoint}"


class CallInfo(NamedTuple):
    """What a call through the mesh did, attached to its response
    (`response.extensions["sail"]`): the service, the cluster, and every attempt in order.
    `retried` says whether there was more than one."""

    service: str
    cluster: str
    attempts: tuple[Attempt, ...]

    @property
    def retried(self) -> bool:
        return len(self.attempts) > 1


class Call:
    """The attempts of one call (see the module docstring). Not shared between threads."""

    __slots__ = (
        "attempts",
        "deadline",
        "grpc_aware",
        "limits",
        "max_attempts",
        "observer",
        "outlier",
        "policy",
        "rand",
        "replayable",
        "retries_held",
        "retry_pending",
        "retry_reason",
        "screens_answers",
        "service",
        "started",
        "token",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        limits: ClusterLimits,
        deadline: float | None,
        replayable: bool | Callable[[], bool] = True,
        rand: Callable[[], float] = random.random,
        outlier: OutlierDetector | None = None,
        observer: AttemptObserver | None = None,
        service: str = "",
    ) -> None:
        self.policy = policy
        self.outlier = outlier
        self.observer = observer
        self.service = service
        self.token: object = None
        self.limits = limits
        self.deadline = deadline
        self.replayable = replayable
        self.rand = rand
        self.attempts: list[Attempt] = []
        self.max_attempts = policy.num_retries + 1
        cap = testing_attempts()
        if cap is not None:
            self.max_attempts = min(self.max_attempts, cap)
        self.started = 0
        self.grpc_aware = not policy.retry_on.isdisjoint(GRPC_CONDITIONS)
        self.screens_answers = not policy.retry_on.isdisjoint(ANSWER_CONDITIONS)
        self.retries_held = 0
        self.retry_pending = False
        self.retry_reason: str | None = None

    @property
    def tried(self) -> frozenset[str]:
        """The endpoints already tried (for the `previous_hosts` predicate)."""
        return frozenset(a.endpoint for a in self.attempts)

    @property
    def cluster(self) -> str:
        """The name of the cluster the call's attempts go to."""
        return self.limits.name

    def begin(
        self, now: float, host: HostStats | None = None, endpoint: str = ""
    ) -> float | None:
        """Start an attempt (to `endpoint`, whose counters are `host`, for the load-aware
        balancers); returns its timeout in seconds (`None`: no limit). Raises
        `DeadlineExceeded` past the deadline and `UpstreamOverflow` over a threshold.
        With an observer, `token` is what it returned for this attempt."""
        limits = self.limits
        deadline = self.deadline
        if self.outlier is not None:
            self.outlier.maybe_tick(now)
        if deadline is not None and now >= deadline:
            limits.stats.rq_timeout += 1
            raise DeadlineExceeded(self.describe("the deadline passed"))
        reason = limits.overflow()
        if reason is not None:
            limits.stats.rq_overflow += 1
            raise UpstreamOverflow(self.describe(f"cluster {limits.name!r}: {reason}"))
        limits.active += 1
        limits.stats.rq_total += 1
        if self.retry_pending:  # a retry admitted by `end` is counted from its start on
            self.retry_pending = False
            limits.start_retry()
            self.retries_held += 1
        if host is not None:
            host.active += 1
        self.started += 1
        if self.observer is not None:
            self.token = self.observer.attempt_started(self, endpoint, now)
        timeout = self.policy.per_try_timeout
        if deadline is not None:
            left = deadline - now
            if timeout is None or left < timeout:
                timeout = left
        return timeout

    def end(
        self, endpoint: str, outcome: Outcome, now: float, token: object = _LATEST
    ) -> float | None:
        """Record how the attempt to `endpoint` ended; the wait before the next attempt,
        or `None` when this outcome is the call's result. Never raises: a local failure
        past the deadline is for the transport to report (`expired`). `token`: the
        observer's token of this attempt when attempts overlap (a hedge), else the latest
        attempt's."""
        attempt = Attempt(endpoint, outcome)
        self.attempts.append(attempt)
        if self.observer is not None:
            self._ended(attempt, token, now)
        outlier = self.outlier
        if outlier is not None:
            if outcome.local is None:  # one call for the common case: an answer
                grpc = outcome.grpc_status
                outlier.put_response(
                    endpoint, outcome.status if grpc is None else grpc_to_http_status(grpc)
                )
            else:
                _report_local(outlier, endpoint, outcome.local)
        limits = self.limits
        was_retry = self.retries_held > 0
        if was_retry:  # a retry is counted from its attempt's start until it ends
            limits.end_retry()
            self.retries_held -= 1
        if outcome.answered and not self.screens_answers:
            if was_retry:
                limits.stats.rq_retry_success += 1
            return None  # the fast path: a success
        wait = self._retry_wait(outcome, now)
        if wait is None and was_retry and outcome.answered:
            limits.stats.rq_retry_success += 1
        return wait

    def _retry_wait(self, outcome: Outcome, now: float) -> float | None:
        """The wait before retrying after `outcome`, or `None` when it is not retried."""
        limits = self.limits
        deadline = self.deadline
        if self.started >= self.max_attempts:
            return None
        if deadline is not None and now >= deadline:
            return None
        policy = self.policy
        condition = retry_condition(outcome, policy)
        if condition is None:
            return None
        replayable = self.replayable
        if callable(replayable):
            replayable = self.replayable = replayable()
        if not replayable and outcome.local is not Local.CONNECT_FAILURE:
            return None  # the body was (perhaps partly) sent and cannot be sent again
        wait = rate_limited_wait(policy, outcome.headers, self.rand)
        if wait is None:
            wait = backoff(policy, len(self.attempts), self.rand)
        if deadline is not None and now + wait >= deadline:
            return None
        if not limits.admit_retry():
            return None
        self.retry_pending = True  # counted when its attempt begins, not while it waits
        self.retry_reason = condition
        return wait

    def hedge(self, now: float) -> bool:
        """The latest attempt's per-try timeout fired and the route hedges
        (`hedge_on_per_try_timeout`): whether to send another attempt now while that one
        goes on. As Envoy: only if a timeout is a retry condition of the policy, attempts
        remain, the deadline has not passed and the retry budget has room."""
        if self.started >= self.max_attempts:
            return False
        if self.deadline is not None and now >= self.deadline:
            return False
        condition = retry_condition(_TIMED_OUT, self.policy)
        if condition is None or not self.limits.try_retry():
            return False
        self.retries_held += 1
        self.retry_reason = condition
        return True

    def expired(self, now: float) -> bool:
        """Whether the deadline has passed (counted as a timeout when it has)."""
        if self.deadline is not None and now >= self.deadline:
            self.limits.stats.rq_timeout += 1
            return True
        return False

    def cut_off(self, endpoint: str) -> None:
        """The response of the attempt to `endpoint`, already ended as answered, lost its
        body mid-way: tell the outlier detector (`OutlierDetector.put_cut_off`)."""
        if self.outlier is not None:
            self.outlier.put_cut_off(endpoint)

    def release(self, host: HostStats | None = None) -> None:
        """An attempt is over (its response closed or dropped); `host` as given to
        `begin`."""
        self.limits.active -= 1
        if host is not None:
            host.active -= 1

    def _ended(self, attempt: Attempt, token: object, now: float) -> None:
        assert self.observer is not None
        if token is _LATEST:
            token, self.token = self.token, None
        self.observer.attempt_ended(self, token, attempt, now)

    def abandon(self, endpoint: str, now: float, token: object = _LATEST) -> None:
        """An attempt to `endpoint` ends with no outcome (the caller cancelled it, or it
        lost a hedge): only the observers hear of it, as `Local.CANCELLED`."""
        if self.observer is not None:
            self._ended(Attempt(endpoint, _CANCELLED), token, now)

    def finish(self) -> None:
        """The call is over: give back the retries it still holds (reserved for attempts
        that never ended, or never started)."""
        while self.retries_held:
            self.limits.end_retry()
            self.retries_held -= 1

    def describe(self, what: str) -> str:
        """`what`, followed by the attempts made so far, for error messages."""
        if not self.attempts:
            return what
        tried = "; ".join(str(a) for a in self.attempts)
        return f"{what} after {len(self.attempts)} attempt(s): {tried}"


def _report_local(outlier: OutlierDetector, host: str, local: Local) -> None:
    """Tell the outlier detector of an attempt that got no answer, as Envoy's router does
    (an answer is `OutlierDetector.put_response`)."""
    if local is Local.TIMEOUT:
        outlier.put_result(host, Result.LOCAL_ORIGIN_TIMEOUT)
    else:
        outlier.put_result(host, Result.LOCAL_ORIGIN_CONNECT_FAILED)
