"""Hypothesis strategies for the config model, producing only objects a decoder can produce.

They are the domain of the codec's round-trip property `decode(encode(x)) == x`, so they
respect what decoding normalises: header names are lower case, durations are whole
nanoseconds, zero weights do not occur, priorities are contiguous, addresses are unique,
`safe_regex` matchers are never case-insensitive, and every HCM ends with the router.

Also here: `registered_policies()`, which registers dummy balancing policies under every
name the strategies use (the real policies are written elsewhere) and removes them after.
"""

from __future__ import annotations

import contextlib
import itertools
import string
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from hypothesis import strategies as st

from sail.balancing import registry
from sail.model import (
    CircuitBreakers,
    Cluster,
    ClusterLoadAssignment,
    ClusterWeight,
    DirectResponse,
    DiscoveryType,
    Endpoint,
    FractionalPercent,
    HashPolicy,
    HeaderMatcher,
    HealthStatus,
    HttpConnectionManager,
    HttpFilter,
    Int64Range,
    LbPolicy,
    Listener,
    Locality,
    LocalityEndpoints,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    QueryParameterMatcher,
    RegexRewrite,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    Thresholds,
    VirtualHost,
)
from sail.model.regex import compile_regex
from sail.xds.codec.extensions import CORS, FAULT, RBAC, ROUTER, ROUTER_NAME

if TYPE_CHECKING:
    from collections.abc import Iterator

POLICY_NAMES = (
    "round_robin",
    "random",
    "least_request",
    "ring_hash",
    "maglev",
    "weighted_round_robin",
    "pick_first",
    "my_policy",
)


def dummy_factory(endpoints: Any, policy: Any) -> Any:
    raise NotImplementedError("a test stand-in: the codec only checks the name is registered")


