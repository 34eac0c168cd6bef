"""Envoy's MAGLEV: the consistent-hash lookup table of Google's Maglev paper (`maglev_lb.cc`).

**Building** (once per picker). The table has `table_size` slots (default 65537, which must
be prime: each endpoint's walk of the table must visit every slot). Endpoints are sorted by
their key (`ip:port`, or the hostname with `use_hostname_for_hashing`) so that the table does
not depend on the order EDS lists them in. Each gets a permutation of the slots:

```
offset = xxh64(key) % table_size            skip = xxh64(key, seed=1) % (table_size - 1) + 1
slot j = (offset + skip * j) % table_size
```

and the endpoints take turns claiming the next free slot of their permutation until the table
is full. Weights are honoured as Envoy does: with weights normalized to sum to 1 and `max`
the largest, an endpoint takes its turn in round `r` (from 1) only when
`r * weight >= target`, and raises `target` by `max` each time it does - so the heaviest
endpoint claims a slot every round and one of a third of its weight every third round. The
same endpoints therefore give Envoy's table, slot for slot.

**Picking** is `table[hash % table_size]`, O(1); without a request hash a random 64-bit value
stands in, as in Envoy. Maglev moves a little more than ring hash when endpoints change (about
1/N of the keys plus some reshuffling) but balances more evenly and picks faster.

**The cap.** Envoy accepts any prime `table_size` up to 5000011 (more, or a size that is not
prime, is a NACK, here too, at decode). sail's build is Python, about `table_size *
ln(table_size)` steps (the last free slots take long walks): 30-40 ms for the default 65537
slots, but 3.6 s (3 endpoints) to 11 s (100 endpoints) for 5000011, under the GIL, and a
table of 40 MB, rebuilt at every change of the cluster's endpoints or ejections. A faster
algorithm in Python gains a small factor at best (the walks are sequential), so the size is
capped as gRPC caps the ring (`sail.balancing.ring_hash`): a `table_size` above
`table_size_cap()`, default `DEFAULT_TABLE_SIZE_CAP` = 65537 (Envoy's default size), is built
at the cap. A user who needs bigger tables raises it in the process, to a prime of at most
5000011, without touching the xDS config - worth it above about 650 endpoints in one
locality, since shares stay within about 1% of each other only with 100 slots or more per
endpoint (the Maglev paper's rule):

```python
from sail.balancing.maglev import set_table_size_cap
set_table_size_cap(655373)     # before the mesh starts; tables built from then on use it
```

Tables are rebuilt as rings are (see `sail.balancing.ring_hash`): at each change of the
endpoints that take traffic, ejections included, as Envoy does; the last few are kept by
their inputs, so a returning host gets its table back without a build.

Where sail differs: one table per locality rather than per priority level (see
`sail.balancing.ring_hash`), and `hash_balance_factor` is ignored.
"""

from __future__ import annotations

import random
from array import array
from typing import TYPE_CHECKING

from sail.balancing.hashing import xxh64
from sail.balancing.ring_hash import RecentBuilds, hash_key_of
from sail.balancing.schedule import host_weights
from sail.balancing.unavailable import UnavailablePicker
from sail.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import ClusterStats
    from sail.model import Endpoint, LbPolicy

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "DEFAULT_TABLE_SIZE_CAP",
    "MAX_TABLE_SIZE",
    "MaglevPicker",
    "build_table",
    "is_prime",
    "maglev_picker",
    "set_table_size_cap",
    "table_size_cap",
]

DEFAULT_TABLE_SIZE = 65537
"""Envoy's default `table_size`."""
MAX_TABLE_SIZE = 5_000_011
"""Envoy's limit on `table_size` (more is a NACK)."""
DEFAULT_TABLE_SIZE_CAP = DEFAULT_TABLE_SIZE
"""The default cap on `table_size` at build time (see the module docstring)."""
_MASK64 = (1 << 64) - 1

