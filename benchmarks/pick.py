"""The cost of one endpoint pick, per balancing policy, in µs per pick; and of building it.

```
python benchmarks/pick.py                 # full run (~1 minute on 2 cores)
python benchmarks/pick.py --quick --json out.json
```

For clusters of 10, 1,000 and 10,000 healthy endpoints in one locality, this times
`picker.pick()` with `timeit` (best of `--repeat` runs, as `python -m timeit` reports) for:

* `round_robin` - equal weights (a rotation);
* `weighted_round_robin` - weights 1-4 in turn (a precomputed EDF schedule);
* `random` - equal weights;
* `least_request` - equal weights (power of two choices over live active-request counts,
  set at random between 0 and 9), and `least_request w` with weights 1-4 (Envoy's weighted
  least request: an EDF heap re-weighted on every pick);
* `ring_hash` - default ring (1024 entries at least), picked with a request hash;
* `maglev` - default table (65537 slots), picked with a request hash.

Hashing policies are timed with a fixed 64-bit hash passed to `pick(hash_key)`; computing a
request's hash is timed apart (`request_hash` of one header, of a header and a cookie, and of
a query parameter), since a route computes it once per request whatever the cluster size.
`build ms` is one `build_picker` call (off the request path: on the xDS thread at each
config update), best of a few.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import timeit
from pathlib import Path
from typing import Any

import httpx
from pick_route import CLUSTER, assignment, best_us, endpoints, table  # same folder

from sail.balancing import ClusterStats, build_picker, request_hash
from sail.model import (
    Cluster,
    HashPolicy,
    LbPolicy,
)

SIZES = (10, 1_000, 10_000)
# label: (policy name, weighted endpoints, pass a request hash)
CASES: dict[str, tuple[str, bool, bool]] = {
    "round_robin": ("round_robin", False, False),
    "weighted_round_robin": ("weighted_round_robin", True, False),
    "random": ("random", False, False),
    "least_request": ("least_request", False, False),
    "least_request w": ("least_request", True, False),
    "ring_hash": ("ring_hash", False, True),
    "maglev": ("maglev", False, True),
}
HASH_KEY = 0x9E3779B97F4A7C15


def picks(repeat: int, min_time: float) -> list[dict[str, Any]]:
    rows = []
    for label, (policy, weighted, hashed) in CASES.items():
        cluster = Cluster(CLUSTER, lb_policy=LbPolicy(policy))
        for size in SIZES:
            cla = assignment(endpoints(size, weighted=weighted))
            stats = ClusterStats()
            builds = [0.0] * 3
            for i in range(len(builds)):
                builds[i] = timeit.timeit(
                    lambda cla=cla, stats=stats, cluster=cluster: build_picker(
                        cluster, cla, stats=stats
                    ),
                    number=1,
                )
            picker = build_picker(cluster, cla, stats=stats)
            rng = random.Random(7)
            for authority in stats:
                stats.get(authority).active = rng.randrange(10)  # type: ignore[union-attr]
            namespace = {"pick": picker.pick, "key": HASH_KEY}
            stmt = "pick(key)" if hashed else "pick()"
            rows.append({
                "policy": label,
                "endpoints": size,
                "picker": type(picker).__name__,
                "pick": best_us(stmt, namespace, repeat, min_time),
                "build_ms": min(builds) * 1e3,
            })
    return rows


def hashing(repeat: int, min_time: float) -> list[dict[str, Any]]:
    headers = httpx.Headers({
        "host": "reviews", "x-user": "user-4711", "cookie": "theme=dark; session=abc123",
        "accept": "*/*",
    })
    cases = {
        "header x-user": [HashPolicy("header", "x-user")],
        "header + cookie": [HashPolicy("header", "x-user"), HashPolicy("cookie", "session")],
        "query_parameter": [HashPolicy("query_parameter", "user")],
        "source ip": [HashPolicy("connection_properties")],
    }
    rows = []
    for label, policies in cases.items():
        namespace = {"request_hash": request_hash, "policies": policies, "headers": headers}
        stmt = "request_hash(policies, headers, '/cart?user=4711', '10.1.2.3')"
        rows.append({"case": label, "hash": best_us(stmt, namespace, repeat, min_time)})
    return rows


def report(results: dict[str, Any]) -> str:
    rows = [["policy", "endpoints", "picker", "pick µs", "build ms"]]
    for r in results["picks"]:
        rows.append([
            r["policy"], f"{r['endpoints']:,}", r["picker"], f"{r['pick']['best_us']:.2f}",
            f"{r['build_ms']:.1f}",
        ])
    hashes = [["request_hash (one route's policies)", "µs"]]
    hashes += [[h["case"], f"{h['hash']['best_us']:.2f}"] for h in results["hashing"]]
    return (
        f"one pick (best of {results['config']['repeat']}, µs per pick) and one build_picker\n"
        f"{table(rows, left=1)}\n\n{table(hashes)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs (best is kept)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timeit run")
    parser.add_argument("--quick", action="store_true", help="3 short runs")
    parser.add_argument("--json", type=Path, help="write the results there")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.min_time = 3, 0.05
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
        "config": {"repeat": args.repeat, "min_time": args.min_time},
        "picks": picks(args.repeat, args.min_time),
        "hashing": hashing(args.repeat, args.min_time),
    }
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
