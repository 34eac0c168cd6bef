"""Balancing policies by name, as gRPC's balancer registry: an xDS config naming a policy
selects it, and a name with no registered policy is rejected when the config is decoded."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sail.balancing.base import AnyPolicyFactory

__all__ = ["get", "names", "register", "takes_stats"]

_POLICIES: dict[str, AnyPolicyFactory] = {}


def register(name: str, factory: AnyPolicyFactory) -> None:
    """Register `factory` under `name`, replacing any earlier one.

    `factory` is `(endpoints, policy, stats) -> Picker` (`PolicyFactory`) or, for a policy
    that needs no counters, `(endpoints, policy) -> Picker`."""
    _POLICIES[name] = factory


def get(name: str) -> AnyPolicyFactory | None:
    """The factory registered under `name`, or `None`."""
    return _POLICIES.get(name)


def names() -> frozenset[str]:
    return frozenset(_POLICIES)


def takes_stats(factory: object) -> bool:
    """Whether `factory` accepts a third positional argument (the cluster's `ClusterStats`).

    Decided from its signature, at picker build time only; a callable whose signature
    cannot be read is assumed to take it."""
    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    return True
