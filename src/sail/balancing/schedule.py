"""Weighted sequences shared by the policies: an EDF round-robin schedule and cumulative
bounds for bisecting.

Both are built once per picker, off the request path.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.model import Endpoint

__all__ = ["SCHEDULE_LIMIT", "cumulative_bounds", "edf_schedule", "host_weights", "reduce_weights"]

SCHEDULE_LIMIT = 2**18
"""Longest round-robin schedule we precompute (entries, after dividing weights by their gcd).

At the limit the tuple holds 2 MiB of references and takes about 0.1 s to build; past it the
round-robin policy switches to a bisect driven by a low-discrepancy sequence instead."""


def host_weights(endpoints: Sequence[Endpoint]) -> list[int]:
    """Each endpoint's weight, at least 1 (Envoy clamps a host weight of 0 up to 1 too)."""
    return [max(1, e.weight) for e in endpoints]


def reduce_weights(weights: Sequence[int]) -> list[int]:
    """`weights` divided by their greatest common divisor: [2, 4, 6] -> [1, 2, 3].

    The trap this avoids: weights 100 and 200 would otherwise give a 300-entry schedule for
    what is a 1:2 split."""
    divisor = math.gcd(*weights)
    return [w // divisor for w in weights]


def edf_schedule(endpoints: Sequence[Endpoint], weights: Sequence[int]) -> tuple[Endpoint, ...]:
    """One cycle of earliest-deadline-first weighted round robin, `sum(weights)` long.

    Endpoint *i* appears exactly `weights[i]` times; its *k*-th turn has the deadline
    `(k + 0.5) / weights[i]`, so its turns are spread evenly over the cycle instead of coming
    in a burst (the property nginx's "smooth" WRR also has). With weights [1, 2, 3, 4]:
    `D C B D A C D B C D`. Ties keep endpoint order (the sort is stable).
    """
    deadlines = [(k + 0.5) / w for w in weights for k in range(w)]
    owners = [endpoints[i] for i, w in enumerate(weights) for _ in range(w)]
    order = sorted(range(len(deadlines)), key=deadlines.__getitem__)
    return tuple(map(owners.__getitem__, order))


N = TypeVar("N", int, float)


def cumulative_bounds(weights: Sequence[N]) -> tuple[list[N], N]:
    """`(bounds, total)` for picking index *i* with probability `weights[i] / total`.

    `bounds` is the running sum without its last element, so for any `0 <= x < total`
    (and even `x == total` after float rounding) `bisect_right(bounds, x)` is a valid index:
    item *i* owns `[sum(weights[:i]), sum(weights[:i + 1]))`. Zero weights own empty
    intervals and are never picked.
    """
    running = list(accumulate(weights))
    return running[:-1], running[-1]
