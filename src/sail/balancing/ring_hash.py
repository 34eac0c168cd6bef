"""Envoy's RING_HASH: a ketama-style consistent-hash ring (`ring_hash_lb.cc`).

**Building** (once per picker). Weights are normalized to sum to 1; the ring gets
`scale = min(ceil(min_weight * minimum_ring_size) / min_weight, maximum_ring_size)` entries
in all (`minimum_ring_size` default 1024, `maximum_ring_size` default 8M), so the lightest
endpoint still gets a whole number of entries and each endpoint about `scale * weight`. The
entries of an endpoint are the 64-bit hashes of `"<key>_0"`, `"<key>_1"`, ... where the key is
its address as `ip:port` (`[v6]:port` for IPv6) or, with `use_hostname_for_hashing`, its
hostname; xxHash64 by default, MurmurHash2 with `hash_function: MURMUR_HASH_2`. Entry counts
are handed out with running sums over the endpoints in order, exactly as Envoy does, and the
ring is sorted by hash. The same endpoints therefore give Envoy's ring, point for point, for
rings up to the cap.

**The cap** (gRFC A42, as gRPC does: `grpc.lb.ring_hash.ring_size_cap` in C-core,
`RingHashOptions.setRingSizeCap` in Java). Envoy accepts both sizes up to 8M (8,388,608; more
is a NACK, here too, at decode), and a ring of 8M entries costs sail about 13 s of Python
under the GIL and 1 GiB, rebuilt at every change of the cluster's endpoints or ejections. So
both `minimum_ring_size` and `maximum_ring_size` are clamped to a local cap before the ring is
built: `ring_size_cap()`, default `DEFAULT_RING_SIZE_CAP` = 4096 entries (a few ms to build),
the same default as gRPC's. With the cap, Envoy's defaults (1024 to 8M) become 1024 to 4096:
the control plane cannot make a client build a huge ring, and a user who wants bigger rings
raises the cap in the process, without touching the xDS config:

```python
from sail.balancing.ring_hash import set_ring_size_cap
set_ring_size_cap(65536)       # before the mesh starts; rings built from then on use it
```

Where sail differs from gRPC: the cap is never below the number of endpoints the ring is
built over, so with more endpoints of equal weight than the cap (4096 in one locality) each
still gets an entry, as in Envoy; gRPC then leaves endpoints off the ring, and they get no
traffic. The price of a small ring: weights are represented less exactly (weights 1 and
10,000 give the light endpoint 0 or 1 of 4096 entries, not 1 in 10,001), and shares are less
even (an endpoint's share is off by about `1/sqrt(its entries)` of itself). And when the
cap (or `maximum_ring_size`) clamps the ring, an endpoint's entries are not a whole number
(4096 over 10 is 409.6): the running sums give 409 or 410 by position in the list, as in
Envoy and gRPC, so the same endpoints listed in another order move the keys of a few entries.

**Rebuilding.** A picker is built over the endpoints that take traffic, so the ring is built
again whenever the cluster's endpoints change and whenever outlier detection ejects or
returns a host (the dataplane marks it unhealthy), as Envoy rebuilds its ring: the ejected
host's keys move, and so may a few others', when the entries per endpoint change. The last
few rings are kept by their inputs (`RecentBuilds`), so a host's return, a flapping host or
a cluster update that changed no endpoint or option reuses a ring instead of building it.
gRPC differs: its picker keeps one ring over all endpoints and walks past those that are
not ready, so only a failed endpoint's keys move and nothing is rebuilt on a failure.

**Picking** (O(log ring)). The request hash `h` (`sail.balancing.hashing`) selects the first
entry whose hash is `>= h`, wrapping past the end to the first entry - Envoy's port of
`ketama_get_server`. Without a hash the pick uses a random 64-bit value, as Envoy does (the
policy then behaves as random). A key stays on its endpoint as long as the ring is unchanged.
Adding an endpoint moves the keys of the arcs it takes, about 1/N of them - and, when the
points per endpoint `ceil(minimum_ring_size / N)` drop with it (always below 32 endpoints
at the default size, now and then above), the keys of the points the others lose: about
2/N when 10 become 11. That is Envoy's ring, reproduced.

Where sail differs: Envoy builds one ring per priority level over the hosts of all its
localities; sail builds one per locality and chooses the priority and locality from the same
hash first (`sail.balancing.cluster_picker`), so a key still maps to one endpoint, but not
the same endpoint Envoy would choose when a level has several localities.
`hash_balance_factor` (bounded load) is not implemented and is ignored.
"""

from __future__ import annotations

import math
import random
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

from sail.balancing.hashing import murmur_hash2, xxh64
from sail.balancing.schedule import host_weights
from sail.balancing.unavailable import UnavailablePicker
from sail.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import ClusterStats
    from sail.model import Endpoint, LbPolicy

