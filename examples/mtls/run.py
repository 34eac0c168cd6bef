"""Mutual TLS with SPIFFE identities, from the registry's CA, under a STRICT policy.

Run it as `python examples/mtls/run.py` (nothing to install beyond sail; a few seconds).
It starts `sail registry --trust-domain example.org` with a mesh-wide PeerAuthentication
STRICT, then, in this process:

* `reviews`, an HTTP service (`mesh.http_server(..., xds=True)`), and `ratings`, a gRPC
  service (`mesh.grpc_server(..., xds=True)`), each with a certificate the registry's CA
  gave it for a join token (`spiffe://example.org/ns/default/sa/reviews`, `.../ratings`);
* `productpage`, a client with its own join token, that calls both with no TLS setting of
  its own: the registry tells it the services take mTLS (auto-mTLS) and which SPIFFE ID
  each must present.

What you see: each server names the caller's SPIFFE ID (from the verified certificate),
the client's certificate expiry, and a plaintext call refused by the STRICT servers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

import sail
from sail.registry.remote import AdminClient, RemoteRegistrar

TOKEN = "example-token"
STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def bootstrap(address: str, node: str) -> sail.Bootstrap:
    return sail.parse_bootstrap({
        "xds_servers": [{"server_uri": address, "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": node},
        "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    })


async def reviews_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    peer = sail.current_request().peer  # type: ignore[union-attr]
    body = f"reviews sees {peer.spiffe_id if peer else None}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def ratings(request: bytes, context: grpc.ServicerContext) -> bytes:
    peer = sail.current_request().peer  # type: ignore[union-attr]
    return f"ratings sees {peer.spiffe_id if peer else None}".encode()


def main() -> int:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "peer.yaml"
        config.write_text(STRICT)
        registry = subprocess.Popen(
            [sys.executable, "-m", "sail.cli.main", "registry", "--address", address,
             "--token", TOKEN, "--trust-domain", "example.org", "--config", str(config),
             "--store", "memory://"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            return run(address)
        finally:
            registry.terminate()
            try:
                registry.wait(10)
            except subprocess.TimeoutExpired:
                registry.kill()
                registry.wait(5)


def run(address: str) -> int:
    def token(account: str) -> str:
        with AdminClient(address, TOKEN) as admin:
            return admin.create_join_token("default", account)

    wait_for(lambda: _answers(address), "the registry")
    registrar = RemoteRegistrar(address, TOKEN)
    servers = sail.Mesh.from_bootstrap(bootstrap(address, "reviews"), join_token=token("reviews"),
                                       registrar=registrar)
    grpc_mesh = sail.Mesh.from_bootstrap(bootstrap(address, "ratings"),
                                         join_token=token("ratings"), registrar=registrar)
    client = sail.Mesh.from_bootstrap(bootstrap(address, "productpage"),
                                      join_token=token("productpage"),
                                      services=["reviews", "ratings"])
    try:
        for mesh in (servers, grpc_mesh, client):
            wait_for(lambda mesh=mesh: mesh.wait_identity(1), "a certificate")
        http_port = free_port()
        app = servers.service("reviews", port=http_port)(reviews_app)
        http_server = servers.http_server(app, port=http_port, xds=True).start()
        grpc_server = grpc_mesh.grpc_server("ratings", xds=True, handlers=[
            grpc.method_handlers_generic_handler(
                "demo.Ratings", {"Get": grpc.unary_unary_rpc_method_handler(ratings)})])
        grpc_server.start()
        wait_for(lambda: http_server.mode == "STRICT", "reviews to serve STRICT")
        wait_for(lambda: grpc_server.serving, "ratings to serve")
        identity = client.identity
        assert identity is not None
        hours = (identity.not_after - time.time()) / 3600
        print(f"productpage is {identity.spiffe_id}, its certificate valid for another "
              f"{hours:.0f} h (renewed at half-life)")
        with client.client() as http:
            print(wait_for(lambda: _get(http), "a call to reviews"))
        with client.grpc_channel("ratings") as channel:
            get = channel.unary_unary("/demo.Ratings/Get")
            print(wait_for(lambda: _call(get), "a call to ratings").decode())
        try:
            httpx.get(f"http://127.0.0.1:{http_port}/", timeout=3)
            print("plaintext to reviews: served (unexpected)")
        except httpx.TransportError as exc:
            print(f"plaintext to reviews: refused ({type(exc).__name__})")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}") as plain:
            try:
                plain.unary_unary("/demo.Ratings/Get")(b"", timeout=3)
                print("plaintext to ratings: served (unexpected)")
            except grpc.RpcError as exc:
                print(f"plaintext to ratings: refused ({exc.code().name})")
        grpc_server.stop(0).wait(5)
        http_server.stop()
    finally:
        for mesh in (client, grpc_mesh, servers):
            mesh.close()
        registrar.close()
    return 0


def _answers(address: str) -> bool:
    try:
        with AdminClient(address, TOKEN) as admin:
            admin.status()
        return True
    except Exception:
        return False


def _get(http: httpx.Client) -> str | None:
    try:
        response = http.get("http://reviews/", timeout=5)
    except httpx.TransportError:
        return None
    return response.text if response.status_code == 200 else None


def _call(get: Any) -> bytes | None:
    try:
        return get(b"", timeout=5)  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


if __name__ == "__main__":
    sys.exit(main())
