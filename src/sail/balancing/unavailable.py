"""A picker for a cluster that cannot take a request right now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sail.errors import NoHealthyUpstream

if TYPE_CHECKING:
    from sail.model import Endpoint

__all__ = ["UnavailablePicker"]


class UnavailablePicker:
    """Raises `NoHealthyUpstream(reason)` on every pick.

    Building a picker never fails because a cluster is empty or unhealthy: EDS can say so at
    any moment and recover a second later. The failure belongs to the request that finds the
    cluster in that state, so it is deferred to `pick()`, with the reason worked out once.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def pick(self, hash_key: int | None = None) -> Endpoint:
        raise NoHealthyUpstream(self.reason)

    def __repr__(self) -> str:
        return f"UnavailablePicker({self.reason!r})"