__all__ = [
    "DEFAULT_RING_SIZE_CAP",
    "MAX_RING_SIZE",
    "MIN_RING_SIZE",
    "RecentBuilds",
    "RingHashPicker",
    "build_ring",
    "hash_key_of",
    "ring_hash_picker",
    "ring_size_cap",
    "set_ring_size_cap",
]

MIN_RING_SIZE = 1024
"""Envoy's default `minimum_ring_size`."""
MAX_RING_SIZE = 8_388_608
"""Envoy's default `maximum_ring_size`, and its limit for both sizes (more is a NACK)."""
DEFAULT_RING_SIZE_CAP = 4096
"""gRPC's default ring size cap (gRFC A42): both sizes are clamped to it at build time."""
_MASK64 = (1 << 64) - 1

_ring_size_cap = DEFAULT_RING_SIZE_CAP


def ring_size_cap() -> int:
    """The cap in force on both ring sizes (`DEFAULT_RING_SIZE_CAP` unless set)."""
    return _ring_size_cap


def set_ring_size_cap(entries: int = DEFAULT_RING_SIZE_CAP) -> None:
    """Clamp `minimum_ring_size` and `maximum_ring_size` to `entries` in every ring built from
    now on, process-wide (gRPC Java's `RingHashOptions.setRingSizeCap`); no argument restores
    the default of 4096. Rings already built keep their size until their cluster's next
    rebuild. `entries` must be in 1-8388608 (`ValueError` otherwise: gRPC Java clamps
    silently, sail refuses). An entry costs 0.5-1.5 µs to build and up to 120 bytes while
    the ring is built."""
    global _ring_size_cap
    if isinstance(entries, bool) or not isinstance(entries, int):
        raise ValueError(f"ring size cap {entries!r} is not an integer")
    if not 1 <= entries <= MAX_RING_SIZE:
        raise ValueError(f"ring size cap {entries} is not in 1-{MAX_RING_SIZE}")
    _ring_size_cap = entries


def hash_key_of(endpoint: Endpoint, use_hostname: bool = False) -> str:
    """What identifies `endpoint` on a ring or in a Maglev table: `ip:port`, or the hostname
    with `use_hostname_for_hashing` (falling back to `ip:port` when it has none)."""
    if use_hostname and endpoint.hostname:
        return endpoint.hostname
    return endpoint.authority


def build_ring(
    keys: Sequence[str],
    weights: Sequence[int],
    minimum_ring_size: int = MIN_RING_SIZE,
    maximum_ring_size: int = MAX_RING_SIZE,
    hash_function: Callable[[str], int] = xxh64,
) -> tuple[array[int], list[int]]:
    """Envoy's ring over hosts `keys` with `weights`: `(hashes, owners)`, sorted by hash,
    `owners[i]` being the index in `keys` of the host owning entry `i`. No cap here: the
    sizes are used as given (`ring_hash_picker` applies the cap)."""
    total = sum(weights)
    normalized = [w * 1.0 / total for w in weights]
    min_weight = min(normalized)
    scale = min(math.ceil(min_weight * minimum_ring_size) / min_weight, float(maximum_ring_size))
    # Each entry is packed as `hash << shift | owner`, so one sort of plain ints orders the
    # ring by hash (ties, which Envoy leaves unspecified, by owner).
    shift = max(1, (len(keys) - 1).bit_length())
    packed: list[int] = []
    current = 0.0
    target = 0.0
    for index, (key, weight) in enumerate(zip(keys, normalized, strict=True)):
        target += scale * weight
        # Envoy adds entries `while current < target`, one at a time; `current` is a whole
        # number below 2**53, so `target - current` is exact and this is the same count.
        count = math.ceil(target - current) if target > current else 0
        current += count
        prefix = key + "_"
        packed.extend([hash_function(prefix + str(i)) << shift | index for i in range(count)])
    packed.sort()
    mask = (1 << shift) - 1
    return array("Q", [p >> shift for p in packed]), [p & mask for p in packed]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentBuilds(Generic[K, V]):
    """The most recent results of a pure build, by its inputs, so that a picker rebuilt over
    the same endpoints and options reuses its ring or table: an ejected host's return (the
    set before its ejection comes back), a host that flaps, a cluster update that changed
    neither the endpoints nor the policy, the unchanged localities of an EDS update. At most
    `size` results are kept, of at most `entries` ring entries or table slots in all (the
    default, 16 and 1M, is 15 default Maglev tables or 16 capped rings: about 4 MB and
    0.8 MB); a result larger than that alone is not kept. Shared by every cluster.

    Thread-safe: builds run on the xDS thread and on the thread that ejected a host. Two
    threads missing on the same inputs both build; the results are equal."""

    __slots__ = ("_entries", "_lock", "_results", "_size", "_total")

    def __init__(self, size: int = 16, entries: int = 1 << 20) -> None:
        self._size = size
        self._entries = entries
        self._lock = threading.Lock()
        self._results: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0

    def get(self, key: K, build: Callable[[], V], entries: Callable[[V], int]) -> V:
        """`build()`'s result for inputs `key`, built only when not among the recent ones;
        `entries(result)` is its size."""
        with self._lock:
            found = self._results.get(key)
            if found is not None:
                self._results.move_to_end(key)
                return found[0]
        result = build()
        count = entries(result)
        if count <= self._entries:
            with self._lock:
                if key not in self._results:
                    self._results[key] = (result, count)
                    self._total += count
                while len(self._results) > self._size or self._total > self._entries:
                    _, (_, dropped) = self._results.popitem(last=False)
                    self._total -= dropped
        return result

    def clear(self) -> None:
        with self._lock:
            self._results.clear()
            self._total = 0


