"""How fast does `sail registry` push one config change to N connected ADS clients?

```
python benchmarks/registry_fanout.py                        # N = 100 and 1,000 (~1 minute)
python benchmarks/registry_fanout.py --streams 100 --changes 3
python benchmarks/registry_fanout.py --streams 2000,5000 --json out.json --logs /tmp/fanout
```

For each N: a fresh `sail registry` in its own process, five workloads registered through the
gRPC API (`RemoteRegistrar`: `reviews` v1, v2, v3, `ratings`, `details`) and a
DestinationRule + VirtualService for `reviews` applied with `AdminClient` (weights 90/10
between subsets v1 and v2). Then N raw ADS streams (grpc.aio, no sail client: one coroutine
per stream), spread over `--client-procs` client processes (this same file, run as
`registry_fanout.py _client ...`) and over channels of `--per-channel` streams, each channel
its own HTTP/2 connection. Each stream does what a gRPC xDS client does: LDS `reviews` → RDS
for the route the listener names → CDS for the clusters the routes name → EDS for those,
with a unique node id, ACKing every response (its `version_info` and `nonce`). A stream
that fails before it has its config is opened again with backoff, as a real client would
(the table counts them).

Then `--changes` times, one `AdminClient.apply` that flips the VirtualService's weights
(90/10 → 50/50 → 90/10 ...): only the RouteConfiguration changes, so the registry sends one
RDS response per stream. Per stream, **time-to-ACK** runs from just before the orchestrator
sends the Apply call to the moment that stream's ACK of the new route version reaches the
registry, i.e. when the registry's event loop reads it and records it (`AdsServer.record`).
To see that moment the registry runs as `sail.cli.main.main(["registry", ...])`, exactly
what the `sail` console script runs, with `AdsServer.record` wrapped to note the time of
each ACK (`REGISTRY_WITH_ACK_TIMES`); `--plain-registry` runs the console script itself and
reports the clients' side only. Times from the client side are in the detail table:
when each stream read the response, and when its `call.write(ACK)` returned. All clocks are
CLOCK_MONOTONIC, which is system-wide on Linux. Once every client has the change, the
orchestrator also polls the registry's `Status` call until it shows all N streams SYNCED
at the new version (an upper bound, from the API, of the all-ACKed time).

Also: the time to connect all N streams (from "connect" to the last EDS ACK), the
registry's RSS (VmRSS, /proc/<pid>/status) before and after connecting, its CPU time
(/proc/<pid>/stat) from the Apply call until every client has the change, and its CPU by
thread. By default the registry is pinned to CPU 0 and the clients and this process to the
other CPUs (`--no-pin` to turn it off), so that the registry has a core of its own, as it
would on its own machine. Every wait is bounded (`--timeout`), and every process started
here is stopped by its PID on the way out, errors included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import grpc
from _bench import (
    CLOCK_TICK,
    STARTUP_TIMEOUT,
    free_port,
    log_tail,
    port_open,
    proc_cpu_seconds,
    progress,
    rss_kib,
    sail_command,
    stop,
    table,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve()
TOKEN = "bench-registry-token"
SERVICE, SERVICE_PORT = "reviews", 9080
WEIGHTS = ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50})  # alternated, change by change
SETTLE = 0.5  # seconds of quiet between two changes

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


# -- processes -------------------------------------------------------------------------------


def connections(port: int) -> int:
    """Established TCP connections to `port` (the registry's side of them; gRPC listens
    dual-stack, so they show in tcp6)."""
    count = 0
    for table_ in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table_}").read_text().splitlines()[1:]:
                local, _, state = line.split()[1:4]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """CPU seconds of each thread of `pid` so far, summed by thread name (`main` for the
    main thread; gRPC names its C++ threads, e.g. `event_engine`)."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    return out


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Any:
    """Run the block on `cpus` (this thread only): processes started inside inherit them."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# `sail registry` as the console script runs it (`sail.cli.main.main`), with one addition:
# `AdsServer.record`, which the registry calls for every ACK or NACK it reads, also notes
# the time (CLOCK_MONOTONIC), and the list is written to $FANOUT_ACKS when the registry
# exits. That is the moment an ACK reaches the registry's event loop.
REGISTRY_WITH_ACK_TIMES = """
import json, os, sys, time
from sail.xds import server

