"""`RouteConfig` → Envoy's `RouteConfiguration` (the inverse of `decode_route`).

Matchers are written in their current forms (`string_match`, not the deprecated
`exact_match`...), which both Envoy and gRPC read. Header values are escaped back into
Envoy's format strings (`%` → `%%`); fault filter configs are written as plain `HTTPFault`
per-filter configs (a disabled one as a `FilterConfig` with `disabled: true`).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from sail.model import (
    DirectResponse,
    FaultPolicy,
    FilterConfigs,
    FractionalPercent,
    HashPolicy,
    HeaderMatcher,
    HeaderMutations,
    HeaderValueOption,
    PathMatchKind,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
    escape_header_value,
)
from sail.xds.codec.decode_matchers import DENOMINATORS
from sail.xds.codec.decode_route_action import PREVIOUS_HOSTS_NAME
from sail.xds.codec.wellknown import seconds_to_duration, wrap_bool, wrap_uint32

__all__ = [
    "encode_http_fault", "encode_retry_policy", "encode_route_configuration",
    "encode_string_matcher",
]

_ENUM_OF_DENOMINATOR = {value: enum for enum, value in DENOMINATORS.items()}


def encode_route_configuration(config: RouteConfig) -> Any:
    msg = route_pb2.RouteConfiguration(
        name=config.name,
        virtual_hosts=[_virtual_host(vh) for vh in config.virtual_hosts],
        most_specific_header_mutations_wins=config.most_specific_header_mutations_wins,
    )
    _extras(msg, config.header_mutations, config.typed_per_filter_config)
    return msg


def _virtual_host(vh: VirtualHost) -> Any:
    msg = rc_pb2.VirtualHost(
        name=vh.name, domains=list(vh.domains), routes=[_route(r) for r in vh.routes]
    )
    if vh.retry_policy is not None:
        msg.retry_policy.CopyFrom(encode_retry_policy(vh.retry_policy))
    if vh.hedge_on_per_try_timeout:
        msg.hedge_policy.hedge_on_per_try_timeout = True
    _extras(msg, vh.header_mutations, vh.typed_per_filter_config)
    return msg


def _extras(msg: Any, mutations: HeaderMutations | None, configs: FilterConfigs) -> None:
    """Header mutations and per-filter configs, which four message types share."""
    if mutations is not None:
        msg.request_headers_to_add.extend(
            _header_option(o) for o in mutations.request_headers_to_add
        )
        msg.request_headers_to_remove.extend(mutations.request_headers_to_remove)
        msg.response_headers_to_add.extend(
            _header_option(o) for o in mutations.response_headers_to_add
        )
        msg.response_headers_to_remove.extend(mutations.response_headers_to_remove)
    for name, policy in configs:
        if policy is None:
            msg.typed_per_filter_config[name].Pack(rc_pb2.FilterConfig(disabled=True))
        else:
            msg.typed_per_filter_config[name].Pack(encode_http_fault(policy))


def _header_option(o: HeaderValueOption) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=o.name, value=escape_header_value(o.value)),
        append_action=int(o.append_action),
        keep_empty_value=o.keep_empty_value,
    )


def encode_http_fault(policy: FaultPolicy) -> Any:
    """A `FaultPolicy` as Envoy's `HTTPFault`."""
    msg = fault_pb2.HTTPFault(
        headers=[_header(h) for h in policy.headers],
        upstream_cluster=policy.upstream_cluster,
    )
    if policy.max_active_faults is not None:
        msg.max_active_faults.CopyFrom(wrap_uint32(policy.max_active_faults))
    delay = policy.delay
    if delay is not None:
        if delay.fixed_delay is None:
            msg.delay.header_delay.SetInParent()
        else:
            msg.delay.fixed_delay.CopyFrom(seconds_to_duration(delay.fixed_delay))
        msg.delay.percentage.CopyFrom(_fraction(delay.percentage))
    abort = policy.abort
    if abort is not None:
        if abort.http_status is not None:
            msg.abort.http_status = abort.http_status
        elif abort.grpc_status is not None:
            msg.abort.grpc_status = abort.grpc_status
        else:
            msg.abort.header_abort.SetInParent()
        msg.abort.percentage.CopyFrom(_fraction(abort.percentage))
    return msg


def _route(route: Route) -> Any:
    msg = rc_pb2.Route(name=route.name, match=_match(route.match))
    _extras(msg, route.header_mutations, route.typed_per_filter_config)
    if isinstance(route.action, RouteAction):
        msg.route.CopyFrom(_action(route.action))
    elif isinstance(route.action, DirectResponse):
        msg.direct_response.status = route.action.status
        body = route.action.body
        if body:
            try:
                msg.direct_response.body.inline_string = body.decode()
            except UnicodeDecodeError:
                msg.direct_response.body.inline_bytes = body
    else:
        msg.non_forwarding_action.SetInParent()
    return msg


def _match(match: RouteMatch) -> Any:
    msg = rc_pb2.RouteMatch()
    path = match.path
    if path.kind is PathMatchKind.REGEX:
        msg.safe_regex.regex = path.value
    else:
        setattr(msg, path.kind.value, path.value)
    if not match.case_sensitive:
        msg.case_sensitive.CopyFrom(wrap_bool(False))
    msg.headers.extend(_header(h) for h in match.headers)
    msg.query_parameters.extend(_query(q) for q in match.query_params)
    if match.runtime_fraction is not None:
        msg.runtime_fraction.default_value.CopyFrom(_fraction(match.runtime_fraction))
    return msg


