"""mTLS between sail and grpcio's own xDS stack, all fed by one registry under a STRICT
PeerAuthentication, with certificates from the registry's CA: grpcio's native `xds:///`
client with `grpc.xds_channel_credentials` (certificates from `sail cert`, as a
`file_watcher` provider) calls sail's xDS-enabled server, and sail's channel calls
grpcio's `xds=True` server listening with `grpc.xds_server_credentials`. Each side sees
the other's SPIFFE ID; a plaintext caller is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import sail
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE
from sail.registry.remote import RemoteRegistrar
from tests.e2e.grpc_client import METHOD
from tests.e2e.procs import ROOT, start, stop
from tests.e2e.test_registry import TOKEN, RunningRegistry
from tests.e2e.test_registry_mtls import bootstrap, peer_authentication
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

TD = "example.org"
PRODUCTPAGE = f"spiffe://{TD}/ns/default/sa/productpage"
GREETER = f"spiffe://{TD}/ns/default/sa/greeter"


@pytest.fixture
def running() -> Iterator[RunningRegistry]:
    registry = RunningRegistry(trust_domain=TD)
    with registry.admin() as admin:
        admin.apply("peer.yaml", peer_authentication("STRICT"))
    yield registry
    registry.stop()


def token(running: RunningRegistry, account: str) -> str:
    with running.admin() as admin:
        return admin.create_join_token("default", account)


def sail_cert(running: RunningRegistry, account: str, out: Path) -> Path:
    """`sail cert --once`: the files Istio's agent writes, for `account`."""
    done = subprocess.run(
        [sys.executable, "-m", "sail.cli.main", "cert", "--out", str(out), "--once",
         "--registry", running.address],
        env={"SAIL_JOIN_TOKEN": token(running, account), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def grpcio_bootstrap(running: RunningRegistry, node: str, files: Path, out: Path) -> Path:
    """A bootstrap for grpcio's xDS stack: the registry, and a `file_watcher` provider
    `default` over `files` (the name Istio's proxyless bootstrap gives it)."""
    boot = running.bootstrap(node).to_json()
    boot["server_listener_resource_name_template"] = DEFAULT_SERVER_LISTENER_TEMPLATE
    boot["certificate_providers"] = {"default": {"plugin_name": "file_watcher", "config": {
        "certificate_file": str(files / "cert-chain.pem"),
        "private_key_file": str(files / "key.pem"),
        "ca_certificate_file": str(files / "root-cert.pem"),
        "refresh_interval": "1s",
    }}}
    out.write_text(json.dumps(boot))
    return out


def grpcio_client(boot: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.e2e.grpc_client", "--timeout", "15", *flags, "20"],
        env={"GRPC_XDS_BOOTSTRAP": str(boot), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=90, check=False, cwd=ROOT,
    )


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Read the workload's output until it says `ready` (grpcio's own log lines, on the
    same pipe, may come first or on the same line)."""
    assert proc.stdout is not None
    for _ in range(500):
        line = proc.stdout.readline()
        assert line, f"the workload exited ({proc.poll()})"
        if b"ready" in line:
            return
    raise AssertionError("the workload never said ready")


def caller_of(request: bytes, context: Any) -> bytes:
    ctx = sail.current_request()
    peer = ctx.peer if ctx is not None else None
    return (peer.spiffe_id or "plaintext").encode() if peer is not None else b"unknown"


def test_grpcio_xds_client_calls_a_sail_server_over_mtls(
    running: RunningRegistry, tmp_path: Path
) -> None:
    mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "greeter"), join_token=token(running, "greeter"),
        registrar=RemoteRegistrar([running.address], TOKEN),
    )
    try:
        assert mesh.wait_identity(20) is not None
        server = mesh.grpc_server(
            "greeter", xds=True, service_port=50051,
            handlers=[grpc.method_handlers_generic_handler("sail.test.Greeter", {
                "Hello": grpc.unary_unary_rpc_method_handler(caller_of)})],
        )
        server.start()
        try:
            wait_until(lambda: server.serving, timeout=20)
            files = sail_cert(running, "productpage", tmp_path / "certs")
            boot = grpcio_bootstrap(running, "productpage", files, tmp_path / "boot.json")
            done = grpcio_client(boot, "--xds-creds")
            assert done.returncode == 0, done.stderr[-2000:]
            assert json.loads(done.stdout) == {PRODUCTPAGE: 20}
            # the same client without TLS credentials is refused by the STRICT server
            refused = grpcio_client(boot, "--timeout", "3")
            assert refused.returncode == 1
        finally:
            server.stop(0).wait(10)
    finally:
        mesh.close()


def test_a_sail_channel_calls_a_grpcio_xds_server_over_mtls(
    running: RunningRegistry, tmp_path: Path
) -> None:
    files = sail_cert(running, "greeter", tmp_path / "certs")
    boot = grpcio_bootstrap(running, "greeter", files, tmp_path / "boot.json")
    port = free_port()
    proc = start([sys.executable, "-m", "tests.e2e.grpc_workload"], env={
        "PORT": str(port), "VERSION": "v1", "SAIL_SERVER": "0", "XDS": "1", "XDS_CREDS": "1",
        "IDENTITY": GREETER, "GRPC_XDS_BOOTSTRAP": str(boot),
        "SAIL_REGISTRY": running.address, "SAIL_REGISTRY_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR",
    })
    mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "productpage"), join_token=token(running, "productpage"),
        services=["greeter"],
    )
    try:
        wait_ready(proc)
        assert mesh.wait_identity(20) is not None
        with mesh.grpc_channel("greeter:50051") as channel:
            hello = channel.unary_unary(METHOD)

            def answer() -> bytes | None:
                try:
                    return hello(b"hi", timeout=5)  # type: ignore[no-any-return]
                except grpc.RpcError:
                    return None

            assert wait_until(answer, timeout=30) == PRODUCTPAGE.encode()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, \
                pytest.raises(grpc.RpcError):
            plain.unary_unary(METHOD)(b"hi", timeout=5)
    finally:
        mesh.close()
        stop(proc)
