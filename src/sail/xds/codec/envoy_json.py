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

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

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

__all__ = ["MAX_DEPTH", "Entry", "load_entries", "load_resources", "parse_resource"]

MAX_DEPTH = 64
"""How deep objects and arrays may nest in one resource: deeper than any Envoy resource
needs, and it keeps the parser's stack bounded."""


def _show_type(value: object) -> str:
    return type(value).__name__


def _check_json(data: Mapping[str, Any]) -> str | None:
    """Why `data` is not plain JSON that protobuf's parser can take, naming the field; or None.

    Iterative, so a deep or self-referencing (YAML alias) value cannot exhaust the stack.
    """
    stack: list[tuple[str, Any, int]] = [("", data, 1)]
    while stack:
        where, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{where}: nested more than {MAX_DEPTH} deep"
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{where or '.'}: key {key!r} is not a string (quote it)"
                at = f"{where}.{key}" if where else key
                if key == "@type" and not isinstance(item, str):
                    return f"{at}: expected a string, got {_show_type(item)}"
                stack.append((at, item, depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((f"{where}[{i}]", item, depth + 1))
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{where}: {value} is not a finite number"
        elif value is not None and not isinstance(value, str | int):
            return f"{where}: a {_show_type(value)} is not a JSON value (quote it)"
    return None


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
    problem = _check_json(body)
    if problem is not None:
        raise ResourceError(rtype.short_name, name, problem)
    message = rtype.message_class()
    try:
        json_format.ParseDict(body, message)
    except (json_format.ParseError, ValueError, TypeError, OverflowError) as exc:
        # The first line says what and where; later lines list every field of the message.
        reason = str(exc).split("\n", 1)[0].strip()
        raise ResourceError(rtype.short_name, name, reason) from None
    return message


def load_resources(data: Mapping[str, Any] | Sequence[Any]) -> list[Message]:
    """Parse every resource of a document; see the module docstring for the shapes. Raises
    `ResourceError` for the first entry that does not parse."""
    out = []
    for entry in load_entries(data):
        if isinstance(entry.parsed, ResourceError):
            raise entry.parsed
        out.append(entry.parsed)
    return out


class Entry(NamedTuple):
    """One entry of a document: its type URL (`""` when it names none sail knows), its
    name (for a bad entry without one, its place in the document: `[3]`), and the
    message, or why it does not parse."""

    type_url: str
    name: str
    parsed: Message | ResourceError


def load_entries(data: Mapping[str, Any] | Sequence[Any]) -> list[Entry]:
    """`load_resources`, entry by entry: a bad entry is an `Entry` whose `parsed` is its
    `ResourceError`, and the others still parse (as a partly bad xDS response is taken).
    Raises `ResourceError` only when the document as a whole has none of the shapes."""
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


def _typed_list(entries: Any, where: str) -> list[Entry]:
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise ResourceError("Resource", "", f"{where or 'resources'}: expected a list")
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            out.append(_bad("", at, "", f"{at}: expected an object"))
        elif "@type" not in entry:
            out.append(_bad("", at, _name_of(entry), f"{at}.@type: is required"))
        elif not isinstance(entry["@type"], str):
            out.append(_bad("", at, _name_of(entry), f"{at}.@type: expected a string"))
        else:
            out.append(_located(at, entry["@type"], entry))
    return out


def _bootstrap(static: Any) -> list[Entry]:
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
                out.append(_bad(type_url, at, "", f"{at}: expected an object"))
            else:
                out.append(_located(at, type_url, entry))
    return out


def _bad(type_url: str, at: str, name: str, reason: str) -> Entry:
    rtype = RESOURCE_TYPES.get(type_url)
    return Entry(type_url, name or at, ResourceError(
        rtype.short_name if rtype is not None else "Resource", name, reason
    ))


def _located(at: str, type_url: str, entry: Mapping[str, Any]) -> Entry:
    """`parse_resource` as an `Entry`, with the entry's place in the document added to any
    error."""
    rtype = resource_type(type_url)
    known = rtype.type_url if rtype is not None else ""
    try:
        return Entry(known, _name_of(entry), parse_resource(type_url, entry))
    except ResourceError as exc:
        error = ResourceError(exc.type_name, exc.name, f"{at}: {exc.reason}")
        return Entry(known, exc.name or at, error)
