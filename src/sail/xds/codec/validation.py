"""How decoders report what is wrong, and where.

A decoder walks a protobuf message depth first. When a check fails deep inside, it raises
`Invalid` with the reason and the name of the failing field only; each enclosing level adds
its own segment on the way out (`with at("routes", 3): ...`), so the message that reaches the
control plane in the NACK names the full path without any level having to know its parents:

```
virtual_hosts[0].routes[3].match.safe_regex.regex: does not compile: missing ), ...
```

`resource()` turns the finished `Invalid` into the public `sail.errors.ResourceError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from sail.errors import ResourceError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Invalid", "at", "header_safe", "resource"]


class Invalid(Exception):
    """A failed check: `reason`, at `path` (segments, outermost first)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.segments: list[str] = [path] if path else []
        self.reason = reason

    @property
    def path(self) -> str:
        return ".".join(self.segments)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.segments else self.reason


@contextmanager
def at(field: str, index: int | None = None) -> Iterator[None]:
    """Prefix the path of any `Invalid` raised inside with `field` (or `field[index]`)."""
    try:
        yield
    except Invalid as exc:
        exc.segments.insert(0, field if index is None else f"{field}[{index}]")
        raise


@contextmanager
def resource(type_name: str, name: str) -> Iterator[None]:
    """Turn an `Invalid` raised inside into a `ResourceError` for this resource."""
    try:
        yield
    except Invalid as exc:
        raise ResourceError(type_name, name, str(exc)) from None


def header_safe(field: str, value: str) -> str:
    """`value`, if it can go into an HTTP header: no NUL, CR or LF (Envoy's constraint on
    header names and values, and what keeps a config from injecting headers)."""
    if any(c in value for c in "\x00\r\n"):
        raise Invalid(field, f"{value!r} contains NUL, CR or LF")
    return value
