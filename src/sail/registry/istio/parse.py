"""Reading Istio YAML: multi-document files and folders of them → Istio objects.

```python
objects = load_paths(["mesh/"])           # every *.yaml / *.yml in mesh/, sorted by name
objects = load_documents(text, "mesh.yaml")
```

Each document needs `apiVersion` (`networking.istio.io/v1`, `v1beta1` or `v1alpha3` for
VirtualService, DestinationRule and ServiceEntry; `security.istio.io/v1` or `v1beta1` for
PeerAuthentication and AuthorizationPolicy), `kind`, `metadata.name` and a `spec`;
`metadata.namespace` defaults to `default`. `status` is ignored; empty documents are
skipped.

Reading is strict, because a field the registry ignored would be config that silently
does nothing: an unknown field anywhere is an error naming the file, the object and the
field's path, as are wrong types, bad durations, unknown kinds, duplicate YAML keys (which
YAML itself would let the last one win) and invalid YAML (with its line and column). A
RequestAuthentication, a kind sail knows but does not enforce (nor parse) yet, is refused
with the reason `sail.registry.istio.validate.not_enforced` gives every such kind.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sail.registry.istio.errors import FieldError, IstioConfigError
from sail.registry.istio.model import KINDS, NETWORKING, SECURITY, IstioObject, ObjectMeta
from sail.registry.istio.schema import build
from sail.registry.istio.validate import NOT_ENFORCED, not_enforced

__all__ = ["API_VERSIONS", "load_documents", "load_paths"]

API_VERSIONS: Mapping[str, tuple[str, ...]] = {
    NETWORKING: (f"{NETWORKING}/v1", f"{NETWORKING}/v1beta1", f"{NETWORKING}/v1alpha3"),
    SECURITY: (f"{SECURITY}/v1", f"{SECURITY}/v1beta1"),
}
"""The accepted `apiVersion`s of each API group."""

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")
_IGNORED_TOP_LEVEL = ("status",)
_SUFFIXES = (".yaml", ".yml")


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> list[IstioObject]:
    """The objects of every file in `paths`, in order.

    A folder stands for its `*.yaml` and `*.yml` files (not its subfolders, nor hidden
    files), sorted by name; a file is read whatever its name. Raises `IstioConfigError`
    naming the path when one cannot be read, and for any error in its content.
    """
    objects: list[IstioObject] = []
    for path in map(Path, paths):
        for file in _files(path):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise IstioConfigError(f"cannot read: {reason}", source=str(file)) from None
            objects.extend(load_documents(text, str(file)))
    return objects


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in _SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
    return [path]


def load_documents(text: str, source: str) -> list[IstioObject]:
    """The objects of the YAML documents in `text`, read from `source` (a name for errors).

    Raises `IstioConfigError` for invalid YAML, an unknown kind, or an object that is not
    valid on its own. Checks across objects are `sail.registry.istio.validate`'s.
    """
    try:
        documents = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:
        raise IstioConfigError("invalid YAML: nested too deeply", source=source) from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a bad explicit tag (`!!timestamp 2020-13-45`).
        raise IstioConfigError(f"invalid YAML: {exc!r}", source=source) from None
    objects = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        objects.append(_object(document, source, index + 1))
    return objects


def _object(document: object, source: str, number: int) -> IstioObject:
    label = f"document {number}"
    if not isinstance(document, Mapping):
        raise IstioConfigError("expected a mapping (an Istio object)", source=source, object=label)
    kind = document.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None and isinstance(kind, str) and kind in NOT_ENFORCED:
        try:
            meta = build(ObjectMeta, document.get("metadata"), "metadata")
        except FieldError as exc:
            raise IstioConfigError(
                exc.reason, source=source, object=f"{kind} ({label})", field=exc.field
            ) from None
        raise not_enforced(kind, f"{kind} {meta.namespace}/{meta.name}", source)
    if cls is None:
        known = ", ".join(KINDS)
        got = "no kind" if kind is None else f"unknown kind {kind!r}"
        raise IstioConfigError(f"{got} (known: {known})", source=source, object=label, field="kind")
    ref = f"{kind} ({label})"
    try:
        meta = build(ObjectMeta, document.get("metadata"), "metadata")
        ref = f"{kind} {meta.namespace}/{meta.name}"
        _check_top_level(document, cls.GROUP)
        spec = build(typing.get_type_hints(cls)["spec"], document.get("spec") or {}, "spec")
    except FieldError as exc:
        raise IstioConfigError(exc.reason, source=source, object=ref, field=exc.field) from None
    return cls(meta=meta, spec=spec, source=source)


def _check_top_level(document: Mapping[Any, Any], group: str) -> None:
    for key in document:
        if key not in _TOP_LEVEL and key not in _IGNORED_TOP_LEVEL:
            raise FieldError(str(key), f"unknown field (known: {', '.join(_TOP_LEVEL)})")
    version = document.get("apiVersion")
    accepted = API_VERSIONS[group]
    if version not in accepted:
        got = "is required" if version is None else f"{version!r} is not supported"
        raise FieldError("apiVersion", f"{got} (accepted: {', '.join(accepted)})")


def _yaml_error(exc: yaml.YAMLError, source: str) -> IstioConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    reason = f"invalid YAML: {context + ': ' if context else ''}{problem}"
    if mark is not None:
        reason = f"line {mark.line + 1}, column {mark.column + 1}: {reason}"
    return IstioConfigError(reason, source=source)


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping explains it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
