"""What does sail's mTLS cost next to sail plaintext, and next to Istio's two mTLS sidecars?

```
python benchmarks/mtls_overhead.py                  # full run (~3 minutes on 2 cores)
python benchmarks/mtls_overhead.py --quick          # a ~20 s smoke run
python benchmarks/mtls_overhead.py --json out.json
```

One upstream app, in its own process: `mesh.http_server(app, mode="PERMISSIVE")` of a mesh
whose workload identity is `spiffe://example.org/ns/default/sa/reviews` (certificate files
as Istio's agent writes them, read by a `file_watcher` provider), serving mTLS and plaintext
on one port. Four clients send `GET /` to it:

* `raw httpx`      - `httpx.Client` straight to the app over plaintext: the floor;
* `sail plaintext` - `mesh.client()` of a mesh fed by xDS, service `reviews-plain` (no
                     transport socket);
* `sail mTLS`      - the same mesh, service `reviews`, whose cluster asks for mTLS (gRFC
                     A29: the `productpage` certificate, the server's SPIFFE ID checked);
* `envoy mTLS x2`  - `httpx.Client` -> Envoy A (client sidecar: plaintext listener, static
                     cluster with an `UpstreamTlsContext` from the same files, SAN checked)
                     -> Envoy B (server sidecar: `DownstreamTlsContext`, client certificate
                     required) -> the app over plaintext: Istio's real path.

Two scenarios: `--requests` (2,000) sequential requests on one client (connections kept
alive), and twice as many with `--concurrency` (16) in flight on one `AsyncClient`. The
clients take turns in blocks (the order shifting every block) and each scenario runs
`--rounds` (5) rounds; the tables show the median round: requests per second, p50 and p99, the
CPU per request of the client process (`time.process_time`), of the server process and of
each Envoy (`/proc/<pid>/stat`), and all of it added up. Then the handshake: `--handshakes`
(300) new connections, each a TCP connect, a TLS handshake with the client certificate and
one `GET` (`Connection: close`), to the sail server (also plaintext, as the floor) and to
Envoy B. Ratios pair the figures of the same round. Every process started here is stopped
by its PID before exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
from http_overhead import HCM, ROUTER, find_envoy, medians

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
TRUST_DOMAIN = "example.org"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/productpage"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/reviews"
SEQUENTIAL_BLOCK = 150  # requests a contender sends before the next one takes its turn
CONCURRENT_BLOCK = 300
HANDSHAKE_BLOCK = 25
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
BODY = b"hello from the upstream\n"
CERT_FILES = ("cert-chain.pem", "key.pem", "root-cert.pem")

RAW, PLAIN, MTLS, ENVOY = "raw httpx", "sail plaintext", "sail mTLS", "envoy mTLS x2"
SERVER, ENVOY_A, ENVOY_B = "server", "envoy A", "envoy B"


# -- the server process ----------------------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Every request gets the same small `200` (with a length, so not chunked)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def serve(bootstrap: Path, port: int) -> None:
    """The server process: a mesh with the `reviews` identity, its HTTP server on `port`
    (PERMISSIVE), "ready" on stdout once listening, until SIGTERM."""
    import sail

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    mesh = sail.Mesh.from_bootstrap(bootstrap)
    try:
        if mesh.wait_identity(10) is None:
            raise SystemExit("server: no workload identity after 10 s")
        server = mesh.http_server(app, port=port, mode="PERMISSIVE", lifespan="off")
        with server:
            print("ready", flush=True)
            while not stopping.wait(1):
                pass
    finally:
        mesh.close()


def start_server(bootstrap: Path, port: int, workdir: Path,
                 stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    log_path = workdir / "server.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(bootstrap), str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack.callback(stop, proc)
    wait_until(lambda: b"ready" in log_path.read_bytes(), proc, "sail server", log_path)
    return proc


# -- certificates and meshes -----------------------------------------------------------------


def issue_files(workdir: Path) -> dict[str, Path]:
    """One CA; the files Istio's agent would write for `productpage` (the client) and
    `reviews` (the server)."""
    from sail.security.ca import CertificateAuthority
    from sail.security.enroll import Enrollment, write_files
    from sail.security.spiffe import SpiffeId

    ca = CertificateAuthority.generate(TRUST_DOMAIN)
    out = {}
    for role, path in (("client", "/ns/default/sa/productpage"),
                       ("server", "/ns/default/sa/reviews")):
        identity = SpiffeId(TRUST_DOMAIN, path)
        enrollment = Enrollment(
            lambda csr, current, identity=identity: ca.sign(csr, identity, 3600)
        )
        enrollment.obtain()
        write_files(workdir / role, enrollment)
        out[role] = workdir / role
    return out


def provider(directory: Path) -> dict[str, Any]:
    return {"default": {"plugin_name": "file_watcher", "config": {
        "certificate_file": str(directory / "cert-chain.pem"),
        "private_key_file": str(directory / "key.pem"),
        "ca_certificate_file": str(directory / "root-cert.pem"),
        "refresh_interval": "600s",
    }}}


# -- envoy -----------------------------------------------------------------------------------


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _common_tls(files: Path, peer_san: str | None) -> dict[str, Any]:
    """Certificate, key and roots from the files (no SDS), and the peer's URI SAN."""
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(files / "root-cert.pem")}}
    if peer_san:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": peer_san}}
        ]
    return {
        "tls_certificates": [{
            "certificate_chain": {"filename": str(files / "cert-chain.pem")},
            "private_key": {"filename": str(files / "key.pem")},
        }],
        "validation_context": validation,
    }


