"""grpcio's built-in `xds:///` client against the registry: plain grpcio servers register
themselves as workloads of `greeter`, Istio-style config is applied with the admin API,
and grpcio clients (fresh processes, tests/e2e/grpc_client.py) follow its weighted split
and header route."""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT, start, stop, wait_port
from tests.e2e.test_registry import TOKEN, RunningRegistry, split_config
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

NODE_ID = "grpc-e2e-client"
N = 2000


def greeter_config(weights: dict[str, int], *, jason: str | None = None) -> str:
    """Subsets v1/v2 of `greeter` by version label, split by `weights`, with
    `end-user: jason` sent to subset `jason`."""
    return split_config("greeter", ("v1", "v2"), weights, jason=jason)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process first (they drain in parallel), then reap each by PID."""
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        stop(proc)


class Greeters:
    def __init__(self, registry: RunningRegistry, bootstrap: Path) -> None:
        self.registry = registry
        self.env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap), "PYTHONPATH": str(ROOT)}

    def apply(self, yaml_text: str) -> None:
        with self.registry.admin() as admin:
            admin.apply("greeter.yaml", yaml_text)
        # the apply scheduled a rebuild on the registry's loop; this runs after it
        assert self.registry.call(lambda: self.registry.registry.last_error) == ""

    def names(self, n: int, *metadata: str, timeout: float = 30.0) -> collections.Counter[str]:
        """Run a fresh grpc_client process making `n` calls; the names that answered."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tests.e2e.grpc_client", str(n), *metadata],
                cwd=ROOT, env=self.env, capture_output=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:  # run() has killed it
            pytest.fail(f"grpc_client did not finish in {timeout}s: {exc.stderr!r}")
        assert done.returncode == 0, (
            f"grpc_client failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}"
        )
        return collections.Counter(json.loads(done.stdout))

    def check_no_nacks(self) -> None:
        nacks = self.registry.call(lambda: list(self.registry.registry.ads.nacks))
        details = "\n".join(
            f"NACK from {n.node_id} for {n.type_url} (still on version {n.version}): {n.error}"
            for n in nacks
        )
        if nacks:
            print(details)
        assert not nacks, details


class InteractiveClient:
    """One long-lived grpc_client (`--interactive`): one channel, many batches of calls."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.grpc_client", "--interactive"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def names(self, n: int, *metadata: str, timeout: float = 30.0) -> collections.Counter[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join((str(n), *metadata)).encode() + b"\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"grpc_client gave no answer to {n} calls in {timeout}s")
        if not line:
            self.proc.wait(5)
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            pytest.fail(f"grpc_client exited with {self.proc.returncode}:\n{err}")
        return collections.Counter(json.loads(line))

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        stop(self.proc)  # by PID: SIGTERM, then SIGKILL
        self._reader.join(5)


@pytest.fixture(scope="module")
def greeters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greeters]:
    registry = RunningRegistry()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {v: free_port() for v in ("v1", "v2")}
        for version, port in ports.items():  # start both, then wait: each imports grpc
            procs.append(start(
                [sys.executable, "-m", "tests.e2e.grpc_workload"],
                env={
                    "PORT": str(port),
                    "VERSION": version,
                    "SAIL_REGISTRY": registry.address,
                    "SAIL_REGISTRY_TOKEN": TOKEN,
                    "PYTHONPATH": str(ROOT),
                },
            ))
        for proc, port in zip(procs, ports.values(), strict=True):
            wait_port(port, proc=proc)
        wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 2)
        bootstrap = tmp_path_factory.mktemp("grpc-xds") / "bootstrap.json"
        bootstrap.write_text(json.dumps({
            "xds_servers": [{
                "server_uri": registry.address,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": NODE_ID, "cluster": "grpc-e2e"},
        }))
        yield Greeters(registry, bootstrap)
    finally:
        _stop_all(procs)
        registry.stop()


def _share(counts: collections.Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def test_weighted_split(greeters: Greeters) -> None:
    greeters.apply(greeter_config({"v1": 80, "v2": 20}, jason="v2"))
    counts = greeters.names(N)
    assert set(counts) == {"greeter-v1", "greeter-v2"}, counts
    assert _share(counts, "greeter-v1") == pytest.approx(0.80, abs=0.03), counts
    assert _share(counts, "greeter-v2") == pytest.approx(0.20, abs=0.03), counts
    greeters.check_no_nacks()


def test_header_route(greeters: Greeters) -> None:
    greeters.apply(greeter_config({"v1": 80, "v2": 20}, jason="v2"))
    assert greeters.names(200, "end-user=jason") == {"greeter-v2": 200}
    # another user follows the split
    assert "greeter-v1" in greeters.names(50, "end-user=json")
    greeters.check_no_nacks()


def test_applied_split_moves_a_running_client(greeters: Greeters) -> None:
    greeters.apply(greeter_config({"v1": 80, "v2": 20}, jason="v2"))
    client = InteractiveClient(greeters.env)
    try:
        assert _share(client.names(400), "greeter-v1") > 0.6
        before = greeters.registry.call(lambda: greeters.registry.registry.resources.version)
        greeters.apply(greeter_config({"v1": 20, "v2": 80}, jason="v2"))
        status = greeters.registry.call(greeters.registry.registry.status)
        assert status["version"] > before
        # pushed to the open channel: wait (bounded) until its split turns
        wait_until(lambda: _share(client.names(100), "greeter-v2") > 0.6, timeout=10)
        counts = client.names(N)
        assert _share(counts, "greeter-v2") == pytest.approx(0.80, abs=0.03), counts
        assert client.names(100, "end-user=jason") == {"greeter-v2": 100}

        def synced() -> bool:
            status = greeters.registry.call(greeters.registry.registry.status)
            rows = [c for c in status["clients"] if c["node_id"] == NODE_ID]
            return bool(rows) and all(
                r["state"] == "SYNCED" and r["version"] == str(status["version"]) for r in rows
            )

        wait_until(synced, timeout=5)
        greeters.check_no_nacks()
    finally:
        client.close()
    # and a client starting now gets the new split from the first call
    counts = greeters.names(N)
    assert _share(counts, "greeter-v2") == pytest.approx(0.80, abs=0.03), counts
