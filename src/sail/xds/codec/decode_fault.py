"""The HTTP fault filter's config (`HTTPFault`) and `typed_per_filter_config` maps.

`HTTPFault` is read where Envoy reads it: as the fault filter's own `typed_config` in the
HTTP connection manager, and as a per-filter config (keyed by the filter's name) on a route
configuration, virtual host, route or weighted cluster entry, plain, inside a
`config.route.v3.FilterConfig`, or as a `TypedStruct`.

Supported: `delay` (`fixed_delay` or `header_delay`, `percentage`), `abort` (`http_status`,
`grpc_status` or `header_abort`, `percentage`), `headers`, `upstream_cluster`,
`max_active_faults`. The `*_runtime` keys and `disable_downstream_cluster_stats` name
runtime and stats settings sail does not have; they are ignored, so the configured values
apply (as in an Envoy whose runtime does not set those keys). Refused: `downstream_nodes`,
`response_rate_limit`, and header matchers on pseudo-headers or `host`.

A `percentage` left out is 0 %, as in Envoy (`FractionalPercent`'s default).

`typed_per_filter_config` follows gRFC A39: an entry of a type sail applies (the fault
filter's `HTTPFault`) is decoded; a `FilterConfig` with `disabled: true` turns the filter
off there; an entry of any other type (`RBACPerRoute`, CORS, ...) is a NACK naming it,
since sail would otherwise drop it and apply the route without it, unless it is wrapped in
a `FilterConfig` with `is_optional: true`, which is skipped. A `FilterConfig` with neither
`config` nor `disabled` is a NACK too (Envoy refuses it), unless `is_optional`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import json_format

from sail.model import FaultAbort, FaultDelay, FaultPolicy, FilterConfigs, FractionalPercent
from sail.xds.codec.decode_matchers import decode_fraction, decode_header_matcher
from sail.xds.codec.extensions import FAULT, configured_type, type_url_of, unpack_into
from sail.xds.codec.validation import Invalid, at
from sail.xds.codec.wellknown import duration_seconds

__all__ = ["FILTER_CONFIG", "decode_fault_config", "decode_http_fault", "decode_per_filter_configs"]

FILTER_CONFIG = type_url_of(rc_pb2.FilterConfig)


def decode_fault_config(config: Any) -> FaultPolicy:
    """An `Any` holding an `HTTPFault` (or a `TypedStruct` of one), decoded."""
    type_url, struct = configured_type(config)
    if type_url != FAULT:
        raise Invalid("", f"expected {FAULT}, got {type_url or 'nothing'}")
    if struct is None:
        msg = unpack_into(config, fault_pb2.HTTPFault())
    else:
        msg = fault_pb2.HTTPFault()
        try:
            json_format.ParseDict(json_format.MessageToDict(struct), msg)
        except (json_format.ParseError, ValueError) as exc:
            # ValueError: a NaN or infinite number, which has no JSON form.
            raise Invalid("value", f"not an HTTPFault: {exc}") from None
    return decode_http_fault(msg)


def decode_http_fault(msg: Any) -> FaultPolicy:
    """Envoy's `extensions.filters.http.fault.v3.HTTPFault`."""
    if len(msg.downstream_nodes):
        raise Invalid("downstream_nodes", "is not supported")
    if msg.HasField("response_rate_limit"):
        raise Invalid("response_rate_limit", "is not supported")
    delay = None
    if msg.HasField("delay"):
        with at("delay"):
            delay = _delay(msg.delay)
    abort = None
    if msg.HasField("abort"):
        with at("abort"):
            abort = _abort(msg.abort)
    headers = []
    for i, h in enumerate(msg.headers):
        with at("headers", i):
            matcher = decode_header_matcher(h)
            if matcher.name.startswith(":") or matcher.name == "host":
                raise Invalid(
                    "name",
                    f"{matcher.name!r}: matching pseudo-headers or host in a "
                    "fault filter is not supported",
                )
        headers.append(matcher)
    return FaultPolicy(
        delay=delay,
        abort=abort,
        headers=tuple(headers),
        upstream_cluster=msg.upstream_cluster,
        max_active_faults=(
            msg.max_active_faults.value if msg.HasField("max_active_faults") else None
        ),
    )


def _percentage(msg: Any) -> FractionalPercent:
    if not msg.HasField("percentage"):
        return FractionalPercent(0)
    with at("percentage"):
        return decode_fraction(msg.percentage)


def _delay(d: Any) -> FaultDelay:
    which = d.WhichOneof("fault_delay_secifier")
    if which == "fixed_delay":
        seconds = duration_seconds(d, "fixed_delay", positive=True)
        return FaultDelay(fixed_delay=seconds, percentage=_percentage(d))
    if which == "header_delay":
        return FaultDelay(fixed_delay=None, percentage=_percentage(d))
    raise Invalid("", "one of fixed_delay or header_delay is required")


def _abort(a: Any) -> FaultAbort:
    which = a.WhichOneof("error_type")
    if which == "http_status":
        if not 200 <= a.http_status < 600:
            raise Invalid("http_status", f"{a.http_status} is not in [200, 600)")
        return FaultAbort(http_status=a.http_status, percentage=_percentage(a))
    if which == "grpc_status":
        return FaultAbort(grpc_status=a.grpc_status, percentage=_percentage(a))
    if which == "header_abort":
        return FaultAbort(percentage=_percentage(a))
    raise Invalid("", "one of http_status, grpc_status or header_abort is required")


def decode_per_filter_configs(configs: Any) -> FilterConfigs:
    """A `typed_per_filter_config` map: the fault configs in it, sorted by filter name.

    A `FilterConfig` with `disabled: true` becomes `None` (the filter is off there); one
    wrapping an `HTTPFault` is that config; an optional `FilterConfig` of another type is
    skipped; any other entry is refused (see the module docstring)."""
    out: list[tuple[str, FaultPolicy | None]] = []
    for name in sorted(configs):
        with at(f"typed_per_filter_config[{name}]"):
            if not name:
                raise Invalid("", "filter names must not be empty")
            kept, policy = _per_filter_config(configs[name])
        if kept:
            out.append((name, policy))
    return tuple(out)


def _per_filter_config(config: Any) -> tuple[bool, FaultPolicy | None]:
    """`(kept, policy)`: `kept` is false for an optional config sail skips."""
    if config.type_url != FILTER_CONFIG:
        type_url = configured_type(config)[0]
        if type_url != FAULT:
            raise _not_applied(type_url)
        return True, decode_fault_config(config)
    wrapper = unpack_into(config, rc_pb2.FilterConfig())
    if wrapper.disabled:
        return True, None
    if not wrapper.HasField("config"):
        if wrapper.is_optional:
            return False, None
        raise Invalid("config", "is required unless disabled is true")
    with at("config"):
        type_url = configured_type(wrapper.config)[0]
        if type_url != FAULT:
            if wrapper.is_optional:
                return False, None
            raise _not_applied(type_url)
        return True, decode_fault_config(wrapper.config)


def _not_applied(type_url: str) -> Invalid:
    name = type_url.rsplit("/", 1)[-1] or "an empty config"
    return Invalid(
        "",
        f"{name}: sail does not apply this filter's per-route config, so it is refused rather "
        f"than ignored (wrap it in {FILTER_CONFIG.rsplit('/', 1)[-1]} with is_optional: true"
        " to have it skipped)",
    )