@contextlib.contextmanager
def registered_policies(*names: str) -> Iterator[None]:
    """Register `dummy_factory` under `names` (default: every name used here), restoring
    the registry afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in names or POLICY_NAMES:
            mp.setitem(registry._POLICIES, name, dummy_factory)
        yield


# -- scalars ----------------------------------------------------------------------------

token = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10)
names = st.text(string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=16)
text = st.text(st.characters(codec="utf-8"), max_size=12)
nonempty_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
header_values = nonempty_text.filter(lambda t: not set(t) & set("\x00\r\n"))
REGEXES = ("a.*", "[0-9]+", "/v[12]/.*", "x|y", "(foo)(bar)?", r"\d{3}")
regex_sources = st.sampled_from(REGEXES)


def seconds(min_nanos: int = 0, max_nanos: int = 3_600 * 10**9) -> st.SearchStrategy[float]:
    """Durations a `google.protobuf.Duration` holds exactly: whole nanoseconds."""
    return st.integers(min_nanos, max_nanos).map(lambda n: n / 1e9)


durations = seconds()
positive_durations = seconds(min_nanos=1)
uint32 = st.integers(0, 2**32 - 1)

# -- matchers ---------------------------------------------------------------------------


@st.composite
def string_matchers(draw: st.DrawFn) -> StringMatcher:
    kind = draw(st.sampled_from(list(StringMatchKind)))
    if kind is StringMatchKind.REGEX:
        source = draw(regex_sources)
        return StringMatcher(kind, source, regex=compile_regex(source))
    value = draw(text if kind is StringMatchKind.EXACT else nonempty_text)
    return StringMatcher(kind, value, ignore_case=draw(st.booleans()))


@st.composite
def header_matchers(draw: st.DrawFn) -> HeaderMatcher:
    which = draw(st.sampled_from(["string", "range", "present"]))
    kwargs: dict[str, Any] = {}
    if which == "string":
        kwargs["string_match"] = draw(string_matchers())
    elif which == "range":
        start = draw(st.integers(-(2**63), 2**63 - 2))
        kwargs["range"] = Int64Range(start, draw(st.integers(start, 2**63 - 1)))
    else:
        kwargs["present"] = draw(st.booleans())
    return HeaderMatcher(
        name=draw(token),
        invert=draw(st.booleans()),
        treat_missing_as_empty=draw(st.booleans()),
        **kwargs,
    )


query_matchers = st.one_of(
    st.builds(QueryParameterMatcher, name=names, string_match=string_matchers()),
    st.builds(QueryParameterMatcher, name=names, present=st.sampled_from([None, True, False])),
)
fractions = st.builds(
    FractionalPercent,
    numerator=st.integers(0, 1_000_000),
    denominator=st.sampled_from([100, 10_000, 1_000_000]),
)


@st.composite
def path_matches(draw: st.DrawFn) -> PathMatch:
    kind = draw(st.sampled_from(list(PathMatchKind)))
    if kind is PathMatchKind.REGEX:
        source = draw(regex_sources)
        return PathMatch(kind, source, regex=compile_regex(source))
    if kind is PathMatchKind.PATH_SEPARATED_PREFIX:
        return PathMatch(kind, "/" + draw(token))
    return PathMatch(kind, draw(text))


route_matches = st.builds(
    RouteMatch,
    path=path_matches(),
    case_sensitive=st.booleans(),
    headers=st.lists(header_matchers(), max_size=3).map(tuple),
    query_params=st.lists(query_matchers, max_size=2).map(tuple),
    runtime_fraction=st.none() | fractions,
)

# -- route actions ----------------------------------------------------------------------


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.integers(1, 10**10))
    max_interval = draw(st.none() | st.integers(base, base + 10**10))
    return RetryPolicy(
        retry_on=frozenset(
            draw(st.lists(st.sampled_from(["5xx", "reset", "unavailable", "gateway-error"])))
        ),
        num_retries=draw(st.integers(0, 10)),
        per_try_timeout=draw(st.none() | durations),
        base_interval=base / 1e9,
        max_interval=None if max_interval is None else max_interval / 1e9,
        retriable_status_codes=frozenset(draw(st.lists(st.integers(400, 599), max_size=3))),
    )


hash_policies = st.one_of(
    st.builds(HashPolicy, kind=st.just("header"), name=token, terminal=st.booleans()),
    st.builds(
        HashPolicy,
        kind=st.sampled_from(["cookie", "query_parameter"]),
        name=names,
        terminal=st.booleans(),
    ),
    st.builds(HashPolicy, kind=st.just("connection_properties"), terminal=st.booleans()),
)


@st.composite
def route_actions(draw: st.DrawFn) -> RouteAction:
    which = draw(st.sampled_from(["cluster", "weighted", "header"]))
    kwargs: dict[str, Any] = {}
    if which == "cluster":
        kwargs["cluster"] = draw(names)
    elif which == "weighted":
        kwargs["weighted_clusters"] = tuple(
            draw(st.lists(st.builds(ClusterWeight, names, st.integers(1, 10_000)), min_size=1))
        )
    else:
        kwargs["cluster_header"] = draw(token)
    if draw(st.booleans()):
        kwargs["prefix_rewrite"] = draw(header_values)
    elif draw(st.booleans()):
        source = draw(regex_sources)
        kwargs["regex_rewrite"] = RegexRewrite(compile_regex(source), source, draw(names))
    if draw(st.booleans()):
        kwargs["host_rewrite_literal"] = draw(names)
    else:
        kwargs["auto_host_rewrite"] = draw(st.booleans())
    return RouteAction(
        timeout=draw(st.none() | durations),
        retry_policy=draw(st.none() | retry_policies()),
        hash_policies=tuple(draw(st.lists(hash_policies, max_size=3))),
        max_stream_duration=draw(st.none() | durations),
        **kwargs,
    )


direct_responses = st.builds(
    DirectResponse, status=st.integers(200, 599), body=st.binary(max_size=16)
)
routes = st.builds(
    Route,
    match=route_matches,
    action=st.one_of(route_actions(), direct_responses, st.none()),
    name=st.just("") | names,
)

# -- route configuration ----------------------------------------------------------------

hostnames = st.lists(token, min_size=1, max_size=3).map(".".join)
domains = st.one_of(
    st.just("*"),
    hostnames,
    hostnames.map(lambda h: "*." + h),
    hostnames.map(lambda h: h + ".*"),
    st.tuples(hostnames, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
)


@st.composite
def route_configs(draw: st.DrawFn, name: st.SearchStrategy[str] = names) -> RouteConfig:
    pool = draw(st.lists(domains, min_size=1, max_size=6, unique_by=str.lower))
    cuts = sorted(draw(st.lists(st.integers(1, len(pool)), max_size=3, unique=True)))
    bounds = [0, *[c for c in cuts if c < len(pool)], len(pool)]
    hosts = tuple(
        VirtualHost(
            name=draw(names),
            domains=tuple(pool[lo:hi]),
            routes=tuple(draw(st.lists(routes, max_size=3))),
            retry_policy=draw(st.none() | retry_policies()),
        )
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    )
    return RouteConfig(name=draw(name), virtual_hosts=hosts)


# -- listeners --------------------------------------------------------------------------


@st.composite
def http_filter_lists(draw: st.DrawFn, client: bool = False) -> tuple[HttpFilter, ...]:
    """A client (API) listener's filters are those a client applies (fault); a port
    listener's may also be the server-only RBAC and CORS."""
    optional = draw(
        st.lists(
            st.builds(
                HttpFilter,
                name=names.filter(lambda n: n != ROUTER_NAME),
                type_url=st.sampled_from([FAULT] if client else [FAULT, RBAC, CORS]),
                is_optional=st.booleans(),
            ),
            max_size=3,
            unique_by=lambda f: f.name,
        ).filter(lambda fs: sum(f.type_url == FAULT for f in fs) <= 1)  # one fault filter
    )
    return (*optional, HttpFilter(ROUTER_NAME, ROUTER))


