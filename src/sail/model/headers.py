"""Custom request and response headers: Envoy's `request_headers_to_add` & co.

The four lists exist on the route configuration, each virtual host, each route and each
weighted cluster entry; `HeaderMutations` holds one level's. `sail.routing.headers` compiles
the levels of one route into the object the data plane applies.

Values are literal strings. In Envoy's config a value is a format string where `%VAR%` is a
variable and `%%` a literal `%`; the codec turns `%%` into `%` (and back) and refuses
variables, so the model never holds one (`literal_header_value`).
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "HeaderAppendAction",
    "HeaderMutations",
    "HeaderValueOption",
    "escape_header_value",
    "literal_header_value",
]


class HeaderAppendAction(enum.IntEnum):
    """Envoy's `HeaderValueOption.HeaderAppendAction`, with its numbers."""

    APPEND_IF_EXISTS_OR_ADD = 0
    """Add the value as one more header line, whether or not the header is there."""
    ADD_IF_ABSENT = 1
    """Add the header only when the request (or response) does not have it."""
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    """Replace every value of the header with this one, adding it when absent."""
    OVERWRITE_IF_EXISTS = 3
    """Replace every value of the header with this one, only when it is there."""


@attrs.frozen
class HeaderValueOption:
    """One header to add.

    **Parameters**

    * `name` - lower-cased; never a `:` pseudo-header or `host` (Envoy refuses them).
    * `value` - the literal value.
    * `append_action` - how it combines with the headers already there.
    * `keep_empty_value` - add the header even when `value` is empty (otherwise an empty
      value adds nothing, as in Envoy).
    """

    name: str
    value: str
    append_action: HeaderAppendAction = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False


@attrs.frozen
class HeaderMutations:
    """The headers one level adds and removes (names lower-cased, in config order)."""

    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.request_headers_to_add
            or self.request_headers_to_remove
            or self.response_headers_to_add
            or self.response_headers_to_remove
        )


def literal_header_value(value: str) -> str:
    """The literal value of an Envoy header format string: `%%` is `%`. Raises `ValueError`
    for a `%VAR%` variable or a lone `%`, which sail does not evaluate."""
    if "%" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if value.startswith("%%", i):
            out.append("%")
            i += 2
            continue
        end = value.find("%", i + 1)
        if end < 0:
            raise ValueError(f"{value!r}: un-escaped '%' at position {i} (write '%%' for a '%')")
        raise ValueError(
            f"{value!r}: formatter variable {value[i : end + 1]} is not supported "
            "(only literal values; write '%%' for a '%')"
        )
    return "".join(out)


def escape_header_value(value: str) -> str:
    """The inverse of `literal_header_value`: `%` doubled."""
    return value.replace("%", "%%")
