"""`make demo`: a BookInfo-like mesh on `sail registry`, live.

It starts `sail registry` and six workloads, each its own process that registers itself
(productpage, details, reviews v1/v2/v3, ratings; see bookinfo.py), then sends steady
traffic to `http://productpage/productpage` through a sail client, one request in five as
`end-user: jason`. Once a second it prints the requests each service served, how reviews'
traffic splits between versions (jason's apart), and the registry's version with how many
xDS clients have ACKed everything it sent them (SYNCED, as `sail status` says). Meanwhile
it applies reviews' routing to the registry step by step, as `sail apply` would:

    no config (round robin) → v1 90% / v2 10% → 50/50 → v3 only → end-user: jason → v2

and the split follows within a second, with no failed request. It stops by itself after
the last step (about 35 s), or on Ctrl-C, stopping every process it started.

    python examples/demo/run.py [--port REGISTRY_PORT] [--seconds-per-step N]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from bookinfo import bootstrap  # the services' module, beside this file

import sail
from sail.registry.remote import AdminClient

HERE = Path(__file__).resolve().parent
WORKLOADS = [
    ("productpage", "v1"),
    ("details", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("ratings", "v1"),
]
SERVICES = ("productpage", "details", "reviews", "ratings")
VERSIONS = ("v1", "v2", "v3")
RATE = 50  # requests a second to productpage
JASON_EVERY = 5  # one request in five is jason's
BAR = 16  # width of the reviews split bar


class DemoError(Exception):
    """Something the demo cannot go on with; its message says what."""


# -- the config applied, step by step --------------------------------------------------------


def reviews_yaml(weights: dict[str, int], jason: str | None = None) -> str:
    """reviews' DestinationRule (a subset per version) and VirtualService, Istio-style."""
    subsets = "".join(f"  - name: {v}\n    labels: {{version: {v}}}\n" for v in VERSIONS)
    jason_rule = (
        "  - match: [{headers: {end-user: {exact: jason}}}]\n"
        f"    route: [{{destination: {{host: reviews, subset: {jason}}}}}]\n"
        if jason
        else ""
    )
    routes = "".join(
        f"    - destination: {{host: reviews, subset: {v}}}\n      weight: {w}\n"
        for v, w in weights.items()
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: reviews}}\nspec:\n  host: reviews\n  subsets:\n{subsets}"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{jason_rule}"
        f"  - route:\n{routes}"
    )


STEPS: list[tuple[str, str | None]] = [
    ("no routing config yet: reviews round-robins over v1, v2, v3", None),
    ("canary: reviews v1 90% / v2 10%", reviews_yaml({"v1": 90, "v2": 10})),
    ("half and half: v1 50% / v2 50%", reviews_yaml({"v1": 50, "v2": 50})),
    ("cut over: v3 only", reviews_yaml({"v3": 100})),
    ("header route: end-user jason → v2, everyone else v3",
     reviews_yaml({"v3": 100}, jason="v2")),
]

# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Processes:
    """The processes the demo starts, each logging to its own file, stopped by PID."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> None:
        with open(self.logdir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                list(args),
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops them
            )

    def check(self) -> None:
        """Raise `DemoError` if a process has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited (code {proc.returncode}):\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 8) -> str:
        text = (self.logdir / f"{name}.log").read_text(errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def wait_listening(self, name: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise DemoError(f"{name} is not listening on port {port} after {timeout:g}s")

    def stop(self, names: Iterable[str], timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL whatever still runs after `timeout` seconds."""
        running = [self.procs[n] for n in names if self.procs[n].poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)  # by PID; a process gone meanwhile is fine
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        """Workloads first (they drain, then deregister), the registry last."""
        self.stop(n for n in self.procs if n != "registry")
        self.stop(n for n in self.procs if n == "registry")


def start_registry(procs: Processes, port: int, token: str) -> str:
    address = f"127.0.0.1:{port}"
    procs.start(
        "registry",
        [sys.executable, "-m", "sail.cli.main", "registry", "--address", address],
        {"SAIL_REGISTRY_TOKEN": token},  # not --token: the environment is not in `ps`
    )
    procs.wait_listening("registry", port)
    return address


def start_workloads(procs: Processes, registry: str, token: str) -> dict[str, int]:
    ports = {f"{service}-{version}": free_port() for service, version in WORKLOADS}
    env = {"SAIL_REGISTRY": registry, "SAIL_REGISTRY_TOKEN": token}
    for (service, version), (name, port) in zip(WORKLOADS, ports.items(), strict=True):
        procs.start(name, [sys.executable, str(HERE / "bookinfo.py"), service, version,
                           str(port)], env)
    for name, port in ports.items():
        procs.wait_listening(name, port)
    return ports


def wait_registered(admin: AdminClient, procs: Processes, timeout: float = 20.0) -> None:
    """Until every workload is registered and the registry serves (after its grace)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        procs.check()
        status = admin.status()
        healthy = [w for w in status["workloads"] if w["health"] == "HEALTHY"]
        ready = len(healthy) == len(WORKLOADS) and status["version"] > 0
        if ready and last == status["version"]:  # and no rebuild pending
            return
        last = status["version"] if ready else None
        time.sleep(0.2)
    raise DemoError(f"the workloads did not all register within {timeout:g}s")


# -- traffic ----------------------------------------------------------------------------------


class Traffic:
    """Threads sending `rate` requests a second to productpage through one sail client;
    every JASON_EVERY-th is `end-user: jason`. Counts which services each answer went
    through and which reviews version served it."""

    def __init__(self, http: httpx.Client, rate: float, threads: int = 4) -> None:
        self.http = http
        self.interval = threads / rate
        self.sent = self.failed = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._errors: list[str] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)

    def take(self) -> tuple[collections.Counter[str], list[str]]:
        """The counts and errors since the last call."""
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
            errors, self._errors = self._errors, []
        return counts, errors

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            self._send(jason=next(self._seq) % JASON_EVERY == 0)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stopping.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: go on steadily, no burst

    def _send(self, *, jason: bool) -> None:
        headers = {"end-user": "jason"} if jason else {}
        try:
            response = self.http.get("http://productpage/productpage", headers=headers)
            response.raise_for_status()
            reviews = response.json()["reviews"]
        except Exception as exc:  # every failure is counted and shown
            with self._lock:
                self.sent += 1
                self.failed += 1
                first_line = (str(exc).splitlines() or [""])[0]
                self._errors.append(f"{type(exc).__name__}: {first_line}")
            return
        with self._lock:
            self.sent += 1
            self._counts.update(["productpage", "details", "reviews"])
            if "ratings" in reviews:
                self._counts["ratings"] += 1
            self._counts[f"{'jason' if jason else 'others'} {reviews['version']}"] += 1


# -- the display ------------------------------------------------------------------------------


def split_bar(counts: Sequence[int], width: int) -> str:
    """A bar `width` wide, each version's share drawn with its number: 1111111223."""
    total = sum(counts)
    if not total:
        return " " * width
    ends = [round(width * c / total) for c in itertools.accumulate(counts)]
    return "".join(str(i + 1) * (end - start)
                   for i, (start, end) in enumerate(itertools.pairwise([0, *ends])))


def percents(counts: Sequence[int]) -> str:
    total = sum(counts) or 1
    return " ".join(f"{c / total:4.0%}" for c in counts)


def sync_summary(status: dict[str, Any]) -> str:
    clients = status["clients"]
    synced = sum(c["state"] == "SYNCED" for c in clients)
    return f"v{status['version']} {synced}/{len(clients)} SYNCED"


LEGEND = """\
One row a second: the requests each service served; how reviews' traffic splits between
versions, as % and as a bar (1 = v1, 2 = v2, 3 = v3); the same bar for jason's requests;
the registry's version and how many xDS clients are SYNCED (ACKed all it sent them)."""
HEADER = (
    f"  {' '.join(SERVICES)} │{'v1':>4} {'v2':>4} {'v3':>4} {'reviews split':<{BAR}} │ "
    f"{'jason':<10} │ registry"
)


def row(counts: collections.Counter[str], status: dict[str, Any]) -> str:
    served = " ".join(f"{counts[s]:>{len(s)}}" for s in SERVICES)
    others = [counts[f"others {v}"] for v in VERSIONS]
    jason = [counts[f"jason {v}"] for v in VERSIONS]
    return (
        f"  {served} │{percents(others)} {split_bar(others, BAR)} │ "
        f"{split_bar(jason, 10)} │ {sync_summary(status)}"
    )


def sail_status(registry: str, token: str) -> None:
    """Run `sail status`: the registry's view of its xDS clients."""
    print(f"\n$ sail status --registry {registry}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "sail.cli.main", "status", "--registry", registry],
        env={**os.environ, "SAIL_REGISTRY_TOKEN": token},
        timeout=30,
        check=False,
    )


# -- the steps --------------------------------------------------------------------------------


def apply(admin: AdminClient, yaml_text: str, timeout: float = 5.0) -> str:
    """Apply reviews' config and wait until the clients have ACKed it; says how fast."""
    before = admin.status()["version"]
    start = time.monotonic()
    admin.apply("reviews.yaml", yaml_text)
    while time.monotonic() - start < timeout:
        status = admin.status()
        acked = [c["node_id"] for c in status["clients"] if c["version"] == str(status["version"])]
        if (status["version"] > before and acked
                and all(c["state"] == "SYNCED" for c in status["clients"])):
            return (f"sail apply reviews.yaml → registry version {status['version']}\n"
                    f"   ACKed after {time.monotonic() - start:.2f}s by {', '.join(acked)}")
        time.sleep(0.01)
    return f"applied reviews.yaml: not every client ACKed it within {timeout:g}s"


def run_step(traffic: Traffic, admin: AdminClient, procs: Processes, seconds: int) -> None:
    traffic.take()  # start the step's counts afresh
    tick = time.monotonic()
    for _ in range(seconds):
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
        procs.check()
        counts, errors = traffic.take()
        print(row(counts, admin.status()), flush=True)
        for error, count in collections.Counter(errors).items():
            print(f"    {count} failed: {error}")


def drive(registry: str, token: str, admin: AdminClient, procs: Processes, seconds: int) -> int:
    """Run the steps under traffic; returns the number of failed requests."""
    mesh = sail.Mesh.from_bootstrap(bootstrap(registry, "demo-driver", "demo"),
                                    services=["productpage"])
    with mesh, mesh.client(timeout=5) as http:
        traffic = Traffic(http, RATE)
        traffic.start()
        try:
            for number, (title, yaml_text) in enumerate(STEPS, 1):
                print(f"\n== {number}/{len(STEPS)}  {title}")
                if yaml_text is not None:
                    print(f"   {apply(admin, yaml_text)}")
                print(HEADER)
                run_step(traffic, admin, procs, seconds)
            sail_status(registry, token)
        finally:
            traffic.stop()
            print(f"\n{traffic.sent} requests to productpage, {traffic.failed} failed")
    return traffic.failed


def demo(procs: Processes, port: int, seconds: int) -> int:
    token = secrets.token_urlsafe(16)
    registry = start_registry(procs, port, token)
    print(f"sail registry on {registry}")
    ports = start_workloads(procs, registry, token)
    started = ", ".join(f"{name} :{p}" for name, p in ports.items())
    print(textwrap.fill(f"workloads, one process each: {started}", 92, subsequent_indent="  "))
    with AdminClient(registry, token) as admin:
        wait_registered(admin, procs)
        print(f"all {len(ports)} registered with the registry; "
              f"sending {RATE} requests/s to productpage\n\n{LEGEND}")
        return drive(registry, token, admin, procs, seconds)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="the registry's port (default: a free one)")
    parser.add_argument("--seconds-per-step", type=int, default=5, metavar="N")
    args = parser.parse_args()
    if args.port is not None and not port_is_free(args.port):
        print(f"demo: port {args.port} is in use on 127.0.0.1 (another sail registry?); "
              "pass a free one with --port, or leave --port out to use any free port",
              file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="sail-demo-"))
    procs = Processes(logdir)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    try:
        failed = demo(procs, args.port or free_port(), args.seconds_per_step)
        code = 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted")
        code = 130
    except (DemoError, sail.SailError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not strand them
            signal.signal(sig, signal.SIG_IGN)
        print(f"stopping {len(procs.procs)} processes...", flush=True)
        procs.stop_all()
    if code == 1:
        print(f"their logs are in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
