"""Circuit breakers: a cluster's concurrency limits and retry budget, and its counters.

Two `ClusterLimits` per cluster, one per routing priority (a route's `priority`: DEFAULT
or HIGH), each with its own thresholds and its own counts, as Envoy keeps a resource
manager per priority. They live as long as the process; a config update re-reads the
thresholds (`configure`) without resetting what is in flight.

What is counted, and how it maps onto Envoy's thresholds (docs
"arch_overview/upstream/circuit_breaking"):

* **active** - attempts in flight to any endpoint of the cluster, from the moment one is
  started until its response has been read to the end (or closed), retries included.
* `max_requests` - a new attempt when `active` has reached it overflows.
* `max_connections`, `max_pending_requests` - sail opens one connection per attempt in
  flight (HTTP/1.1), so `active` beyond `max_connections` are the attempts that Envoy would
  queue as *pending*; when `max_pending_requests` of those are already waiting, a new
  attempt overflows. With `max_connections: 1` and `max_pending_requests: 1`, as in Envoy,
  two requests may be outstanding and the third fails at once.
* **retries** - retry attempts in flight (from the start of the retry's attempt until it
  ends: not while it backs off). A retry is admitted, when it is decided, while `retries`
  is below the cluster's retry limit: the
  `retry_budget` when one is set (`budget_percent` of `active`, but at least
  `min_retry_concurrency`), else `max_retries` when set, else sail's default budget of
  20 % and at least 3 (Envoy's default is a flat 3). A retry over the limit is not made:
  the caller gets the attempt's own response or error, as in Envoy.

  Where sail differs from Envoy, and why: Envoy counts a retry from the decision, through
  its back-off, until its attempt ends (`RetryStateImpl` takes the `retries` resource when
  it arms the back-off timer). A back-off is mostly idle time, so with Envoy's counting a
  burst of fast failures (an endpoint refusing connections, each failing in well under a
  millisecond) fills the budget with retries that are only sleeping, and the callers after
  them get the failure although the cluster has capacity to spare: with four callers and a
  killed endpoint, about a fifth of the requests after the kill failed that way. sail
  admits a retry against the budget when it decides it (an overflow is still counted and
  the caller still gets the attempt's own answer) and counts it while its attempt is in
  flight, which is the load a budget exists to bound. Admissions during one back-off may
  let `retries` pass the limit by the few retries decided in the same instant.

An overflowing request never reaches an endpoint: the transport raises
`sail.errors.UpstreamOverflow` (Envoy answers 503 with `x-envoy-overloaded: true`).

No locks: counters are plain integers updated under the GIL. Two threads admitting at the
same instant may both see room for one more, as Envoy's relaxed atomics allow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sail.model import RetryBudget, Thresholds

if TYPE_CHECKING:
    from sail.model import Cluster

__all__ = ["DEFAULT_BUDGET", "ClusterLimits", "UpstreamStats"]

DEFAULT_BUDGET = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
_DEFAULT_THRESHOLDS = Thresholds()


class UpstreamStats:
    """Counters of one cluster, named after Envoy's `cluster.<name>.upstream_rq_*` stats."""

    __slots__ = (
        "rq_overflow",
        "rq_retry",
        "rq_retry_overflow",
        "rq_retry_success",
        "rq_timeout",
        "rq_total",
    )

    def __init__(self) -> None:
        self.rq_total = 0
        self.rq_overflow = 0
        self.rq_retry = 0
        self.rq_retry_success = 0
        self.rq_retry_overflow = 0
        self.rq_timeout = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class ClusterLimits:
    """Thresholds and in-flight counts of one cluster (see the module docstring)."""

    __slots__ = (
        "active",
        "budget",
        "max_connections",
        "max_pending",
        "max_requests",
        "max_retries",
        "name",
        "priority",
        "retries",
        "stats",
    )

    def __init__(self, name: str, cluster: Cluster | None = None, priority: int = 0) -> None:
        self.name = name
        self.priority = priority
        self.active = 0
        self.retries = 0
        self.stats = UpstreamStats()
        self.max_connections = self.max_pending = self.max_requests = 0
        self.max_retries: int | None = None
        self.budget: RetryBudget | None = None
        self.configure(cluster)

    def configure(self, cluster: Cluster | None) -> None:
        """Take the thresholds of `cluster` for this priority (Envoy's defaults if none)."""
        t = _DEFAULT_THRESHOLDS
        if cluster is not None and cluster.circuit_breakers is not None:
            t = next(
                (x for x in cluster.circuit_breakers.thresholds if x.priority == self.priority),
                _DEFAULT_THRESHOLDS,
            )
        self.max_connections = t.max_connections
        self.max_pending = t.max_pending_requests
        self.max_requests = t.max_requests
        self.max_retries = t.max_retries
        self.budget = t.retry_budget
        if self.budget is None and self.max_retries is None:
            self.budget = DEFAULT_BUDGET

    def overflow(self) -> str | None:
        """Why a new attempt may not start now (naming the threshold), or `None`."""
        active = self.active
        if active >= self.max_requests:
            return f"max_requests ({self.max_requests}) reached"
        if active >= self.max_connections and active - self.max_connections >= self.max_pending:
            return (
                f"max_connections ({self.max_connections}) in use and max_pending_requests "
                f"({self.max_pending}) waiting"
            )
        return None

    def retry_limit(self) -> int:
        """How many retries may be in flight now."""
        budget = self.budget
        if budget is None:
            return self.max_retries or 0
        return max(budget.min_retry_concurrency, int(budget.budget_percent * self.active / 100))

    def admit_retry(self) -> bool:
        """Whether a retry may be made now (counting an overflow when not); the retry is
        counted only once its attempt starts (`start_retry`)."""
        if self.retries >= self.retry_limit():
            self.stats.rq_retry_overflow += 1
            return False
        return True

    def start_retry(self) -> None:
        """An admitted retry's attempt starts: counted until `end_retry`."""
        self.retries += 1
        self.stats.rq_retry += 1

    def try_retry(self) -> bool:
        """Admit and start a retry at once (a hedge, whose attempt starts now)."""
        if not self.admit_retry():
            return False
        self.start_retry()
        return True

    def end_retry(self) -> None:
        self.retries -= 1
