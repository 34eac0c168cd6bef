"""`request_headers_to_add` & co. → `HeaderMutations`, one level at a time.

As Envoy (`router/header_parser.cc`):

* a header name must be a valid, non-empty name; it is lower-cased. Neither `:`
  pseudo-headers nor `host` may be added or removed;
* `append_action` says how a value combines with what is there; the deprecated `append`
  (a `BoolValue`) maps to `APPEND_IF_EXISTS_OR_ADD` (true) or `OVERWRITE_IF_EXISTS_OR_ADD`
  (false), and may not be combined with a non-default `append_action`;
* a value is a format string: `%%` is a literal `%`. Variables (`%DOWNSTREAM_REMOTE_ADDRESS%`
  and the like) are refused: sail adds literal values only. `raw_value` is refused too.
"""

from __future__ import annotations

import re
from typing import Any

from sail.model import (
    HeaderAppendAction,
    HeaderMutations,
    HeaderValueOption,
    literal_header_value,
)
from sail.xds.codec.validation import Invalid, at, header_safe

__all__ = ["decode_header_mutations"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_APPEND_ACTIONS = {a.value: a for a in HeaderAppendAction}


def decode_header_mutations(msg: Any) -> HeaderMutations | None:
    """The four header lists of `msg` (a RouteConfiguration, VirtualHost, Route or
    ClusterWeight); `None` when all are empty."""
    mutations = HeaderMutations(
        request_headers_to_add=_to_add(msg.request_headers_to_add, "request_headers_to_add"),
        request_headers_to_remove=_to_remove(
            msg.request_headers_to_remove, "request_headers_to_remove"
        ),
        response_headers_to_add=_to_add(msg.response_headers_to_add, "response_headers_to_add"),
        response_headers_to_remove=_to_remove(
            msg.response_headers_to_remove, "response_headers_to_remove"
        ),
    )
    return mutations or None


def _name(field: str, name: str, verb: str) -> str:
    if not name:
        raise Invalid(field, "must not be empty")
    if not _TOKEN.fullmatch(name):
        raise Invalid(field, f"{name!r} is not a valid header name")
    lowered = name.lower()
    if lowered == "host":
        raise Invalid(
            field,
            f"{name!r}: the host header may not be {verb} (use the route's host_rewrite_literal)",
        )
    return lowered


def _to_remove(names: Any, field: str) -> tuple[str, ...]:
    out = []
    for i, name in enumerate(names):
        with at(field, i):
            if name.startswith(":"):
                raise Invalid("", f"{name!r}: pseudo-headers may not be removed")
            out.append(_name("", name, "removed"))
    return tuple(out)


def _to_add(options: Any, field: str) -> tuple[HeaderValueOption, ...]:
    out = []
    for i, option in enumerate(options):
        with at(field, i):
            out.append(_option(option))
    return tuple(out)


def _option(option: Any) -> HeaderValueOption:
    if not option.HasField("header"):
        raise Invalid("header", "is required")
    header = option.header
    with at("header"):
        if header.key.startswith(":"):
            raise Invalid(
                "key",
                f"{header.key!r}: pseudo-headers may not be modified (use the route's rewrites)",
            )
        name = _name("key", header.key, "modified")
        if header.raw_value:
            raise Invalid("raw_value", "is not supported; use value")
        try:
            value = literal_header_value(header_safe("value", header.value))
        except ValueError as exc:
            raise Invalid("value", str(exc)) from None
    action = _APPEND_ACTIONS.get(option.append_action)
    if action is None:
        raise Invalid("append_action", f"unknown action {option.append_action}")
    if option.HasField("append"):
        if action is not HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD:
            raise Invalid("append", "cannot be combined with append_action")
        action = (
            HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
            if option.append.value
            else HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        )
    return HeaderValueOption(
        name=name,
        value=value,
        append_action=action,
        keep_empty_value=option.keep_empty_value,
    )