acks = []
_record = server.AdsServer.record

def record(self, ack, _now=time.monotonic, _add=acks.append):
    _add((_now(), ack.node_id, ack.type_url, ack.version))
    _record(self, ack)

server.AdsServer.record = record
from sail.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    path = os.environ["FANOUT_ACKS"]
    with open(path + ".part", "w") as out:
        json.dump(acks, out)
    os.replace(path + ".part", path)
sys.exit(code)
"""


def start_registry(
    port: int, workdir: Path, cpus: set[int] | None, acks: Path | None,
    stack: contextlib.ExitStack,
) -> subprocess.Popen[bytes]:
    """`sail registry` on `port`; with `acks`, the variant that writes ACK times there."""
    log_path = workdir / f"registry-{port}.log"
    log = stack.enter_context(log_path.open("wb"))
    command = sail_command() if acks is None else [sys.executable, "-c",
                                                   REGISTRY_WITH_ACK_TIMES]
    env = dict(os.environ, FANOUT_ACKS=str(acks or ""))
    with affinity(cpus):
        proc = subprocess.Popen(
            [*command, "registry", "--address", f"127.0.0.1:{port}", "--token", TOKEN],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    stack.callback(stop, proc)
    wait_until(lambda: port_open(port), proc, "sail registry", log_path)
    return proc


# -- config ----------------------------------------------------------------------------------


def reviews_config(weights: dict[str, int]) -> str:
    """A DestinationRule with subsets v1, v2, v3 and a VirtualService splitting `reviews`
    between subsets by `weights` (as in tests/e2e/test_registry.py)."""
    subsets = "\n".join(
        f"  - name: {v}\n    labels: {{version: {v}}}" for v in ("v1", "v2", "v3")
    )
    routes = "\n".join(
        f"    - destination: {{host: {SERVICE}, subset: {v}}}\n      weight: {w}"
        for v, w in weights.items()
    )
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {SERVICE}}}
spec:
  host: {SERVICE}
  subsets:
{subsets}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {SERVICE}}}
spec:
  hosts: [{SERVICE}]
  http:
  - route:
{routes}
"""


def register_workloads(target: str, stack: contextlib.ExitStack) -> None:
    """Five workloads (nothing listens there: the registry does not probe them), kept alive
    by the registrar's heartbeat thread in this process."""
    from sail.registration import Workload
    from sail.registry.remote import RemoteRegistrar

    registrar = RemoteRegistrar(target, TOKEN)
    stack.callback(registrar.close)
    port = 19000
    for service, version in [(SERVICE, "v1"), (SERVICE, "v2"), (SERVICE, "v3"),
                             ("ratings", "v1"), ("details", "v1")]:
        port += 1
        registrar.register(Workload(service=service, address="127.0.0.1", port=port,
                                    labels={"version": version}, service_port=SERVICE_PORT))


# -- the client process ----------------------------------------------------------------------
#
# `registry_fanout.py _client --target T --streams N --per-channel C --prefix P
# --connect-timeout S` opens N ADS streams and talks JSON lines: commands on stdin
# (`connect`, `mark`, `collect`, `stop`), events on stdout (`loaded`, `ready`, `marked`,
# `all`, `collect`). It exits at stdin's EOF.


class _StreamState:
    __slots__ = ("arrival", "baseline", "node_id", "ready", "route_version")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.ready = False  # EDS ACKed: the whole LDS -> RDS -> CDS -> EDS chain is done
        self.route_version = ""  # the last RDS version received
        self.baseline = ""  # the RDS version at the last `mark`
        self.arrival: tuple[float, float] | None = None  # (received, ACK written) after mark


