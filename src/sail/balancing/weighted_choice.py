"""A picker that first chooses among child pickers by weight: the priority and locality steps
of `build_picker`."""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from sail.balancing.schedule import cumulative_bounds

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sail.balancing.base import Picker
    from sail.model import Endpoint

__all__ = ["WeightedChoicePicker", "hash_unit"]

_MASK64 = (1 << 64) - 1


def hash_unit(hash_key: int, salt: int) -> float:
    """A uniform float in [0, 1) derived from `hash_key` (SplitMix64's finalizer).

    Hashing policies pass the request hash down; choosing the priority and locality from the
    same hash (as Envoy's ring hash does for priorities) keeps a key on one endpoint. `salt`
    keeps the priority and locality draws independent of each other.
    """
    z = ((hash_key ^ salt) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


class WeightedChoicePicker:
    """Choose child *i* with probability `weights[i] / sum(weights)`, then delegate to it.

    One draw from `rand` (or from `hash_key`, when the request carries one) and one bisect
    over precomputed cumulative weights; children with weight 0 are never chosen.

    **Parameters**

    * `children` - `(weight, picker, label)` triples; `label` only shows in `repr()`.
    * `rand` - a `() -> float` in [0, 1), `random.random` in production.
    * `salt` - mixes `hash_key` so that nested choices do not all draw the same number.
    """

    __slots__ = ("_bounds", "_labels", "_pickers", "_rand", "_salt", "_total", "_weights")

    def __init__(
        self,
        children: Sequence[tuple[float, Picker, str]],
        rand: Callable[[], float],
        salt: int = 0,
    ) -> None:
        self._weights = tuple(float(w) for w, _, _ in children)
        self._pickers = tuple(p for _, p, _ in children)
        self._labels = tuple(label for _, _, label in children)
        self._bounds, self._total = cumulative_bounds(self._weights)
        self._rand = rand
        self._salt = salt

    def pick(self, hash_key: int | None = None) -> Endpoint:
        u = self._rand() if hash_key is None else hash_unit(hash_key, self._salt)
        return self._pickers[bisect_right(self._bounds, u * self._total)].pick(hash_key)

    @property
    def children(self) -> tuple[tuple[str, float, Picker], ...]:
        """`(label, share of traffic, picker)` per child, for `config-dump` and tests."""
        return tuple(
            (label, w / self._total, picker)
            for label, w, picker in zip(self._labels, self._weights, self._pickers, strict=True)
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{label}: {share:.1%} {p!r}" for label, share, p in self.children)
        return f"WeightedChoicePicker({inner})"
