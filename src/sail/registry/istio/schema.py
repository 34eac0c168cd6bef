"""YAML data → the frozen model classes, with each class's own fields as the schema.

An attrs field is read from the camelCase key of its name (`per_try_timeout` ←
`perTryTimeout`, `from_` ← `from`); its annotation says what to expect:

| annotation | YAML |
|---|---|
| `str`, `int`, `float`, `bool` | that scalar (`true` is not an int, `8080` is not a string) |
| `float` with `duration()` | a duration string: `"5s"`, `"100ms"`, `"1.5s"`, `"1m"`, `"1h30m"` |
| an `enum.Enum` | one of its values |
| `tuple[X, ...]` | a list of X |
| `Mapping[str, X]` | a mapping of string keys to X |
| `Mapping[int, X]` | a mapping of integer keys (`8080` or `"8080"`) to X |
| an attrs class | a mapping, built recursively |
| `X \\| None` | X, or absent / `null` |

The reading is strict: a key the class does not have is an error listing the keys it has,
and a key in the class's `UNSUPPORTED` tuple (an Istio field sail does not translate yet)
is an error saying so, never silently dropped. Keys in `IGNORED` are skipped (used for
Kubernetes bookkeeping in `metadata`). Errors are `FieldError`s naming the path from the
object's top, e.g. `spec.http[0].route[1].destination.subset`.

The trap: YAML 1.1 reads `yes`, `no`, `on`, `off` as booleans and `1.10` as a float, so a
header value or label written bare may not be a string; the error says to quote it.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import attrs

from sail.model.regex import InvalidRegex, compile_regex
from sail.registry.istio.errors import FieldError

__all__ = [
    "Validator",
    "build",
    "check_header_name",
    "check_host",
    "duration",
    "exactly_one",
    "field_key",
    "in_range",
    "non_empty",
    "not_yet",
    "parse_duration",
    "valid_host",
    "valid_hosts",
    "valid_regex",
]

T = TypeVar("T")
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def field_key(attribute: attrs.Attribute[Any]) -> str:
    """The YAML key of an attrs field: its name in camelCase, a trailing `_` dropped."""
    explicit = attribute.metadata.get("key")
    if explicit:
        return str(explicit)
    head, *rest = attribute.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


# -- durations ------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NANOS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_NANOS = 1_000_000_000


_MAX_NANOS = 2**63 - 1


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."


def parse_duration(value: object) -> float:
    """A duration in Go's syntax (what Istio accepts) → seconds.

    One or more `<number><unit>` parts, units `ns`, `us`, `ms`, `s`, `m`, `h`: `"5s"`,
    `"100ms"`, `"1.5s"`, `"1m"`, `"1h30m"`. A bare number has no unit and is refused.
    The result is a whole number of nanoseconds divided once, as the xDS codec computes it,
    so it survives a round trip through a protobuf `Duration` unchanged.
    """
    example = "a duration such as '5s', '100ms', '1.5s' or '1m'"
    if not isinstance(value, str):
        raise FieldError("", f"expected {example}, got {_describe(value)}")
    if not value:
        raise FieldError("", f"invalid duration '': expected {example}")
    total = Decimal(0)
    pos = 0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None:
            raise FieldError("", f"invalid duration {value!r}: expected {example}")
        total += Decimal(m[1]) * _UNIT_NANOS[m[2]]
        if total > _MAX_NANOS:
            # Go's ParseDuration refuses what overflows an int64 of nanoseconds (~292 years)
            raise FieldError(
                "", f"invalid duration {_shown(value)}: out of range (at most 2562047h)"
            )
        pos = m.end()
    if total != int(total):
        raise FieldError("", f"invalid duration {value!r}: finer than a nanosecond")
    return int(total) / _NANOS


def duration(*, positive: bool = False, required: bool = False) -> Any:
    """An attrs field holding a duration in seconds, read from a string: `float`
    when `required`, else `float | None` defaulting to `None`.

    With `positive`, zero is refused too (intervals, per-try timeouts)."""
    validators: list[Validator] = [_positive] if positive else []
    if required:
        return attrs.field(metadata={"duration": True}, validator=validators)
    return attrs.field(
        default=None,
        metadata={"duration": True},
        validator=attrs.validators.optional(validators),
    )


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise FieldError(field_key(attribute), "must be greater than 0")


# -- validators -----------------------------------------------------------------------------


def in_range(low: int | float, high: int | float) -> Validator:
    """Check `low <= value <= high`; `None` passes."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise FieldError(field_key(attribute), f"must be between {low} and {high}, got {value}")

    return check


