"""WorkloadGroup: which service account a self-registering workload must have.

Istio's auto-registration (a VM joining with `ISTIO_META_AUTO_REGISTER_GROUP`) admits a
workload into WorkloadGroup `<name>` of namespace `<ns>` only if its identity is
`spiffe://<td>/ns/<ns>/sa/<template.serviceAccount>`. sail workloads register themselves
too, so the registry applies the same rule to a registration that comes over mTLS: a
workload of service `<name>` must prove the group's service account in the group's
namespace (`sail.registry.server.Registry.registration_refusal`). Only
`template.serviceAccount` is read; the template's other fields, `metadata` and `probe`
are refused (sail does not create WorkloadEntries from them).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import attrs

from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import field_key

__all__ = ["WorkloadGroupSpec", "WorkloadTemplate"]

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def _service_account(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if len(value) > 253 or not _NAME.fullmatch(value):
        raise FieldError(field_key(attribute), f"{value!r} is not a Kubernetes name")


@attrs.frozen
class WorkloadTemplate:
    UNSUPPORTED: ClassVar = ("address", "ports", "labels", "network", "locality", "weight")

    service_account: str = attrs.field(validator=_service_account)


@attrs.frozen
class WorkloadGroupSpec:
    UNSUPPORTED: ClassVar = ("metadata", "probe")

    template: WorkloadTemplate
