"""A mesh workload for end-to-end tests: an ASGI app that answers who it is, made a workload
of $SERVICE by `@mesh.service`, registered with the registry at $SAIL_REGISTRY.

Run as `python -m uvicorn tests.e2e.workload:app --port $PORT`, with SERVICE, PORT, LABELS
(`k=v,k=v`) and SAIL_REGISTRY_TOKEN in the environment.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sail import Mesh
from sail.bootstrap import parse_bootstrap
from sail.registry.remote import RemoteRegistrar

SERVICE = os.environ["SERVICE"]
PORT = int(os.environ["PORT"])
LABELS = dict(kv.split("=", 1) for kv in os.environ.get("LABELS", "").split(",") if kv)
NAME = os.environ.get("BACKEND_NAME", f"{SERVICE}-{LABELS.get('version', '')}")
REGISTRY = os.environ["SAIL_REGISTRY"]

mesh = Mesh.from_bootstrap(
    parse_bootstrap(
        {"xds_servers": [{"server_uri": REGISTRY, "channel_creds": [{"type": "insecure"}]}]}
    ),
    registrar=RemoteRegistrar(
        REGISTRY, os.environ.get("SAIL_REGISTRY_TOKEN"), heartbeat_interval=1.0, ttl=3.0
    ),
)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps({"name": NAME, "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


app = mesh.service(
    SERVICE,
    port=PORT,
    labels=LABELS,
    service_port=9080,
    drain=float(os.environ.get("DRAIN", "5")),
)(_app)
