"""Protobuf well-known types (`Duration`, wrappers) to Python values and back.

Durations become float seconds. Decoding divides the exact integer nanosecond count once,
so `seconds_to_duration` followed by `duration_seconds` returns the same float for any
value that is a whole number of nanoseconds (which is all a `Duration` can hold).

Wrapper fields (`UInt32Value`, `BoolValue`) are how proto3 says "unset means the default":
`HasField` tells unset from an explicit zero, which matters (a missing `num_retries` is 1,
an explicit 0 is 0).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, wrappers_pb2

from sail.xds.codec.validation import Invalid

__all__ = [
    "bool_value",
    "duration_seconds",
    "enum_name",
    "seconds_to_duration",
    "uint32_value",
    "wrap_bool",
    "wrap_uint32",
]

_NANOS = 1_000_000_000


def duration_seconds(msg: Any, field: str, *, positive: bool = False) -> float | None:
    """`msg.<field>` in seconds, or `None` when the field is unset.

    Negative durations are `Invalid` (no Envoy duration field accepts them); with
    `positive`, so is zero (Envoy's `gt: {}` constraint).
    """
    if not msg.HasField(field):
        return None
    d = getattr(msg, field)
    if d.seconds < 0 or d.nanos < 0 or d.nanos >= _NANOS:
        raise Invalid(field, f"invalid duration {d.seconds}s {d.nanos}ns")
    total = int(d.seconds) * _NANOS + int(d.nanos)
    if positive and total == 0:
        raise Invalid(field, "must be greater than 0")
    return total / _NANOS


def seconds_to_duration(seconds: float) -> Any:
    """A `Duration` for `seconds`, rounded to the nanosecond."""
    if seconds < 0:
        raise ValueError(f"negative duration {seconds}")
    total = round(seconds * _NANOS)
    return duration_pb2.Duration(seconds=total // _NANOS, nanos=total % _NANOS)


def uint32_value(msg: Any, field: str, default: int) -> int:
    """`msg.<field>.value` for a `UInt32Value`/`UInt64Value` field, `default` when unset."""
    return int(getattr(msg, field).value) if msg.HasField(field) else default


def bool_value(msg: Any, field: str, default: bool) -> bool:
    """`msg.<field>.value` for a `BoolValue` field, `default` when unset."""
    return bool(getattr(msg, field).value) if msg.HasField(field) else default


def wrap_uint32(value: int) -> Any:
    return wrappers_pb2.UInt32Value(value=value)


def wrap_bool(value: bool) -> Any:
    return wrappers_pb2.BoolValue(value=value)


def enum_name(enum_type: Any, value: int) -> str:
    """The name of an enum value, or the number for values this proto version does not
    define (proto3 enums are open: any int may arrive on the wire)."""
    try:
        return str(enum_type.Name(value))
    except ValueError:
        return str(value)
