"""What sail's request path costs, in instructions per request under callgrind.

```
python benchmarks/instructions.py                      # 12 callgrind runs (~3 minutes on 2 cores)
python benchmarks/instructions.py --quick              # N0 = 50, N = 550
python benchmarks/instructions.py --source ../before/src --json before.json
```

Wall-clock and CPU time per request move by several percent from run to run on a small shared
machine; the number of instructions a request executes does not. Each contender runs in its
own `valgrind --tool=callgrind` process (`--inner`), once with N0 and once with N requests
(`--requests N0,N`, default 200,2200), and its figure is

    (instructions at N - instructions at N0) / (N - N0)

so start-up, imports, config loading and warm-up cancel out. The endpoint answers at once (an
httpx transport that returns a 200 with a 2-byte body, no sockets), so the figures are the
client side only, and the difference between sail and raw httpx is sail's own work:

* `raw-sync`          - `httpx.Client(transport=instant)`, the floor;
* `sail-sync`         - `mesh.client()` of `sail.Mesh.local(...)`: one listener, one route, an
                        EDS cluster of one endpoint; its endpoint pool replaced by the instant
                        transport (`client._transport._pools._factory`);
* `sail-policy-sync`  - the same with three endpoints, least request, a route timeout, a retry
                        policy (5xx, connect-failure, 2 retries, previous hosts), circuit
                        breakers and outlier detection (nothing fails: the cost of having them);
* `raw-async`, `sail-async`, `sail-policy-async` - the `httpx.AsyncClient` twins, requests
                        awaited one after the other in one `asyncio.run`.

The µs column is an estimate: instructions divided by this machine's instructions per
second, measured by timing the same loops without valgrind (best of 5 batches; the median
over the contenders of instructions per request / seconds per request).

Which sail: a copy of this checkout's `src`, or of `--source DIR` (another checkout's `src`,
to compare versions), taken at the start and put first on the inner runs' `PYTHONPATH`, so
every run of one measurement sees the same code while the working tree changes (the copy's
commit and uncommitted files are in the JSON). The inner code uses only the public API and
the `_transport._pools._factory` hook. A warm-up run of each contender writes the bytecode
into a cache of the script's own (`PYTHONPYCACHEPREFIX`), so no measured run compiles
anything and no checkout is written to. Every process started here is stopped by its PID
before exit, and the temporary files go with them (`--keep DIR` keeps callgrind's out
files, for `callgrind_annotate`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _bench import fmt, stop, table

RAW = ("raw-sync", "raw-async")
CONTENDERS = ("raw-sync", "sail-sync", "sail-policy-sync", "raw-async", "sail-async",
              "sail-policy-async")
DEFAULT_SIZES = (200, 2200)
QUICK_SIZES = (50, 550)
URL = "http://svc/"
BODY = b"ok"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
INNER_TIMEOUT = 1800.0


# -- the inner runs (under callgrind, or timed) -----------------------------------------------


class Instant(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An endpoint that answers at once: a 200 with a 2-byte body, no sockets."""

    def __init__(self) -> None:
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(200, headers=HEADERS, stream=httpx.ByteStream(BODY))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(200, headers=HEADERS, stream=httpx.ByteStream(BODY))


POLICY_ROUTE: dict[str, Any] = {
    "timeout": "10s",
    "retry_policy": {
        "retry_on": "5xx,connect-failure",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }],
    },
}
POLICY_CLUSTER: dict[str, Any] = {
    "circuit_breakers": {"thresholds": [{
        "max_connections": 1000, "max_pending_requests": 1000, "max_requests": 1000,
        "max_retries": 3,
    }]},
    "outlier_detection": {
        "consecutive_5xx": 5, "consecutive_gateway_failure": 5, "interval": "10s",
        "base_ejection_time": "30s", "max_ejection_percent": 50,
    },
}


