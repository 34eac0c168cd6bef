"""What does sail's gRPC channel add to a unary call, next to plain grpcio and next to
grpcio's own xDS client?

```
python benchmarks/grpc_overhead.py                  # full run (~2 minutes on 2 cores)
python benchmarks/grpc_overhead.py --quick          # a smoke run (a few seconds)
python benchmarks/grpc_overhead.py --calls 5000 --rounds 7 --json out.json --profile
```

One run, one gRPC server, three processes:

* **the server**: a plain grpcio server (`grpc.server` with a thread pool, or `--server aio`)
  with one generic unary method, `/bench.Bench/Echo`, bytes in and the same bytes out (no
  protobuf), on 127.0.0.1, in its own process (this script's `_server` subcommand). It
  registers itself with the registry as a workload of service `bench`, service port 50051,
  through `RemoteRegistrar`, as a real workload does;
* **the registry**: `sail registry --address 127.0.0.1:<port> --token ...`, the console
  script, in its own process: the xDS server both xDS clients below follow;
* **this process**, the client, with three contenders calling the same server:
  * `raw grpcio`  - `grpc.insecure_channel("127.0.0.1:<port>")`: the floor;
  * `sail`        - `mesh.grpc_channel("bench:50051")` of `sail.Mesh.from_bootstrap(...)`
                    pointed at the registry;
  * `native xds`  - `grpc.insecure_channel("xds:///bench:50051")`, grpcio's own xDS client
                    (GRPC_XDS_BOOTSTRAP names a bootstrap for the same registry).
  and the same three on grpc.aio: `grpc.aio.insecure_channel`, `mesh.aio_grpc_channel` and
  `grpc.aio.insecure_channel("xds:///...")` (left out, with a note, if it does not work).

Every channel gets its own connection (`grpc.use_local_subchannel_pool`; otherwise grpcio
would share one TCP connection between channels to the same address). Channels are made
once and kept; the first call of each (`wait_for_ready`) waits out discovery, then each
round warms every contender up again before measuring.

Four scenarios: sync sequential (`--calls` calls one after another from one thread), sync
concurrent (`--threads` 8 threads sharing one channel, 2x the calls), asyncio sequential
(one coroutine), asyncio concurrent (`--in-flight` 32 coroutines on one channel, 2x the
calls). The machine is small and shared, so the contenders take turns in blocks of a few
hundred calls, the order shifting every block and every round, and each scenario runs
`--rounds` rounds; tables show the median round. For each contender: calls per second
(wall), p50/p99 latency of a call, the CPU time of this process per call
(`time.process_time`, all threads; steadier than wall time on a noisy VM), how busy that
made the client (calls/s x CPU/call, as a share of one core) and the server's CPU per call
(`/proc/<pid>/stat`, a sanity check: it should not depend on the client). sail's ratios to
raw grpcio and to native xDS pair the figures of the same round. Nothing is asserted.
Every process started here is stopped by its PID before exit.

`--profile` then looks at where sail's time goes: the sync and asyncio sequential loops
under cProfile next to raw grpcio (Python function calls, event-loop iterations and tasks
per call), and sail's own per-call work with the endpoint's grpcio call replaced by a stub,
timed in a hot loop and right after a real call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from _bench import (
    blocks,
    fmt,
    free_port,
    interleaved,
    percentile,
    port_open,
    proc_cpu_seconds,
    progress,
    sail_command,
    shares,
    stop,
    table,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve()
TOKEN = "bench-grpc-token"
SERVICE = "bench"
SERVICE_PORT = 50051
TARGET = f"{SERVICE}:{SERVICE_PORT}"
METHOD = "/bench.Bench/Echo"
PAYLOAD = b"sail-benchmark-payload-" + b"x" * 41  # 64 bytes
SEQUENTIAL_BLOCK = 250  # calls a contender makes before the next one takes its turn
CONCURRENT_BLOCK = 800
# Each channel its own connection (grpcio shares subchannels between channels otherwise).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
FIRST_CALL_TIMEOUT = 30.0


# -- the server process ----------------------------------------------------------------------
#
# `grpc_overhead.py _server --port P --registry HOST:PORT --token T [--kind sync|aio]`
# serves /bench.Bench/Echo on 127.0.0.1:P, registers itself as a workload of `bench`,
# prints `ready`, and on SIGTERM deregisters and stops.


def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _aio_echo(request: bytes, context: Any) -> bytes:
    return request


def server_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpc_overhead.py _server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--kind", choices=("sync", "aio"), default="sync")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)

    from sail.registration import Workload
    from sail.registry.remote import RemoteRegistrar

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    workload = Workload(service=SERVICE, address="127.0.0.1", port=args.port,
                        labels={"version": "v1"}, service_port=SERVICE_PORT)
    registrar = RemoteRegistrar(args.registry, args.token, heartbeat_interval=1.0, ttl=5.0)
    try:
        if args.kind == "aio":
            return asyncio.run(_serve_aio(args.port, registrar, workload, stopping))
        handler = grpc.method_handlers_generic_handler(
            "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        server = grpc.server(ThreadPoolExecutor(max_workers=args.workers))
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(f"127.0.0.1:{args.port}") == 0:
            print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
            return 1
        server.start()
        try:
            registrar.register(workload)
            print("ready", flush=True)
            while not stopping.wait(0.2):
                pass
            registrar.deregister(workload)
        finally:
            server.stop(grace=1.0).wait(2.0)
        return 0
    finally:
        registrar.close()


async def _serve_aio(
    port: int, registrar: Any, workload: Any, stopping: threading.Event
) -> int:
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(_aio_echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    await server.start()
    try:
        registrar.register(workload)
        print("ready", flush=True)
        while not stopping.is_set():
            await asyncio.sleep(0.2)
        registrar.deregister(workload)
    finally:
        await server.stop(1.0)
    return 0


# -- processes -------------------------------------------------------------------------------


def start_registry(port: int, workdir: Path, stack: contextlib.ExitStack
                   ) -> subprocess.Popen[bytes]:
    log_path = workdir / "registry.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        [*sail_command(), "registry", "--address", f"127.0.0.1:{port}", "--token", TOKEN],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack.callback(stop, proc)
    wait_until(lambda: port_open(port), proc, "sail registry", log_path)
    return proc


def start_server(port: int, registry: str, kind: str, workdir: Path,
                 stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    log_path = workdir / "server.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "_server", "--port", str(port), "--registry", registry,
         "--token", TOKEN, "--kind", kind],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack.callback(stop, proc)
    wait_until(lambda: "ready" in log_path.read_text(errors="replace").split(), proc,
               "grpc server", log_path)
    return proc


def wait_registry_serving(admin: Any, registry: subprocess.Popen[bytes], log: Path) -> None:
    """Until the registry serves config (after its 3 s registration grace) and has the
    server as a healthy workload of `bench`."""

    def serving() -> bool:
        status = admin.status()
        return int(status.get("version") or 0) > 0 and any(
            w["service"] == SERVICE and w["health"] == "HEALTHY" for w in status["workloads"]
        )

    wait_until(serving, registry, "registry serving `bench`", log)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of making the call: a name and the channel it goes through."""

    name: str
    channel: Any
    call: Any = None  # the unary-unary multicallable on `channel`