class _Fleet:
    """The streams of one client process and what they saw."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.streams: list[_StreamState] = []
        self.ready = 0
        self.failed: list[str] = []
        self.retries: list[str] = []  # streams that failed while connecting, opened again
        self.all_ready = asyncio.Event()
        self.marked = False
        self.pending = 0
        self.weights: Counter[str] = Counter()
        self.cpu_mark = 0.0
        self.cpu_all: float | None = None
        self.started = time.monotonic()

    def settled(self) -> None:
        if self.ready + len(self.failed) >= len(self.streams):
            self.all_ready.set()

    def on_ready(self) -> None:
        self.ready += 1
        self.settled()

    def on_failed(self, state: _StreamState, error: str) -> None:
        at = time.monotonic() - self.started
        self.failed.append(f"{state.node_id} after {at:.1f} s: {error}")
        self.settled()

    def mark(self) -> None:
        for s in self.streams:
            s.baseline, s.arrival = s.route_version, None
        self.pending = len(self.streams)
        self.weights.clear()
        self.marked = True
        self.cpu_mark, self.cpu_all = time.process_time(), None

    def on_route(
        self, state: _StreamState, version: str, received: float, acked: float, weights: str
    ) -> None:
        state.route_version = version
        if self.marked and state.arrival is None and version != state.baseline:
            state.arrival = (received, acked)
            self.weights[weights] += 1
            self.pending -= 1
            if self.pending == 0:
                self.cpu_all = time.process_time() - self.cpu_mark
                self.emit({"event": "all", "cpu_s": self.cpu_all})

    def collect(self) -> dict[str, Any]:
        got = [s.arrival for s in self.streams if s.arrival is not None]
        return {
            "event": "collect",
            "received": [a[0] for a in got],
            "acked": [a[1] for a in got],
            "missing": len(self.streams) - len(got),
            "weights": dict(self.weights),
            "cpu_s": self.cpu_all if self.cpu_all is not None
            else time.process_time() - self.cpu_mark,
            "failed": self.failed[:5],
        }


def _request(type_url: str, names: list[str], node: Any = None, version: str = "",
             nonce: str = "") -> Any:
    from envoy.service.discovery.v3 import discovery_pb2

    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
    )
    if node is not None:
        request.node.CopyFrom(node)
    return request


def _route_names(response: Any) -> list[str]:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    names = set()
    for packed in response.resources:
        listener = listener_pb2.Listener.FromString(packed.value)
        hcm = hcm_pb2.HttpConnectionManager.FromString(listener.api_listener.api_listener.value)
        if hcm.HasField("rds"):
            names.add(hcm.rds.route_config_name)
    return sorted(names)


def _route_clusters(response: Any) -> tuple[list[str], str]:
    """The clusters the routes name, and their weights as a short text (to check that every
    stream got the same change)."""
    from envoy.config.route.v3 import route_pb2

    clusters: set[str] = set()
    weights: list[str] = []
    for packed in response.resources:
        config = route_pb2.RouteConfiguration.FromString(packed.value)
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                action = route.route
                if action.cluster:
                    clusters.add(action.cluster)
                for wc in action.weighted_clusters.clusters:
                    clusters.add(wc.name)
                    weights.append(f"{wc.name}={wc.weight.value}")
    return sorted(clusters), " ".join(weights)


def _eds_names(response: Any) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2

    names = set()
    for packed in response.resources:
        cluster = cluster_pb2.Cluster.FromString(packed.value)
        if cluster.HasField("eds_cluster_config"):
            names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return sorted(names)


async def _ads_stream(stub: Any, state: _StreamState, fleet: _Fleet) -> None:
    """One ADS stream: LDS -> RDS -> CDS -> EDS, ACKing every response, until it fails."""
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id=state.node_id, cluster="registry-fanout")
    call = stub.StreamAggregatedResources()
    try:
        names: dict[str, list[str]] = {LDS: [SERVICE]}
        await call.write(_request(LDS, [SERVICE], node))
        while True:
            response = await call.read()
            received = time.monotonic()
            if response is grpc.aio.EOF:
                raise ConnectionError("the registry ended the stream")
            type_url = response.type_url
            follow: tuple[str, list[str]] | None = None
            weights = ""
            if type_url == LDS:
                follow = (RDS, _route_names(response))
            elif type_url == RDS:
                clusters, weights = _route_clusters(response)
                follow = (CDS, clusters)
            elif type_url == CDS:
                follow = (EDS, _eds_names(response))
            await call.write(_request(type_url, names.get(type_url, []),
                                      version=response.version_info, nonce=response.nonce))
            acked = time.monotonic()
            if type_url == RDS:
                fleet.on_route(state, response.version_info, received, acked, weights)
            elif type_url == EDS and not state.ready:
                state.ready = True
                fleet.on_ready()
            if follow is not None and follow[1] != names.get(follow[0]):
                names[follow[0]] = follow[1]
                await call.write(_request(*follow))
    finally:
        call.cancel()


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


async def _run_stream(stub: Any, state: _StreamState, fleet: _Fleet, deadline: float) -> None:
    """`_ads_stream`, opened again with backoff (0.1 s doubling up to 2 s, jittered) if it
    fails before its first EDS ACK, as an xDS client would, until `deadline`; a failure
    after that ACK is final."""
    for attempt in itertools.count():
        try:
            await _ads_stream(stub, state, fleet)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = min(2.0, 0.1 * 2**attempt) * (0.5 + random.random())
            if state.ready or time.monotonic() + delay > deadline:
                fleet.on_failed(state, _describe(exc))
                return
            fleet.retries.append(_describe(exc))
            await asyncio.sleep(delay)


async def _client(args: argparse.Namespace) -> None:
    from envoy.service.discovery.v3 import ads_pb2_grpc

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    threading.Thread(target=read_stdin, daemon=True).start()
    fleet = _Fleet(emit)
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    emit({"event": "loaded"})
    try:
        if await commands.get() != "connect":
            return
        started = fleet.started = time.monotonic()
        for first in range(0, args.streams, args.per_channel):
            # A local subchannel pool: each channel gets a connection of its own (gRPC
            # otherwise shares one between channels with the same target and arguments).
            channel = grpc.aio.insecure_channel(
                args.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            channels.append(channel)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            for i in range(first, min(first + args.per_channel, args.streams)):
                state = _StreamState(f"{args.prefix}-{i}")
                fleet.streams.append(state)
                tasks.append(asyncio.create_task(
                    _run_stream(stub, state, fleet, started + args.connect_timeout)
                ))
        await fleet.all_ready.wait()
        emit({"event": "ready", "connect_s": time.monotonic() - started,
              "streams": fleet.ready, "failed": fleet.failed[:5],
              "failed_count": len(fleet.failed), "retries": len(fleet.retries),
              "retry_errors": dict(Counter(fleet.retries).most_common(5)),
              "rss_kib": rss_kib(), "cpu_s": time.process_time()})
        while (command := await commands.get()) not in (None, "stop"):
            if command == "mark":
                fleet.mark()
                emit({"event": "marked"})
            elif command == "collect":
                emit(fleet.collect())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="registry_fanout.py _client")
    parser.add_argument("--target", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--per-channel", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--connect-timeout", type=float, required=True)
    asyncio.run(_client(parser.parse_args(argv)))


# -- the orchestrator's side of a client process ---------------------------------------------


class ClientProc:
    """A client process, its stdout read into a queue by a thread."""

    def __init__(self, args: list[str], log_path: Path, stack: contextlib.ExitStack) -> None:
        self.log_path = log_path
        log = stack.enter_context(log_path.open("wb"))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "_client", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        stack.callback(self.close)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put(None)

    def send(self, command: str) -> None:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()

    def expect(self, event: str, deadline: float) -> dict[str, Any] | None:
        """The next `event` (others are skipped); None once `deadline` passes."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if message is None:
                problem = f"client process exited with status {self.proc.wait(5)}"
                raise RuntimeError("\n    ".join([problem, *log_tail(self.log_path)]))
            if message.get("event") == event:
                return message
        return None

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the client exits at EOF...
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        stop(self.proc)  # ...or is stopped by its PID
        self._reader.join(5)


