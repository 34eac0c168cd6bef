"""The request path without I/O: route match + endpoint pick, in µs per call.

```
python benchmarks/pick_route.py                # full run (~2 minutes on 2 cores)
python benchmarks/pick_route.py --quick --json out.json
```

What a request costs sail before any byte is sent is `Dataplane.resolve`: find the
service, match its routes (`Router.route`), pick an endpoint of the route's cluster
(`picker.pick()`). This times it with `timeit` (best of `--repeat` runs, as `python -m
timeit` reports) for clusters of 10, 1,000 and 10,000 endpoints under `round_robin` and
`random`, and two route tables:

* `trivial` - one virtual host, one route, prefix `/`;
* `50 routes` - fifty prefix routes, the request matching the 26th (index 25), the cost of a
  config whose routes are tried in order.

Target: route + pick within 5 µs at 10,000 endpoints. The second table is the cost of a
config update, off the request path: `build_picker` for 10,000 endpoints (equal weights, and
unequal weights for the weighted round-robin schedule), the whole `Dataplane.update` that
publishes a new snapshot, and the EDS decode of 10,000 endpoints from protobuf.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import timeit
from pathlib import Path
from typing import Any

import httpx

from sail.balancing import build_picker
from sail.dataplane import Dataplane
from sail.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    MeshSnapshot,
    PathMatch,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)

SERVICE = "reviews"
CLUSTER = "reviews-v1"
SIZES = (10, 1_000, 10_000)
POLICIES = ("round_robin", "random")
TARGET_US = 5.0


# -- config ----------------------------------------------------------------------------------


def endpoints(n: int, *, weighted: bool = False) -> tuple[Endpoint, ...]:
    """`n` healthy endpoints on 10.x.y.z:8080; weights 1..4 in turn when `weighted`."""
    return tuple(
        Endpoint(
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            8080,
            weight=1 + i % 4 if weighted else 1,
            health=HealthStatus.HEALTHY,
        )
        for i in range(n)
    )


def assignment(hosts: tuple[Endpoint, ...]) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        CLUSTER, (LocalityEndpoints(Locality(zone="test"), hosts, weight=1),)
    )


def cluster(policy: str) -> Cluster:
    return Cluster(CLUSTER, lb_policy=LbPolicy(policy))


def prefix_route(prefix: str) -> Route:
    return Route(RouteMatch(PathMatch(PathMatchKind.PREFIX, prefix)), RouteAction(CLUSTER))


ROUTE_TABLES: dict[str, tuple[tuple[Route, ...], str]] = {
    # name: (routes, the request path)
    "trivial": ((prefix_route("/"),), "/reviews/1"),
    "50 routes": (tuple(prefix_route(f"/api{i}/") for i in range(50)), "/api25/reviews/1"),
}


def snapshot(routes: tuple[Route, ...], policy: str, hosts: tuple[Endpoint, ...]) -> MeshSnapshot:
    config = RouteConfig(SERVICE, (VirtualHost(SERVICE, ("*",), routes),))
    return MeshSnapshot(
        routes={SERVICE: config},
        clusters={CLUSTER: cluster(policy)},
        endpoints={CLUSTER: assignment(hosts)},
    )


# -- timing ----------------------------------------------------------------------------------


def best_us(stmt: str, namespace: dict[str, Any], repeat: int, min_time: float) -> dict[str, float]:
    """µs per call: best and median of `repeat` runs of about `min_time` seconds each."""
    timer = timeit.Timer(stmt, globals=namespace)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2))
    runs = [t / number * 1e6 for t in timer.repeat(repeat, number)]
    return {"best_us": min(runs), "median_us": statistics.median(runs), "number": number}


def request_path(repeat: int, min_time: float) -> list[dict[str, Any]]:
    headers = httpx.Headers({"host": SERVICE, "user-agent": "bench", "accept": "*/*"})
    rows = []
    for table_name, (routes, path) in ROUTE_TABLES.items():
        for policy in POLICIES:
            for size in SIZES:
                dataplane = Dataplane()
                state = dataplane.update(snapshot(routes, policy, endpoints(size)))
                target = dataplane.resolve(SERVICE, SERVICE, path, headers)
                assert target.route.cluster == CLUSTER and target.endpoint is not None
                namespace = {
                    "resolve": dataplane.resolve,
                    "route": state.services[SERVICE].router.route,
                    "pick": state.clusters[CLUSTER].picker.pick,
                    "service": SERVICE,
                    "path": path,
                    "headers": headers,
                }
                row: dict[str, Any] = {"routes": table_name, "policy": policy, "endpoints": size}
                row["route"] = best_us("route(service, path, headers)", namespace, repeat,
                                       min_time)
                row["pick"] = best_us("pick()", namespace, repeat, min_time)
                row["resolve"] = best_us(
                    "resolve(service, service, path, headers, 'GET')", namespace, repeat,
                    min_time,
                )
                rows.append(row)
    return rows


def config_updates(repeat: int) -> list[dict[str, Any]]:
    """What a config change costs for a 10,000-endpoint cluster (off the request path)."""
    size = SIZES[-1]
    plain, weighted = endpoints(size), endpoints(size, weighted=True)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for policy in POLICIES:
        for label, hosts in (("equal weights", plain), ("weights 1-4", weighted)):
            cases.append((
                f"build_picker {policy}, {size:,} endpoints, {label}",
                "build_picker(cluster, cla)",
                {"build_picker": build_picker, "cluster": cluster(policy),
                 "cla": assignment(hosts)},
            ))
    # A new EDS version for the cluster: everything `Mesh` does to publish it.
    routes = ROUTE_TABLES["trivial"][0]
    dataplane = Dataplane()
    dataplane.update(snapshot(routes, "round_robin", plain))
    moved = snapshot(routes, "round_robin", endpoints(size + 1)[1:])
    cases.append((
        f"Dataplane.update, EDS change of {size:,} endpoints (round_robin)",
        "dataplane.state = previous; dataplane.update(moved)",
        {"dataplane": dataplane, "previous": dataplane.state, "moved": moved},
    ))
    decode = _eds_decode_case(size)
    if decode is not None:
        cases.append(decode)
    rows = []
    for name, stmt, namespace in cases:
        timer = timeit.Timer(stmt, globals=namespace)
        runs = [t * 1e3 for t in timer.repeat(repeat, 1)]
        rows.append({"case": name, "best_ms": min(runs), "median_ms": statistics.median(runs)})
    return rows


def _eds_decode_case(size: int) -> tuple[str, str, dict[str, Any]] | None:
    """Decoding a ClusterLoadAssignment protobuf into the model, if the codec is there."""
    try:
        from sail import testing
        from sail.xds.codec.envoy_json import load_resources
        from sail.xds.codec.types import CLUSTER_LOAD_ASSIGNMENT, RESOURCE_TYPES
    except ImportError as exc:
        print(f"(skipping the EDS decode timing: {exc})")
        return None
    cla = testing.load_assignment(
        CLUSTER, [(e.address, e.port) for e in endpoints(size)]
    )
    (message,) = load_resources([cla])
    return (
        f"EDS decode, protobuf -> model, {size:,} endpoints",
        "decode(message)",
        {"decode": RESOURCE_TYPES[CLUSTER_LOAD_ASSIGNMENT].decode, "message": message},
    )


# -- report ----------------------------------------------------------------------------------


def table(rows: list[list[str]], left: int = 1) -> str:
    """Aligned columns, the first `left` ones flush left, the others flush right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    rows = [["routes", "policy", "endpoints", "route µs", "pick µs", "resolve µs", "≤ 5 µs"]]
    for r in results["request_path"]:
        resolve = r["resolve"]["best_us"]
        rows.append([
            r["routes"], r["policy"], f"{r['endpoints']:,}", f"{r['route']['best_us']:.2f}",
            f"{r['pick']['best_us']:.2f}", f"{resolve:.2f}",
            "yes" if resolve <= TARGET_US else "NO",
        ])
    updates = [["config update (off the request path)", "best ms", "median ms"]]
    updates += [[u["case"], f"{u['best_ms']:.1f}", f"{u['median_ms']:.1f}"]
                for u in results["config_updates"]]
    return (
        "request path: Dataplane.resolve = Router.route + picker.pick "
        f"(best of {results['config']['repeat']}, µs per call)\n"
        f"{table(rows, left=2)}\n\n{table(updates)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs (best is kept)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per timeit run of the request path")
    parser.add_argument("--quick", action="store_true", help="3 short runs")
    parser.add_argument("--json", type=Path, help="write the results there")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.min_time = 3, 0.05
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
        "config": {"repeat": args.repeat, "min_time": args.min_time},
        "request_path": request_path(args.repeat, args.min_time),
        "config_updates": config_updates(max(3, args.repeat // 2)),
    }
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
