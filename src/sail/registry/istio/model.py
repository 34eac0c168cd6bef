"""The Istio objects sail reads: frozen attrs classes mirroring Istio's API, field by field.

An object is its Kubernetes `metadata` (`ObjectMeta`) and its `spec`, plus the `source`
(file) it came from, which error messages name and equality ignores. The spec classes live
in one module per kind, each saying which Istio fields it supports:

| kind | group | spec | module |
|---|---|---|---|
| `VirtualService` | networking.istio.io | `VirtualServiceSpec` | `virtual_service` |
| `DestinationRule` | networking.istio.io | `DestinationRuleSpec` | `destination_rule` |
| `ServiceEntry` | networking.istio.io | `ServiceEntrySpec` | `service_entry` |
| `PeerAuthentication` | security.istio.io | `PeerAuthenticationSpec` | `security` |
| `AuthorizationPolicy` | security.istio.io | `AuthorizationPolicySpec` | `security` |
| `WorkloadGroup` | networking.istio.io | `WorkloadGroupSpec` | `workload_group` |

Field names are Istio's in snake_case (`perTryTimeout` → `per_try_timeout`; `from` →
`from_`); durations are float seconds; enums are `enum.Enum`s whose values are Istio's.
Every class validates itself, so an object built in code obeys the same rules as one parsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import attrs

from sail.registry.istio.destination_rule import DestinationRuleSpec
from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import field_key
from sail.registry.istio.security import AuthorizationPolicySpec, PeerAuthenticationSpec
from sail.registry.istio.service_entry import ServiceEntrySpec
from sail.registry.istio.virtual_service import VirtualServiceSpec
from sail.registry.istio.workload_group import WorkloadGroupSpec

__all__ = [
    "KINDS",
    "NETWORKING",
    "SECURITY",
    "AuthorizationPolicy",
    "DestinationRule",
    "IstioObject",
    "ObjectMeta",
    "PeerAuthentication",
    "ServiceEntry",
    "VirtualService",
    "WorkloadGroup",
]

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _dns_name(pattern: re.Pattern[str], limit: int) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if len(value) > limit or not pattern.fullmatch(value):
            raise FieldError(
                field_key(attribute),
                f"{value!r} is not a valid Kubernetes name (lower-case letters, digits and "
                f"'-', at most {limit} characters)",
            )

    return check


@attrs.frozen
class ObjectMeta:
    """`name` (required), `namespace` (default `default`), `labels` and `annotations`.

    Kubernetes bookkeeping fields (`uid`, `resourceVersion`, ...) are accepted and dropped,
    so `kubectl get -o yaml` output can be loaded as it is.
    """

    IGNORED: ClassVar = (
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "ownerReferences",
        "finalizers",
        "selfLink",
    )

    name: str = attrs.field(validator=_dns_name(_NAME, 253))
    namespace: str = attrs.field(default="default", validator=_dns_name(_NAMESPACE, 63))
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    annotations: Mapping[str, str] = attrs.field(factory=dict, hash=False)


class _Object:
    """What every Istio object has: `kind`, `key` and `ref`."""

    __slots__ = ()
    KIND: ClassVar[str]
    GROUP: ClassVar[str]
    meta: ObjectMeta
    source: str

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def key(self) -> tuple[str, str, str]:
        """`(kind, namespace, name)`: unique among the objects of a mesh."""
        return (self.KIND, self.meta.namespace, self.meta.name)

    @property
    def ref(self) -> str:
        """`Kind namespace/name`, as error messages name the object."""
        return f"{self.KIND} {self.meta.namespace}/{self.meta.name}"


@attrs.frozen
class VirtualService(_Object):
    KIND: ClassVar = "VirtualService"
    GROUP: ClassVar = NETWORKING

    meta: ObjectMeta
    spec: VirtualServiceSpec
    source: str = attrs.field(default="", eq=False)


@attrs.frozen
class DestinationRule(_Object):
    KIND: ClassVar = "DestinationRule"
    GROUP: ClassVar = NETWORKING

    meta: ObjectMeta
    spec: DestinationRuleSpec
    source: str = attrs.field(default="", eq=False)


@attrs.frozen
class ServiceEntry(_Object):
    KIND: ClassVar = "ServiceEntry"
    GROUP: ClassVar = NETWORKING

    meta: ObjectMeta
    spec: ServiceEntrySpec
    source: str = attrs.field(default="", eq=False)


@attrs.frozen
class PeerAuthentication(_Object):
    KIND: ClassVar = "PeerAuthentication"
    GROUP: ClassVar = SECURITY

    meta: ObjectMeta
    spec: PeerAuthenticationSpec
    source: str = attrs.field(default="", eq=False)


@attrs.frozen
class AuthorizationPolicy(_Object):
    KIND: ClassVar = "AuthorizationPolicy"
    GROUP: ClassVar = SECURITY

    meta: ObjectMeta
    spec: AuthorizationPolicySpec
    source: str = attrs.field(default="", eq=False)


@attrs.frozen
class WorkloadGroup(_Object):
    KIND: ClassVar = "WorkloadGroup"
    GROUP: ClassVar = NETWORKING

    meta: ObjectMeta
    spec: WorkloadGroupSpec
    source: str = attrs.field(default="", eq=False)


IstioObject: TypeAlias = (
    VirtualService | DestinationRule | ServiceEntry | PeerAuthentication | AuthorizationPolicy
    | WorkloadGroup
)

KINDS: Mapping[str, type[IstioObject]] = {
    cls.KIND: cls
    for cls in (
        VirtualService,
        DestinationRule,
        ServiceEntry,
        PeerAuthentication,
        AuthorizationPolicy,
        WorkloadGroup,
    )
}
"""The supported kinds by name."""