def non_empty(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Check a string or tuple is not empty; `None` passes."""
    if value is not None and len(value) == 0:
        raise FieldError(field_key(attribute), "must not be empty")


def valid_regex(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Check a regex compiles as Envoy compiles it: RE2, within Envoy's program-size limit
    (`sail.model.regex.compile_regex`, the function the translation uses), so `sail apply`
    refuses what Envoy would NACK."""
    if value is None:
        return
    try:
        compile_regex(value, field_key(attribute))
    except InvalidRegex as exc:
        raise FieldError(field_key(attribute), exc.reason) from None


def exactly_one(instance: Any, *names: str, at_most: bool = False) -> None:
    """Check exactly one (or, with `at_most`, at most one) of the named fields is set."""
    fields = attrs.fields_dict(type(instance))
    keys = [field_key(fields[n]) for n in names]
    given = [k for n, k in zip(names, keys, strict=True) if getattr(instance, n) is not None]
    if len(given) > 1:
        raise FieldError("", f"only one of {', '.join(keys)} may be set, got {', '.join(given)}")
    if not given and not at_most:
        raise FieldError("", f"one of {', '.join(keys)} is required")


# -- the reader -----------------------------------------------------------------------------


@attrs.frozen
class _Field:
    name: str
    key: str
    type: Any
    required: bool
    duration: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = _read_fields(cls)
    return found


def _read_fields(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _Field(
            name=a.name,
            key=field_key(a),
            type=hints[a.name],
            required=a.default is attrs.NOTHING,
            duration=bool(a.metadata.get("duration")),
        )
        for a in attrs.fields(cls)
        if a.init
    )


def build(cls: type[T], data: object, path: str) -> T:
    """Build an instance of the attrs class `cls` from `data` found at `path`.

    Raises `FieldError` naming the full path of the offending field.
    """
    if not isinstance(data, Mapping):
        raise FieldError(path, f"expected a mapping, got {_describe(data)}")
    fields = _fields(cls)
    by_key = {f.key: f for f in fields}
    unsupported: tuple[str, ...] = getattr(cls, "UNSUPPORTED", ())
    ignored: tuple[str, ...] = getattr(cls, "IGNORED", ())
    for key in data:
        if not isinstance(key, str):
            raise FieldError(path, f"keys must be strings, got {_describe(key)} {key!r}")
        if key in by_key or key in ignored:
            continue
        where = _join(path, key)
        if key in unsupported:
            raise FieldError(where, "not supported yet (an Istio field sail does not translate)")
        known = ", ".join(sorted(by_key))
        raise FieldError(where, f"unknown field (known: {known})")
    kwargs: dict[str, Any] = {}
    for f in fields:
        value = data.get(f.key)
        if value is None:
            if f.required:
                raise FieldError(_join(path, f.key), "is required")
            continue
        kwargs[f.name] = _convert(f.type, value, _join(path, f.key), f.duration)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise exc.under(path) from None


def _convert(tp: Any, value: object, path: str, is_duration: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, path, is_duration)
    if is_duration:
        try:
            return parse_duration(value)
        except FieldError as exc:
            raise exc.under(path) from None
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise FieldError(path, f"expected a list, got {_describe(value)}")
        return tuple(
            _convert(item_type, item, f"{path}[{i}]", False) for i, item in enumerate(value)
        )
    if origin is Mapping:
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, Mapping):
            raise FieldError(path, f"expected a mapping, got {_describe(value)}")
        key_type = typing.get_args(tp)[0]
        out = {}
        for key, item in value.items():
            out[_key(key_type, key, path)] = _convert(value_type, item, f"{path}[{key}]", False)
        return out
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp, value, path)
    if attrs.has(tp):
        return build(tp, value, path)
    return _scalar(tp, value, path)


def _key(tp: Any, key: object, path: str) -> Any:
    """A mapping key: a string, or for `Mapping[int, X]` (a proto map with integer keys,
    `portLevelMtls`) an integer as YAML or JSON writes it (`8080` or `"8080"`)."""
    if tp is int:
        if isinstance(key, int) and not isinstance(key, bool):
            return key
        if isinstance(key, str) and key.isascii() and key.isdigit():
            return int(key)
        raise FieldError(path, f"keys must be integers, got {key!r}")
    if not isinstance(key, str):
        raise FieldError(path, f"keys must be strings, got {_describe(key)} {key!r}")
    return key


def _scalar(tp: Any, value: object, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            raise FieldError(path, f"expected a string, got {_describe(value)} (quote it)")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    else:  # pragma: no cover - a model class with a field type this reader lacks
        raise TypeError(f"schema: unsupported field type {tp!r} at {path}")
    raise FieldError(path, f"expected {_describe_type(tp)}, got {_describe(value)}")


_NOT_YET_VALUES: dict[type[enum.Enum], frozenset[str]] = {}


def not_yet(enum_type: type[enum.Enum], *values: str) -> None:
    """Record Istio values of `enum_type` that sail does not support yet, so that an error
    says "not supported yet" for them rather than "must be one of"."""
    _NOT_YET_VALUES[enum_type] = frozenset(values)


def _enum(tp: type[enum.Enum], value: object, path: str) -> enum.Enum:
    allowed = ", ".join(str(m.value) for m in tp)
    if isinstance(value, str):
        for member in tp:
            if member.value == value:
                return member
        if value in _NOT_YET_VALUES.get(tp, ()):
            raise FieldError(path, f"{value}: not supported yet (supported: {allowed})")
    raise FieldError(path, f"must be one of {allowed}, got {value!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _describe_type(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number"}.get(tp, str(tp))


# -- names ----------------------------------------------------------------------------------

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_host(field: str, host: str) -> None:
    """A service host: a short name (`reviews`) or a DNS name; no wildcards yet."""
    if "*" in host:
        raise FieldError(field, f"{host!r}: wildcard hosts are not supported yet")
    if not _HOST.fullmatch(host):
        raise FieldError(field, f"{host!r} is not a valid host name")


def valid_host(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator form of `check_host`; `None` passes."""
    if value is not None:
        check_host(field_key(attribute), value)


def valid_hosts(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """Check a non-empty list of hosts."""
    key = field_key(attribute)
    if not value:
        raise FieldError(key, "at least one host is required")
    for i, host in enumerate(value):
        check_host(f"{key}[{i}]", host)


def check_header_name(field: str, name: str) -> None:
    """An HTTP header name: a token (letters, digits and ``!#$%&'*+-.^_`|~``)."""
    if not _HEADER_NAME.fullmatch(name):
        raise FieldError(field, f"{name!r} is not a valid header name")