@contextlib.contextmanager
def local_mesh(policy: bool) -> Iterator[Any]:
    """`sail.Mesh.local` of service `svc`: one endpoint, or three with every policy on."""
    import sail
    from sail import testing

    if policy:
        endpoints = [("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]
        route = testing.route("svc", **POLICY_ROUTE)
        cluster = testing.eds_cluster("svc", lb_policy="LEAST_REQUEST", **POLICY_CLUSTER)
    else:
        endpoints = [("127.0.0.1", 8001)]
        route = testing.route("svc")
        cluster = testing.eds_cluster("svc")
    resources = [
        testing.api_listener("svc", routes=testing.route_config("svc", [route])),
        cluster,
        testing.load_assignment("svc", endpoints),
    ]
    with tempfile.TemporaryDirectory(prefix="sail-instr-") as tmp:
        path = Path(tmp) / "mesh.json"
        path.write_text(json.dumps({"resources": resources}))
        with sail.Mesh.local(path, poll_interval=0) as mesh:
            yield mesh


def _check(response: httpx.Response) -> None:
    if response.status_code != 200 or response.content != BODY:
        raise RuntimeError(f"unexpected response {response.status_code} {response.content!r}")


def _timed_batches(send: Callable[[int], None], requests: int, warmup: int) -> list[float]:
    send(warmup)
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        send(requests - warmup)
        batches.append((time.perf_counter() - start) / (requests - warmup))
    return batches


def inner_sync(contender: str, requests: int, timed_warmup: int | None) -> dict[str, Any]:
    instant = Instant()
    with contextlib.ExitStack() as stack:
        if contender == "raw-sync":
            client = stack.enter_context(httpx.Client(transport=instant))
        else:
            mesh = stack.enter_context(local_mesh(contender == "sail-policy-sync"))
            client = stack.enter_context(mesh.client())
            transport: Any = client._transport  # sail's MeshTransport
            transport._pools._factory = lambda: instant

        def send(n: int) -> None:
            for _ in range(n):
                response = client.get(URL)
                response.read()
                response.close()

        _check(client.get(URL))
        if timed_warmup is None:
            send(requests - 2)
            _check(client.get(URL))
            return {"calls": instant.calls, "requests": requests}
        return {"seconds_per_request": _timed_batches(send, requests, timed_warmup)}


def inner_async(contender: str, requests: int, timed_warmup: int | None) -> dict[str, Any]:
    instant = Instant()

    async def main() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            if contender == "raw-async":
                client = await stack.enter_async_context(httpx.AsyncClient(transport=instant))
            else:
                mesh = stack.enter_context(local_mesh(contender == "sail-policy-async"))
                client = await stack.enter_async_context(mesh.async_client())
                transport: Any = client._transport  # sail's AsyncMeshTransport
                transport._pools._factory = lambda: instant

            async def send(n: int) -> None:
                for _ in range(n):
                    response = await client.get(URL)
                    await response.aread()
                    await response.aclose()

            _check(await client.get(URL))
            if timed_warmup is None:
                await send(requests - 2)
                _check(await client.get(URL))
                return {"calls": instant.calls, "requests": requests}
            await send(timed_warmup)
            batches = []
            for _ in range(5):
                start = time.perf_counter()
                await send(requests - timed_warmup)
                batches.append((time.perf_counter() - start) / (requests - timed_warmup))
            return {"seconds_per_request": batches}

    return asyncio.run(main())


def inner(contender: str, requests: int, timed_warmup: int | None) -> None:
    """One contender's loop; prints one `RESULT {json}` line (what sail it ran, and checks)."""
    run = inner_async if contender.endswith("-async") else inner_sync
    result = run(contender, requests, timed_warmup)
    if "calls" in result and result["calls"] != result["requests"]:
        raise RuntimeError(f"{result['calls']} endpoint calls for {result['requests']} requests")
    sail_mod = sys.modules.get("sail")
    result["sail"] = getattr(sail_mod, "__file__", None)
    print("RESULT " + json.dumps(result), flush=True)


# -- the outer run ----------------------------------------------------------------------------


@dataclass
class Job:
    contender: str
    requests: int
    out_file: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    instructions: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


def inner_env(snapshot: Path, workdir: Path) -> dict[str, str]:
    """The inner runs' environment: the snapshot of sail first on the path, bytecode in a
    cache of our own (written by the warm-up runs, so no callgrind run compiles anything),
    a fixed hash seed, and their temporary files inside ours."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPYCACHEPREFIX=str(workdir / "pycache"),
               TMPDIR=str(workdir))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(snapshot), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


def snapshot_source(src: Path, into: Path) -> Path:
    """A copy of `src` (sources only) under `into`: every run of one measurement sees the
    same code, however the working tree changes meanwhile."""
    if not (src / "sail" / "__init__.py").is_file():
        raise SystemExit(f"instructions: no sail package in {src}")
    snapshot = into / "src"
    shutil.copytree(src, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return snapshot


def warm_up(contenders: list[str], env: dict[str, str]) -> None:
    """Run each contender briefly without valgrind, which writes the bytecode cache."""
    for contender in contenders:
        proc = subprocess.Popen(inner_command(contender, 3), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        try:
            out, err = proc.communicate(timeout=INNER_TIMEOUT)
        finally:
            stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{contender} (warm-up) exited with status {proc.returncode}: "
                               f"{err.decode(errors='replace')[-2000:]}")
        read_result(out.decode(), contender)


def inner_command(contender: str, requests: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--inner", contender,
            "--requests", str(requests)]


def read_result(text: str, what: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise RuntimeError(f"{what}: no RESULT line")


def total_instructions(out_file: Path, log_text: str) -> int:
    """The `totals:` (or `summary:`) line of callgrind's out file, else its `Collected` line."""
    if out_file.exists():
        for line in out_file.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    for line in log_text.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError("no instruction count in callgrind's output")


def run_callgrind(jobs: list[Job], env: dict[str, str], parallel: int, valgrind: str) -> None:
    """Run the jobs, `parallel` at a time, each in its own callgrind process."""
    pending = list(jobs)
    running: list[Job] = []
    done = 0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                command = [valgrind, "--tool=callgrind", f"--callgrind-out-file={job.out_file}",
                           *inner_command(job.contender, job.requests)]
                with job.log.open("wb") as log:
                    job.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env)
                job.started = time.monotonic()
                running.append(job)
            time.sleep(0.2)
            for job in list(running):
                assert job.proc is not None
                if job.proc.poll() is None:
                    if time.monotonic() - job.started > INNER_TIMEOUT:
                        raise RuntimeError(f"{job.contender} x {job.requests}: timed out")
                    continue
                running.remove(job)
                text = job.log.read_text(errors="replace")
                if job.proc.returncode != 0:
                    tail = "\n    ".join(text.splitlines()[-20:])
                    raise RuntimeError(
                        f"{job.contender} x {job.requests} exited with status "
                        f"{job.proc.returncode}\n    {tail}"
                    )
                job.result = read_result(text, f"{job.contender} x {job.requests}")
                job.instructions = total_instructions(job.out_file, text)
                done += 1
                print(f"  {done}/{len(jobs)} {job.contender} x {job.requests}: "
                      f"{job.instructions:,} instructions", file=sys.stderr, flush=True)
    finally:
        for job in running:
            if job.proc is not None:
                stop(job.proc)


def time_contender(contender: str, sizes: tuple[int, int], env: dict[str, str]) -> list[float]:
    """Seconds per request without valgrind (5 batches of N - N0 after N0 of warm-up)."""
    command = [*inner_command(contender, sizes[1]), "--timed", str(sizes[0])]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        out, err = proc.communicate(timeout=INNER_TIMEOUT)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{contender} (timed) exited with status {proc.returncode}: "
                           f"{err.decode(errors='replace')[-2000:]}")
    batches: list[float] = read_result(out.decode(), contender)["seconds_per_request"]
    return batches