def each(clients: list[ClientProc], event: str, deadline: float, what: str) -> list[dict[str, Any]]:
    out = []
    for c in clients:
        message = c.expect(event, deadline)
        if message is None:
            raise RuntimeError(f"{what}: a client process did not answer in time")
        out.append(message)
    return out


# -- measuring -------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def synced(status: dict[str, Any], prefix: str) -> int:
    """How many of our streams the registry shows SYNCED at its current version."""
    version = str(status.get("version"))
    return sum(
        1 for c in status.get("clients", [])
        if c["node_id"].startswith(prefix) and c["state"] == "SYNCED" and c["version"] == version
    )


def apply_cost(admin: Any, pid: int, rounds: int = 4) -> float:
    """Registry CPU seconds per Apply with no stream connected (validate + translate + the
    rebuild), averaged over `rounds` weight flips; leaves the first weights applied."""
    cpu0 = proc_cpu_seconds(pid)
    for i in range(rounds):
        admin.apply("reviews.yaml", reviews_config(WEIGHTS[(i + 1) % 2]))
    time.sleep(0.3)  # the rebuild runs just after the call returns
    return (proc_cpu_seconds(pid) - cpu0) / rounds


def spread(sorted_s: list[float], prefix: str) -> dict[str, float | None]:
    """p50, p99 and max of sorted seconds, as `<prefix>_p50_s`..."""
    if not sorted_s:
        return {f"{prefix}_{q}_s": None for q in ("p50", "p99", "max")}
    return {f"{prefix}_p50_s": percentile(sorted_s, 0.50),
            f"{prefix}_p99_s": percentile(sorted_s, 0.99),
            f"{prefix}_max_s": sorted_s[-1]}


