"""grpcio's own `xds:///` client and sail's gRPC channel against the same registry and the
same servers: they must agree on routing (the weighted split within ±3%, header routes)
and on retries of UNAVAILABLE.

Workload v1 is a plain grpcio server registered by hand; v2 is sail's `MeshServer`, so the
native client calling v2 is a grpcio xDS client calling a sail server. A second pair makes both
servers xDS-enabled (gRFC A36: grpcio's `xds=True` and sail's), fed their Listeners by the
same registry.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import sail
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE
from tests.e2e.grpc_client import METHOD
from tests.e2e.procs import ROOT, start, wait_port
from tests.e2e.test_registry import TOKEN, RunningRegistry, split_config
from tests.e2e.test_registry_grpc import Greeters, _stop_all, greeter_config
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

N = 2000
TARGET = "greeter:50051"


def running_greeters(tmp: Path, *, xds: bool) -> Iterator[Greeters]:
    """A registry and two greeter workloads: v1 a grpcio server, v2 sail's `MeshServer`;
    with `xds`, both are xDS-enabled (gRFC A36) and listen once their Listener arrives."""
    registry = RunningRegistry()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        boot = registry.bootstrap("grpc-interop").to_json()
        if xds:
            boot["server_listener_resource_name_template"] = DEFAULT_SERVER_LISTENER_TEMPLATE
        bootstrap = tmp / "bootstrap.json"
        bootstrap.write_text(json.dumps(boot))
        ports = {v: free_port() for v in ("v1", "v2")}
        for version, port in ports.items():
            procs.append(start(
                [sys.executable, "-m", "tests.e2e.grpc_workload"],
                env={
                    "PORT": str(port),
                    "VERSION": version,
                    "SAIL_SERVER": "1" if version == "v2" else "0",
                    "XDS": "1" if xds else "0",
                    "GRPC_XDS_BOOTSTRAP": str(bootstrap),
                    "SAIL_REGISTRY": registry.address,
                    "SAIL_REGISTRY_TOKEN": TOKEN,
                    "PYTHONPATH": str(ROOT),
                },
            ))
        for proc, port in zip(procs, ports.values(), strict=True):
            wait_port(port, proc=proc)
        wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 2)
        yield Greeters(registry, bootstrap)
    finally:
        _stop_all(procs)
        registry.stop()


@pytest.fixture(scope="module")
def greeters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greeters]:
    yield from running_greeters(tmp_path_factory.mktemp("grpc-interop"), xds=False)


@pytest.fixture(scope="module")
def xds_greeters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greeters]:
    yield from running_greeters(tmp_path_factory.mktemp("grpc-interop-xds"), xds=True)


def sail_names(
    greeters: Greeters, n: int, *metadata: str
) -> collections.Counter[str]:
    """`n` calls through a fresh sail mesh and channel: who answered."""
    pairs = tuple(tuple(m.split("=", 1)) for m in metadata)
    with sail.Mesh.from_bootstrap(str(greeters.env["GRPC_XDS_BOOTSTRAP"])) as mesh:
        with mesh.grpc_channel(TARGET) as channel:
            hello = channel.unary_unary(METHOD)
            return collections.Counter(
                hello(b"hi", timeout=10, metadata=pairs).decode() for _ in range(n)
            )


def native_fails(greeters: Greeters, n: int, *metadata: str) -> str:
    """Run grpcio's xDS client expecting a failed call; its error output."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.grpc_client", str(n), *metadata],
        cwd=ROOT, env=greeters.env, capture_output=True, timeout=60, check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr.decode(errors="replace")


def share(counts: collections.Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def test_both_clients_follow_the_same_split_and_header_route(greeters: Greeters) -> None:
    greeters.apply(greeter_config({"v1": 80, "v2": 20}, jason="v2"))
    native = greeters.names(N)
    ours = sail_names(greeters, N)
    for counts in (native, ours):
        assert set(counts) == {"greeter-v1", "greeter-v2"}, counts
        assert share(counts, "greeter-v1") == pytest.approx(0.80, abs=0.03), counts
    assert abs(share(native, "greeter-v1") - share(ours, "greeter-v1")) <= 0.04
    # the header route: both send jason to v2 (a sail server) only
    assert greeters.names(200, "end-user=jason") == {"greeter-v2": 200}
    assert sail_names(greeters, 200, "end-user=jason") == {"greeter-v2": 200}
    greeters.check_no_nacks()


RETRIES = """    retries:
      attempts: 3
      retryOn: unavailable
"""


def test_both_clients_retry_unavailable_as_the_route_says(greeters: Greeters) -> None:
    # every server fails every other call: retried, every call succeeds
    config = split_config("greeter", ("v1", "v2"), {"v1": 50, "v2": 50})
    greeters.apply(config.rstrip("\n") + "\n" + RETRIES)
    assert sum(greeters.names(200, "fail-every=2").values()) == 200
    assert sum(sail_names(greeters, 200, "fail-every=2").values()) == 200
    greeters.check_no_nacks()
    # without the retry policy, both clients see the failures
    greeters.apply(config)
    assert "UNAVAILABLE" in native_fails(greeters, 50, "fail-every=2")
    with pytest.raises(grpc.RpcError) as info:
        sail_names(greeters, 50, "fail-every=2")
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "scripted failure" in (info.value.details() or "")



def test_xds_enabled_servers_of_both_kinds_serve_both_clients(xds_greeters: Greeters) -> None:
    # v1 is grpcio's `xds=True` server, v2 sail's `xds=True` server: each opened its port
    # only once the registry's Listener for it arrived (the fixture waited for the ports).
    xds_greeters.apply(greeter_config({"v1": 50, "v2": 50}, jason="v2"))
    for counts in (xds_greeters.names(400), sail_names(xds_greeters, 400)):
        assert set(counts) == {"greeter-v1", "greeter-v2"}, counts
        assert share(counts, "greeter-v1") == pytest.approx(0.5, abs=0.1), counts
    assert xds_greeters.names(50, "end-user=jason") == {"greeter-v2": 50}
    assert sail_names(xds_greeters, 50, "end-user=jason") == {"greeter-v2": 50}
    xds_greeters.check_no_nacks()  # grpcio's server took its Listener too
