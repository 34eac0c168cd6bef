"""Valid resources, written as Envoy JSON with `sail.testing`'s builders, from which the
fuzz tests start: they reach retry policies, header and regex matchers, weighted and
hashed routes, direct responses, and clusters of every load-balancing and discovery kind."""

from __future__ import annotations

from typing import Any

from sail import testing

__all__ = ["CLUSTERS", "ROUTES"]

RETRY = {
    "retry_on": "5xx,reset,retriable-status-codes",
    "num_retries": 3,
    "per_try_timeout": "0.5s",
    "retry_back_off": {"base_interval": "0.01s", "max_interval": "1s"},
    "retriable_status_codes": [503],
    "retry_host_predicate": testing.previous_hosts(),
    "host_selection_retry_max_attempts": 3,
}
SAFE_REGEX = {"safe_regex": {"regex": "/v[12]/.*"}}
HEADERS = [
    {"name": "x-user", "string_match": {"exact": "a"}},
    {"name": "x-range", "range_match": {"start": 1, "end": 9}},
    {"name": "x-re", "string_match": SAFE_REGEX},
]
ROUTES: list[dict[str, Any]] = [
    testing.route("a", headers=HEADERS, timeout="2s", retry_policy=RETRY),
    testing.route({"a": 30, "b": 70}, prefix="/w", hash_policy=[{"header": {"header_name": "x"}}]),
    testing.route("b", prefix="/r",
                  regex_rewrite={"pattern": {"regex": "^/r"}, "substitution": "/"}),
    {"match": SAFE_REGEX, "direct_response": {"status": 404, "body": {"inline_string": "no"}}},
]
CLUSTERS: list[dict[str, Any]] = [
    testing.eds_cluster("c", connect_timeout="1s"),
    testing.eds_cluster("rh", lb_policy="RING_HASH",
                        ring_hash_lb_config={"minimum_ring_size": 64}),
    testing.eds_cluster("lr", lb_policy="LEAST_REQUEST",
                        least_request_lb_config={"choice_count": 3}),
    testing.eds_cluster(
        "cb",
        circuit_breakers={"thresholds": [{"max_connections": 5, "max_requests": 9}]},
        outlier_detection={"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "2s"},
        transport_socket={"name": "envoy.transport_sockets.raw_buffer"},
    ),
    {"@type": testing.CLUSTER, "name": "dns", "type": "STRICT_DNS", "connect_timeout": "1s",
     "load_assignment": {k: v for k, v in testing.load_assignment(
         "dns", [("db.local", 5432)]).items() if k != "@type"}},
]
