"""Route actions: `RouteAction` (clusters, rewrites, timeouts, retries, hashing) and
`DirectResponseAction`.

Semantics worth knowing, each following Envoy or gRPC (gRFC A28, A31, A42, A44):

* `weighted_clusters`: entries of weight 0 are dropped (gRPC does the same, so the client
  does not subscribe to clusters that can never be picked); the remaining weights must sum to
  more than 0 and fit in a uint32. Envoy's deprecated `total_weight`, if set, must equal the
  sum.
* `timeout`: unset is `None` (the data plane applies Envoy's 15 s default); `0s` disables it.
* `retry_policy.num_retries`: unset is 1. An explicit 0 is kept and means "do not retry",
  as in Envoy (gRPC NACKs it instead).
* `retry_back_off.max_interval` must not be below `base_interval`.
* `retry_host_predicate`: only `previous_hosts` is supported; `retry_priority`,
  `retriable_request_headers` and `retry_options_predicates` are NACKed rather than ignored.
* `regex_rewrite.substitution` keeps RE2's syntax: `\\1`..`\\9` are groups and `\\0` is the
  whole match (Python's `re.sub` spells that `\\g<0>`). References to groups the pattern
  does not have are rejected here, not at request time.
* `request_mirror_policies`: `cluster` and `runtime_fraction` (its `default_value`; the
  runtime key is not read); `trace_sampled` is ignored. `cluster_header`,
  `disable_shadow_host_suffix_append`, `host_rewrite_literal` and
  `request_headers_mutations` are refused (the data plane always mirrors to a named cluster
  with `-shadow` appended to the host, as Envoy does by default).
* weighted cluster entries carry their own header mutations and per-filter (fault)
  configs (`decode_header_mutations`, `decode_fault`).
* `hash_policy`: `filter_state` entries are skipped, as gRPC skips hash policies it cannot
  compute; `connection_properties` without `source_ip` hashes nothing and is skipped too.
  A header policy's `regex_rewrite` is not applied.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from sail.model import (
    ClusterWeight,
    DirectResponse,
    HashPolicy,
    MirrorPolicy,
    RegexRewrite,
    ResetHeader,
    RetryPolicy,
    RouteAction,
)
from sail.xds.codec.decode_fault import decode_per_filter_configs
from sail.xds.codec.decode_header_mutations import decode_header_mutations
from sail.xds.codec.decode_matchers import compile_regex, decode_fraction, decode_header_matcher
from sail.xds.codec.extensions import type_url_of
from sail.xds.codec.validation import Invalid, at, header_safe
from sail.xds.codec.wellknown import bool_value, duration_seconds, uint32_value

__all__ = [
    "decode_direct_response",
    "decode_hedge_policy",
    "decode_retry_policy",
    "decode_route_action",
]

_UINT32_MAX = 2**32 - 1
_UNSUPPORTED_REWRITES = ("path_rewrite_policy",)
_PREVIOUS_HOSTS = type_url_of(previous_hosts_pb2.PreviousHostsPredicate)
PREVIOUS_HOSTS_NAME = "envoy.retry_host_predicates.previous_hosts"


def decode_route_action(a: Any) -> RouteAction:
    cluster: str | None = None
    weighted: tuple[ClusterWeight, ...] = ()
    cluster_header: str | None = None
    which = a.WhichOneof("cluster_specifier")
    if which == "cluster":
        if not a.cluster:
            raise Invalid("cluster", "must not be empty")
        cluster = a.cluster
    elif which == "weighted_clusters":
        with at("weighted_clusters"):
            weighted = _weighted_clusters(a.weighted_clusters)
    elif which == "cluster_header":
        if not a.cluster_header:
            raise Invalid("cluster_header", "must not be empty")
        cluster_header = header_safe("cluster_header", a.cluster_header).lower()
    elif which is not None:
        raise Invalid(which, "cluster specifier plugins are not supported")
    else:
        raise Invalid("", "one of cluster, weighted_clusters or cluster_header is required")

    _no_subset_match(a)
    host_literal, auto_host = _host_rewrite(a)
    retry = None
    if a.HasField("retry_policy"):
        with at("retry_policy"):
            retry = decode_retry_policy(a.retry_policy)
    max_stream = grpc_max = None
    if a.HasField("max_stream_duration"):
        with at("max_stream_duration"):
            max_stream = duration_seconds(a.max_stream_duration, "max_stream_duration")
            grpc_max = duration_seconds(a.max_stream_duration, "grpc_timeout_header_max")
    hashes = []
    for i, hp in enumerate(a.hash_policy):
        with at("hash_policy", i):
            policy = _hash_policy(hp)
        if policy is not None:
            hashes.append(policy)
    return RouteAction(
        cluster=cluster,
        weighted_clusters=weighted,
        cluster_header=cluster_header,
        prefix_rewrite=header_safe("prefix_rewrite", a.prefix_rewrite) or None,
        regex_rewrite=_regex_rewrite(a),
        host_rewrite_literal=host_literal,
        timeout=duration_seconds(a, "timeout"),
        retry_policy=retry,
        hash_policies=tuple(hashes),
        max_stream_duration=max_stream,
        grpc_timeout_header_max=grpc_max,
        auto_host_rewrite=auto_host,
        request_mirror_policies=_mirror_policies(a.request_mirror_policies),
        hedge_on_per_try_timeout=decode_hedge_policy(a),
        priority=int(a.priority),
    )


def _no_subset_match(msg: Any) -> None:
    """`metadata_match` picks a subset of the cluster's endpoints (Envoy's subset load
    balancer), which sail does not have: ignoring it would send to every endpoint."""
    if msg.HasField("metadata_match"):
        raise Invalid(
            "metadata_match",
            "subset load balancing is not supported: ignoring it would send to every endpoint "
            "of the cluster (use one cluster per subset)",
        )


def _weighted_clusters(wc: Any) -> tuple[ClusterWeight, ...]:
    if not wc.clusters:
        raise Invalid("clusters", "at least one cluster is required")
    out = []
    total = 0
    for i, c in enumerate(wc.clusters):
        with at("clusters", i):
            if c.cluster_header:
                raise Invalid("cluster_header", "is not supported")
            if not c.name:
                raise Invalid("name", "must not be empty")
            _no_subset_match(c)
            mutations = decode_header_mutations(c)
            filter_configs = decode_per_filter_configs(c.typed_per_filter_config)
        weight = uint32_value(c, "weight", 0)
        total += weight
        if weight:
            out.append(ClusterWeight(c.name, weight, mutations, filter_configs))
    if total == 0:
        raise Invalid("clusters", "the weights must sum to more than 0")
    if total > _UINT32_MAX:
        raise Invalid("clusters", f"the weights sum to {total}, more than {_UINT32_MAX}")
    if wc.HasField("total_weight") and wc.total_weight.value != total:
        raise Invalid(
            "total_weight", f"is {wc.total_weight.value} but the cluster weights sum to {total}"
        )
    return tuple(out)


def _mirror_policies(policies: Any) -> tuple[MirrorPolicy, ...]:
    out = []
    for i, p in enumerate(policies):
        with at("request_mirror_policies", i):
            out.append(_mirror_policy(p))
    return tuple(out)


def _mirror_policy(p: Any) -> MirrorPolicy:
    if p.cluster_header:
        raise Invalid("cluster_header", "is not supported; name the cluster")
    if not p.cluster:
        raise Invalid("cluster", "must not be empty")
    if p.disable_shadow_host_suffix_append:
        raise Invalid("disable_shadow_host_suffix_append", "is not supported")
    if p.host_rewrite_literal:
        raise Invalid("host_rewrite_literal", "is not supported")
    if len(p.request_headers_mutations):
        raise Invalid("request_headers_mutations", "is not supported")
    fraction = None
    if p.HasField("runtime_fraction"):
        with at("runtime_fraction"):
            if not p.runtime_fraction.HasField("default_value"):
                raise Invalid("default_value", "is required")
            with at("default_value"):
                fraction = decode_fraction(p.runtime_fraction.default_value)
    return MirrorPolicy(cluster=p.cluster, runtime_fraction=fraction)


def _regex_rewrite(a: Any) -> RegexRewrite | None:
    for field in _UNSUPPORTED_REWRITES:
        if a.HasField(field):
            raise Invalid(field, "is not supported")
    if a.path_rewrite:
        raise Invalid("path_rewrite", "is not supported")
    if not a.HasField("regex_rewrite"):
        return None
    with at("regex_rewrite"):
        if a.prefix_rewrite:
            raise Invalid("", "cannot be combined with prefix_rewrite")
        rr = a.regex_rewrite
        if not rr.HasField("pattern"):
            raise Invalid("pattern", "is required")
        with at("pattern"):
            source, pattern = compile_regex(rr.pattern)
        _check_substitution(rr.substitution, pattern.groups)
    return RegexRewrite(pattern=pattern, source=source, substitution=rr.substitution)


def _check_substitution(substitution: str, groups: int) -> None:
    i = 0
    while i < len(substitution) - 1:
        if substitution[i] == "\\":
            nxt = substitution[i + 1]
            if nxt in "0123456789" and int(nxt) > groups:
                raise Invalid(
                    "substitution",
                    f"\\{nxt} refers to a group the pattern does not have (it has {groups})",
                )
            i += 2
        else:
            i += 1


def _host_rewrite(a: Any) -> tuple[str | None, bool]:
    which = a.WhichOneof("host_rewrite_specifier")
    if which is None:
        return None, False
    if which == "host_rewrite_literal":
        return header_safe(which, a.host_rewrite_literal) or None, False
    if which == "auto_host_rewrite":
        return None, bool_value(a, "auto_host_rewrite", False)
    raise Invalid(which, "is not supported (use host_rewrite_literal or auto_host_rewrite)")


def decode_hedge_policy(holder: Any) -> bool | None:
    """`hedge_policy.hedge_on_per_try_timeout` of a route action or virtual host (`None`
    when unset). `initial_requests` and `additional_request_chance`, which Envoy does not
    implement either, are NACKed when set to anything but their defaults."""
    if not holder.HasField("hedge_policy"):
        return None
    with at("hedge_policy"):
        hp = holder.hedge_policy
        if hp.HasField("initial_requests") and hp.initial_requests.value != 1:
            raise Invalid("initial_requests", "only 1 is supported (as in Envoy)")
        if hp.HasField("additional_request_chance") and hp.additional_request_chance.numerator:
            raise Invalid("additional_request_chance", "is not supported (as in Envoy)")
        return bool(hp.hedge_on_per_try_timeout)


def decode_retry_policy(rp: Any) -> RetryPolicy:
    """Envoy's `route.v3.RetryPolicy`, on a route or a virtual host."""
    base = 0.025
    max_interval = None
    if rp.HasField("retry_back_off"):
        with at("retry_back_off"):
            b = rp.retry_back_off
            interval = duration_seconds(b, "base_interval", positive=True)
            if interval is None:
                raise Invalid("base_interval", "is required")
            base = interval
            max_interval = duration_seconds(b, "max_interval", positive=True)
            if max_interval is not None and max_interval < base:
                raise Invalid("max_interval", "must not be less than base_interval")
    if rp.HasField("retry_priority"):
        raise Invalid("retry_priority", "is not supported")
    for field in ("retriable_request_headers", "retry_options_predicates"):
        if len(getattr(rp, field)):
            raise Invalid(field, "is not supported")
    headers = []
    for i, m in enumerate(rp.retriable_headers):
        with at("retriable_headers", i):
            headers.append(decode_header_matcher(m))
    reset_headers: list[ResetHeader] = []
    rate_limited_max = 300.0
    if rp.HasField("rate_limited_retry_back_off"):
        with at("rate_limited_retry_back_off"):
            rl = rp.rate_limited_retry_back_off
            if not rl.reset_headers:
                raise Invalid("reset_headers", "must name at least one header")
            for i, h in enumerate(rl.reset_headers):
                with at("reset_headers", i):
                    if not h.name:
                        raise Invalid("name", "must not be empty")
                    reset_headers.append(
                        ResetHeader(
                            header_safe("name", h.name).lower(),
                            "unix_timestamp" if h.format == 1 else "seconds",
                        )
                    )
            value = duration_seconds(rl, "max_interval", positive=True)
            rate_limited_max = rate_limited_max if value is None else value
    previous_hosts = False
    for i, predicate in enumerate(rp.retry_host_predicate):
        with at("retry_host_predicate", i):
            type_url = predicate.typed_config.type_url
            if type_url != _PREVIOUS_HOSTS and predicate.name != PREVIOUS_HOSTS_NAME:
                raise Invalid(
                    "typed_config",
                    f"retry host predicate {predicate.name or type_url!r} is not supported "
                    "(only previous_hosts)",
                )
            previous_hosts = True
    return RetryPolicy(
        retry_on=frozenset(s.strip() for s in rp.retry_on.split(",") if s.strip()),
        num_retries=uint32_value(rp, "num_retries", 1),
        per_try_timeout=duration_seconds(rp, "per_try_timeout"),
        base_interval=base,
        max_interval=max_interval,
        retriable_status_codes=frozenset(rp.retriable_status_codes),
        retriable_headers=tuple(headers),
        reset_headers=tuple(reset_headers),
        rate_limited_max_interval=rate_limited_max,
        previous_hosts=previous_hosts,
        host_selection_retry_max_attempts=max(1, int(rp.host_selection_retry_max_attempts)),
    )


