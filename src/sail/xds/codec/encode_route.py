"""`RouteConfig` → Envoy's `RouteConfiguration` (the inverse of `decode_route`).

Matchers are written in their current forms (`string_match`, not the deprecated
`exact_match`...), which both Envoy and gRPC read.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from sail.model import (
    DirectResponse,
    FractionalPercent,
    HashPolicy,
    HeaderMatcher,
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
)
from sail.xds.codec.decode_matchers import DENOMINATORS
from sail.xds.codec.wellknown import seconds_to_duration, wrap_bool, wrap_uint32

__all__ = ["encode_retry_policy", "encode_route_configuration"]

_ENUM_OF_DENOMINATOR = {value: enum for enum, value in DENOMINATORS.items()}


def encode_route_configuration(config: RouteConfig) -> Any:
    return route_pb2.RouteConfiguration(
        name=config.name, virtual_hosts=[_virtual_host(vh) for vh in config.virtual_hosts]
    )


def _virtual_host(vh: VirtualHost) -> Any:
    msg = rc_pb2.VirtualHost(
        name=vh.name, domains=list(vh.domains), routes=[_route(r) for r in vh.routes]
    )
    if vh.retry_policy is not None:
        msg.retry_policy.CopyFrom(encode_retry_policy(vh.retry_policy))
    return msg


def _route(route: Route) -> Any:
    msg = rc_pb2.Route(name=route.name, match=_match(route.match))
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


def _string_matcher(m: StringMatcher) -> Any:
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
        msg.string_match.CopyFrom(_string_matcher(h.string_match))
    elif h.range is not None:
        msg.range_match.start = h.range.start
        msg.range_match.end = h.range.end
    elif h.present is not None:
        msg.present_match = h.present
    return msg


def _query(q: QueryParameterMatcher) -> Any:
    msg = rc_pb2.QueryParameterMatcher(name=q.name)
    if q.string_match is not None:
        msg.string_match.CopyFrom(_string_matcher(q.string_match))
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
        msg.weighted_clusters.clusters.extend(
            rc_pb2.WeightedCluster.ClusterWeight(name=w.name, weight=wrap_uint32(w.weight))
            for w in a.weighted_clusters
        )
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
    if a.retry_policy is not None:
        msg.retry_policy.CopyFrom(encode_retry_policy(a.retry_policy))
    msg.hash_policy.extend(_hash_policy(h) for h in a.hash_policies)
    if a.max_stream_duration is not None:
        msg.max_stream_duration.max_stream_duration.CopyFrom(
            seconds_to_duration(a.max_stream_duration)
        )
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
    return msg


def _hash_policy(h: HashPolicy) -> Any:
    msg = rc_pb2.RouteAction.HashPolicy(terminal=h.terminal)
    if h.kind == "header":
        msg.header.header_name = h.name
    elif h.kind == "cookie":
        msg.cookie.name = h.name
    elif h.kind == "query_parameter":
        msg.query_parameter.name = h.name
    elif h.kind == "connection_properties":
        msg.connection_properties.source_ip = True
    else:
        raise ValueError(f"unknown hash policy kind {h.kind!r}")
    return msg
