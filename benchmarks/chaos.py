"""What does losing an endpoint cost, with sail and with Envoy on the same xDS resources?

```
python benchmarks/chaos.py                 # 10,000 requests per run (~5 minutes on 2 cores)
python benchmarks/chaos.py --quick         # 2,000 requests per run
python benchmarks/chaos.py --json out.json --scenarios kill
```

Issue 12's scenario R1 (`tests/chaos/test_endpoint_loss.py`): three endpoints, eight caller
threads sending `GET /work`, and once a fifth of the requests are done, a fault:

* `kill`       - one uvicorn upstream SIGKILLed (connections refused from then on);
* `kill+stop`  - one SIGKILLed and another SIGSTOPped (it accepts connections, never answers);
* `blackhole`  - from the start, one endpoint is a listening socket that never reads.
* `unreachable` - from the start, one endpoint's SYNs go unanswered (a listening socket that
                 never accepts, its backlog full), as for a host gone from the network: what
                 the connect timeout is for (sail's 1 s default, Envoy's 5 s).

Contenders, each fed the same Listener/RouteConfiguration/Cluster/ClusterLoadAssignment
JSON (`sail.testing` builders; Envoy gets them as a static bootstrap with a STATIC cluster,
and the callers' requests on its listener from 8 plain `httpx.Client`s, as a sidecar would):
`sail defaults` (the config says nothing), `sail resilient` (docs/resilience.md's "Settings
that keep requests": `RESILIENT_ROUTE`/`RESILIENT_CLUSTER` of the test), `envoy defaults`,
`envoy resilient`, `envoy registry defaults` (the cluster as `sail registry` emits it:
`DEFAULT_ACCRUAL` outlier detection, the 20 %/3 retry budget and the 1 s connect timeout
written out, from the registry's own encoder) and `envoy registry + resilient`.

Attempts per endpoint are counted over time, every 50 ms: for sail by an attempt observer
(`mesh.observe`: attempts started, attempts in flight), for Envoy from its admin `/clusters`
(per host `rq_total + cx_connect_fail`, and `rq_active`). "out after" is the time from the
fault until the faulty endpoint gets no new attempt and has none in flight for at least 1 s
("never" if that does not happen before the run ends). A run stops sending after
`--cap` seconds past the fault (a hung endpoint without timeouts would take hours); requests
still waiting 1 s after the last one was sent count as failed ("hung"). Every process
started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _bench import fmt, progress, table
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sail  # noqa: E402
from sail import testing  # noqa: E402
from sail.model import Cluster  # noqa: E402
from sail.registry.istio.clusters import with_defaults  # noqa: E402
from sail.xds.codec.encode import encode_cluster  # noqa: E402
from tests.chaos.test_endpoint_loss import RESILIENT_CLUSTER, RESILIENT_ROUTE  # noqa: E402
from tests.e2e.envoy import bootstrap, launch_envoy  # noqa: E402
from tests.e2e.procs import start, stop, wait_port  # noqa: E402
from tests.helpers import free_port  # noqa: E402

CALLERS = 8
SAMPLE = 0.05  # seconds between samples of the attempt counters
QUIET = 1.0  # seconds without attempts that count as "out of rotation"
GRACE = 1.0  # seconds the callers' last requests get once sending stops

#: What `sail registry` writes into every Cluster it serves without a DestinationRule
#: saying otherwise (`sail.registry.istio.clusters.with_defaults`: `DEFAULT_ACCRUAL`,
#: `DEFAULT_BUDGET` and the 1 s connect timeout), taken from the registry's own encoder.
_SERVED = json_format.MessageToDict(
    encode_cluster(with_defaults(Cluster("svc"))), preserving_proto_field_name=True
)
REGISTRY_DEFAULTS = {k: _SERVED[k] for k in ("outlier_detection", "circuit_breakers",
                                             "connect_timeout")}


@dataclass(frozen=True)
class Contender:
    name: str
    envoy: bool
    route: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)


CONTENDERS = [
    Contender("sail defaults", False),
    Contender("sail resilient", False, RESILIENT_ROUTE, RESILIENT_CLUSTER),
    Contender("envoy defaults", True),
    Contender("envoy resilient", True, RESILIENT_ROUTE, RESILIENT_CLUSTER),
    Contender("envoy registry defaults", True, {}, REGISTRY_DEFAULTS),
    Contender("envoy registry + resilient", True, RESILIENT_ROUTE,
              {**RESILIENT_CLUSTER, "outlier_detection": REGISTRY_DEFAULTS["outlier_detection"],
               "connect_timeout": REGISTRY_DEFAULTS["connect_timeout"]}),
]
SCENARIOS = ["kill", "kill+stop", "blackhole", "unreachable"]


# -- upstreams ------------------------------------------------------------------------------


class Upstreams:
    """Three endpoints: uvicorn upstreams, the first replaced by a socket that never reads
    in the `blackhole` scenario, and in `unreachable` by one whose SYNs go unanswered (a
    listening socket that never accepts, its backlog filled: as a host gone from the
    network)."""

    def __init__(self, scenario: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.hole: socket.socket | None = None
        self.held: list[socket.socket] = []
        names = list(enumerate(self.ports))
        if scenario in ("blackhole", "unreachable"):
            self.hole = socket.socket()
            self.hole.bind(("127.0.0.1", self.ports[0]))
            self.hole.listen(4096 if scenario == "blackhole" else 0)
            names = names[1:]
        if scenario == "unreachable":
            self._fill_backlog()
        self.procs = [start(
            [sys.executable, "-m", "uvicorn", "tests.e2e.backend:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            env={"BACKEND_NAME": f"u{i}", "PYTHONPATH": str(ROOT)},
        ) for i, port in names]
        for (_, port), proc in zip(names, self.procs, strict=True):
            wait_port(port, proc=proc)

    def _fill_backlog(self) -> None:
        for _ in range(16):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", self.ports[0]))
            except TimeoutError:
                probe.close()
                return  # full: SYNs are dropped from now on
            self.held.append(probe)
        raise RuntimeError("the backlog never filled")

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def close(self) -> None:
        for probe in self.held:
            probe.close()
        if self.hole is not None:
            self.hole.close()
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped one must hear the SIGTERM
            stop(proc)


# -- attempt counters -----------------------------------------------------------------------


class Counting:
    """An attempt observer: attempts started and in flight, per endpoint."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.lock = threading.Lock()

    def attempt_started(self, call: Any, endpoint: str, now: float) -> object:
        with self.lock:
            self.started[endpoint] += 1
            self.active[endpoint] += 1
        return endpoint

    def attempt_ended(self, call: Any, token: object, attempt: Any, now: float) -> None:
        with self.lock:
            self.active[str(token)] -= 1

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            return {e: (self.started[e], self.active[e]) for e in self.started}