@dataclass
class Tally:
    """What one contender measured in one round, added up over its blocks."""

    server_pid: int
    latencies: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cpu: float = 0.0
    server_cpu: float = 0.0

    @contextlib.contextmanager
    def block(self) -> Iterator[list[int]]:
        """Time one block of calls; the body appends each latency (ns) to the list."""
        server0 = proc_cpu_seconds(self.server_pid)
        cpu0, start = time.process_time(), time.perf_counter()
        yield self.latencies
        self.seconds += time.perf_counter() - start
        self.cpu += time.process_time() - cpu0
        self.server_cpu += proc_cpu_seconds(self.server_pid) - server0

    def summary(self) -> dict[str, float]:
        n = len(self.latencies)
        ordered = sorted(self.latencies)
        return {
            "calls": n,
            "calls_per_s": n / self.seconds,
            "p50_us": percentile(ordered, 0.50) / 1000,
            "p99_us": percentile(ordered, 0.99) / 1000,
            "cpu_us": self.cpu / n * 1e6,
            "server_cpu_us": self.server_cpu / n * 1e6,
        }


class CallFailed(RuntimeError):
    pass


def _check(reply: bytes) -> None:
    if reply != PAYLOAD:
        raise CallFailed(f"unexpected reply {reply[:40]!r}")


