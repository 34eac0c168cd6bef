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
* `regex_rewrite.substitution` keeps RE2's syntax: `\\1`..`\\9` are groups and `\\0` is the
  whole match (Python's `re.sub` spells that `\\g<0>`). References to groups the pattern
  does not have are rejected here, not at request time.
* `hash_policy`: `filter_state` entries are skipped, as gRPC skips hash policies it cannot
  compute; `connection_properties` without `source_ip` hashes nothing and is skipped too.
  A header policy's `regex_rewrite` is not applied.
"""

from __future__ import annotations

from typing import Any

from sail.model import (
    ClusterWeight,
    DirectResponse,
    HashPolicy,
    RegexRewrite,
    RetryPolicy,
    RouteAction,
)
from sail.xds.codec.decode_matchers import compile_regex
from sail.xds.codec.validation import Invalid, at, header_safe
from sail.xds.codec.wellknown import bool_value, duration_seconds, uint32_value

__all__ = ["decode_direct_response", "decode_retry_policy", "decode_route_action"]

_UINT32_MAX = 2**32 - 1
_UNSUPPORTED_REWRITES = ("path_rewrite_policy",)


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

    host_literal, auto_host = _host_rewrite(a)
    retry = None
    if a.HasField("retry_policy"):
        with at("retry_policy"):
            retry = decode_retry_policy(a.retry_policy)
    max_stream = None
    if a.HasField("max_stream_duration"):
        with at("max_stream_duration"):
            max_stream = duration_seconds(a.max_stream_duration, "max_stream_duration")
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
        auto_host_rewrite=auto_host,
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
        weight = uint32_value(c, "weight", 0)
        total += weight
        if weight:
            out.append(ClusterWeight(c.name, weight))
    if total == 0:
        raise Invalid("clusters", "the weights must sum to more than 0")
    if total > _UINT32_MAX:
        raise Invalid("clusters", f"the weights sum to {total}, more than {_UINT32_MAX}")
    if wc.HasField("total_weight") and wc.total_weight.value != total:
        raise Invalid(
            "total_weight", f"is {wc.total_weight.value} but the cluster weights sum to {total}"
        )
    return tuple(out)


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
            if nxt.isdigit() and int(nxt) > groups:
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
    return RetryPolicy(
        retry_on=frozenset(s.strip() for s in rp.retry_on.split(",") if s.strip()),
        num_retries=uint32_value(rp, "num_retries", 1),
        per_try_timeout=duration_seconds(rp, "per_try_timeout"),
        base_interval=base,
        max_interval=max_interval,
        retriable_status_codes=frozenset(rp.retriable_status_codes),
    )


def _hash_policy(hp: Any) -> HashPolicy | None:
    which = hp.WhichOneof("policy_specifier")
    if which == "header":
        name = hp.header.header_name
        if not name:
            raise Invalid("header.header_name", "must not be empty")
        return HashPolicy("header", header_safe("header.header_name", name).lower(), hp.terminal)
    if which == "cookie":
        if not hp.cookie.name:
            raise Invalid("cookie.name", "must not be empty")
        return HashPolicy("cookie", hp.cookie.name, hp.terminal)
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
