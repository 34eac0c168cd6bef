"""sail's demo in local mode: three versions of `reviews`, one client, a live canary.

Run it as `python examples/local_demo/run.py` (no control plane needed; `make demo` shows
the same on `sail registry`). It starts reviews v1, v2 and v3 (each a uvicorn process),
writes a mesh file of Envoy resources, and sends steady traffic through `mesh.client()`
while it rewrites the file: 90/10 → 50/50 → v3 only. The per-version split printed each
second follows the file within a second, with no failed request. It stops by itself (or
Ctrl-C), ending the processes it started.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import sail
from sail import testing

HERE = Path(__file__).resolve().parent
STEPS = [
    ("canary: v1 90% / v2 10%", {"v1": 90, "v2": 10}),
    ("half and half: v1 50% / v2 50%", {"v1": 50, "v2": 50}),
    ("cut over: v3 only", {"v3": 100}),
]
SECONDS_PER_STEP = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_mesh(path: Path, ports: dict[str, int], weights: dict[str, int]) -> None:
    resources = testing.service(
        "reviews",
        {f"reviews-{v}": [("127.0.0.1", ports[v])] for v in ports},
        weights={f"reviews-{v}": w for v, w in weights.items()},
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"resources": resources}, sort_keys=False))
    os.replace(tmp, path)  # atomic, so the watcher never reads half a file


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a reviews process exited early (code {proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"reviews did not start listening on port {port}")


def bar(share: float, width: int = 40) -> str:
    return "#" * round(share * width)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sail-local-demo-"))
    mesh_file = workdir / "mesh.yaml"
    ports = {v: free_port() for v in ("v1", "v2", "v3")}
    write_mesh(mesh_file, ports, STEPS[0][1])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for version, port in ports.items():
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "reviews.py"), version, str(port), str(mesh_file)],
                start_new_session=True,
            )
            procs.append(proc)
            wait_port(port, proc)
        print(f"reviews v1, v2, v3 up on ports {', '.join(map(str, ports.values()))}")
        print(f"mesh file: {mesh_file}\n")
        with sail.Mesh.local(mesh_file, poll_interval=0.2) as mesh, mesh.client() as http:
            failures = 0
            for title, weights in STEPS:
                write_mesh(mesh_file, ports, weights)
                print(f"== {title}")
                for _ in range(SECONDS_PER_STEP):
                    counts: collections.Counter[str] = collections.Counter()
                    end = time.monotonic() + 1.0
                    while time.monotonic() < end:
                        try:
                            counts[http.get("http://reviews/reviews/1").json()["version"]] += 1
                        except Exception as exc:
                            failures += 1
                            print(f"   request failed: {exc}")
                    total = sum(counts.values())
                    line = "  ".join(
                        f"{v} {counts[v] / total:4.0%} {bar(counts[v] / total, 20):<20}"
                        for v in ("v1", "v2", "v3")
                    )
                    print(f"   {total:4d} req/s  {line}")
            print(f"\ndone: {failures} failed requests")
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
