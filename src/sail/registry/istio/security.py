"""`PeerAuthentication` and `AuthorizationPolicy` (security.istio.io): parsed and validated,
then refused (`sail.registry.istio.validate.check_supported`), since sail does not enforce
them yet: sail fails closed, rather than accept a STRICT mTLS policy or a DENY rule and
serve plaintext or allow the call. The security work will translate them from these specs.

Supported fields:

* PeerAuthentication: `selector.matchLabels`, `mtls.mode` (`UNSET`, `DISABLE`,
  `PERMISSIVE`, `STRICT`).
* AuthorizationPolicy: `selector.matchLabels`, `action` (`ALLOW`, the default, `DENY`,
  `AUDIT`), `rules[]` of `from[].source` (`principals`, `requestPrincipals`, `namespaces`,
  `ipBlocks`, `remoteIpBlocks` and their `not...` forms), `to[].operation` (`hosts`,
  `ports`, `methods`, `paths` and their `not...` forms) and `when[]` (`key`, `values`,
  `notValues`). IP blocks must be addresses or CIDRs; ports are strings of a port number,
  as in Istio.

`portLevelMtls` keys on the workload's port and needs a `selector`, as in Istio. The `CUSTOM`
action (`provider`) and `targetRef(s)` are refused.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import field_key, non_empty, not_yet

__all__ = [
    "Action",
    "AuthorizationPolicySpec",
    "Condition",
    "MtlsMode",
    "Operation",
    "PeerAuthenticationMtls",
    "PeerAuthenticationSpec",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "WorkloadSelector",
]


@attrs.frozen
class WorkloadSelector:
    match_labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)


class MtlsMode(enum.Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@attrs.frozen
class PeerAuthenticationMtls:
    mode: MtlsMode = MtlsMode.UNSET


def _port_keys(_: object, attribute: attrs.Attribute[Any], value: Mapping[int, Any]) -> None:
    for port in value:
        if not 1 <= port <= 65535:
            raise FieldError(f"{field_key(attribute)}[{port}]", f"{port} is not a port number")


@attrs.frozen
class PeerAuthenticationSpec:
    selector: WorkloadSelector | None = None
    mtls: PeerAuthenticationMtls | None = None
    port_level_mtls: Mapping[int, PeerAuthenticationMtls] = attrs.field(
        factory=dict, hash=False, validator=_port_keys
    )

    def __attrs_post_init__(self) -> None:
        if self.port_level_mtls and self.selector is None:
            raise FieldError("portLevelMtls", "needs a selector (it applies to the selected "
                             "workloads' ports, as in Istio)")


def _ip_blocks(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for i, block in enumerate(value):
        try:
            ipaddress.ip_network(block, strict=False)
        except ValueError:
            raise FieldError(
                f"{field_key(attribute)}[{i}]", f"{block!r} is not an IP address or CIDR"
            ) from None


@attrs.frozen
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_ip_blocks)
    not_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_ip_blocks)
    remote_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_ip_blocks)
    not_remote_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_ip_blocks)


def _ports(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for i, port in enumerate(value):
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise FieldError(f"{field_key(attribute)}[{i}]", f"{port!r} is not a port number")


@attrs.frozen
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = attrs.field(default=(), validator=_ports)
    not_ports: tuple[str, ...] = attrs.field(default=(), validator=_ports)
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@attrs.frozen
class RuleFrom:
    source: Source


@attrs.frozen
class RuleTo:
    operation: Operation


@attrs.frozen
class Condition:
    key: str = attrs.field(validator=non_empty)
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.values and not self.not_values:
            raise FieldError("", "one of values, notValues is required")


@attrs.frozen
class Rule:
    from_: tuple[RuleFrom, ...] = ()
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


not_yet(Action, "CUSTOM")


@attrs.frozen
class AuthorizationPolicySpec:
    """No `rules` with `ALLOW` allows nothing; with `DENY` it denies nothing (Istio)."""

    UNSUPPORTED: ClassVar = ("provider", "targetRef", "targetRefs")

    selector: WorkloadSelector | None = None
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
