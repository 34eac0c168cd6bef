"""Routing parity with Envoy: one RouteConfiguration, fed to a real Envoy and to sail.

The same Envoy JSON `RouteConfiguration` goes inline into an Envoy port listener (STATIC
clusters) and into a sail local-mode file (an `api_listener` named `parity`, EDS clusters
with their ClusterLoadAssignments). Clusters `cluster-a`, `-b`, `-c` each hold one of the
session's uvicorn backends, so the backend that answers names the cluster chosen.

Hundreds of requests, built deterministically from hosts x paths x headers x queries (many
matching nothing), go to both, and their outcomes must be identical:

* `("backend", name, path, query, host)` - what the upstream saw (after rewrites);
* `("direct", status, body)` - a `direct_response`;
* `"no-route"` - Envoy's 404 without a body or an upstream, sail's `NoRouteError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import sail
from sail import testing
from sail.http.errors import NoRouteError
from tests.e2e.envoy import Envoy, run_envoy

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

A, B, C = "cluster-a", "cluster-b", "cluster-c"
CLUSTERS = {A: "a", B: "b", C: "c"}  # cluster name -> backend name
LISTENER = "parity"


def to(cluster: str, **action: Any) -> dict[str, Any]:
    return {"cluster": cluster, **action}


def direct(status: int, body: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"status": status}
    if body is not None:
        response["body"] = {"inline_string": body}
    return response


def header(name: str, **spec: Any) -> dict[str, Any]:
    return {"name": name, **spec}


def on_h(cluster: str, *headers: dict[str, Any], prefix: str = "/h") -> dict[str, Any]:
    return {"match": {"prefix": prefix, "headers": list(headers)}, "route": to(cluster)}


def on_q(cluster: str, *params: dict[str, Any], prefix: str = "/q") -> dict[str, Any]:
    return {"match": {"prefix": prefix, "query_parameters": list(params)}, "route": to(cluster)}


API_ROUTES: list[dict[str, Any]] = [
    # paths
    {"name": "exact", "match": {"path": "/exact"}, "route": to(A)},
    {
        "name": "ci-prefix",
        "match": {"prefix": "/CaseLess/", "case_sensitive": False},
        "route": to(B),
    },
    {"name": "ci-path", "match": {"path": "/Exact-CI", "case_sensitive": False}, "route": to(C)},
    {
        "name": "regex",
        "match": {"safe_regex": {"regex": "/items/[0-9]+(/detail)?"}},
        "route": to(A),
    },
    {"name": "separated", "match": {"path_separated_prefix": "/api/dev"}, "route": to(B)},
    {
        "name": "separated-ci",
        "match": {"path_separated_prefix": "/Docs", "case_sensitive": False},
        "route": to(C),
    },
    # rewrites
    {
        "name": "prefix-rewrite",
        "match": {"prefix": "/old/"},
        "route": to(C, prefix_rewrite="/new/"),
    },
    {
        "name": "prefix-rewrite-ci",
        "match": {"prefix": "/Legacy/", "case_sensitive": False},
        "route": to(B, prefix_rewrite="/modern/"),
    },
    {"name": "prefix-strip", "match": {"prefix": "/strip"}, "route": to(A, prefix_rewrite="/")},
    {
        "name": "separated-rewrite",
        "match": {"path_separated_prefix": "/gone"},
        "route": to(C, prefix_rewrite="/here"),
    },
    {
        "name": "regex-rewrite",
        "match": {"prefix": "/svc/"},
        "route": to(
            A,
            regex_rewrite={
                "pattern": {"regex": "^/svc/([^/]+)/(.*)$"},
                "substitution": "/\\2/by-\\1",
            },
        ),
    },
    {
        "name": "regex-rewrite-all",
        "match": {"prefix": "/dash/"},
        "route": to(B, regex_rewrite={"pattern": {"regex": "-"}, "substitution": "_"}),
    },
    {
        "name": "regex-path-prefix-rewrite",
        "match": {"safe_regex": {"regex": "/v[0-9]/.+"}},
        "route": to(C, prefix_rewrite="/versioned"),
    },
    # direct responses
    {"name": "health", "match": {"path": "/health"}, "direct_response": direct(200, "ok")},
    {"name": "deny", "match": {"prefix": "/deny"}, "direct_response": direct(403, "denied")},
    {"name": "teapot", "match": {"prefix": "/teapot"}, "direct_response": direct(418)},
    # other actions
    {
        "name": "weighted",
        "match": {"prefix": "/weighted"},
        "route": {
            "weighted_clusters": {
                "clusters": [{"name": B, "weight": 100}, {"name": C, "weight": 0}]
            }
        },
    },
    {
        "name": "host-rewrite",
        "match": {"prefix": "/rewrite-host"},
        "route": to(C, host_rewrite_literal="rewritten.internal"),
    },
    # a matcher naming "host": Envoy 1.40 reads it as :authority (the Host header as sent)
    on_h(A, header("host", string_match={"exact": "api.example.com"}), prefix="/hosthdr"),
    on_h(C, header("host", present_match=True), prefix="/hosthdr"),
    {"match": {"prefix": "/hosthdr"}, "route": to(B)},
    # absence, inverted or counted as empty
    on_h(
        C,
        header(
            "x-missing",
            range_match={"start": "0", "end": "10"},
            invert_match=True,
            treat_missing_header_as_empty=True,
        ),
        prefix="/hm",
    ),
    on_q(B, {"name": "absent", "present_match": False}, prefix="/qp"),  # Envoy: "is absent"
    # header matchers, in order: the first that matches wins
    on_h(A, header("x-exact", string_match={"exact": "yes"})),
    on_h(B, header("x-prefix", string_match={"prefix": "pre"})),
    on_h(C, header("x-suffix", string_match={"suffix": "fix"})),
    on_h(A, header("x-contains", string_match={"contains": "mid", "ignore_case": True})),
    on_h(B, header("x-regex", string_match={"safe_regex": {"regex": "v[0-9]+\\.[0-9]+"}})),
    on_h(C, header("x-range", range_match={"start": "10", "end": "20"})),
    on_h(A, header("x-env", string_match={"exact": "prod"}, invert_match=True)),
    on_h(B, header("x-combo", string_match={"exact": "1"}), header("x-block", present_match=False)),
    on_h(C, header("x-present", present_match=True)),
    on_h(
        A,
        header("x-want-empty"),
        header("x-empty", string_match={"exact": ""}, treat_missing_header_as_empty=True),
    ),
    on_h(B, header(":path", string_match={"contains": "debug=1"})),
    on_h(C, header(":method", string_match={"exact": "POST"})),
    on_h(B, header(":authority", string_match={"exact": "api.example.com"}), header("x-authority")),
    on_h(C, header("x-range-inv", range_match={"start": "-5", "end": "5"}, invert_match=True)),
    on_h(A, header("x-legacy-re", safe_regex_match={"regex": "[a-z]+"})),
    on_h(C, header(":scheme", string_match={"exact": "http"}), header("x-scheme")),
    # a header sent twice: Envoy 1.40 matches if any one of its values matches
    on_h(A, header("x-multi", string_match={"exact": "2"})),
    on_h(A, header("x-inv-absent", present_match=False, invert_match=True)),
    on_h(
        B,
        header("x-suffix-ci", string_match={"suffix": "END", "ignore_case": True}),
        header("x-not-prefix", string_match={"prefix": "no"}, invert_match=True),
    ),
    # query parameter matchers: Envoy 1.40 compares raw names and values (no %-decoding,
    # "+" stays "+")
    on_q(A, {"name": "q", "string_match": {"exact": "a b"}}),
    on_q(B, {"name": "q", "string_match": {"prefix": "pre"}}),
    on_q(C, {"name": "flag", "present_match": True}),
    on_q(
        A,
        {"name": "mode", "string_match": {"exact": "Fast", "ignore_case": True}},
        {"name": "v", "string_match": {"safe_regex": {"regex": "[0-9]+"}}},
    ),
    on_q(B, {"name": "s", "string_match": {"suffix": ".json"}}),
    on_q(C, {"name": "c", "string_match": {"contains": "x"}}),
    # no catch-all: anything else on this virtual host is "no route"
]

ROUTE_CONFIG: dict[str, Any] = {
    "@type": testing.ROUTE_CONFIGURATION,
    "name": "parity",
    "virtual_hosts": [
        {"name": "api", "domains": ["api.example.com"], "routes": API_ROUTES},
        {
            "name": "svc",
            "domains": ["*.svc.local"],
            "routes": [
                {
                    "match": {
                        "prefix": "/",
                        "headers": [header("x-canary", string_match={"exact": "true"})],
                    },
                    "route": to(B),
                },
                {"match": {"prefix": "/"}, "route": to(A)},
            ],
        },
        {
            "name": "east",
            "domains": ["*.east.svc.local"],
            "routes": [
                {"match": {"safe_regex": {"regex": "/[a-z/]*"}}, "route": to(C)},
            ],
        },
        {
            "name": "canary",
            "domains": ["*-canary.example.com"],
            "routes": [
                {"match": {"prefix": "/"}, "route": to(B)},
            ],
        },
        {
            "name": "web",
            "domains": ["web.*"],
            "routes": [
                {"match": {"path": "/"}, "route": to(A)},
                {"match": {"prefix": "/static/"}, "route": to(B)},
            ],
        },
        {
            "name": "web-internal",
            "domains": ["web.internal.*"],
            "routes": [
                {"match": {"prefix": "/"}, "route": to(C)},
            ],
        },
        {
            "name": "ported",
            "domains": ["ported.example.com:9000"],
            "routes": [
                {"match": {"prefix": "/health"}, "direct_response": direct(200, "ported")},
                {"match": {"prefix": "/"}, "route": to(A)},
            ],
        },
        {
            "name": "default",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/default"}, "route": to(C)},
                {
                    "match": {"path_separated_prefix": "/pub", "case_sensitive": False},
                    "route": to(B),
                },
                {"match": {"path": "/"}, "direct_response": direct(200, "root")},
            ],
        },
    ],
}

# -- the requests ------------------------------------------------------------------------------

API_HOSTS = ["api.example.com", "API.Example.COM", "api.example.com:8080"]
OTHER_HOSTS = [
    "api.example.com.",
    "www.example.com",
    "a.svc.local",
    "x.y.svc.local",
    ".svc.local",
    "svc.local",
    "b.east.svc.local",
    "east.svc.local",
    "A.EAST.SVC.LOCAL",
    "a.east.svc.local:80",
    "foo-canary.example.com",
    "-canary.example.com",
    "web.example",
    "web.internal.example",
    "WEB.Internal.x",
    "web.",
    "web",
    "webx.example",
    "ported.example.com:9000",
    "ported.example.com",
    "ported.example.com:9001",
    "unknown.test",
    "127.0.0.1",
]
API_PATHS = [
    "/",
    "/exact",
    "/exact/",
    "/Exact",
    "/exactly",
    "/exact?x=1",
    "/caseless/x",
    "/CASELESS/y",
    "/CaseLess",
    "/exact-ci",
    "/EXACT-CI",
    "/Exact-CI/x",
    "/items/42",
    "/items/42/detail",
    "/items/42/details",
    "/items/x",
    "/items/",
    "/items/%34%32",
    "/api/dev",
    "/api/dev/v1",
    "/api/developer",
    "/api/dev/",
    "/API/dev",
    "/docs",
    "/DOCS/guide",
    "/docsx",
    "/old/a/b",
    "/old/a?k=v",
    "/old",
    "/OLD/a",
    "/legacy/x",
    "/LEGACY/Y?z=1",
    "/strip/etc",
    "/strip",
    "/stripped?y=2",
    "/gone",
    "/gone/x",
    "/gonex",
    "/svc/users/list/all",
    "/svc/users/list?x=1",
    "/svc/users",
    "/dash/a-b-c",
    "/dash/a-b?x=a-b",
    "/v2/thing",
    "/v22/thing",
    "/v2/",
    "/health",
    "/health/",
    "/health?x",
    "/deny",
    "/deny/me",
    "/teapot",
    "/weighted/x",
    "/rewrite-host/p",
    "/hosthdr",
    "/static/app.js",
    "/default/x",
    "/pub",
    "/PUB/a",
    "/public",
    "//double",
    "/nothing",
    "/h",
    "/q",
]
OTHER_PATHS = [
    "/",
    "/exact",
    "/x/y",
    "/Abc",
    "/a-b",
    "/static/",
    "/static/app.js",
    "/static",
    "/health",
    "/default",
    "/defaults/x",
    "/pub",
    "/Pub/x",
    "/public",
    "//double",
]
HEADER_PATHS = ["/h", "/h/sub"]
HEADER_SETS: list[dict[str, str]] = [
    {},
    {"x-exact": "yes"},
    {"X-Exact": "yes"},
    {"x-exact": "Yes"},
    {"x-exact": ""},
    {"x-prefix": "prefix"},
    {"x-prefix": "PREfix"},
    {"x-prefix": "pre"},
    {"x-suffix": "suffix"},
    {"x-suffix": "fix"},
    {"x-suffix": "fixed"},
    {"x-contains": "aMIDb"},
    {"x-contains": "mi"},
    {"x-contains": "mid"},
    {"x-regex": "v1.2"},
    {"x-regex": "v10.20"},
    {"x-regex": "v1.2.3"},
    {"x-regex": "xv1.2"},
    {"x-regex": "v1x2"},
    {"x-range": "10"},
    {"x-range": "19"},
    {"x-range": "20"},
    {"x-range": "9"},
    {"x-range": "-3"},
    {"x-range": "+15"},
    {"x-range": "15.0"},
    {"x-range": "abc"},
    {"x-range": "99999999999999999999"},
    {"x-range": ""},
    {"x-env": "prod"},
    {"x-env": "dev"},
    {"x-env": ""},
    {"x-env": "PROD"},
    {"x-combo": "1"},
    {"x-combo": "1", "x-block": "y"},
    {"x-combo": "1", "x-block": ""},
    {"x-combo": "2"},
    {"x-present": ""},
    {"x-present": "v"},
    {"x-want-empty": "1"},
    {"x-want-empty": "1", "x-empty": "v"},
    {"x-want-empty": "1", "x-empty": ""},
    {"x-empty": ""},
    {"x-authority": "1"},
    {"x-range-inv": "7"},
    {"x-range-inv": "0"},
    {"x-range-inv": "-5"},
    {"x-range-inv": "5"},
    {"x-range-inv": "x"},
    {"x-legacy-re": "abc"},
    {"x-legacy-re": "ABC"},
    {"x-legacy-re": "abc1"},
    {"x-suffix-ci": "the-end"},
    {"x-suffix-ci": "the-END", "x-not-prefix": "nope"},
    {"x-suffix-ci": "the-End", "x-not-prefix": "yes"},
    {"x-suffix-ci": "ending"},
    {"x-scheme": "1"},
    {"x-inv-absent": "1"},
    {"x-inv-absent": ""},
    {"x-prefix": "pre", "x-exact": "yes"},
    {"x-env": "dev", "x-present": "1"},
    {"x-env": "prod", "x-present": "1"},
    {"x-range": "12", "x-suffix": "fix"},
]
QUERY_PATHS = ["/q", "/q/sub", "/qx"]
QUERIES = [
    "",
    "?",
    "?q=a+b",
    "?q=a%20b",
    "?q=a%2Bb",
    "?q=ab",
    "?q=prefix",
    "?q=Pre",
    "?q=%70re",
    "?flag",
    "?flag=",
    "?flag=0",
    "?Flag=1",
    "?%66lag=1",
    "?flags=1",
    "?mode=FAST&v=12",
    "?mode=fast&v=1x",
    "?v=3&mode=fast",
    "?mode=fast",
    "?q=zzz&q=a+b",
    "?q=a+b&q=zzz",
    "?flag&q=a+b",
    "?s=data.json",
    "?s=data.JSON",
    "?c=xyz",
    "?c=XYZ",
    "?x=1&c=ax",
    "?q",
    "?q=",
    "?=1",
    "?debug=1",
]


@dataclass(frozen=True)
class Case:
    host: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"

    def __str__(self) -> str:
        headers = " ".join(f"{k}:{v!r}" for k, v in self.headers)
        return f"{self.method} {self.host}{self.path} {headers}".rstrip()


def cases() -> list[Case]:
    out = [Case(host, path) for host in API_HOSTS for path in API_PATHS]
    out += [Case(host, path) for host in OTHER_HOSTS for path in OTHER_PATHS]
    for host in ("api.example.com", "API.Example.COM"):
        for path in HEADER_PATHS:
            out += [Case(host, path, tuple(h.items())) for h in HEADER_SETS]
    out += [Case("api.example.com", p) for p in ("/h?debug=1", "/h/x?a=1&debug=10", "/h?debug")]
    out += [
        Case("api.example.com", "/h", tuple(h.items()), method="POST")
        for h in ({}, {"x-exact": "yes"}, {"x-present": "1"})
    ]
    out += [
        Case("api.example.com", "/h", (("x-multi", "1"), ("x-multi", "2"))),
        Case("api.example.com", "/h", (("x-multi", "1,2"),)),
        Case("api.example.com", "/h", (("x-multi", "2"),)),
    ]
    out += [
        Case("api.example.com", "/hm", h)
        for h in ((), (("x-missing", "5"),), (("x-missing", "50"),), (("x-missing", ""),))
    ]
    out += [Case("api.example.com", "/qp" + q) for q in ("", "?absent", "?absent=1", "?other=1")]
    out += [Case(h, "/", (("x-canary", v),)) for h in ("a.svc.local",) for v in ("true", "TRUE")]
    out += [Case("api.example.com", p + q) for p in QUERY_PATHS for q in QUERIES]
    return list(dict.fromkeys(out))  # without repeats, in order


# -- outcomes ----------------------------------------------------------------------------------

Outcome = tuple[Any, ...] | str


def outcome(response: httpx.Response) -> Outcome:
    name = response.headers.get("x-backend")
    if name is not None:
        seen = response.json()
        return ("backend", name, seen["path"], seen["query"], seen["host"])
    if response.status_code == 404 and not response.content:
        return "no-route"
    return ("direct", response.status_code, response.text)


def send(http: httpx.Client, url: str, case: Case) -> Outcome:
    try:
        response = http.request(case.method, url, headers=[("host", case.host), *case.headers])
    except NoRouteError:
        return "no-route"
    except httpx.HTTPError as exc:
        return ("error", type(exc).__name__, str(exc))
    return outcome(response)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory, backends: dict[str, int]) -> Iterator[Envoy]:
    clusters = {c: [("127.0.0.1", backends[b])] for c, b in CLUSTERS.items()}
    with run_envoy(tmp_path_factory.mktemp("envoy"), ROUTE_CONFIG, clusters) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, backends: dict[str, int]) -> Iterator[sail.Mesh]:
    resources: list[dict[str, Any]] = [testing.api_listener(LISTENER, routes=ROUTE_CONFIG)]
    for cluster, backend in CLUSTERS.items():
        resources.append(testing.eds_cluster(cluster))
        resources.append(testing.load_assignment(cluster, [("127.0.0.1", backends[backend])]))
    path = tmp_path_factory.mktemp("sail") / "mesh.json"
    path.write_text(json.dumps({"resources": resources}, indent=1))
    with sail.Mesh.local(path, poll_interval=0) as m:
        yield m


# -- the test ----------------------------------------------------------------------------------


def test_routing_matches_envoy(envoy: Envoy, mesh: sail.Mesh) -> None:
    all_cases = cases()
    assert len(all_cases) >= 250
    mismatches: list[tuple[Case, Outcome, Outcome]] = []
    envoy_outcomes: list[Outcome] = []
    with httpx.Client(timeout=10) as direct_http, mesh.client(timeout=10) as sail_http:
        for case in all_cases:
            expected = send(direct_http, envoy.url + case.path, case)
            got = send(sail_http, f"http://{LISTENER}{case.path}", case)
            envoy_outcomes.append(expected)
            if expected != got:
                mismatches.append((case, expected, got))

    # The configuration must really be exercised: every kind of outcome occurs.
    kinds = {o if isinstance(o, str) else (o[0], o[1]) for o in envoy_outcomes}
    errors = [o for o in envoy_outcomes if isinstance(o, tuple) and o[0] == "error"]
    assert not errors, f"Envoy requests failed: {errors[:5]}\n{envoy.log_tail()}"
    for kind in (
        "no-route",
        ("backend", "a"),
        ("backend", "b"),
        ("backend", "c"),
        ("direct", 200),
        ("direct", 403),
        ("direct", 418),
    ):
        assert kind in kinds, f"no request produced {kind} through Envoy"

    if mismatches:
        width = max(len(str(case)) for case, _, _ in mismatches)
        table = "\n".join(
            f"{case!s:<{width}}  envoy={expected!r}  sail={got!r}"
            for case, expected, got in mismatches
        )
        pytest.fail(
            f"{len(mismatches)} of {len(all_cases)} requests routed differently "
            f"(request -> Envoy vs sail):\n{table}",
            pytrace=False,
        )