def one_change(
    k: int, n: int, admin: Any, registry: subprocess.Popen[bytes], clients: list[ClientProc],
    prefix: str, timeout: float,
) -> dict[str, Any]:
    """Apply weight flip `k` and measure how it reached the `n` streams (the registry's
    side of it is added by `registry_side` once the registry has exited)."""
    deadline = time.monotonic() + timeout
    for c in clients:
        c.send("mark")
    each(clients, "marked", deadline, "mark")
    weights = WEIGHTS[(k + 1) % 2]
    cpu0 = proc_cpu_seconds(registry.pid)
    t0 = time.monotonic()
    admin.apply("reviews.yaml", reviews_config(weights))
    applied = time.monotonic() - t0
    deadline = t0 + timeout
    done = [c.expect("all", deadline) for c in clients]
    clients_done = time.monotonic() - t0
    registry_cpu = proc_cpu_seconds(registry.pid) - cpu0
    # Then ask the registry: the first Status showing every stream SYNCED at the new version.
    status_all: float | None = None
    status_call = 0.0
    version = None
    while time.monotonic() < deadline:
        asked = time.monotonic()
        status = admin.status()
        status_call = time.monotonic() - asked
        version = status.get("version")
        if synced(status, prefix) == n:
            status_all = time.monotonic() - t0
            break
        time.sleep(0.01)
    for c in clients:
        c.send("collect")
    collected = each(clients, "collect", time.monotonic() + timeout, "collect")
    acked = sorted(a - t0 for m in collected for a in m["acked"])
    received = sorted(r - t0 for m in collected for r in m["received"])
    missing = sum(m["missing"] for m in collected)
    seen: Counter[str] = Counter()
    for m in collected:
        seen.update(m["weights"])
    expected = " ".join(f"outbound|{SERVICE_PORT}|{v}|{SERVICE}={w}" for v, w in weights.items())
    result: dict[str, Any] = {
        "weights": weights,
        "version": version,
        "t0": t0,
        "apply_call_s": applied,
        "streams_changed": len(received),
        "missing": missing,
        "wrong_content": sum(count for text, count in seen.items() if text != expected),
        "first_received_s": received[0] if received else None,
        **spread(received, "received"),
        **spread(acked, "ack_written"),
        "clients_done_s": clients_done if all(done) else None,
        "status_shows_all_s": status_all,
        "status_call_s": status_call,
        "registry_cpu_s": registry_cpu,
        "clients_cpu_s": sum(m["cpu_s"] for m in collected),
        # every stream's figures, sorted, for a CDF
        "received_ms": [round(r * 1000, 2) for r in received],
        "ack_written_ms": [round(a * 1000, 2) for a in acked],
    }
    if missing or result["wrong_content"]:
        failed = [f for m in collected for f in m["failed"]]
        print(f"  change {k + 1}: {missing} streams without the change, "
              f"{result['wrong_content']} with other weights {dict(seen)} {failed}",
              file=sys.stderr)
    return result


