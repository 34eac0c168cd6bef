"""R1: an endpoint dies under load. Three real upstreams, eight callers sending idempotent
requests through one `mesh.client()` each, and mid-run one upstream is SIGKILLed (and, in
the second scenario, another SIGSTOPped: it accepts connections and never answers).

With sail's defaults (no retry policy, no outlier detection in the config) a killed
endpoint costs no request: a refused connection is retried on another endpoint, a request
in flight on the dropped connection is retried because its method is idempotent, and
failure accrual ejects the endpoint after five refusals. A hung endpoint costs the requests
that were waiting on it when it hung, and a few retries that met the killed one: at most two
per caller; with the resilient settings of `docs/resilience.md` it costs none."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sail
from sail import testing
from tests.e2e.procs import stop, uvicorn_backend
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

REQUESTS = 10_000
CALLERS = 8

#: The resilient settings of docs/resilience.md ("Settings that keep requests").
RESILIENT_ROUTE = {
    "retry_policy": {
        "retry_on": "connect-failure,refused-stream,reset",
        "num_retries": 2,
        "per_try_timeout": "0.5s",
        "retry_host_predicate": testing.previous_hosts(),
        "host_selection_retry_max_attempts": 3,
    }
}
RESILIENT_CLUSTER = {
    "circuit_breakers": {"thresholds": [{
        "retry_budget": {"budget_percent": {"value": 50.0}, "min_retry_concurrency": 8},
    }]},
}


class Upstreams:
    """Three uvicorn upstreams of this test alone (it kills them)."""

    def __init__(self) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.procs = [uvicorn_backend(f"u{i}", port) for i, port in enumerate(self.ports)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped one must hear the SIGTERM
            stop(proc)


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    ups = Upstreams()
    try:
        yield ups
    finally:
        ups.close()


def mesh_for(tmp_path: Path, ports: list[int], route: dict[str, Any] | None = None,
             cluster: dict[str, Any] | None = None) -> sail.Mesh:
    resources = [
        testing.api_listener("svc", routes=testing.route_config(
            "svc", [testing.route("svc", **(route or {}))])),
        testing.eds_cluster("svc", **(cluster or {})),
        testing.load_assignment("svc", [("127.0.0.1", p) for p in ports]),
    ]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    return sail.Mesh.local(path)


class Run:
    """`REQUESTS` GETs from `CALLERS` threads; `fault()` runs once a fifth are done."""

    def __init__(self, mesh: sail.Mesh) -> None:
        self.mesh = mesh
        self.done = 0
        self.failures: Counter[str] = Counter()
        self.first_attempts: list[tuple[float, str]] = []  # (when, endpoint) after the fault
        self.fault_at: float | None = None

    def caller(self, count: int) -> None:
        with self.mesh.client() as client:
            for _ in range(count):
                try:
                    response = client.get("http://svc/work")
                    if response.status_code != 200:
                        self.failures[f"status {response.status_code}"] += 1
                    elif self.fault_at is not None:
                        first = response.extensions["sail"].attempts[0].endpoint
                        self.first_attempts.append((time.monotonic(), first))
                except Exception as exc:  # what a caller would see
                    self.failures[f"{type(exc).__name__}: {exc}"[:160]] += 1
                self.done += 1

    def run(self, fault: Any) -> None:
        threads = [threading.Thread(target=self.caller, args=(REQUESTS // CALLERS,))
                   for _ in range(CALLERS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while self.done < REQUESTS // 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.fault_at = time.monotonic()
        fault()
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "callers still running after 180 s"

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def test_a_killed_endpoint_costs_no_request_with_the_defaults(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    with mesh_for(tmp_path, upstreams.ports) as mesh:
        run = Run(mesh)
        run.run(lambda: os.kill(upstreams.procs[0].pid, signal.SIGKILL))
        assert run.failed == 0, run.failures
        assert run.done == REQUESTS
    killed = f"127.0.0.1:{upstreams.ports[0]}"
    # Failure accrual: the killed endpoint is ejected at its fifth refusal, and tried
    # again (five more refusals, all retried) only when an ejection of 5 s, 10 s... ends.
    # Without it, a third of the 8,000 calls after the kill would start there.
    tried = sum(1 for _, e in run.first_attempts if e == killed)
    assert tried <= 30, tried


@pytest.mark.parametrize("settings", ["defaults", "resilient"])
def test_a_killed_and_a_hung_endpoint(
    upstreams: Upstreams, tmp_path: Path, settings: str
) -> None:
    route, cluster = (RESILIENT_ROUTE, RESILIENT_CLUSTER) if settings == "resilient" else (
        None, None)

    def fault() -> None:
        os.kill(upstreams.procs[0].pid, signal.SIGKILL)
        os.kill(upstreams.procs[1].pid, signal.SIGSTOP)

    with mesh_for(tmp_path, upstreams.ports, route, cluster) as mesh:
        run = Run(mesh)
        run.run(fault)
    if settings == "resilient":
        assert run.failed == 0, run.failures
    else:
        # The requests already waiting on the hung endpoint are lost (each caller has at
        # most one in flight; they end with a timeout), and while they wait a few single
        # retries may land on the killed one before its ejection: a small number, stated
        # in docs/resilience.md as at most two per caller.
        assert run.failed <= 2 * CALLERS, run.failures
        assert all(reason.startswith(("ReadTimeout", "DeadlineExceeded", "ConnectError"))
                   for reason in run.failures), run.failures
    assert run.done == REQUESTS