def sidecar_bootstrap(
    name: str, listen_port: int, cluster_port: int, *,
    downstream_tls: dict[str, Any] | None = None, upstream_tls: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A static sidecar: listener (TLS when `downstream_tls`) -> HCM, route `/` -> a STATIC
    cluster of one endpoint (TLS when `upstream_tls`)."""
    chain: dict[str, Any] = {"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": [{
                "name": name, "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name}}],
            }]},
            "http_filters": [{"name": "envoy.filters.http.router",
                              "typed_config": {"@type": ROUTER}}],
        },
    }]}
    if downstream_tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                     "typed_config": {"@type": DOWNSTREAM_TLS, **downstream_tls}}
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(cluster_port)}}]}
        ]},
    }
    if upstream_tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                       "typed_config": {"@type": UPSTREAM_TLS, **upstream_tls}}
    return {
        "admin": {"address": _address(0)},
        "static_resources": {
            "listeners": [{"name": name, "address": _address(listen_port),
                           "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    }


def start_envoy(envoy: str, name: str, bootstrap: dict[str, Any], listen_port: int,
                workdir: Path, stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    """Envoy on `bootstrap` (concurrency 1, its own admin port and log); once /ready says so
    and its listener accepts."""
    config = workdir / f"envoy-{name}.json"
    config.write_text(json.dumps(bootstrap, indent=1))
    admin_path = workdir / f"envoy-{name}-admin-address"
    log_path = workdir / f"envoy-{name}.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        [envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
         "--log-level", "warn", "--admin-address-path", str(admin_path)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack.callback(stop, proc)

    def ready() -> bool:
        address = admin_path.read_text().strip() if admin_path.exists() else ""
        if not address:
            return False
        try:
            return httpx.get(f"http://{address}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, proc, f"envoy {name}", log_path)
    wait_until(lambda: port_open(listen_port), proc, f"envoy {name} listener", log_path)
    return proc


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of sending the request: a URL, how to make its clients, and the processes
    whose CPU counts for it (the server for all, the Envoys for the sidecar path)."""

    name: str
    url: str
    sync_client: Callable[[], httpx.Client]
    async_client: Callable[[], httpx.AsyncClient]
    pids: dict[str, int] = field(default_factory=dict)


class Tally:
    """What one contender measured in one round, added up over its blocks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.latencies: list[int] = []
        self.seconds = 0.0
        self.cpu = 0.0
        self.pids = pids
        self.proc_cpu = dict.fromkeys(pids, 0.0)

    @contextlib.contextmanager
    def block(self) -> Iterator[list[int]]:
        """Time one block of requests; the body appends each latency (ns) to the list."""
        before = {k: proc_cpu_seconds(p) for k, p in self.pids.items()}
        cpu0, start = time.process_time(), time.perf_counter()
        yield self.latencies
        self.seconds += time.perf_counter() - start
        self.cpu += time.process_time() - cpu0
        for k, p in self.pids.items():
            self.proc_cpu[k] += proc_cpu_seconds(p) - before[k]

    def summary(self) -> dict[str, float | None]:
        n = len(self.latencies)
        ordered = sorted(self.latencies)
        out: dict[str, float | None] = {
            "requests": n,
            "rps": n / self.seconds,
            "p50_us": percentile(ordered, 0.50) / 1000,
            "p99_us": percentile(ordered, 0.99) / 1000,
            "cpu_us": self.cpu / n * 1e6,
        }
        for k in (SERVER, ENVOY_A, ENVOY_B):
            out[f"{k} cpu_us"] = self.proc_cpu[k] / n * 1e6 if k in self.proc_cpu else None
        out["total_cpu_us"] = self.cpu / n * 1e6 + sum(self.proc_cpu.values()) / n * 1e6
        return out


def _check(response: httpx.Response) -> None:
    if response.status_code != 200 or response.content != BODY:
        raise RuntimeError(f"{response.request.url}: status {response.status_code}")


def sequential_round(
    contenders: list[Contender], round_: int, requests: int, warmup: int
) -> dict[str, dict[str, float | None]]:
    """Each contender sends `requests` requests one after another on one client, in blocks,
    the contenders taking turns block by block."""
    with contextlib.ExitStack() as stack:
        clients = {c.name: stack.enter_context(c.sync_client()) for c in contenders}
        for c in contenders:
            for _ in range(warmup):
                _check(clients[c.name].get(c.url))
        tallies = {c.name: Tally(c.pids) for c in contenders}
        for b, size in enumerate(blocks(requests, SEQUENTIAL_BLOCK)):
            for c in interleaved(contenders, round_, b):
                client, url = clients[c.name], c.url
                with tallies[c.name].block() as latencies:
                    for _ in range(size):
                        sent = time.perf_counter_ns()
                        response = client.get(url)
                        latencies.append(time.perf_counter_ns() - sent)
                        _check(response)
    return {name: tally.summary() for name, tally in tallies.items()}


async def _burst(client: httpx.AsyncClient, url: str, total: int, concurrency: int,
                 out: list[int]) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            sent = time.perf_counter_ns()
            response = await client.get(url)
            out.append(time.perf_counter_ns() - sent)
            _check(response)

    await asyncio.gather(*(worker(n) for n in shares(total, concurrency)))


async def _concurrent_round(contenders: list[Contender], round_: int, requests: int,
                            warmup: int, concurrency: int) -> dict[str, dict[str, float | None]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {c.name: await stack.enter_async_context(c.async_client())
                   for c in contenders}
        for c in contenders:
            await _burst(clients[c.name], c.url, warmup, concurrency, [])
        tallies = {c.name: Tally(c.pids) for c in contenders}
        for b, size in enumerate(blocks(requests, CONCURRENT_BLOCK)):
            for c in interleaved(contenders, round_, b):
                with tallies[c.name].block() as latencies:
                    await _burst(clients[c.name], c.url, size, concurrency, latencies)
    return {name: tally.summary() for name, tally in tallies.items()}


def concurrent_round(contenders: list[Contender], round_: int, requests: int, warmup: int,
                     concurrency: int) -> dict[str, dict[str, float | None]]:
    """`concurrency` requests in flight on each contender's `AsyncClient`, in blocks."""
    return asyncio.run(_concurrent_round(contenders, round_, requests, warmup, concurrency))


# -- new connections -------------------------------------------------------------------------


@dataclass
class Target:
    """Where new connections go: a port, TLS with the client certificate or not, and the
    process that accepts them."""

    name: str
    port: int
    context: ssl.SSLContext | None
    pid: int


def client_tls(files: Path) -> ssl.SSLContext:
    """The client side of mTLS as a sidecar does it: our certificate, the mesh roots, no
    host name check (the SAN is the SPIFFE ID). No session resumption: every handshake is a
    full one."""
    context = ssl.create_default_context(cafile=str(files / "root-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(files / "cert-chain.pem", files / "key.pem")
    return context


REQUEST = b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n"


def new_connection(target: Target) -> tuple[int, int, str]:
    """Connect (and handshake), send one request, read its whole response: the ns until
    the handshake ended, and until the response did, and the TLS version."""
    start = time.perf_counter_ns()
    sock: socket.socket = socket.create_connection(("127.0.0.1", target.port), timeout=5)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.context is not None:
            sock = target.context.wrap_socket(sock)  # the handshake, client certificate too
        version = "plaintext"
        if isinstance(sock, ssl.SSLSocket):
            version = " ".join(str(part) for part in (sock.cipher() or ("?",))[:2])
        shaken = time.perf_counter_ns()
        sock.sendall(REQUEST)
        data = b""
        while not data.endswith(BODY):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        done = time.perf_counter_ns()
    finally:
        sock.close()
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(BODY):
        raise RuntimeError(f"{target.name}: unexpected answer {data[:80]!r}")
    return shaken - start, done - start, version or "?"


def handshake_round(targets: list[Target], round_: int, count: int) -> dict[str, Any]:
    """`count` new connections per target, the targets taking turns in blocks."""
    shakes: dict[str, list[int]] = {t.name: [] for t in targets}
    totals: dict[str, list[int]] = {t.name: [] for t in targets}
    cpu = dict.fromkeys(shakes, 0.0)
    server_cpu = dict.fromkeys(shakes, 0.0)
    for b, size in enumerate(blocks(count, HANDSHAKE_BLOCK)):
        for t in interleaved(targets, round_, b):
            side0, cpu0 = proc_cpu_seconds(t.pid), time.process_time()
            for _ in range(size):
                shaken, done, _ = new_connection(t)
                shakes[t.name].append(shaken)
                totals[t.name].append(done)
            cpu[t.name] += time.process_time() - cpu0
            server_cpu[t.name] += proc_cpu_seconds(t.pid) - side0
    return {
        t.name: {
            "connections": count,
            "handshake_p50_us": statistics.median(shakes[t.name]) / 1000,
            "request_p50_us": statistics.median(totals[t.name]) / 1000,
            "request_p99_us": percentile(sorted(totals[t.name]), 0.99) / 1000,
            "client_cpu_us": cpu[t.name] / count * 1e6,
            "server_cpu_us": server_cpu[t.name] / count * 1e6,
        }
        for t in targets
    }


# -- report ----------------------------------------------------------------------------------


def ratios(clients: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each a median over rounds of the figures of one round (the contenders of a round ran
    block by block, so pairing them cancels slow drifts)."""
    rounds = {name: entry["rounds"] for name, entry in clients.items()}

    def paired(f: Callable[[dict[str, dict[str, Any]]], float]) -> float:
        n = len(rounds[RAW])
        return statistics.median(f({k: v[i] for k, v in rounds.items()}) for i in range(n))

    mtls_added = paired(lambda r: r[MTLS]["p50_us"] - r[PLAIN]["p50_us"])
    envoy_vs_raw = paired(lambda r: r[ENVOY]["p50_us"] - r[RAW]["p50_us"])
    envoy_vs_plain = paired(lambda r: r[ENVOY]["p50_us"] - r[PLAIN]["p50_us"])
    return {
        "mtls_vs_plain_throughput": paired(lambda r: r[MTLS]["rps"] / r[PLAIN]["rps"]),
        "plain_vs_raw_throughput": paired(lambda r: r[PLAIN]["rps"] / r[RAW]["rps"]),
        "envoy_vs_raw_throughput": paired(lambda r: r[ENVOY]["rps"] / r[RAW]["rps"]),
        "envoy_vs_plain_throughput": paired(lambda r: r[ENVOY]["rps"] / r[PLAIN]["rps"]),
        "mtls_added_p50_us": mtls_added,
        "envoy_added_p50_vs_raw_us": envoy_vs_raw,
        "envoy_added_p50_vs_plain_us": envoy_vs_plain,
        "mtls_added_share_of_envoy_vs_raw": mtls_added / envoy_vs_raw if envoy_vs_raw > 0
        else None,
        "mtls_added_share_of_envoy_vs_plain": mtls_added / envoy_vs_plain
        if envoy_vs_plain > 0 else None,
        "mtls_added_client_cpu_us": paired(lambda r: r[MTLS]["cpu_us"] - r[PLAIN]["cpu_us"]),
        "mtls_added_server_cpu_us": paired(
            lambda r: r[MTLS][f"{SERVER} cpu_us"] - r[PLAIN][f"{SERVER} cpu_us"]),
        "mtls_added_total_cpu_us": paired(
            lambda r: r[MTLS]["total_cpu_us"] - r[PLAIN]["total_cpu_us"]),
        "envoy_added_total_cpu_us": paired(
            lambda r: r[ENVOY]["total_cpu_us"] - r[RAW]["total_cpu_us"]),
    }


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, Any]) -> str:
    parts = []
    for key, data in results["scenarios"].items():
        rows = [["client", "req/s", "p50 µs", "p99 µs", "client CPU/req µs", "server",
                 "envoy A", "envoy B", "total CPU/req µs"]]
        for name, entry in data["clients"].items():
            m = entry["median"]
            rows.append([name, fmt(m["rps"]), fmt(m["p50_us"]), fmt(m["p99_us"]),
                         fmt(m["cpu_us"]), fmt(m[f"{SERVER} cpu_us"]),
                         fmt(m[f"{ENVOY_A} cpu_us"]), fmt(m[f"{ENVOY_B} cpu_us"]),
                         fmt(m["total_cpu_us"])])
        parts.append(f"{data['title']}\n{table(rows)}")
        r = data["ratios"]
        parts.append(
            f"  sail mTLS / sail plaintext throughput {r['mtls_vs_plain_throughput']:.2f}x"
            + (f" (target >= 0.95: {_met(r['mtls_vs_plain_throughput'] >= 0.95)})"
               if key == "sequential" else "")
            + f"; sail plaintext / raw {r['plain_vs_raw_throughput']:.2f}x; "
            f"envoy mTLS x2 / raw {r['envoy_vs_raw_throughput']:.2f}x "
            f"(/ sail plaintext {r['envoy_vs_plain_throughput']:.2f}x)")
        share = r["mtls_added_share_of_envoy_vs_raw"]
        share_plain = r["mtls_added_share_of_envoy_vs_plain"]
        parts.append(
            f"  p50 added: sail mTLS {r['mtls_added_p50_us']:+.0f} µs over sail plaintext; "
            f"envoy mTLS x2 {r['envoy_added_p50_vs_raw_us']:+.0f} µs over raw, "
            f"{r['envoy_added_p50_vs_plain_us']:+.0f} µs over sail plaintext")
        if share is not None and share_plain is not None:
            parts.append(
                f"  sail mTLS's added p50 is {share:.0%} of what the two sidecars add over raw "
                f"({share_plain:.0%} over sail plaintext; target under 20%: "
                f"{_met(max(share, share_plain) < 0.2)})")
        parts.append(
            f"  CPU added per request: sail mTLS {r['mtls_added_total_cpu_us']:+.0f} µs "
            f"(client {r['mtls_added_client_cpu_us']:+.0f}, server "
            f"{r['mtls_added_server_cpu_us']:+.0f}); envoy mTLS x2 "
            f"{r['envoy_added_total_cpu_us']:+.0f} µs over raw (all processes)")
        if data["in_flight"] > 1:
            parts.append("  (16 in flight: the client is CPU-bound, so latency is mostly its "
                         "own queueing; compare req/s and CPU)")
        parts.append("")
    hs = results["handshakes"]
    rows = [["new connection", "handshake p50 µs", "conn+GET p50 µs", "conn+GET p99 µs",
             "client CPU/conn µs", "acceptor CPU/conn µs"]]
    for name, entry in hs["targets"].items():
        m = entry["median"]
        rows.append([name, fmt(m["handshake_p50_us"]), fmt(m["request_p50_us"]),
                     fmt(m["request_p99_us"]), fmt(m["client_cpu_us"]),
                     fmt(m["server_cpu_us"])])
    parts.append(f"{hs['title']}\n{table(rows)}")
    parts.append("  negotiated: " + "; ".join(
        f"{name} {v}" for name, v in results["tls"].items() if v != "plaintext"))
    targets = hs["targets"]
    if all(k in targets for k in ("sail plaintext", "sail mTLS", "envoy B mTLS")):
        sail_m, envoy_m = targets["sail mTLS"]["median"], targets["envoy B mTLS"]["median"]
        plain_m = targets["sail plaintext"]["median"]
        parts.append(
            f"  a new mTLS connection + GET: sail {sail_m['request_p50_us']:,.0f} µs "
            f"(+{sail_m['request_p50_us'] - plain_m['request_p50_us']:,.0f} over plaintext), "
            f"envoy B {envoy_m['request_p50_us']:,.0f} µs; handshake "
            f"{sail_m['handshake_p50_us'] / envoy_m['handshake_p50_us']:.2f}x envoy's, "
            f"acceptor CPU {sail_m['server_cpu_us'] / envoy_m['server_cpu_us']:.2f}x envoy's")
    parts.append("")
    load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in
                     zip(results["loadavg_before"], results["loadavg_after"], strict=True))
    parts.append(f"load average (1, 5, 15 min) before -> after: {load}")
    mem = results["memory"]
    parts.append(f"RSS: sail server {mem['server_kib'] / 1024:.1f} MiB, envoy A "
                 f"{mem['envoy_a_kib'] / 1024:.1f} MiB, envoy B {mem['envoy_b_kib'] / 1024:.1f} "
                 f"MiB, this process {mem['client_kib'] / 1024:.1f} MiB")
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="sequential requests per round (concurrent rounds send 2N)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--handshakes", type=int, default=300,
                        help="new connections per target and round")
    parser.add_argument("--envoy", help="the envoy binary (default: next to python)")
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--serve", nargs=2, metavar=("BOOTSTRAP", "PORT"),
                        help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.rounds, args.handshakes = 300, 50, 2, 50
    if min(args.requests, args.rounds, args.concurrency, args.handshakes) < 1 or \
            args.warmup < 0:
        parser.error("--requests, --rounds, --concurrency and --handshakes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    try:
        run(args)
    except RuntimeError as exc:  # a process that would not start, a request that failed
        raise SystemExit(f"mtls_overhead: {exc}") from None


def run(args: argparse.Namespace) -> None:
    import sail
    from sail import testing

    envoy_bin = find_envoy(args.envoy)
    sequential_n, concurrent_n = args.requests, 2 * args.requests
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "httpx": httpx.__version__,
            "openssl": ssl.OPENSSL_VERSION,
            "envoy": subprocess.run(
                [envoy_bin, "--version"], capture_output=True, text=True, timeout=30,
                check=False).stdout.split("version:")[-1].strip(),
        },
        "config": {
            "sequential_requests": sequential_n, "concurrent_requests": concurrent_n,
            "warmup": args.warmup, "rounds": args.rounds, "concurrency": args.concurrency,
            "handshakes": args.handshakes, "envoy_concurrency": 1,
        },
        "loadavg_before": os.getloadavg(),
        "scenarios": {},
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sail-mtls-")))
        files = issue_files(workdir)
        server_port, a_port, b_port = free_port(), free_port(), free_port()
        resources = testing.service(
            "reviews", {"reviews": [("127.0.0.1", server_port)]},
            transport_socket=testing.upstream_tls(SERVER_ID))
        resources += testing.service(
            "reviews-plain", {"reviews-plain": [("127.0.0.1", server_port)]})
        xds = testing.XdsServer(resources).start()
        stack.callback(xds.close)

        bootstrap = workdir / "server-bootstrap.json"
        bootstrap.write_text(json.dumps(
            xds.bootstrap_json(node_id="reviews", certificate_providers=provider(
                files["server"]))))
        server = start_server(bootstrap, server_port, workdir, stack)
        envoy_b = start_envoy(envoy_bin, "b", sidecar_bootstrap(
            "inbound", b_port, server_port, downstream_tls={
                "require_client_certificate": True,
                "common_tls_context": _common_tls(files["server"], None)}),
            b_port, workdir, stack)
        envoy_a = start_envoy(envoy_bin, "a", sidecar_bootstrap(
            "outbound", a_port, b_port,
            upstream_tls={"common_tls_context": _common_tls(files["client"], SERVER_ID)}),
            a_port, workdir, stack)

        mesh = sail.Mesh.from_bootstrap(
            xds.bootstrap(certificate_providers=provider(files["client"])),
            services=["reviews", "reviews-plain"])
        stack.callback(mesh.close)
        if mesh.wait_identity(10) is None:
            raise RuntimeError("the client mesh has no workload identity after 10 s")

        on_server = {SERVER: server.pid}
        contenders = [
            Contender(RAW, f"http://127.0.0.1:{server_port}/", httpx.Client,
                      httpx.AsyncClient, on_server),
            Contender(PLAIN, "http://reviews-plain/", mesh.client, mesh.async_client,
                      on_server),
            Contender(MTLS, "http://reviews/", mesh.client, mesh.async_client, on_server),
            Contender(ENVOY, f"http://127.0.0.1:{a_port}/", httpx.Client, httpx.AsyncClient,
                      {**on_server, ENVOY_A: envoy_a.pid, ENVOY_B: envoy_b.pid}),
        ]
        with mesh.client() as check:  # the mTLS path is mTLS, the plaintext one is not
            response = check.get("http://reviews/")
            _check(response)
            if response.extensions["network_stream"].get_extra_info("ssl_object") is None:
                raise RuntimeError("sail mTLS: the connection is not TLS")
        scenarios: list[tuple[str, str, int, Callable[[int], dict[str, Any]]]] = [
            ("sequential",
             f"sequential: {sequential_n} requests one after another on one client, kept alive",
             1, lambda r: sequential_round(contenders, r, sequential_n, args.warmup)),
            ("concurrent",
             f"concurrent: {concurrent_n} requests, {args.concurrency} in flight, one "
             "AsyncClient", args.concurrency,
             lambda r: concurrent_round(contenders, r, concurrent_n, 2 * args.warmup,
                                        args.concurrency)),
        ]
        for key, title, in_flight, measure in scenarios:
            runs: dict[str, list[dict[str, float | None]]] = {c.name: [] for c in contenders}
            for r in range(args.rounds):
                progress(f"{key}: round {r + 1} of {args.rounds}")
                for name, summary in measure(r).items():
                    runs[name].append(summary)
            clients = {n: {"median": medians(v), "rounds": v} for n, v in runs.items()}
            results["scenarios"][key] = {
                "title": f"{title} (median of {args.rounds} rounds; CPU µs per request)",
                "in_flight": in_flight, "clients": clients, "ratios": ratios(clients),
            }

        targets = [
            Target("sail plaintext", server_port, None, server.pid),
            Target("sail mTLS", server_port, client_tls(files["client"]), server.pid),
            Target("envoy B mTLS", b_port, client_tls(files["client"]), envoy_b.pid),
        ]
        versions = {t.name: new_connection(t)[2] for t in targets}  # a warm-up, and a check
        if any(v == "plaintext" for n, v in versions.items() if n != "sail plaintext"):
            raise RuntimeError(f"a TLS target answered without TLS: {versions}")
        results["tls"] = versions
        hs_runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for r in range(args.rounds):
            progress(f"new connections: round {r + 1} of {args.rounds}")
            for name, summary in handshake_round(targets, r, args.handshakes).items():
                hs_runs[name].append(summary)
        progress("")
        results["handshakes"] = {
            "title": f"new connections: {args.handshakes} per target and round, each TCP "
                     "connect + TLS handshake with the client certificate (none for "
                     f"plaintext) + one GET, connection: close (median of {args.rounds} rounds)",
            "targets": {n: {"median": medians(v), "rounds": v} for n, v in hs_runs.items()},
        }
        results["memory"] = {
            "server_kib": rss_kib(server.pid), "envoy_a_kib": rss_kib(envoy_a.pid),
            "envoy_b_kib": rss_kib(envoy_b.pid), "client_kib": rss_kib(),
        }
        results["loadavg_after"] = os.getloadavg()

    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
