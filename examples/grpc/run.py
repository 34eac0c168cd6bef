"""gRPC through the mesh: a drop-in channel, per-call balancing, retries and deadlines.

Run it as `python examples/grpc/run.py` (nothing to install beyond sail; a few seconds).
Three workloads of service `greeter` run in this process as sail gRPC servers; `greeter-c`
answers UNAVAILABLE. The mesh (local mode, a file of Envoy resources) has a route with a
retry policy (`retry_on: unavailable`, 2 retries, never the same host twice) and a
`max_stream_duration` of 1 s for `/demo.Greeter/Slow`.

`greeter-a` is an xDS-enabled server (gRFC A36, `xds=True`): it opens its port only once
the mesh has a Listener for its address, which the same file holds.

What you see: greeter-a not serving until the file is written, then serving; calls spread
over a, b and c per call; those that land on c are retried on
another workload (the caller gets an answer, and `call.sail` shows the UNAVAILABLE
attempt); a call to `Slow` without a deadline of its own ends with DEADLINE_EXCEEDED after
1 s, and the server was told how long it had.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

import sail
from sail import testing


def handlers(name: str, told: list[float]) -> Any:
    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        if name == "greeter-c":
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is down")
        return name.encode()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        told.append(context.time_remaining())
        time.sleep(2)
        return b"late"

    return grpc.method_handlers_generic_handler("demo.Greeter", {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })


def mesh_file(path: Path, ports: dict[str, int], xds_server: int) -> None:
    retry = {"retry_on": "unavailable", "num_retries": 2,
             "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}]}
    routes = [
        testing.route("greeter", prefix="/demo.Greeter/Slow",
                      max_stream_duration={"max_stream_duration": "1s"}),
        testing.route("greeter", retry_policy=retry),
    ]
    resources = [
        testing.api_listener("greeter:50051", routes=testing.route_config("greeter", routes)),
        {**testing.eds_cluster("greeter"), "type": "STATIC",
         "load_assignment": testing.load_assignment(
             "greeter", [("127.0.0.1", port) for port in ports.values()])},
        testing.server_listener("127.0.0.1", xds_server),  # for greeter-a's own port
    ]
    resources[1].pop("eds_cluster_config")
    resources[1]["load_assignment"].pop("@type")
    path.write_text(json.dumps({"resources": resources}))


def main() -> int:
    told: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.json"
        path.write_text(json.dumps({"resources": []}))
        mesh = sail.Mesh.local(path, poll_interval=0.2)
        servers = {}
        for name in ("greeter-a", "greeter-b", "greeter-c"):
            xds = name == "greeter-a"
            server = mesh.grpc_server("greeter", service_port=50051, drain=0, xds=xds)
            server.add_generic_rpc_handlers((handlers(name, told),))
            server.start()
            servers[name] = server
        a = servers["greeter-a"]
        state = a.serving_state
        assert state is not None  # an xDS-enabled server has one
        print(f"greeter-a serving: {a.serving} ({state.reason})")
        mesh_file(path, {name: s.port for name, s in servers.items()}, a.port)
        time.sleep(0.5)  # the file is re-read every 0.2 s
        print(f"greeter-a serving: {a.serving}")
        try:
            with mesh.grpc_channel("greeter:50051") as channel:
                hello = channel.unary_unary("/demo.Greeter/Hello")
                answered: collections.Counter[str] = collections.Counter()
                for _ in range(12):
                    reply, call = hello.with_call(b"hi", timeout=5)
                    answered[reply.decode()] += 1
                    info = call.sail
                    if info.retried:
                        print("retried:", "; ".join(str(a) for a in info.attempts))
                print("answered by:", dict(sorted(answered.items())))
                start = time.monotonic()
                try:
                    channel.unary_unary("/demo.Greeter/Slow")(b"hi")
                except grpc.RpcError as exc:
                    print(f"{exc.code().name} after {time.monotonic() - start:.1f} s; "
                          f"the server was told it had {told[0]:.1f} s")
        finally:
            for server in servers.values():
                server.stop(0).wait(5)
            mesh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
