"""Balancing policies by name, as gRPC's balancer registry: an xDS config naming a policy
selects it, and a name with no registered policy is rejected when the config is decoded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sail.balancing.base import PolicyFactory

__all__ = ["get", "names", "register"]

_POLICIES: dict[str, PolicyFactory] = {}


def register(name: str, factory: PolicyFactory) -> None:
    """Register `factory` under `name`, replacing any earlier one."""
    _POLICIES[name] = factory


def get(name: str) -> PolicyFactory | None:
    """The factory registered under `name`, or `None`."""
    return _POLICIES.get(name)


def names() -> frozenset[str]:
    return frozenset(_POLICIES)
