"""Retries, outlier detection and deadlines, watched call by call.

Run it as `python examples/resilience/run.py` (nothing to install beyond sail; about 10 s).
Three upstreams of service `ratings` run in this process; `ratings-c` answers 503. The
mesh (local mode, a file of Envoy resources) has:

* a retry policy on the route: `retry_on: 5xx`, 2 retries, never the same host twice;
* outlier detection on the cluster: 3 consecutive 5xx eject a host for 2 s;
* a 0.5 s route timeout on `/slow`.

What you see: the first calls that land on `ratings-c` are retried on another upstream
(the caller gets 200 and `attempts` shows the 503); after c's third 503 it is ejected and
no call goes there; when c is repaired it comes back after its ejection time; a call to
`/slow` ends with `DeadlineExceededError` after 0.5 s, and the upstream was told how long it
had (`x-envoy-expected-rq-timeout-ms`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

import sail
from sail import testing
from sail.http.errors import DeadlineExceededError


class Upstream(ThreadingHTTPServer):
    """A tiny HTTP server: answers 200 with its name, or 503 while `broken`; `/slow`
    sleeps 2 s, and remembers the time it was told it had."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.broken = False
        self.calls = 0
        self.told_ms: str | None = None
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:
        upstream = self.server
        upstream.calls += 1
        if self.path == "/slow":
            upstream.told_ms = self.headers.get("x-envoy-expected-rq-timeout-ms")
            time.sleep(2)
        status = 503 if upstream.broken else 200
        body = json.dumps({"name": upstream.name}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def mesh_file(directory: Path, upstreams: list[Upstream]) -> Path:
    retry = {
        "retry_on": "5xx",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                             "previous_hosts.v3.PreviousHostsPredicate"},
        }],
    }
    routes = testing.route_config("ratings", [
        testing.route("ratings", prefix="/slow", timeout="0.5s"),
        testing.route("ratings", prefix="/", retry_policy=retry),
    ])
    outlier = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "2s",
               "max_ejection_percent": 100}
    resources = [
        testing.api_listener("ratings", routes=routes),
        testing.eds_cluster("ratings", outlier_detection=outlier),
        testing.load_assignment("ratings", [("127.0.0.1", u.port) for u in upstreams]),
    ]
    path = directory / "mesh.json"
    path.write_text(json.dumps({"resources": resources}, indent=1))
    return path


def show(step: str, client: httpx.Client, calls: int, names: dict[str, str]) -> None:
    print(f"\n{step}")
    for _ in range(calls):
        response = client.get("http://ratings/")
        attempts = ", ".join(
            f"{a.outcome.reason} from {names[a.endpoint]}"
            for a in response.extensions["sail"].attempts
        )
        print(f"  {response.status_code} from {response.json()['name']:<10} attempts: {attempts}")


def main() -> None:
    upstreams = [Upstream(f"ratings-{n}") for n in "abc"]
    for upstream in upstreams:
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
    broken = upstreams[2]
    broken.broken = True
    names = {f"127.0.0.1:{u.port}": u.name for u in upstreams}
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                sail.Mesh.local(mesh_file(Path(tmp), upstreams)) as mesh, \
                mesh.client(timeout=5) as client:
            show("ratings-c answers 503: its calls are retried elsewhere, then it is ejected",
                 client, 12, names)
            outlier = mesh._dataplane.state.clusters["ratings"].outlier
            assert outlier is not None
            ejected = sorted(names[h] for h in outlier.ejected)
            print(f"  ejected now: {ejected}; calls ratings-c received: {broken.calls}")

            broken.broken = False
            print("\nratings-c is repaired; waiting out its 2 s ejection ...")
            time.sleep(3.2)
            show("ratings-c takes traffic again", client, 6, names)

            print("\n/slow has a 0.5 s route timeout; the upstream takes 2 s")
            began = time.monotonic()
            try:
                client.get("http://ratings/slow")
            except DeadlineExceededError as exc:
                told = [u.told_ms for u in upstreams if u.told_ms]
                print(f"  DeadlineExceededError after {time.monotonic() - began:.2f} s: {exc}")
                print(f"  the upstream was told it had {told[-1]} ms")
            else:
                sys.exit("expected a DeadlineExceededError")
    finally:
        for upstream in upstreams:
            upstream.shutdown()
            upstream.server_close()


if __name__ == "__main__":
    main()