def registry_side(change: dict[str, Any], acks: list[list[Any]], prefix: str) -> None:
    """Add to `change` when each stream's RDS ACK of its version reached the registry."""
    version = str(change["version"])
    first: dict[str, float] = {}
    for at, node_id, type_url, acked_version in acks:
        if type_url == RDS and acked_version == version and node_id.startswith(prefix):
            first.setdefault(node_id, at)
    times = sorted(at - change["t0"] for at in first.values())
    change.update(spread(times, "registry_ack"), registry_acks=len(times),
                  registry_ack_ms=[round(t * 1000, 2) for t in times])


def measure(n: int, args: argparse.Namespace, cpus: tuple[set[int] | None, set[int] | None],
            workdir: Path) -> dict[str, Any]:
    """One fresh registry, `n` streams, `args.changes` changes."""
    from sail.registry.remote import AdminClient

    registry_cpus, client_cpus = cpus
    procs = args.client_procs or max(1, math.ceil(n / 500))
    prefix = f"fanout{n}-"
    acks_path = None if args.plain_registry else workdir / f"acks-{n}.json"
    with contextlib.ExitStack() as stack:
        port = free_port()
        target = f"127.0.0.1:{port}"
        registry = start_registry(port, workdir, registry_cpus, acks_path, stack)
        register_workloads(target, stack)
        admin = stack.enter_context(AdminClient(target, TOKEN))
        admin.apply("reviews.yaml", reviews_config(WEIGHTS[0]))
        # The registry answers nothing for its first 3 s (registration_grace).
        registry_log = workdir / f"registry-{port}.log"
        wait_until(lambda: int(admin.status().get("version") or 0) > 0, registry,
                   "registry serving config", registry_log)
        apply_cpu = apply_cost(admin, registry.pid)

        shares = [n // procs + (i < n % procs) for i in range(procs)]
        with affinity(client_cpus):
            clients = [
                ClientProc(["--target", target, "--streams", str(share),
                            "--per-channel", str(args.per_channel), "--prefix",
                            f"{prefix}p{i}", "--connect-timeout", str(args.timeout * 0.9)],
                           workdir / f"client-{n}-{i}.log", stack)
                for i, share in enumerate(shares)
            ]
        each(clients, "loaded", time.monotonic() + STARTUP_TIMEOUT, "client start")
        time.sleep(0.5)  # let the registry settle after the applies
        rss_before = rss_kib(registry.pid)
        cpu0, t0 = proc_cpu_seconds(registry.pid), time.monotonic()
        for c in clients:
            c.send("connect")
        ready = each(clients, "ready", t0 + args.timeout, f"connecting {n} streams")
        connect_s = time.monotonic() - t0
        connect_cpu = proc_cpu_seconds(registry.pid) - cpu0
        failed = sum(m["failed_count"] for m in ready)
        if failed:
            examples = [f for m in ready for f in m["failed"]][:3]
            raise RuntimeError(f"{failed} of {n} streams failed to connect, e.g. {examples}")
        wait_until(lambda: synced(admin.status(), prefix) == n, registry,
                   f"registry showing {n} SYNCED streams", registry_log,
                   timeout=args.timeout)
        rss_connected = rss_kib(registry.pid)
        tcp = connections(port)

        changes = []
        threads0 = thread_cpu_seconds(registry.pid)
        for k in range(args.changes):
            progress(f"N={n}: change {k + 1} of {args.changes}")
            changes.append(one_change(k, n, admin, registry, clients, prefix, args.timeout))
            time.sleep(SETTLE)
        progress("")
        threads = thread_cpu_seconds(registry.pid)
        threads.subtract(threads0)
        rss_after = rss_kib(registry.pid)
        for c in clients:
            c.close()
        stop(registry)  # it writes the ACK times as it exits
    if acks_path is not None:
        if not acks_path.exists():
            raise RuntimeError("the registry did not write its ACK times (killed?)")
        acks = json.loads(acks_path.read_text())
        for change in changes:
            registry_side(change, acks, prefix)
    return {
        "streams": n,
        "client_procs": procs,
        "channels": sum(math.ceil(s / args.per_channel) for s in shares),
        "tcp_connections": tcp,
        "connect_s": connect_s,
        "connect_registry_cpu_s": connect_cpu,
        "connect_retries": sum(m["retries"] for m in ready),
        "connect_retry_errors": dict(sum((Counter(m["retry_errors"]) for m in ready),
                                         Counter())),
        "client_rss_kib": [m["rss_kib"] for m in ready],
        "registry_rss_kib": {"before": rss_before, "connected": rss_connected,
                             "after": rss_after},
        "apply_registry_cpu_s": apply_cpu,
        "changes_registry_cpu_by_thread_s": {k: round(v, 2) for k, v in threads.items()},
        "changes": changes,
        "median": medians(changes),
    }


def medians(changes: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in changes[0]:
        if key in ("t0", "version"):
            continue
        values = [c[key] for c in changes if isinstance(c.get(key), (int, float))]
        out[key] = statistics.median(values) if values else None
    return out


# -- report ----------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    side = "registry" if config["registry"] != "plain" else "client (ACK written)"
    parts = [
        f"one weight change (one Apply) reaching N ADS streams, each LDS+RDS+CDS+EDS; "
        f"median of {config['changes']} changes",
        f"time-to-ACK per stream, ms from the Apply call to that stream's ACK of the new "
        f"route reaching the {side}",
        "",
    ]
    key = "registry_ack" if config["registry"] != "plain" else "ack_written"
    rows = [["N", "clients", "connect s", "p50 ms", "p99 ms", "max = all ACKed ms",
             "registry RSS before MiB", "after MiB", "registry CPU s"]]
    for r in results["runs"]:
        m = r["median"]
        rss = r["registry_rss_kib"]
        rows.append([
            f"{r['streams']:,}", f"{r['client_procs']} x {r['channels'] // r['client_procs']}"
            f" x {config['per_channel']}",
            f"{r['connect_s']:.2f}", ms(m[f"{key}_p50_s"]), ms(m[f"{key}_p99_s"]),
            ms(m[f"{key}_max_s"]), mib(rss["before"]), mib(rss["connected"]),
            f"{m['registry_cpu_s']:.2f}",
        ])
    parts.append(table(rows))
    parts += [
        "  clients: processes x channels each x streams per channel; registry CPU: from the "
        "Apply call until every client had the change",
        "",
        "the same changes in detail (median over changes; ms from the Apply call)",
        "",
    ]
    rows = [["N", "Apply call", "1st response", "responses p50", "last response",
             "ACK written p50", "ACK written p99", "Status shows all", "Status call",
             "clients CPU s", "worst p99", "worst max"]]
    for r in results["runs"]:
        m = r["median"]
        rows.append([
            f"{r['streams']:,}", ms(m["apply_call_s"]), ms(m["first_received_s"]),
            ms(m["received_p50_s"]), ms(m["received_max_s"]), ms(m["ack_written_p50_s"]),
            ms(m["ack_written_p99_s"]), ms(m["status_shows_all_s"]), ms(m["status_call_s"]),
            f"{m['clients_cpu_s']:.2f}",
            ms(max(c.get(f"{key}_p99_s") or 0 for c in r["changes"])),
            ms(max(c.get(f"{key}_max_s") or 0 for c in r["changes"])),
        ])
    parts.append(table(rows))
    parts += ["", "setup", ""]
    rows = [["N", "TCP connections", "connect: registry CPU s", "streams refused, retried",
             "registry RSS at end MiB", "client RSS MiB, each",
             "Apply with 0 streams: registry CPU ms"]]
    for r in results["runs"]:
        rows.append([
            f"{r['streams']:,}", str(r["tcp_connections"]), f"{r['connect_registry_cpu_s']:.2f}",
            str(r["connect_retries"]),
            mib(r["registry_rss_kib"]["after"]),
            f"{len(r['client_rss_kib'])} x {mib(statistics.mean(r['client_rss_kib']))}",
            f"{r['apply_registry_cpu_s'] * 1000:.0f}",
        ])
    parts.append(table(rows))
    parts.append("  TCP connections: to the registry's port, the registrar's and this "
                 "process's admin channel included")
    for r in results["runs"]:
        by_thread = ", ".join(f"{name} {cpu:.2f}" for name, cpu in
                              sorted(r["changes_registry_cpu_by_thread_s"].items(),
                                     key=lambda x: -x[1]) if cpu >= 0.01)
        parts.append(f"  N={r['streams']:,}: registry CPU s by thread over all "
                     f"{len(r['changes'])} changes, Status calls included: {by_thread}")
    for r in results["runs"]:
        if r["connect_retries"]:
            kinds = "; ".join(f"{n} x {e}" for e, n in r["connect_retry_errors"].items())
            parts.append(f"  N={r['streams']:,}: streams that failed while connecting and were "
                         f"opened again (with backoff): {kinds}")
    problems = [(r["streams"], k + 1, c) for r in results["runs"]
                for k, c in enumerate(r["changes"]) if c["missing"] or c["wrong_content"]]
    for n, k, c in problems:
        parts.append(f"  N={n} change {k}: {c['missing']} streams never got it, "
                     f"{c['wrong_content']} got other weights")
    load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in
                     zip(results["loadavg_before"], results["loadavg_after"], strict=True))
    parts += ["", f"registry: {config['registry']}", f"pinning: {config['pinning']}",
              f"load average (1, 5, 15 min) before -> after: {load}"]
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,1000",
                        help="comma-separated stream counts (default 100,1000)")
    parser.add_argument("--changes", type=int, default=5,
                        help="config changes measured per stream count (default 5)")
    parser.add_argument("--client-procs", type=int, default=0,
                        help="client processes (default: one per 500 streams)")
    parser.add_argument("--per-channel", type=int, default=50,
                        help="ADS streams per channel, i.e. per HTTP/2 connection (default 50)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds any one wait may take (default 60)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the registry to CPU 0 and the clients to the others")
    parser.add_argument("--plain-registry", action="store_true",
                        help="run the `sail` console script itself: no ACK times from the "
                        "registry, only the clients' figures")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--logs", type=Path,
                        help="keep the registry's and clients' logs in this folder")
    args = parser.parse_args(argv)
    try:
        args.stream_counts = [int(s.replace("_", "")) for s in args.streams.split(",")]
    except ValueError:
        parser.error(f"--streams: expected numbers like 100,1000, got {args.streams!r}")
    if min([*args.stream_counts, args.changes, args.per_channel]) < 1 or args.client_procs < 0:
        parser.error("--streams, --changes and --per-channel must be positive")
    return args