def encode_string_matcher(m: StringMatcher) -> Any:
    msg = string_pb2.StringMatcher()
    if m.kind is StringMatchKind.REGEX:
        msg.safe_regex.regex = m.value
    else:
        setattr(msg, m.kind.value, m.value)
        msg.ignore_case = m.ignore_case
    return msg


def _header(h: HeaderMatcher) -> Any:
    msg = rc_pb2.HeaderMatcher(
        name=h.name,
        invert_match=h.invert,
        treat_missing_header_as_empty=h.treat_missing_as_empty,
    )
    if h.string_match is not None:
        msg.string_match.CopyFrom(encode_string_matcher(h.string_match))
    elif h.range is not None:
        msg.range_match.start = h.range.start
        msg.range_match.end = h.range.end
    elif h.present is not None:
        msg.present_match = h.present
    return msg


def _query(q: QueryParameterMatcher) -> Any:
    msg = rc_pb2.QueryParameterMatcher(name=q.name)
    if q.string_match is not None:
        msg.string_match.CopyFrom(encode_string_matcher(q.string_match))
    elif q.present is not None:
        msg.present_match = q.present
    return msg


def _fraction(f: FractionalPercent) -> Any:
    if f.denominator not in _ENUM_OF_DENOMINATOR:
        raise ValueError(f"denominator {f.denominator} is not 100, 10000 or 1000000")
    return percent_pb2.FractionalPercent(
        numerator=f.numerator, denominator=_ENUM_OF_DENOMINATOR[f.denominator]
    )


def _action(a: RouteAction) -> Any:
    msg = rc_pb2.RouteAction()
    if a.cluster is not None:
        msg.cluster = a.cluster
    elif a.cluster_header is not None:
        msg.cluster_header = a.cluster_header
    else:
        for w in a.weighted_clusters:
            entry = msg.weighted_clusters.clusters.add(name=w.name, weight=wrap_uint32(w.weight))
            _extras(entry, w.header_mutations, w.typed_per_filter_config)
    if a.prefix_rewrite is not None:
        msg.prefix_rewrite = a.prefix_rewrite
    if a.regex_rewrite is not None:
        msg.regex_rewrite.pattern.regex = a.regex_rewrite.source
        msg.regex_rewrite.substitution = a.regex_rewrite.substitution
    if a.host_rewrite_literal is not None:
        msg.host_rewrite_literal = a.host_rewrite_literal
    elif a.auto_host_rewrite:
        msg.auto_host_rewrite.CopyFrom(wrap_bool(True))
    if a.timeout is not None:
        msg.timeout.CopyFrom(seconds_to_duration(a.timeout))
    if a.priority:
        msg.priority = a.priority
    if a.hedge_on_per_try_timeout is not None:
        msg.hedge_policy.hedge_on_per_try_timeout = a.hedge_on_per_try_timeout
    if a.retry_policy is not None:
        msg.retry_policy.CopyFrom(encode_retry_policy(a.retry_policy))
    msg.hash_policy.extend(_hash_policy(h) for h in a.hash_policies)
    if a.max_stream_duration is not None:
        msg.max_stream_duration.max_stream_duration.CopyFrom(
            seconds_to_duration(a.max_stream_duration)
        )
    if a.grpc_timeout_header_max is not None:
        msg.max_stream_duration.grpc_timeout_header_max.CopyFrom(
            seconds_to_duration(a.grpc_timeout_header_max)
        )
    for m in a.request_mirror_policies:
        mirror = msg.request_mirror_policies.add(cluster=m.cluster)
        if m.runtime_fraction is not None:
            mirror.runtime_fraction.default_value.CopyFrom(_fraction(m.runtime_fraction))
    return msg


def encode_retry_policy(p: RetryPolicy) -> Any:
    msg = rc_pb2.RetryPolicy(
        retry_on=",".join(sorted(p.retry_on)),
        num_retries=wrap_uint32(p.num_retries),
        retriable_status_codes=sorted(p.retriable_status_codes),
    )
    if p.per_try_timeout is not None:
        msg.per_try_timeout.CopyFrom(seconds_to_duration(p.per_try_timeout))
    msg.retry_back_off.base_interval.CopyFrom(seconds_to_duration(p.base_interval))
    if p.max_interval is not None:
        msg.retry_back_off.max_interval.CopyFrom(seconds_to_duration(p.max_interval))
    msg.retriable_headers.extend(_header(h) for h in p.retriable_headers)
    if p.reset_headers:
        rl = msg.rate_limited_retry_back_off
        for h in p.reset_headers:
            rl.reset_headers.add(name=h.name, format=1 if h.format == "unix_timestamp" else 0)
        rl.max_interval.CopyFrom(seconds_to_duration(p.rate_limited_max_interval))
    if p.previous_hosts:
        predicate = msg.retry_host_predicate.add(name=PREVIOUS_HOSTS_NAME)
        predicate.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    if p.host_selection_retry_max_attempts != 1:
        msg.host_selection_retry_max_attempts = p.host_selection_retry_max_attempts
    return msg


def _hash_policy(h: HashPolicy) -> Any:
    msg = rc_pb2.RouteAction.HashPolicy(terminal=h.terminal)
    if h.kind == "header":
        msg.header.header_name = h.name
    elif h.kind == "cookie":
        msg.cookie.name = h.name
        if h.ttl is not None:
            msg.cookie.ttl.CopyFrom(seconds_to_duration(h.ttl))
        msg.cookie.path = h.path
        for name, value in h.attributes:
            msg.cookie.attributes.add(name=name, value=value)
    elif h.kind == "query_parameter":
        msg.query_parameter.name = h.name
    elif h.kind == "connection_properties":
        msg.connection_properties.source_ip = True
    else:
        raise ValueError(f"unknown hash policy kind {h.kind!r}")
    return msg