def envoy_snapshot(admin_url: str) -> dict[str, tuple[int, int]]:
    """Per host of cluster `svc`: (`rq_total + cx_connect_fail`, `rq_active`)."""
    with urllib.request.urlopen(f"{admin_url}/clusters", timeout=1) as response:
        text = response.read().decode()
    stats: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "svc" and parts[2] in (
                "rq_total", "cx_connect_fail", "rq_active"):
            stats.setdefault(parts[1], {})[parts[2]] = int(parts[3])
    return {h: (s.get("rq_total", 0) + s.get("cx_connect_fail", 0), s.get("rq_active", 0))
            for h, s in stats.items()}


class Sampler(threading.Thread):
    def __init__(self, snapshot: Callable[[], dict[str, tuple[int, int]]]) -> None:
        super().__init__(daemon=True)
        self.snapshot = snapshot
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE):
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.snapshot()))


def out_after(samples: list[tuple[float, dict[str, tuple[int, int]]]], endpoint: str,
              fault_at: float) -> tuple[int, float | None, float | None]:
    """For `endpoint` after the fault: (attempts it got; seconds from the fault until it had
    no new attempt and none in flight for `QUIET` s, or None; seconds from the fault to its
    last attempt, or None)."""
    before = [s.get(endpoint, (0, 0))[0] for t, s in samples if t < fault_at]
    base = before[-1] if before else 0
    timeline = [(t, s.get(endpoint, (0, 0))) for t, s in samples if t >= fault_at]
    if not timeline:
        return 0, None, None
    attempts = timeline[-1][1][0] - base
    last = None
    previous = base
    for t, (started, active) in timeline:
        if started != previous or active:
            last = t - fault_at
        previous = started
    for i, (t, (started, active)) in enumerate(timeline):
        if active:
            continue
        for t2, (started2, active2) in timeline[i:]:
            if started2 != started or active2:
                break
            if t2 - t >= QUIET:
                return attempts, max(0.0, t - fault_at), last
    return attempts, None, last