_table_size_cap = DEFAULT_TABLE_SIZE_CAP
_recent_tables: RecentBuilds[tuple[int, tuple[str, ...], tuple[int, ...]], array[int]] = (
    RecentBuilds()
)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def table_size_cap() -> int:
    """The cap in force on `table_size` (`DEFAULT_TABLE_SIZE_CAP` unless set)."""
    return _table_size_cap


def set_table_size_cap(size: int = DEFAULT_TABLE_SIZE_CAP) -> None:
    """Build every table from now on with at most `size` slots, process-wide; no argument
    restores the default of 65537. Tables already built keep their size until their
    cluster's next rebuild. `size` must be a prime of at most 5000011 (`ValueError`
    otherwise), so that a capped table is still a valid Maglev table."""
    global _table_size_cap
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"table size cap {size!r} is not an integer")
    if size > MAX_TABLE_SIZE or not is_prime(size):
        raise ValueError(f"table size cap {size} is not a prime of at most {MAX_TABLE_SIZE}")
    _table_size_cap = size


def build_table(keys: Sequence[str], weights: Sequence[int], table_size: int) -> list[int]:
    """Envoy's Maglev table for hosts `keys` with `weights`: the index in `keys` of the host
    owning each of the `table_size` slots (no cap here: `maglev_picker` applies it)."""
    m = table_size
    order = sorted(range(len(keys)), key=keys.__getitem__)
    total = sum(weights)
    normalized = [weights[i] * 1.0 / total for i in order]
    max_weight = max(normalized)
    position = [xxh64(keys[i]) % m for i in order]  # the current slot of each permutation
    skip = [xxh64(keys[i], 1) % (m - 1) + 1 for i in order]
    target = [0.0] * len(order)
    table = [-1] * m
    filled = 0
    iteration = 1
    while filled < m:
        for i, weight in enumerate(normalized):
            if iteration * weight < target[i]:
                continue
            target[i] += max_weight
            c = position[i]
            step = skip[i]
            while table[c] >= 0:
                c += step
                if c >= m:
                    c -= m
            table[c] = order[i]
            c += step
            position[i] = c - m if c >= m else c
            filled += 1
            if filled == m:
                break
        iteration += 1
    return table


class MaglevPicker:
    """`table[hash % size]`; a random hash when the request has none."""

    __slots__ = ("_random", "_size", "_table")

    def __init__(self, table: Sequence[Endpoint]) -> None:
        self._table = tuple(table)
        self._size = len(self._table)
        self._random = random.getrandbits

    def pick(self, hash_key: int | None = None) -> Endpoint:
        h = self._random(64) if hash_key is None else hash_key & _MASK64
        return self._table[h % self._size]

    @property
    def table(self) -> tuple[Endpoint, ...]:
        return self._table

    def __repr__(self) -> str:
        return f"MaglevPicker({len(set(self._table))} endpoints, {self._size} slots)"


def maglev_picker(
    endpoints: Sequence[Endpoint],
    policy: LbPolicy | None = None,
    stats: ClusterStats | None = None,
) -> Picker:
    """The `maglev` policy factory. Options: `table_size` (prime, default 65537, at most
    5000011; built at `table_size_cap()` when above it), `use_hostname_for_hashing`."""
    hosts = tuple(endpoints)
    if not hosts:
        return UnavailablePicker("no endpoints")
    size = policy.option("table_size", DEFAULT_TABLE_SIZE) if policy else DEFAULT_TABLE_SIZE
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size > MAX_TABLE_SIZE
        or not is_prime(size)
    ):
        raise ConfigError(f"maglev: table_size {size!r} is not a prime of at most {MAX_TABLE_SIZE}")
    use_hostname = bool(policy.option("use_hostname_for_hashing", False)) if policy else False
    size = min(size, _table_size_cap)  # both prime
    keys = tuple(hash_key_of(e, use_hostname) for e in hosts)
    weights = tuple(host_weights(hosts))
    owners = _recent_tables.get(
        (size, keys, weights), lambda: array("I", build_table(keys, weights, size)), len
    )
    return MaglevPicker([hosts[i] for i in owners])
