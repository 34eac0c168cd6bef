"""A gRPC workload for end-to-end tests: a plain grpcio server with one generic unary method,
`/sail.test.Greeter/Hello` (bytes in, bytes out, no protos), answering its own name
(`greeter-v1`), registered with the registry as a workload of `greeter` (service port 50051).

Run as `python -m tests.e2e.grpc_workload` with PORT, VERSION, SAIL_REGISTRY and
SAIL_REGISTRY_TOKEN in the environment (SERVICE defaults to `greeter`). It prints `ready`
once serving and registered; on SIGTERM (or SIGINT) it deregisters and stops. With
`SAIL_SERVER=1` the server is sail's `MeshServer` (which registers itself) instead of a
plain grpcio server registered by hand. With `XDS=1` the server is xDS-enabled (gRFC A36:
grpcio's `xds=True`, or sail's `xds=True`) and serves only once the Listener for its
address has come from the xDS server in `GRPC_XDS_BOOTSTRAP`.

With `XDS_CREDS=1` the plain xDS-enabled server listens with `grpc.xds_server_credentials`
(its TLS from its Listener, certificates from the bootstrap's `certificate_providers`), and
`IDENTITY=<SPIFFE ID>` registers that identity (as a server that cannot serve PERMISSIVE's
two transports); each call then answers the caller's SPIFFE ID (`plaintext` without one).

A call with metadata `fail-every: K` fails with UNAVAILABLE when it is the 1st, (K+1)th...
such call this server has had, to script failures for retry tests.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

import sail
from sail.grpc.server import MeshServer
from sail.registration import Workload
from sail.registry.remote import RemoteRegistrar

SERVICE_PORT = 50051


def _handler(name: bytes, echo_peer: bool = False) -> grpc.GenericRpcHandler:
    scripted = itertools.count()

    def hello(request: bytes, context: Any) -> bytes:
        every = dict(context.invocation_metadata()).get("fail-every")
        if every is not None and next(scripted) % int(every) == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name.decode()}: scripted failure")
        if echo_peer:
            return (context.auth_context().get("peer_spiffe_id") or [b"plaintext"])[0]  # type: ignore[no-any-return]
        return name

    return grpc.method_handlers_generic_handler(
        "sail.test.Greeter",
        {
            "Hello": grpc.unary_unary_rpc_method_handler(
                hello,
                request_deserializer=None,  # bytes as they came
                response_serializer=None,
            )
        },
    )


def main() -> int:
    service = os.environ.get("SERVICE", "greeter")
    port = int(os.environ["PORT"])
    version = os.environ["VERSION"]
    name = f"{service}-{version}"

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    registrar = RemoteRegistrar(
        os.environ["SAIL_REGISTRY"],
        os.environ.get("SAIL_REGISTRY_TOKEN"),
        heartbeat_interval=1.0,
        ttl=3.0,
    )
    labels = {"version": version}
    try:
        if os.environ.get("SAIL_SERVER") == "1":
            return _serve_sail(registrar, service, port, labels, name, stopping)
        return _serve_plain(registrar, service, port, labels, name, stopping)
    finally:
        registrar.close()


def _serve_plain(
    registrar: RemoteRegistrar, service: str, port: int, labels: dict[str, str], name: str,
    stopping: threading.Event,
) -> int:
    xds = os.environ.get("XDS") == "1"
    tls = os.environ.get("XDS_CREDS") == "1"
    server = grpc.server(ThreadPoolExecutor(max_workers=8), xds=xds)
    server.add_generic_rpc_handlers((_handler(name.encode(), echo_peer=tls),))
    address = f"127.0.0.1:{port}"
    if tls:
        bound = server.add_secure_port(
            address, grpc.xds_server_credentials(grpc.insecure_server_credentials())
        )
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        print(f"cannot listen on {address}", file=sys.stderr, flush=True)
        return 1
    server.start()
    identity = os.environ.get("IDENTITY")
    workload = Workload(
        service=service, address="127.0.0.1", port=port, labels=labels,
        service_port=SERVICE_PORT, identity=identity, permissive=identity is None,
    )
    try:
        registrar.register(workload)
        print("ready", flush=True)
        while not stopping.wait(0.2):
            pass
        registrar.deregister(workload)
    finally:
        server.stop(grace=1.0).wait(2.0)
    return 0


def _serve_sail(
    registrar: RemoteRegistrar, service: str, port: int, labels: dict[str, str], name: str,
    stopping: threading.Event,
) -> int:
    mesh = sail.Mesh.from_bootstrap(registrar=registrar) if os.environ.get("XDS") == "1" else None
    options: dict[str, Any] = dict(
        port=port, labels=labels, service_port=SERVICE_PORT,
        handlers=[_handler(name.encode())], drain=1.0, quiet=0.2,
    )
    if mesh is not None:  # an xDS-enabled server of this mesh
        server = mesh.grpc_server(service, xds=True, **options)
    else:
        server = MeshServer(service, registrar, **options)
    server.start()
    print("ready", flush=True)
    while not stopping.wait(0.2):
        pass
    server.stop(grace=1.0).wait(5.0)
    if mesh is not None:
        mesh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