# -- one run --------------------------------------------------------------------------------


class Load:
    """`requests` GETs from `CALLERS` threads, each with its own client from `client()`."""

    def __init__(self, client: Callable[[], httpx.Client], url: str, requests: int) -> None:
        self.client, self.url, self.requests = client, url, requests
        self.sent = self.done = self.in_flight = 0
        self.failures: Counter[str] = Counter()
        self.slowest = 0.0
        self.stop_sending = threading.Event()
        self.closed = False
        self.lock = threading.Lock()

    def caller(self, count: int) -> None:
        with contextlib.suppress(Exception), self.client() as client:
            for _ in range(count):
                if self.stop_sending.is_set():
                    return
                with self.lock:
                    self.sent += 1
                    self.in_flight += 1
                began = time.monotonic()
                failure = None
                try:
                    response = client.get(self.url)
                    if response.status_code != 200:
                        failure = f"status {response.status_code}"
                except Exception as exc:  # what a caller would see
                    failure = type(exc).__name__
                with self.lock:
                    if self.closed:
                        return
                    self.in_flight -= 1
                    self.done += 1
                    self.slowest = max(self.slowest, time.monotonic() - began)
                    if failure:
                        self.failures[failure] += 1

    def run(self, fault: Callable[[], None] | None, cap: float) -> tuple[float, dict[str, Any]]:
        threads = [threading.Thread(target=self.caller, args=(self.requests // CALLERS,),
                                    daemon=True) for _ in range(CALLERS)]
        began = time.monotonic()
        for t in threads:
            t.start()
        fault_at = began
        if fault is not None:
            while self.done < self.requests // 5 and time.monotonic() < began + 120:
                time.sleep(0.005)
            fault_at = time.monotonic()
            fault()
        end = fault_at + cap
        while any(t.is_alive() for t in threads) and time.monotonic() < end:
            progress(f"{self.done:,} / {self.requests:,} done")
            time.sleep(0.1)
        self.stop_sending.set()
        grace = time.monotonic() + GRACE
        while self.in_flight and time.monotonic() < grace:
            time.sleep(0.02)
        with self.lock:
            self.closed = True
            failed = sum(self.failures.values())
            result = {
                "sent": self.sent, "failed": failed + self.in_flight, "hung": self.in_flight,
                "errors": dict(self.failures.most_common(4)), "slowest_s": self.slowest,
                "seconds_after_fault": time.monotonic() - fault_at,
            }
        progress("")
        return fault_at, result


def resources(c: Contender, ports: list[int]) -> tuple[dict[str, Any], dict[str, Any],
                                                        dict[str, Any]]:
    route_cfg = testing.route_config("svc", [testing.route("svc", **c.route)])
    cluster = testing.eds_cluster("svc", **c.cluster)
    assignment = testing.load_assignment("svc", [("127.0.0.1", p) for p in ports])
    return route_cfg, cluster, assignment


@contextlib.contextmanager
def contender_client(c: Contender, ports: list[int], workdir: Path) -> Iterator[
        tuple[Callable[[], httpx.Client], str, Callable[[], dict[str, tuple[int, int]]]]]:
    route_cfg, cluster, assignment = resources(c, ports)
    if not c.envoy:
        path = workdir / "mesh.json"
        path.write_text(json.dumps({"resources": [
            testing.api_listener("svc", routes=route_cfg), cluster, assignment]}))
        counting = Counting()
        with sail.Mesh.local(path) as mesh:
            mesh.observe(counting)
            yield mesh.client, "http://svc/work", counting.snapshot
        return
    port, admin_port = free_port(), free_port()
    config = bootstrap(route_cfg, {}, port=port, admin_port=admin_port)
    static = {k: v for k, v in cluster.items() if k not in ("@type", "eds_cluster_config")}
    static["type"] = "STATIC"
    static["load_assignment"] = {k: v for k, v in assignment.items() if k != "@type"}
    config["static_resources"]["clusters"] = [static]
    envoy = launch_envoy(workdir, config, port=port, admin_port=admin_port)
    try:
        yield (lambda: httpx.Client(timeout=None), f"{envoy.url}/work",
               lambda: envoy_snapshot(envoy.admin_url))
    finally:
        envoy.stop()


def run_one(scenario: str, c: Contender, requests: int, cap: float) -> dict[str, Any]:
    ups = Upstreams(scenario)
    try:
        with tempfile.TemporaryDirectory() as tmp, contender_client(
                c, ups.ports, Path(tmp)) as (client, url, snapshot):
            faulty = [ups.endpoint(0)] + ([ups.endpoint(1)] if scenario == "kill+stop" else [])

            def fault() -> None:
                os.kill(ups.procs[0].pid, signal.SIGKILL)
                if scenario == "kill+stop":
                    os.kill(ups.procs[1].pid, signal.SIGSTOP)

            sampler = Sampler(snapshot)
            sampler.start()
            load = Load(client, url, requests)
            from_start = scenario in ("blackhole", "unreachable")
            fault_at, result = load.run(None if from_start else fault, cap)
            time.sleep(SAMPLE * 2)
            sampler.halt.set()
            sampler.join()
            result["faulty"] = {}
            for endpoint in faulty:
                attempts, out, last = out_after(sampler.samples, endpoint, fault_at)
                result["faulty"][endpoint] = {
                    "attempts": attempts, "out_after_s": out, "last_attempt_s": last}
    finally:
        ups.close()
    return result


def row(name: str, r: dict[str, Any]) -> list[str]:
    faulty = list(r["faulty"].values())
    outs = ["never" if f["out_after_s"] is None else f"{f['out_after_s']:.2f}" for f in faulty]
    lasts = ["-" if f["last_attempt_s"] is None else f"{f['last_attempt_s']:.2f}"
             for f in faulty]
    return [
        name, f"{r['sent']:,}", f"{r['failed']:,}", f"{r['hung']:,}",
        fmt(100 * r["failed"] / max(r["sent"], 1), 2), fmt(r["slowest_s"], 2),
        " / ".join(f"{f['attempts']:,}" for f in faulty), " / ".join(outs),
        " / ".join(lasts), fmt(r["seconds_after_fault"], 1),
    ]


HEADER = ["contender", "sent", "failed", "hung", "failed %", "slowest s",
          "faulty: attempts", "out after s", "last attempt s", "run after fault s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--cap", type=float, default=12.0,
                        help="seconds after the fault after which no request is sent")
    parser.add_argument("--quick", action="store_true", help="2,000 requests, cap 8 s")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--contenders", default="", help="names, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.cap = 2_000, 8.0
    wanted = [n.strip() for n in args.contenders.split(",") if n.strip()]
    contenders = [c for c in CONTENDERS if not wanted or c.name in wanted]
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for scenario in args.scenarios.split(","):
        results[scenario] = {}
        rows = [HEADER]
        for c in contenders:
            progress(f"{scenario}: {c.name}")
            results[scenario][c.name] = r = run_one(scenario, c, args.requests, args.cap)
            rows.append(row(c.name, r))
        faulty = "first" if scenario != "kill+stop" else "killed / stopped"
        print(f"\n{scenario}: {args.requests:,} GETs from {CALLERS} callers over 3 endpoints, "
              f"sending stopped {args.cap:.0f} s after the fault ({faulty} endpoint shown)")
        print(table(rows))
    print(f"\nload average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {"requests": args.requests, "cap": args.cap, "callers": CALLERS},
            "machine": {"cores": os.cpu_count(), "load": [load_before, os.getloadavg()],
                        "python": platform.python_version(), "when": time.time()},
            "results": results,
        }, indent=1))


if __name__ == "__main__":
    main()