@st.composite
def hcms(draw: st.DrawFn, client: bool = False) -> HttpConnectionManager:
    if draw(st.booleans()):
        kwargs: dict[str, Any] = {"rds_name": draw(names)}
    else:
        kwargs = {"route_config": draw(route_configs(name=st.just("") | names))}
    return HttpConnectionManager(
        http_filters=draw(http_filter_lists(client)),
        max_stream_duration=draw(st.none() | durations),
        **kwargs,
    )


@st.composite
def listeners_(draw: st.DrawFn) -> Listener:
    address = draw(
        st.none()
        | st.tuples(st.sampled_from(["0.0.0.0", "::", "127.0.0.1"]), st.integers(0, 65535))
    )
    return Listener(name=draw(names), hcm=draw(hcms(client=address is None)), address=address)


listeners = listeners_()

# -- endpoints --------------------------------------------------------------------------

localities = st.builds(
    Locality, region=st.just("") | token, zone=st.just("") | token, sub_zone=st.just("") | token
)


@st.composite
def load_assignments(
    draw: st.DrawFn,
    name: st.SearchStrategy[str] = names,
    max_priorities: int = 3,
    addresses: tuple[str, ...] = ("10.0.0.1", "10.0.0.2", "fd00::1", "db"),
) -> ClusterLoadAssignment:
    port = iter(range(1024, 65536))  # one fresh port per endpoint keeps addresses unique
    groups: list[LocalityEndpoints] = []
    for priority in range(draw(st.integers(0, max_priorities))):
        for locality in draw(st.lists(localities, min_size=1, max_size=3, unique=True)):
            endpoints = tuple(
                Endpoint(
                    address=draw(st.sampled_from(addresses)),
                    port=next(port),
                    weight=draw(st.integers(1, 1000)),
                    health=draw(st.sampled_from(list(HealthStatus))),
                    hostname=draw(st.just("") | hostnames),
                )
                for _ in range(draw(st.integers(0, 3)))
            )
            groups.append(
                LocalityEndpoints(locality, endpoints, draw(st.integers(1, 1000)), priority)
            )
    order = draw(st.permutations(groups)) if groups else []
    return ClusterLoadAssignment(
        cluster_name=draw(name),
        localities=tuple(order),
        overprovisioning_factor=draw(st.integers(1, 1000)),
    )


@st.composite
def single_endpoint_assignments(draw: st.DrawFn, name: str) -> ClusterLoadAssignment:
    endpoint = Endpoint(draw(hostnames), draw(st.integers(1, 65535)))
    return ClusterLoadAssignment(name, (LocalityEndpoints(Locality(), (endpoint,)),))


# -- clusters ---------------------------------------------------------------------------


def _options(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[tuple[str, Any], ...]]:
    """Any subset of `fields`, as sorted option pairs."""
    return st.fixed_dictionaries({}, optional=fields).map(lambda d: tuple(sorted(d.items())))


