"""The contract between the balancing policies and the data plane.

A policy is registered by name. From a list of hosts it builds a `Picker`: a small immutable
object whose `pick()` never blocks, takes no lock and does no I/O. Config updates build a
new picker and swap it whole; the request path only ever calls `pick()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.model import Endpoint, LbPolicy

__all__ = ["Picker", "PolicyFactory"]


class Picker(Protocol):
    def pick(self, hash_key: int | None = None) -> Endpoint:
        """Choose one endpoint. `hash_key` is the request hash for hashing policies;
        others ignore it. Raises `sail.errors.NoHealthyUpstream` when nothing can be picked."""
        ...


class PolicyFactory(Protocol):
    def __call__(self, endpoints: Sequence[Endpoint], policy: LbPolicy) -> Picker:
        """Build a picker over `endpoints` (non-empty, already filtered to those that take
        traffic) honouring each endpoint's `weight`."""
        ...
