"""Resources written as Envoy JSON (or YAML loaded into dicts) → protobuf messages.

This is how users write resources by hand, exactly as for Envoy: a typed config is an
object with an `"@type"` key naming its type URL, durations are strings like `"5s"`.

```python
load_resources([
    {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
     "name": "reviews", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}},
])
```

`load_resources` also takes `{"resources": [...]}` (a DiscoveryResponse's shape) and an
Envoy bootstrap's `{"static_resources": {"listeners": [...], "clusters": [...]}}`, whose
entries need no `"@type"`. Parsing is strict: an unknown field is an error, reported as a
`ResourceError` that says where in the document it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format

import sail.xds.codec.extensions  # noqa: F401  (registers typed_config types for ParseDict)
from sail.errors import ResourceError
from sail.xds.codec.types import (
    CLUSTER,
    LISTENER,
    RESOURCE_TYPES,
    Message,
    resource_type,
)

__all__ = ["load_resources", "parse_resource"]


def _name_of(data: Mapping[str, Any]) -> str:
    name = data.get("name", data.get("cluster_name", ""))
    return name if isinstance(name, str) else ""


def parse_resource(type_url_or_short_name: str, data: Mapping[str, Any]) -> Message:
    """Parse one resource of the given type (`"Cluster"` or its type URL) from a dict.

    An `"@type"` key in `data`, if present, must name the same type.
    """
    name = _name_of(data)
    rtype = resource_type(type_url_or_short_name)
    if rtype is None:
        supported = ", ".join(RESOURCE_TYPES)
        raise ResourceError(
            "Resource",
            name,
            f"@type: unsupported type {type_url_or_short_name!r} (supported: {supported})",
        )
    body = dict(data)
    declared = body.pop("@type", None)
    if declared is not None and declared != rtype.type_url:
        raise ResourceError(rtype.short_name, name, f"@type: {declared!r} is not {rtype.type_url}")
    message = rtype.message_class()
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        # The first line says what and where; later lines list every field of the message.
        reason = str(exc).split("\n", 1)[0].strip()
        raise ResourceError(rtype.short_name, name, reason) from None
    return message


def load_resources(data: Mapping[str, Any] | Sequence[Any]) -> list[Message]:
    """Parse every resource of a document; see the module docstring for the shapes."""
    if isinstance(data, Mapping):
        if "resources" in data:
            return _typed_list(data["resources"], "resources")
        if "static_resources" in data:
            return _bootstrap(data["static_resources"])
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return _typed_list(data, "")
    raise ResourceError(
        "Resource",
        "",
        "expected a list of resources, {'resources': [...]} "
        "or an Envoy bootstrap with static_resources",
    )


def _typed_list(entries: Any, where: str) -> list[Message]:
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise ResourceError("Resource", "", f"{where or 'resources'}: expected a list")
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise ResourceError("Resource", "", f"{at}: expected an object")
        if "@type" not in entry:
            raise ResourceError("Resource", _name_of(entry), f"{at}.@type: is required")
        out.append(_located(at, str(entry["@type"]), entry))
    return out


def _bootstrap(static: Any) -> list[Message]:
    if not isinstance(static, Mapping):
        raise ResourceError("Resource", "", "static_resources: expected an object")
    out = []
    for key, type_url in (("listeners", LISTENER), ("clusters", CLUSTER)):
        entries = static.get(key, [])
        if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
            raise ResourceError("Resource", "", f"static_resources.{key}: expected a list")
        for i, entry in enumerate(entries):
            at = f"static_resources.{key}[{i}]"
            if not isinstance(entry, Mapping):
                raise ResourceError("Resource", "", f"{at}: expected an object")
            out.append(_located(at, type_url, entry))
    return out


def _located(at: str, type_url: str, entry: Mapping[str, Any]) -> Message:
    """`parse_resource`, with the entry's place in the document added to any error."""
    try:
        return parse_resource(type_url, entry)
    except ResourceError as exc:
        raise ResourceError(exc.type_name, exc.name, f"{at}: {exc.reason}") from None