@st.composite
def ring_hash_options(draw: st.DrawFn) -> tuple[tuple[str, Any], ...]:
    """Ring sizes within Envoy's limits, the minimum (default 1024) never above the maximum
    (default 8M), counting defaults for the one left out."""
    low = draw(st.integers(1, 8_388_608))
    high = draw(st.integers(max(low, 1024), 8_388_608))
    both = (("maximum_ring_size", high), ("minimum_ring_size", low))
    return draw(st.sampled_from([(), both[:1], both[1:], both]))


lb_policies = st.one_of(
    st.builds(LbPolicy, st.sampled_from(["round_robin", "random"])),
    st.builds(LbPolicy, st.just("least_request"), _options(choice_count=st.integers(2, 10))),
    st.builds(LbPolicy, st.just("ring_hash"), ring_hash_options()),
    st.builds(LbPolicy, st.just("maglev"), _options(table_size=st.sampled_from([131, 65537]))),
    # sail's weighted_round_robin takes no ORCA options (they are NACKed)
    st.builds(LbPolicy, st.just("weighted_round_robin")),
    st.builds(LbPolicy, st.just("pick_first"), _options(shuffle_address_list=st.just(True))),
    st.builds(
        LbPolicy,
        st.just("my_policy"),
        _options(mode=st.sampled_from(["a", "b"]), factor=st.floats(0, 10), on=st.booleans()),
    ),
)

thresholds = st.builds(
    Thresholds,
    max_connections=uint32,
    max_pending_requests=uint32,
    max_requests=uint32,
    max_retries=uint32,
)


@st.composite
def circuit_breakers(draw: st.DrawFn) -> CircuitBreakers:
    priorities = draw(st.lists(st.sampled_from([0, 1]), unique=True))
    return CircuitBreakers(tuple(attrs.evolve(draw(thresholds), priority=p) for p in priorities))


@st.composite
def outlier_detections(draw: st.DrawFn) -> OutlierDetection:
    """Every field; `max_ejection_time` is never below `base_ejection_time` (a NACK)."""
    percent = st.integers(0, 100)
    base = draw(positive_durations)
    longest = draw(st.none() | seconds(min_nanos=round(base * 1e9)))
    return OutlierDetection(
        consecutive_5xx=draw(uint32),
        interval=draw(positive_durations),
        base_ejection_time=base,
        max_ejection_percent=draw(percent),
        enforcing_consecutive_5xx=draw(percent),
        enforcing_success_rate=draw(percent),
        success_rate_minimum_hosts=draw(uint32),
        success_rate_request_volume=draw(uint32),
        success_rate_stdev_factor=draw(uint32),
        consecutive_gateway_failure=draw(uint32),
        enforcing_consecutive_gateway_failure=draw(percent),
        split_external_local_origin_errors=draw(st.booleans()),
        consecutive_local_origin_failure=draw(uint32),
        enforcing_consecutive_local_origin_failure=draw(percent),
        enforcing_local_origin_success_rate=draw(percent),
        failure_percentage_threshold=draw(percent),
        enforcing_failure_percentage=draw(percent),
        enforcing_failure_percentage_local_origin=draw(percent),
        failure_percentage_minimum_hosts=draw(uint32),
        failure_percentage_request_volume=draw(uint32),
        max_ejection_time=max(300.0, base) if longest is None else longest,
        max_ejection_time_jitter=draw(durations),
        always_eject_one_host=draw(st.booleans()),
    )


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    name = draw(names)
    discovery = draw(st.sampled_from(list(DiscoveryType)))
    eds_name = ""
    assignment = None
    if discovery is DiscoveryType.EDS:
        eds_name = draw(st.just("") | names)
    elif discovery is DiscoveryType.LOGICAL_DNS:
        assignment = draw(single_endpoint_assignments(name))
    elif discovery is DiscoveryType.STATIC:
        assignment = draw(load_assignments(addresses=("10.0.0.1", "fd00::1")))
    else:
        assignment = draw(load_assignments())
    return Cluster(
        name=name,
        discovery=discovery,
        eds_service_name=eds_name,
        load_assignment=assignment,
        lb_policy=draw(lb_policies),
        connect_timeout=draw(positive_durations),
        healthy_panic_threshold=draw(st.floats(0, 100)),
        circuit_breakers=draw(st.none() | circuit_breakers()),
        outlier_detection=draw(st.none() | outlier_detections()),
    )