def pinning(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        client_main(argv[1:])
        return
    args = parse_args(argv)
    registry_cpus, client_cpus = pinning(args.no_pin)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "config": {
            "streams": args.stream_counts,
            "changes": args.changes,
            "client_procs": args.client_procs or "one per 500 streams",
            "per_channel": args.per_channel,
            "pinning": "off" if registry_cpus is None else
            f"registry on CPU {sorted(registry_cpus)}, clients and this process on "
            f"{sorted(client_cpus or ())}",
            "registry": "plain" if args.plain_registry else
            "sail.cli.main with AdsServer.record timing each ACK",
        },
        "loadavg_before": os.getloadavg(),
        "runs": [],
    }
    try:
        # This process (and the registrar thread it starts) stays off the registry's CPU.
        with affinity(client_cpus), tempfile.TemporaryDirectory(prefix="sail-fanout-") as tmp:
            workdir = Path(tmp)
            if args.logs:
                workdir = args.logs
                workdir.mkdir(parents=True, exist_ok=True)
            for n in args.stream_counts:
                results["runs"].append(measure(n, args, (registry_cpus, client_cpus), workdir))
    except RuntimeError as exc:  # a process that would not start, a wait that timed out
        raise SystemExit(f"registry_fanout: {exc}") from None
    results["loadavg_after"] = os.getloadavg()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