def sync_calls(call: Any, n: int, out: list[int]) -> None:
    """`n` calls one after another, each latency (ns) appended to `out`."""
    clock = time.perf_counter_ns
    for _ in range(n):
        sent = clock()
        reply = call(PAYLOAD)
        out.append(clock() - sent)
        _check(reply)


async def aio_calls(call: Any, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        sent = clock()
        reply = await call(PAYLOAD)
        out.append(clock() - sent)
        _check(reply)


@dataclass
class Scenario:
    key: str
    title: str
    calls: int
    block: int
    in_flight: int


def sync_round(
    scenario: Scenario, contenders: list[Contender], round_: int, warmup: int,
    pool: ThreadPoolExecutor, server_pid: int,
) -> dict[str, dict[str, float]]:
    """One round: each contender makes `scenario.calls` calls, in blocks, the contenders
    taking turns block by block; concurrent blocks split over the pool's threads."""
    threads = scenario.in_flight

    def burst(call: Any, n: int, out: list[int]) -> None:
        if threads == 1:
            sync_calls(call, n, out)
            return
        for future in [pool.submit(sync_calls, call, k, out) for k in shares(n, threads)]:
            future.result()

    for c in contenders:
        burst(c.call, warmup, [])
    tallies = {c.name: Tally(server_pid) for c in contenders}
    for b, size in enumerate(blocks(scenario.calls, scenario.block)):
        for c in interleaved(contenders, round_, b):
            with tallies[c.name].block() as latencies:
                burst(c.call, size, latencies)
    return {name: tally.summary() for name, tally in tallies.items()}


async def aio_round(
    scenario: Scenario, contenders: list[Contender], round_: int, warmup: int, server_pid: int,
) -> dict[str, dict[str, float]]:
    """`sync_round` for grpc.aio: concurrent blocks are `in_flight` coroutines, each making
    its share of the calls one after another."""
    in_flight = scenario.in_flight

    async def burst(call: Any, n: int, out: list[int]) -> None:
        if in_flight == 1:
            await aio_calls(call, n, out)
            return
        await asyncio.gather(*(aio_calls(call, k, out) for k in shares(n, in_flight)))

    for c in contenders:
        await burst(c.call, warmup, [])
    tallies = {c.name: Tally(server_pid) for c in contenders}
    for b, size in enumerate(blocks(scenario.calls, scenario.block)):
        for c in interleaved(contenders, round_, b):
            with tallies[c.name].block() as latencies:
                await burst(c.call, size, latencies)
    return {name: tally.summary() for name, tally in tallies.items()}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def ratios(clients: dict[str, dict[str, Any]], base: str) -> dict[str, float] | None:
    """sail against `base`, each a median over rounds of the figures of one round (the
    contenders of a round ran turn by turn, so pairing them cancels slow drifts)."""
    if base not in clients or "sail" not in clients:
        return None
    pairs = list(zip(clients["sail"]["rounds"], clients[base]["rounds"], strict=True))

    def paired(f: Callable[[dict[str, float], dict[str, float]], float]) -> float:
        return statistics.median(f(s, b) for s, b in pairs)

    return {
        "throughput": paired(lambda s, b: s["calls_per_s"] / b["calls_per_s"]),
        "cpu": paired(lambda s, b: s["cpu_us"] / b["cpu_us"]),
        "added_cpu_us": paired(lambda s, b: s["cpu_us"] - b["cpu_us"]),
        "added_p50_us": paired(lambda s, b: s["p50_us"] - b["p50_us"]),
    }


def summarize(scenario: Scenario, rounds: int,
              runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    clients = {n: {"median": medians(v), "rounds": v} for n, v in runs.items()}
    return {
        "title": f"{scenario.title} (median of {rounds} rounds)",
        "in_flight": scenario.in_flight,
        "clients": clients,
        "sail_vs_raw": ratios(clients, "raw grpcio"),
        "sail_vs_native": ratios(clients, "native xds"),
        "native_vs_raw": (
            {"throughput": statistics.median(
                n["calls_per_s"] / r["calls_per_s"] for n, r in zip(
                    clients["native xds"]["rounds"], clients["raw grpcio"]["rounds"],
                    strict=True))}
            if "native xds" in clients else None
        ),
    }


# -- the contenders --------------------------------------------------------------------------


def first_call(c: Contender) -> float:
    """The first call (waits out discovery and the connection): its seconds."""
    start = time.perf_counter()
    try:
        _check(c.call(PAYLOAD, timeout=FIRST_CALL_TIMEOUT, wait_for_ready=True))
    except grpc.RpcError as exc:
        raise CallFailed(f"{c.name}: first call failed: {exc}") from None
    return time.perf_counter() - start


async def aio_first_call(c: Contender) -> float:
    start = time.perf_counter()
    _check(await c.call(PAYLOAD, timeout=FIRST_CALL_TIMEOUT, wait_for_ready=True))
    return time.perf_counter() - start


def sync_contenders(mesh: Any, direct: str, stack: contextlib.ExitStack) -> list[Contender]:
    contenders = [
        Contender("raw grpcio", grpc.insecure_channel(direct, CHANNEL_OPTIONS)),
        Contender("sail", mesh.grpc_channel(TARGET, options=CHANNEL_OPTIONS)),
        Contender("native xds", grpc.insecure_channel(f"xds:///{TARGET}", CHANNEL_OPTIONS)),
    ]
    for c in contenders:
        stack.callback(c.channel.close)
        c.call = c.channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
    return contenders


async def aio_contenders(
    mesh: Any, direct: str, stack: contextlib.AsyncExitStack, notes: list[str],
    first: dict[str, float],
) -> list[Contender]:
    contenders = [
        Contender("raw grpcio", grpc.aio.insecure_channel(direct, CHANNEL_OPTIONS)),
        Contender("sail", mesh.aio_grpc_channel(TARGET, options=CHANNEL_OPTIONS)),
        Contender("native xds",
                  grpc.aio.insecure_channel(f"xds:///{TARGET}", CHANNEL_OPTIONS)),
    ]
    working = []
    for c in contenders:
        stack.push_async_callback(c.channel.close)
        c.call = c.channel.unary_unary(METHOD)
        try:
            first[c.name] = await aio_first_call(c)
        except (grpc.RpcError, CallFailed) as exc:
            if c.name != "native xds":
                raise CallFailed(f"asyncio {c.name}: first call failed: {exc}") from None
            notes.append(f"asyncio native xds left out: its first call failed: {exc}")
            continue
        working.append(c)
    return working


# -- profile ---------------------------------------------------------------------------------


def _profiled(loop: Callable[[], Any]) -> tuple[Any, float]:
    """`loop()` under cProfile: its stats and its wall seconds."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    loop()
    profiler.disable()
    return pstats.Stats(profiler), time.perf_counter() - start


def _ncalls(stats: Any, function: str) -> int:
    """How many times functions named `function` ran (C methods included)."""
    return sum(v[1] for (_, _, name), v in stats.stats.items()
               if name == function or f"'{function}'" in name)


def _sail_share(stats: Any) -> float:
    """Seconds spent in sail's own functions (their own time, not their callees')."""
    return float(sum(
        v[2] for (filename, _, _), v in stats.stats.items()
        if f"{os.sep}sail{os.sep}" in filename
    ))


def _stub(request: Any, *args: Any) -> Any:
    return request


def profile_sync(contenders: list[Contender], calls: int, top: int = 20) -> str:
    """Where the sync sail channel's time goes, next to raw grpcio:

    * the real sequential loop under cProfile (Python function calls per call, and the time
      in sail's own functions);
    * sail's per-call work alone: the sail channel with its endpoint's inner grpcio
      multicallable replaced by a function that returns at once (sail's internals: skipped if
      they have changed), timed in a hot loop and right after a real raw call (as in real
      use, with the caches and branch predictors the call left), then under cProfile."""
    import io
    import timeit

    out = io.StringIO()
    by_name = {c.name: c for c in contenders}
    out.write(f"sync, sequential, {calls} calls under cProfile:\n")
    for name in ("raw grpcio", "sail"):
        call = by_name[name].call
        sync_calls(call, 200, [])
        stats, seconds = _profiled(lambda call=call: sync_calls(call, calls, []))
        n_calls = sum(v[1] for v in stats.stats.values())
        out.write(f"  {name}: {seconds / calls * 1e6:.0f} µs per call (wall, profiled), "
                  f"{n_calls / calls:.0f} Python function calls per call, "
                  f"{_sail_share(stats) / calls * 1e6:.1f} µs (profiled) in sail's own functions\n")

    sail_c, raw_call = by_name["sail"], by_name["raw grpcio"].call
    try:
        sub = next(iter(sail_c.channel._subchannels.values()))
        real = sub.methods[sail_c.call]
    except (AttributeError, KeyError, StopIteration):
        out.write("  (sail's channel internals have changed: no stub measurement)\n")
        return out.getvalue()
    sub.methods[sail_c.call] = _stub
    try:
        stub_call = sail_c.call
        hot = min(timeit.repeat(lambda: stub_call(PAYLOAD), number=20_000, repeat=5))
        direct = min(timeit.repeat(lambda: _stub(PAYLOAD, None, None, None, None, None),
                                   number=20_000, repeat=5))
        after: dict[str, list[float]] = {"raw call + stub": [], "raw call + sail over stub": []}
        for r in range(10):
            order = list(after) if r % 2 == 0 else list(after)[::-1]
            for key in order:
                then = time.process_time()
                if key == "raw call + stub":
                    for _ in range(500):
                        raw_call(PAYLOAD)
                        _stub(PAYLOAD, None, None, None, None, None)
                else:
                    for _ in range(500):
                        raw_call(PAYLOAD)
                        stub_call(PAYLOAD)
                after[key].append((time.process_time() - then) / 500)
        cold = (statistics.median(after["raw call + sail over stub"])
                - statistics.median(after["raw call + stub"]))
        out.write(
            f"\nsail's own per-call work (the channel over a stub inner call):\n"
            f"  hot loop: {(hot - direct) / 20_000 * 1e6:.1f} µs per call; right after a real "
            f"call (CPU, median of 10 x 500): {cold * 1e6:+.0f} µs per call\n"
        )
        stats, _ = _profiled(lambda: [stub_call(PAYLOAD) for _ in range(20_000)])
        n_calls = sum(v[1] for v in stats.stats.values())
        out.write(f"  {n_calls / 20_000:.0f} Python function calls per call; cProfile of "
                  "20,000 calls over the stub, by own time:\n")
        stats.stream = out
        stats.sort_stats("tottime").print_stats(top)
    finally:
        sub.methods[sail_c.call] = real
    return out.getvalue()


async def profile_aio(contenders: list[Contender], calls: int, top: int = 15) -> str:
    """The asyncio sequential loop under cProfile, raw grpcio against sail: Python function
    calls, event-loop iterations (`_run_once`) and tasks per call."""
    import cProfile
    import io
    import pstats

    out = io.StringIO()
    out.write(f"asyncio, sequential, {calls} calls under cProfile:\n")
    last = None
    for c in contenders:
        if c.name == "native xds":
            continue
        await aio_calls(c.call, 200, [])
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        await aio_calls(c.call, calls, [])
        profiler.disable()
        seconds = time.perf_counter() - start
        stats = pstats.Stats(profiler, stream=out)
        n_calls = sum(v[1] for v in stats.stats.values())
        out.write(
            f"  {c.name}: {seconds / calls * 1e6:.0f} µs per call (wall, profiled), "
            f"{n_calls / calls:.0f} Python function calls, "
            f"{_ncalls(stats, '_run_once') / calls:.1f} event-loop iterations, "
            f"{_ncalls(stats, 'create_task') / calls:.1f} tasks, "
            f"{_ncalls(stats, 'poll') / calls:.1f} epoll calls per call; "
            f"{_sail_share(stats) / calls * 1e6:.1f} µs (profiled) in sail's own functions\n"
        )
        last = stats
    if last is not None:
        out.write("\n  sail, by own time:\n")
        last.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- report ----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    parts = [f"xDS server: {results['xds_server']}; server: {results['config']['server']}",
             ""]
    summary = [["scenario", "sail/raw calls/s", "sail/native calls/s", "native/raw calls/s",
                "sail/raw CPU", "sail/native CPU", "sail CPU vs raw µs/call"]]
    for key, data in results["scenarios"].items():
        rows = [["contender", "calls/s", "p50 µs", "p99 µs", "CPU/call µs", "client busy",
                 "server CPU/call µs"]]
        for name, entry in data["clients"].items():
            m = entry["median"]
            busy = m["calls_per_s"] * m["cpu_us"] / 1e6
            rows.append([name, fmt(m["calls_per_s"]), fmt(m["p50_us"]), fmt(m["p99_us"]),
                         fmt(m["cpu_us"]), f"{busy:.0%}", fmt(m["server_cpu_us"])])
        parts.append(f"{data['title']}\n{table(rows)}")
        raw, native = data["sail_vs_raw"], data["sail_vs_native"]
        line = (f"  sail: calls/s {raw['throughput']:.2f}x raw, CPU/call {raw['cpu']:.2f}x raw "
                f"({raw['added_cpu_us']:+.0f} µs), p50 {raw['added_p50_us']:+.0f} µs")
        if native is not None:
            line += (f"; calls/s {native['throughput']:.2f}x native xds, CPU/call "
                     f"{native['cpu']:.2f}x native ({native['added_cpu_us']:+.0f} µs)")
        parts += [line, ""]
        nvr = data["native_vs_raw"]
        summary.append([
            key, f"{raw['throughput']:.2f}",
            "-" if native is None else f"{native['throughput']:.2f}",
            "-" if nvr is None else f"{nvr['throughput']:.2f}",
            f"{raw['cpu']:.2f}", "-" if native is None else f"{native['cpu']:.2f}",
            f"{raw['added_cpu_us']:+.0f}",
        ])
    parts.append("summary (paired per round, median over rounds; targets, not asserted: "
                 "sail/raw calls/s >= 0.90, sail/native within 10%)")
    parts.append(table(summary))
    parts.append("")
    first = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results["first_call_s"].items())
    parts.append(f"first call (discovery + connect): {first}")
    for note in results["notes"]:
        parts.append(f"note: {note}")
    load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in
                     zip(results["loadavg_before"], results["loadavg_after"], strict=True))
    parts.append(f"registry CPU while measuring: {results['registry_cpu_s']:.2f} s; "
                 f"load average (1, 5, 15 min) before -> after: {load}; "
                 f"wall time {results['wall_s']:.0f} s")
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000,
                        help="sequential calls per contender and round (concurrent: 2x)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario")
    parser.add_argument("--warmup", type=int, default=100,
                        help="calls per contender before each round (concurrent: 2x)")
    parser.add_argument("--threads", type=int, default=8,
                        help="threads sharing one channel, sync concurrent scenario")
    parser.add_argument("--in-flight", type=int, default=32,
                        help="coroutines sharing one channel, asyncio concurrent scenario")
    parser.add_argument("--server", choices=("sync", "aio"), default="sync",
                        help="the grpcio server: thread pool (default) or grpc.aio")
    parser.add_argument("--no-aio", action="store_true", help="skip the asyncio scenarios")
    parser.add_argument("--quick", action="store_true", help="200 calls, 2 rounds")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, cProfile the sail channel's sequential loop")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds, args.warmup = 200, 2, 20
    if min(args.calls, args.rounds, args.threads, args.in_flight) < 1 or args.warmup < 0:
        parser.error("--calls, --rounds, --threads and --in-flight must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_server"]:
        sys.exit(server_main(argv[1:]))
    args = parse_args(argv)
    try:
        run(args)
    except (RuntimeError, grpc.RpcError) as exc:  # a process that would not start, a call
        raise SystemExit(f"grpc_overhead: {exc}") from None


def run(args: argparse.Namespace) -> None:
    import sail
    from sail.bootstrap import parse_bootstrap
    from sail.registry.remote import AdminClient

    started = time.monotonic()
    n = args.calls
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "config": {"calls": n, "rounds": args.rounds, "warmup": args.warmup,
                   "threads": args.threads, "in_flight": args.in_flight,
                   "server": "grpc.server, thread pool of 16 (in its own process)"
                   if args.server == "sync" else "grpc.aio.server (in its own process)"},
        "loadavg_before": os.getloadavg(),
        "scenarios": {},
        "first_call_s": {},
        "notes": [],
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sail-bench-")))
        registry_port, server_port = free_port(), free_port()
        registry_address = f"127.0.0.1:{registry_port}"
        progress("starting the registry and the server")
        registry = start_registry(registry_port, workdir, stack)
        server = start_server(server_port, registry_address, args.server, workdir, stack)
        admin = stack.enter_context(AdminClient(registry_address, TOKEN))
        wait_registry_serving(admin, registry, workdir / "registry.log")
        results["xds_server"] = (
            f"`sail registry` (console script, own process, {registry_address}); the "
            f"server registered as a workload of `{SERVICE}` with service_port {SERVICE_PORT}"
        )

        def bootstrap(node_id: str) -> dict[str, Any]:
            return {
                "xds_servers": [{"server_uri": registry_address,
                                 "channel_creds": [{"type": "insecure"}],
                                 "server_features": ["xds_v3"]}],
                "node": {"id": node_id, "cluster": "grpc-overhead"},
            }

        # grpcio reads GRPC_XDS_BOOTSTRAP when it makes its first xds channel.
        grpc_bootstrap = workdir / "grpc-bootstrap.json"
        grpc_bootstrap.write_text(json.dumps(bootstrap("bench-native-xds")))
        os.environ["GRPC_XDS_BOOTSTRAP"] = str(grpc_bootstrap)
        mesh = sail.Mesh.from_bootstrap(parse_bootstrap(bootstrap("bench-sail")))
        stack.callback(mesh.close)
        direct = f"127.0.0.1:{server_port}"

        sync_scenarios = [
            Scenario("sync sequential",
                     f"sync sequential: {n} calls one after another from one thread", n,
                     SEQUENTIAL_BLOCK, 1),
            Scenario("sync concurrent",
                     f"sync concurrent: {2 * n} calls from {args.threads} threads sharing "
                     "one channel", 2 * n, CONCURRENT_BLOCK, args.threads),
        ]
        aio_scenarios = [
            Scenario("aio sequential",
                     f"asyncio sequential: {n} calls one after another from one coroutine",
                     n, SEQUENTIAL_BLOCK, 1),
            Scenario("aio concurrent",
                     f"asyncio concurrent: {2 * n} calls, {args.in_flight} in flight on one "
                     "channel", 2 * n, CONCURRENT_BLOCK, args.in_flight),
        ]

        registry_cpu0 = proc_cpu_seconds(registry.pid)
        with contextlib.ExitStack() as channels:
            contenders = sync_contenders(mesh, direct, channels)
            for c in contenders:
                results["first_call_s"][c.name] = first_call(c)
            pool = channels.enter_context(ThreadPoolExecutor(args.threads))
            for scenario in sync_scenarios:
                runs: dict[str, list[dict[str, float]]] = {c.name: [] for c in contenders}
                for r in range(args.rounds):
                    progress(f"{scenario.key}: round {r + 1} of {args.rounds}")
                    warmup = args.warmup * (1 if scenario.in_flight == 1 else 2)
                    for name, figures in sync_round(scenario, contenders, r, warmup, pool,
                                                    server.pid).items():
                        runs[name].append(figures)
                results["scenarios"][scenario.key] = summarize(scenario, args.rounds, runs)
            if args.profile:
                progress("profiling")
                results["profile"] = profile_sync(contenders, n)

        if not args.no_aio:

            async def aio_part() -> None:
                async with contextlib.AsyncExitStack() as astack:
                    first: dict[str, float] = {}
                    contenders = await aio_contenders(mesh, direct, astack, results["notes"],
                                                      first)
                    results["first_call_s"].update({f"aio {k}": v for k, v in first.items()})
                    for scenario in aio_scenarios:
                        runs: dict[str, list[dict[str, float]]] = {
                            c.name: [] for c in contenders
                        }
                        for r in range(args.rounds):
                            progress(f"{scenario.key}: round {r + 1} of {args.rounds}")
                            warmup = args.warmup * (1 if scenario.in_flight == 1 else 2)
                            round_ = await aio_round(scenario, contenders, r, warmup,
                                                     server.pid)
                            for name, figures in round_.items():
                                runs[name].append(figures)
                        results["scenarios"][scenario.key] = summarize(
                            scenario, args.rounds, runs
                        )
                    if args.profile:
                        progress("profiling asyncio")
                        results["profile"] += "\n" + await profile_aio(contenders, n)

            # One event loop for all of it: grpc.aio's poller binds to the first loop.
            asyncio.run(aio_part())
        results["registry_cpu_s"] = proc_cpu_seconds(registry.pid) - registry_cpu0
        progress("")
    results["loadavg_after"] = os.getloadavg()
    results["wall_s"] = time.monotonic() - started

    print(report(results))
    if args.profile:
        print("\n" + results["profile"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