def source_info(src: Path) -> dict[str, Any]:
    """Which sail: the directory, and the commit of the checkout it is in (dirty or not)."""
    info: dict[str, Any] = {"src": str(src)}
    git = shutil.which("git")
    if git:
        head = subprocess.run([git, "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False)
        dirty = subprocess.run([git, "-C", str(src), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=False)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            info["uncommitted"] = [line[3:] for line in dirty.stdout.splitlines()]
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default=None,
                        help="N, or N0,N: requests of the two runs per contender "
                        f"(default {DEFAULT_SIZES[0]},{DEFAULT_SIZES[1]}; N alone keeps N0 "
                        f"{DEFAULT_SIZES[0]}); with --inner, the requests of that run")
    parser.add_argument("--quick", action="store_true",
                        help=f"N0 = {QUICK_SIZES[0]}, N = {QUICK_SIZES[1]}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset (default: all six)")
    parser.add_argument("--source", type=Path,
                        help="measure a copy of this src directory (default: this checkout's src)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="callgrind processes at a time (default: 2, or 1 on one CPU)")
    parser.add_argument("--no-timing", action="store_true",
                        help="skip the timed runs without valgrind (no µs column)")
    parser.add_argument("--valgrind", default=shutil.which("valgrind") or "valgrind")
    parser.add_argument("--keep", type=Path, help="copy callgrind's out files into this directory")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--inner", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--timed", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sizes_of(args: argparse.Namespace) -> tuple[int, int]:
    if args.requests is None:
        return QUICK_SIZES if args.quick else DEFAULT_SIZES
    parts = [int(p) for p in str(args.requests).split(",")]
    n0, n = (DEFAULT_SIZES[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if not 0 < n0 < n:
        raise SystemExit("instructions: --requests needs 0 < N0 < N")
    return n0, n


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the `finally`s stop the inner runs and the
    # temporary directories go.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    if args.inner:
        inner(args.inner, int(args.requests), args.timed)
        return
    try:
        run(args)
    except RuntimeError as exc:
        raise SystemExit(f"instructions: {exc}") from None


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def twin(contender: str) -> str:
    return "raw-async" if contender.endswith("-async") else "raw-sync"


def run(args: argparse.Namespace) -> None:
    sizes = sizes_of(args)
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"instructions: unknown contenders {sorted(unknown)}")
    wanted = set(contenders) | {twin(c) for c in contenders}  # a ratio needs the raw twin
    contenders = [c for c in CONTENDERS if c in wanted]
    if not shutil.which(args.valgrind):
        raise SystemExit(f"instructions: no valgrind ({args.valgrind})")
    src = (args.source or Path(__file__).resolve().parents[1] / "src").resolve()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "valgrind": subprocess.run([args.valgrind, "--version"], capture_output=True,
                                       text=True, check=False).stdout.strip(),
        },
        "config": {"sizes": list(sizes), "contenders": contenders, "jobs": args.jobs},
        "sail": {},
        "contenders": {},
    }
    started = time.monotonic()
    ips: float | None = None
    with tempfile.TemporaryDirectory(prefix="sail-instructions-") as tmp:
        workdir = Path(tmp)
        info = results["sail"] = source_info(src)
        snapshot = snapshot_source(src, workdir)
        env = inner_env(snapshot, workdir)
        print(f"sail from {src} (commit {info.get('commit', '?')}"
              f"{', with uncommitted changes' if info.get('uncommitted') else ''}, copied); "
              f"{len(contenders) * 2} callgrind runs of {sizes[0]} and {sizes[1]} requests, "
              f"{args.jobs} at a time", file=sys.stderr, flush=True)
        warm_up(contenders, env)
        jobs = [
            Job(c, n, workdir / f"callgrind.{c}.{n}.out", workdir / f"{c}.{n}.log")
            for c in contenders for n in reversed(sizes)
        ]
        run_callgrind(jobs, env, max(1, args.jobs), args.valgrind)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for job in jobs:
                shutil.copy(job.out_file, args.keep / job.out_file.name)
        by = {(j.contender, j.requests): j for j in jobs}
        for c in contenders:
            seen = {by[c, n].result.get("sail") for n in sizes}
            if c not in RAW and not all(
                s and Path(s).resolve().is_relative_to(snapshot.resolve()) for s in seen
            ):
                raise SystemExit(f"instructions: {c} imported sail from {seen}, not {src}")
            low, high = by[c, sizes[0]].instructions, by[c, sizes[1]].instructions
            assert low is not None and high is not None
            results["contenders"][c] = {
                "instructions": {str(sizes[0]): low, str(sizes[1]): high},
                "per_request": (high - low) / (sizes[1] - sizes[0]),
            }

        if not args.no_timing:
            print("  timing the loops without valgrind", file=sys.stderr, flush=True)
            rates = []
            for c in contenders:
                batches = time_contender(c, sizes, env)
                entry = results["contenders"][c]
                entry["native_seconds_per_request"] = batches
                entry["native_instructions_per_second"] = entry["per_request"] / min(batches)
                rates.append(entry["native_instructions_per_second"])
            ips = statistics.median(rates)
            results["instructions_per_second"] = {"median": ips, "min": min(rates),
                                                  "max": max(rates)}

    rows = [["contender", "instr/request", "x raw", "+k instr/request"]]
    if ips:
        rows[0] += ["est µs/request", "+est µs"]
    for c in contenders:
        entry = results["contenders"][c]
        raw = results["contenders"][twin(c)]["per_request"]
        entry["ratio_to_raw"] = entry["per_request"] / raw
        entry["difference_to_raw"] = entry["per_request"] - raw
        row = [c, fmt(entry["per_request"]), f"{entry['ratio_to_raw']:.2f}",
               "-" if c in RAW else f"{entry['difference_to_raw'] / 1000:+,.1f}"]
        if ips:
            row += [fmt(entry["per_request"] / ips * 1e6, 1),
                    "-" if c in RAW else f"{entry['difference_to_raw'] / ips * 1e6:+,.1f}"]
        rows.append(row)
    commit = info.get("commit", "?") + (" + uncommitted changes" if info.get("uncommitted") else "")
    print(f"\ninstructions per request under callgrind (runs of {sizes[1]} and {sizes[0]} "
          f"requests), instant endpoint; sail {commit}")
    print(table(rows))
    for mode in ("sync", "async"):
        plain, policy = f"sail-{mode}", f"sail-policy-{mode}"
        if plain in results["contenders"] and policy in results["contenders"]:
            extra = (results["contenders"][policy]["per_request"]
                     - results["contenders"][plain]["per_request"])
            print(f"  {policy} vs {plain}: {extra / 1000:+,.1f} k instructions per request")
    if ips:
        rates = results["instructions_per_second"]
        print(f"  µs estimated at {ips / 1e9:.2f} G instructions/s (the contenders' timed loops "
              f"without valgrind: {rates['min'] / 1e9:.2f} - {rates['max'] / 1e9:.2f})")
    print(f"  ({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
