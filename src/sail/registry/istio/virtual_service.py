"""`VirtualService` (networking.istio.io): how requests to a host are routed.

Supported, and translated to routes:

* `hosts`; `http[]` rules, tried in order, each with `name`, `match[]` (OR'ed), `route[]`,
  `timeout`, `retries`, `rewrite`, `fault`, `mirror` / `mirrorPercentage` / `mirrors` and
  `headers`;
* `match[]`: `uri` / `headers` / `queryParams` (each `exact`, `prefix` or `regex`),
  `method` (a string match too) and `port`; all parts of one match must hold;
* `route[]`: `destination.host`, `destination.subset`, `destination.port.number`, `weight`,
  `headers`;
* `retries`: `attempts`, `perTryTimeout`, `retryOn` (Envoy's conditions, comma-separated;
  HTTP status codes such as `503` allowed);
* `rewrite`: `uri` (replaces the matched prefix, or the whole path of an exact match) and
  `authority` (the Host header);
* `fault`: `delay` (`fixedDelay`, `percentage`) and `abort` (`httpStatus` or `grpcStatus`,
  a gRPC status name such as `UNAVAILABLE`, and `percentage`). A `percentage` left out is
  0 %, as in Istio: nothing is injected;
* `mirror` (a destination) with `mirrorPercentage` (100 % when left out), or `mirrors[]`
  (`destination`, `percentage`), not both;
* `headers` (on the rule and on each `route[]` destination): `request` / `response`, each
  with `set`, `add` and `remove`. Names are header names (not `host` or `:authority`: use
  `rewrite.authority`); values are literal, `%%` standing for `%` as in Envoy (Envoy's
  `%VARIABLE%` formatters are refused).

Every other Istio field (`gateways`, `tcp`, `tls`, `corsPolicy`, `redirect`,
`fault.delay.exponentialDelay`, `fault.abort.http2Error`, the deprecated `percent`,
`mirrorPercent`, ...) is refused when parsed. Regexes are matched against the whole value,
as RE2's `FullMatch` in Envoy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs

from sail.model import literal_header_value
from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import (
    check_header_name,
    duration,
    exactly_one,
    in_range,
    non_empty,
    valid_host,
    valid_hosts,
    valid_regex,
)

__all__ = [
    "GRPC_STATUS_CODES",
    "RETRY_CONDITIONS",
    "Destination",
    "HTTPFaultInjection",
    "HTTPMatchRequest",
    "HTTPMirrorPolicy",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HeaderOperations",
    "Headers",
    "InjectAbort",
    "InjectDelay",
    "Percent",
    "PortSelector",
    "StringMatch",
    "VirtualServiceSpec",
]

RETRY_CONDITIONS = frozenset(
    {
        # Envoy's x-envoy-retry-on
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        # Envoy's x-envoy-retry-grpc-on
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
"""The `retryOn` conditions sail accepts, besides HTTP status codes."""

GRPC_STATUS_CODES = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}
"""gRPC status names (what Istio's `fault.abort.grpcStatus` takes) and their codes."""


@attrs.frozen
class StringMatch:
    """One of `exact`, `prefix` or `regex` (a full match)."""

    exact: str | None = None
    prefix: str | None = attrs.field(default=None, validator=non_empty)
    regex: str | None = attrs.field(default=None, validator=valid_regex)

    def __attrs_post_init__(self) -> None:
        exactly_one(self, "exact", "prefix", "regex")


@attrs.frozen
class PortSelector:
    number: int = attrs.field(validator=in_range(1, 65535))


@attrs.frozen
class Destination:
    """A service (`host`: short name, `name.ns.svc.cluster.local`, or a ServiceEntry host),
    optionally one `subset` of it (defined in its DestinationRule) and a `port`.

    Without `port`, the port the client called is used when the host has it (always the
    case for the VirtualService's own host), else the host's lowest port."""

    host: str = attrs.field(validator=valid_host)
    subset: str | None = attrs.field(default=None, validator=non_empty)
    port: PortSelector | None = None


@attrs.frozen
class HeaderOperations:
    """Headers to `set` (replace every value), `add` (one more value) and `remove`."""

    set_: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    add: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    remove: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        for key, values in (("set", self.set_), ("add", self.add)):
            for name, value in values.items():
                _check_mutable(f"{key}[{name}]", name)
                if any(c in value for c in "\x00\r\n"):
                    raise FieldError(f"{key}[{name}]", "values must not contain NUL, CR or LF")
                try:
                    literal_header_value(value)
                except ValueError as exc:
                    raise FieldError(f"{key}[{name}]", str(exc)) from None
        for i, name in enumerate(self.remove):
            _check_mutable(f"remove[{i}]", name)


def _check_mutable(field: str, name: str) -> None:
    if name.lower() in ("host", ":authority"):
        raise FieldError(field, f"{name!r}: not supported (use rewrite.authority)")
    check_header_name(field, name)


@attrs.frozen
class Headers:
    """Header operations on the `request` (sent upstream) and the `response`."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


@attrs.frozen
class HTTPRouteDestination:
    """A destination and its share of the rule's traffic (`weight`, 0-100; the weights of
    a rule with several destinations must sum to 100, a single one may leave it out), and
    header operations for the requests sent to it."""

    destination: Destination
    weight: int | None = attrs.field(default=None, validator=in_range(0, 100))
    headers: Headers | None = None


@attrs.frozen
class HTTPMatchRequest:
    """Conditions that must all hold. `headers` names are matched case-insensitively;
    `queryParams` names and values are compared as sent (not percent-decoded)."""

    UNSUPPORTED: ClassVar = (
        "scheme",
        "authority",
        "sourceLabels",
        "gateways",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
        "statPrefix",
    )

    name: str | None = None
    uri: StringMatch | None = None
    headers: Mapping[str, StringMatch] = attrs.field(factory=dict, hash=False)
    query_params: Mapping[str, StringMatch] = attrs.field(factory=dict, hash=False)
    method: StringMatch | None = None
    port: int | None = attrs.field(default=None, validator=in_range(1, 65535))

    def __attrs_post_init__(self) -> None:
        for name in self.headers:
            check_header_name(f"headers[{name}]", name)
        for name in self.query_params:
            if not name:
                raise FieldError("queryParams", "parameter names must not be empty")


@attrs.frozen
class HTTPRetry:
    """`attempts` retries (0 turns retrying off), each with `perTryTimeout`, on the
    conditions of `retryOn`. Without `retryOn`, Istio's default applies:
    `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503
    as the retriable status."""

    UNSUPPORTED: ClassVar = ("retryRemoteLocalities",)

    attempts: int = attrs.field(validator=in_range(0, 2**31 - 1))
    per_try_timeout: float | None = duration(positive=True)
    retry_on: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.retry_on is None:
            return
        for token in self.retry_on.split(","):
            condition = token.strip()
            if condition.isdigit() and 100 <= int(condition) <= 599:
                continue
            if condition not in RETRY_CONDITIONS:
                raise FieldError(
                    "retryOn",
                    f"unknown condition {condition!r} "
                    f"(known: {', '.join(sorted(RETRY_CONDITIONS))}, or an HTTP status code)",
                )


@attrs.frozen
class Percent:
    value: float = attrs.field(validator=in_range(0, 100))


@attrs.frozen
class InjectDelay:
    """Delay `percentage` of the requests by `fixedDelay` (a positive duration)."""

    UNSUPPORTED: ClassVar = ("exponentialDelay", "percent")

    fixed_delay: float = duration(required=True, positive=True)
    percentage: Percent | None = None


def _grpc_status(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in GRPC_STATUS_CODES:
        raise FieldError(
            "grpcStatus",
            f"unknown gRPC status {value!r} (known: {', '.join(GRPC_STATUS_CODES)})",
        )


@attrs.frozen
class InjectAbort:
    """Answer `percentage` of the requests with `httpStatus`, or with gRPC status
    `grpcStatus` (a name, HTTP status 200), without sending them."""

    UNSUPPORTED: ClassVar = ("http2Error",)

    http_status: int | None = attrs.field(default=None, validator=in_range(200, 599))
    grpc_status: str | None = attrs.field(default=None, validator=_grpc_status)
    percentage: Percent | None = None

    def __attrs_post_init__(self) -> None:
        exactly_one(self, "http_status", "grpc_status")


@attrs.frozen
class HTTPFaultInjection:
    delay: InjectDelay | None = None
    abort: InjectAbort | None = None

    def __attrs_post_init__(self) -> None:
        if self.delay is None and self.abort is None:
            raise FieldError("", "one of delay, abort is required")


@attrs.frozen
class HTTPRewrite:
    UNSUPPORTED: ClassVar = ("uriRegexRewrite",)

    uri: str | None = attrs.field(default=None, validator=non_empty)
    authority: str | None = attrs.field(default=None, validator=non_empty)


@attrs.frozen
class HTTPMirrorPolicy:
    """One of `mirrors`: send a copy of `percentage` of the requests (all when left out) to
    `destination`."""

    destination: Destination
    percentage: Percent | None = None


@attrs.frozen
class HTTPRoute:
    """One rule: when any of `match` holds (or always, without `match`), send to `route`."""

    UNSUPPORTED: ClassVar = (
        "redirect",
        "directResponse",
        "delegate",
        "mirrorPercent",
        "mirror_percent",
        "corsPolicy",
    )

    route: tuple[HTTPRouteDestination, ...] = attrs.field(validator=non_empty)
    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    timeout: float | None = duration()
    retries: HTTPRetry | None = None
    rewrite: HTTPRewrite | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percentage: Percent | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    headers: Headers | None = None

    def __attrs_post_init__(self) -> None:
        if self.mirror is not None and self.mirrors:
            raise FieldError("mirrors", "only one of mirror, mirrors may be set")
        if self.mirror_percentage is not None and self.mirror is None:
            raise FieldError("mirrorPercentage", "applies to mirror, which is not set")


@attrs.frozen
class VirtualServiceSpec:
    UNSUPPORTED: ClassVar = ("gateways", "exportTo", "tls", "tcp")

    hosts: tuple[str, ...] = attrs.field(validator=valid_hosts)
    http: tuple[HTTPRoute, ...] = attrs.field(validator=non_empty)