def _hash_policy(hp: Any) -> HashPolicy | None:
    which = hp.WhichOneof("policy_specifier")
    if which == "header":
        name = hp.header.header_name
        if not name:
            raise Invalid("header.header_name", "must not be empty")
        return HashPolicy("header", header_safe("header.header_name", name).lower(), hp.terminal)
    if which == "cookie":
        # `ttl` (whole seconds in Envoy), `path` and `attributes` describe the cookie sail
        # generates when the request has none; without a `ttl` none is generated.
        cookie = hp.cookie
        if not cookie.name:
            raise Invalid("cookie.name", "must not be empty")
        with at("cookie"):
            ttl = duration_seconds(cookie, "ttl")
            attributes = []
            for i, attribute in enumerate(cookie.attributes):
                with at("attributes", i):
                    if not attribute.name:
                        raise Invalid("name", "must not be empty")
                    attributes.append(
                        (header_safe("name", attribute.name), header_safe("value", attribute.value))
                    )
            return HashPolicy(
                "cookie",
                header_safe("name", cookie.name),
                hp.terminal,
                ttl=ttl,
                path=header_safe("path", cookie.path),
                attributes=tuple(attributes),
            )
    if which == "query_parameter":
        if not hp.query_parameter.name:
            raise Invalid("query_parameter.name", "must not be empty")
        return HashPolicy("query_parameter", hp.query_parameter.name, hp.terminal)
    if which == "connection_properties":
        if not hp.connection_properties.source_ip:
            return None
        return HashPolicy("connection_properties", "", hp.terminal)
    if which == "filter_state":
        return None
    raise Invalid("", "one of header, cookie, connection_properties, query_parameter is required")


def decode_direct_response(d: Any) -> DirectResponse:
    if not 200 <= d.status < 600:
        raise Invalid("status", f"{d.status} is not in [200, 600)")
    body = b""
    if d.HasField("body"):
        which = d.body.WhichOneof("specifier")
        if which == "inline_bytes":
            body = d.body.inline_bytes
        elif which == "inline_string":
            body = d.body.inline_string.encode()
        elif which is not None:
            raise Invalid(f"body.{which}", "only inline_string and inline_bytes are supported")
    return DirectResponse(status=d.status, body=body)
