"""Envoy's RING_HASH: a ketama-style consistent-hash ring (`ring_hash_lb.cc`).

**Building** (once per picker). Weights are normalized to sum to 1; the ring gets
`scale = min(ceil(min_weight * minimum_ring_size) / min_weight, maximum_ring_size)` entries
in all (`minimum_ring_size` default 1024, `maximum_ring_size` default 8M), so the lightest
endpoint still gets a whole number of entries and each endpoint about `scale * weight`. The
entries of an endpoint are the 64-bit hashes of `"<key>_0"`, `"<key>_1"`, ... where the key is
its address as `ip:port` (`[v6]:port` for IPv6) or, with `use_hostname_for_hashing`, its
hostname; xxHash64 by default, MurmurHash2 with `hash_function: MURMUR_HASH_2`. Entry counts
are handed out with running sums over the endpoints in order, exactly as Envoy does, and the
ring is sorted by hash. The same endpoints therefore give Envoy's ring, point for point.

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
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING

from sail.balancing.hashing import murmur_hash2, xxh64
from sail.balancing.schedule import host_weights
from sail.balancing.unavailable import UnavailablePicker
from sail.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sail.balancing.base import Picker
    from sail.balancing.stats import ClusterStats
    from sail.model import Endpoint, LbPolicy

__all__ = ["RingHashPicker", "build_ring", "hash_key_of", "ring_hash_picker"]

MIN_RING_SIZE = 1024
MAX_RING_SIZE = 8_388_608
_MASK64 = (1 << 64) - 1


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
    `owners[i]` being the index in `keys` of the host owning entry `i`."""
    total = sum(weights)
    normalized = [w * 1.0 / total for w in weights]
    min_weight = min(normalized)
    scale = min(math.ceil(min_weight * minimum_ring_size) / min_weight, float(maximum_ring_size))
    hashes: list[int] = []
    owners: list[int] = []
    current = 0.0
    target = 0.0
    for index, (key, weight) in enumerate(zip(keys, normalized, strict=True)):
        prefix = key + "_"
        target += scale * weight
        i = 0
        while current < target:
            hashes.append(hash_function(prefix + str(i)))
            owners.append(index)
            i += 1
            current += 1
    order = sorted(range(len(hashes)), key=hashes.__getitem__)
    return array("Q", [hashes[i] for i in order]), [owners[i] for i in order]


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
    """The `ring_hash` policy factory. Options: `minimum_ring_size`, `maximum_ring_size`,
    `hash_function` (`XX_HASH`, `MURMUR_HASH_2`), `use_hostname_for_hashing`."""
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
    hashes, owners = build_ring(
        [hash_key_of(e, use_hostname) for e in hosts],
        host_weights(hosts),
        low,
        high,
        murmur_hash2 if function == "MURMUR_HASH_2" else xxh64,
    )
    return RingHashPicker(hashes, [hosts[i] for i in owners])


def _size_option(policy: LbPolicy | None, key: str, default: int) -> int:
    value = policy.option(key, default) if policy else default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RING_SIZE:
        raise ConfigError(f"ring_hash: {key} {value!r} is not in 1-{MAX_RING_SIZE}")
    return value
