"""Envoy's EDF scheduler with weights read at pick time, and slow start.

Envoy's `round_robin` and `least_request` share one mechanism (`EdfLoadBalancerBase`) for
weights that change between picks: an earliest-deadline-first queue in which each host waits
with deadline `current + 1 / weight`. A pick pops the host with the earliest deadline (ties:
the one queued first), moves `current` to that deadline and queues the host again with its
weight *as it is now* (`EdfScheduler::pickAndAdd`). The weight is

```
weight = load_balancing_weight / (active_requests + 1) ** active_request_bias   # least_request
weight = load_balancing_weight                                                   # round_robin
weight *= max(min_weight_percent / 100, time_factor ** (1 / aggression))        # in slow start
time_factor = max(1 ms, time since the host was first healthy) / slow_start_window
```

so a busy host's next turn is pushed further out, and an endpoint that joined a moment ago
comes round rarely at first, more often as its window passes (docs
"arch_overview/upstream/load_balancing/slow_start"). The slow-start factor applies to hosts
taking traffic whose time since `first_healthy` (see `sail.balancing.stats`) is under the
window, whole milliseconds as Envoy counts them; `aggression` 1 ramps linearly, larger values
faster. An `aggression` or `active_request_bias` that is negative or NaN is replaced by 1.0, as
Envoy does (it logs the mistake).

**Lock-free, one queue per thread.** Each Envoy worker thread has its own load balancer and
so its own queue, sharing only the hosts' request counts. `DynamicEdfPicker` does the same:
the queue is a `heapq` list in a `threading.local`, copied on a thread's first pick from one
built with the picker, so threads never touch each other's heap and no lock is needed (an
asyncio loop is one thread, and a pick never awaits). The cost is one heap of N small tuples
per thread that picks, and a pick is O(log N).

**Sail differs** in one detail: Envoy keeps one "latest host added" time per load balancer and
keeps using the EDF path until a membership change after slow start ends; sail's picker hands
over to its plain picker (`steady`) as soon as the last window it knows of has passed, which
picks the same shares without the heap.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import HostStats
    from sail.model import Endpoint, LbPolicy

__all__ = ["DynamicEdfPicker", "SlowStart", "sanitize_exponent"]

_TINY = 1e-300
"""Floor for a weight, so that `1 / weight` stays finite (Envoy asserts weight > 0)."""


def sanitize_exponent(value: object, default: float = 1.0) -> float:
    """`value` as a float, or `default` when it is missing, negative or NaN (Envoy's rule for
    `active_request_bias` and `aggression`: log the mistake, use 1.0)."""
    if value is None:
        return default
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number) or number < 0:
        return default
    return number


@attrs.frozen
class SlowStart:
    """A policy's `slow_start_config`: `window` in seconds, `aggression`, and `min_weight`
    as a fraction (Envoy's `min_weight_percent / 100`, default 10 %)."""

    window: float
    aggression: float = 1.0
    min_weight: float = 0.1

    @classmethod
    def from_policy(cls, policy: LbPolicy | None) -> SlowStart | None:
        """The slow-start settings of `policy`'s `slow_start_config` option, or `None` when it
        has none or its window is not positive (Envoy: slow start is off)."""
        if policy is None:
            return None
        raw = policy.option("slow_start_config")
        if not raw:
            return None
        config = dict(raw)  # type: ignore[call-overload]
        window = float(config.get("slow_start_window", 0.0))
        # Envoy counts the window in whole milliseconds.
        if int(window * 1000) <= 0:
            return None
        aggression = sanitize_exponent(config.get("aggression"))
        if aggression == 0.0:
            aggression = 1.0  # Envoy: "aggression cannot be less than 0.0" -> 1.0 (<= 0)
        percent = float(config.get("min_weight_percent", 10.0))
        return cls(window, aggression, percent / 100.0)

    def factor(self, elapsed: float) -> float:
        """The weight multiplier `elapsed` seconds after a host became healthy (1.0 once the
        window has passed)."""
        window_ms = int(self.window * 1000)
        elapsed_ms = int(elapsed * 1000)
        if elapsed_ms >= window_ms:
            return 1.0
        time_factor = max(1, elapsed_ms) / window_ms
        if self.aggression != 1.0 and time_factor != 1.0:
            time_factor = time_factor ** (1.0 / self.aggression)
        return max(time_factor, self.min_weight)

    def starts(
        self, endpoints: Sequence[Endpoint], hosts: Sequence[HostStats], now: float
    ) -> tuple[tuple[float | None, ...], float | None]:
        """Per endpoint, the start of its slow-start window if it is still in it at `now`
        (`None` otherwise), and when the last of those windows ends (`None`: no one is in
        slow start). Only endpoints taking traffic ramp up, as in Envoy."""
        starts: list[float | None] = []
        until: float | None = None
        for endpoint, host in zip(endpoints, hosts, strict=True):
            start = host.first_healthy
            if start is None or not endpoint.health.takes_traffic or now - start >= self.window:
                starts.append(None)
                continue
            starts.append(start)
            end = start + self.window
            until = end if until is None else max(until, end)
        return tuple(starts), until


class _Queue(threading.local):
    """One thread's EDF heap, copied from the picker's initial one on first use."""

    def __init__(self, initial: list[tuple[float, int, int]]) -> None:
        self.heap = list(initial)


class DynamicEdfPicker:
    """Envoy's EDF pick with weights evaluated at pick time (see the module docstring).

    **Parameters**

    * `endpoints`, `weights` - the hosts and their load-balancing weights (at least 1).
    * `hosts` - each endpoint's `HostStats`, read for `active` when `bias` is not 0.
    * `bias` - `active_request_bias` (0 for round robin: weights ignore the load).
    * `slow_start`, `starts`, `until` - the slow-start settings, each endpoint's window start
      (or `None`), and when the last window ends; `until=None` disables slow start.
    * `steady` - the picker to use once `until` has passed (`None`: keep this one, without
      the slow-start factor).
    * `clock` - the time source of `starts` (the `ClusterStats.clock`).
    """

    __slots__ = (
        "_bias",
        "_clock",
        "_endpoints",
        "_hosts",
        "_order",
        "_queue",
        "_slow_start",
        "_starts",
        "_steady",
        "_until",
        "_weights",
    )

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        weights: Sequence[int],
        hosts: Sequence[HostStats],
        *,
        bias: float = 0.0,
        slow_start: SlowStart | None = None,
        starts: Sequence[float | None] = (),
        until: float | None = None,
        steady: Picker | None = None,
        clock: Callable[[], float],
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._weights = tuple(float(w) for w in weights)
        self._hosts = tuple(hosts)
        self._bias = bias
        self._slow_start = slow_start if until is not None else None
        self._starts = tuple(starts) if until is not None else ()
        self._until = until
        self._steady = steady
        self._clock = clock
        n = len(self._endpoints)
        now = clock() if until is not None else None
        # Envoy adds every host at time 0 (deadline 1 / weight) in host order, then starts
        # the schedule at a random point so that clients do not move in step.
        heap = [(1.0 / self._weight(i, now), i, i) for i in range(n)]
        heapq.heapify(heap)
        order = itertools.count(n)
        for _ in range(random.randrange(n)):
            deadline, _, i = heap[0]
            heapq.heapreplace(heap, (deadline + 1.0 / self._weight(i, now), next(order), i))
        self._order = order
        self._queue = _Queue(heap)

    def _weight(self, i: int, now: float | None) -> float:
        weight = self._weights[i]
        bias = self._bias
        if bias != 0.0:
            active = self._hosts[i].active
            load = active + 1 if active > 0 else 1
            weight = weight / load if bias == 1.0 else weight / load**bias
        if now is not None:
            start = self._starts[i]
            if start is not None:
                weight *= self._slow_start.factor(now - start)  # type: ignore[union-attr]
        return weight if weight > _TINY else _TINY

    def pick(self, hash_key: int | None = None) -> Endpoint:
        now: float | None = None
        if self._until is not None:
            now = self._clock()
            if now >= self._until:
                if self._steady is not None:
                    return self._steady.pick(hash_key)
                now = None
        heap = self._queue.heap
        deadline, _, i = heap[0]
        if now is None and self._bias == 1.0:  # the common case, inlined: w / (active + 1)
            active = self._hosts[i].active
            weight = self._weights[i] / (active + 1 if active > 0 else 1)
        else:
            weight = self._weight(i, now)
        heapq.heapreplace(heap, (deadline + 1.0 / weight, next(self._order), i))
        return self._endpoints[i]

    def __repr__(self) -> str:
        parts = [f"{len(self._endpoints)} endpoints"]
        if self._bias:
            parts.append(f"active_request_bias {self._bias:g}")
        if self._until is not None:
            parts.append("slow start")
        return f"DynamicEdfPicker({', '.join(parts)})"