_RingKey = tuple[str, int, int, tuple[str, ...], tuple[int, ...]]
_recent_rings: RecentBuilds[_RingKey, tuple[array[int], array[int]]] = RecentBuilds()


class RingHashPicker:
    """Bisects the ring for the request hash; a random point when there is none."""

    __slots__ = ("_hashes", "_owners", "_random", "_size")

    def __init__(self, hashes: Sequence[int], owners: Sequence[Endpoint]) -> None:
        # A list bisects fastest; an array holds a big ring in 8 bytes an entry instead of 40.
        self._hashes = list(hashes) if len(hashes) <= 1 << 20 else hashes
        self._owners = tuple(owners)
        self._size = len(self._owners)
        self._random = random.getrandbits

    def pick(self, hash_key: int | None = None) -> Endpoint:
        h = self._random(64) if hash_key is None else hash_key & _MASK64
        i = bisect_left(self._hashes, h)
        return self._owners[i if i < self._size else 0]

    @property
    def ring(self) -> tuple[tuple[int, Endpoint], ...]:
        """`(hash, endpoint)` per entry, in ring order (for tests and config dumps)."""
        return tuple(zip(self._hashes, self._owners, strict=True))

    def __repr__(self) -> str:
        return f"RingHashPicker({len(set(self._owners))} endpoints, {self._size} entries)"


def ring_hash_picker(
    endpoints: Sequence[Endpoint],
    policy: LbPolicy | None = None,
    stats: ClusterStats | None = None,
) -> Picker:
    """The `ring_hash` policy factory. Options: `minimum_ring_size`, `maximum_ring_size`
    (both clamped to `ring_size_cap()`, but never below the number of endpoints),
    `hash_function` (`XX_HASH`, `MURMUR_HASH_2`), `use_hostname_for_hashing`. A ring built
    recently from the same inputs is reused."""
    hosts = tuple(endpoints)
    if not hosts:
        return UnavailablePicker("no endpoints")
    low = _size_option(policy, "minimum_ring_size", MIN_RING_SIZE)
    high = _size_option(policy, "maximum_ring_size", MAX_RING_SIZE)
    if low > high:
        raise ConfigError(f"ring_hash: minimum_ring_size ({low}) > maximum_ring_size ({high})")
    function = policy.option("hash_function", "XX_HASH") if policy else "XX_HASH"
    if function not in ("XX_HASH", "DEFAULT_HASH", "MURMUR_HASH_2"):
        raise ConfigError(f"ring_hash: unknown hash_function {function!r}")
    use_hostname = bool(policy.option("use_hostname_for_hashing", False)) if policy else False
    cap = max(_ring_size_cap, len(hosts))
    low, high = min(low, cap), min(high, cap)
    keys = tuple(hash_key_of(e, use_hostname) for e in hosts)
    weights = tuple(host_weights(hosts))
    murmur = function == "MURMUR_HASH_2"

    def build() -> tuple[array[int], array[int]]:
        hashes, owners = build_ring(keys, weights, low, high, murmur_hash2 if murmur else xxh64)
        return hashes, array("I", owners)

    key = ("MURMUR_HASH_2" if murmur else "XX_HASH", low, high, keys, weights)
    hashes, owners = _recent_rings.get(key, build, lambda built: len(built[1]))
    return RingHashPicker(hashes, [hosts[i] for i in owners])


def _size_option(policy: LbPolicy | None, key: str, default: int) -> int:
    value = policy.option(key, default) if policy else default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RING_SIZE:
        raise ConfigError(f"ring_hash: {key} {value!r} is not in 1-{MAX_RING_SIZE}")
    return value
