"""The BookInfo-like services of `make demo`, one per process.

    productpage ──▶ details
                └─▶ reviews v1 / v2 / v3 ──▶ ratings   (v2 and v3 only)

Run by run.py as `python bookinfo.py SERVICE VERSION PORT`, with SAIL_REGISTRY and
SAIL_REGISTRY_TOKEN in the environment. Each is a Starlette app run by uvicorn and made a
mesh workload of SERVICE by `mesh.service`: it registers itself with `sail registry` when
it starts (clients call it as `SERVICE:9080`) and drains, then deregisters, on SIGTERM.
Each answers JSON naming its version; productpage and reviews call the services below them
through `mesh.async_client()`, forwarding the `end-user` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sail
from sail.registry.remote import RemoteRegistrar

SERVICE_PORT = 9080  # the port every service is called on, as in BookInfo
DRAIN = 1.0  # seconds a stopping workload drains (5 by default; the demo stops quickly)


def bootstrap(registry: str, node_id: str, cluster: str) -> sail.Bootstrap:
    """An xDS bootstrap for the registry at `registry`; `sail status` shows the node."""
    return sail.parse_bootstrap(
        {
            "xds_servers": [{"server_uri": registry, "channel_creds": [{"type": "insecure"}]}],
            "node": {"id": node_id, "cluster": cluster},
        }
    )


# -- the handlers -------------------------------------------------------------------------


def answer(**fields: Any) -> JSONResponse:
    """JSON naming the service and version serving this request, plus `fields`."""
    ctx = sail.current_request()
    assert ctx is not None  # always set inside a mesh workload
    return JSONResponse(
        {"service": ctx.service, "version": ctx.workload.labels["version"], **fields}
    )


async def call(request: Request, url: str) -> Any:
    """GET `url` through the mesh, forwarding `end-user`; an error status raises."""
    user = request.headers.get("end-user")
    headers = {"end-user": user} if user else {}
    response = await request.app.state.http.get(url, headers=headers)
    response.raise_for_status()
    return response.json()


async def productpage(request: Request) -> JSONResponse:
    details, reviews = await asyncio.gather(
        call(request, "http://details/details/1"), call(request, "http://reviews/reviews/1")
    )
    return answer(details=details, reviews=reviews)


async def details(request: Request) -> JSONResponse:
    return answer(id=request.path_params["id"], author="William Shakespeare", year=1595)


async def reviews(request: Request) -> JSONResponse:
    version = request.app.state.version
    if version == "v1":  # v1 shows no stars, so it never calls ratings
        return answer(id=request.path_params["id"])
    ratings = await call(request, "http://ratings/ratings/1")
    return answer(
        id=request.path_params["id"], ratings=ratings, stars="black" if version == "v2" else "red"
    )


async def ratings(request: Request) -> JSONResponse:
    return answer(id=request.path_params["id"], stars=4)


Handler = Callable[[Request], Awaitable[JSONResponse]]
ROUTES: dict[str, tuple[str, Handler]] = {
    "productpage": ("/productpage", productpage),
    "details": ("/details/{id}", details),
    "reviews": ("/reviews/{id}", reviews),
    "ratings": ("/ratings/{id}", ratings),
}


def upstreams(service: str, version: str) -> list[str]:
    """The services this one calls. The mesh subscribes to them as it starts, so they are
    resolved before the first requests (productpage's go to two services at once)."""
    if service == "productpage":
        return ["details", "reviews"]
    return ["ratings"] if service == "reviews" and version != "v1" else []


# -- the process ----------------------------------------------------------------------------


def make_app(mesh: sail.Mesh, service: str, version: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with mesh.async_client(timeout=5) as http:
            app.state.http = http
            yield

    path, handler = ROUTES[service]
    app = Starlette(routes=[Route(path, handler)], lifespan=lifespan)
    app.state.version = version
    return app


def main() -> None:
    service, version, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    registry, token = os.environ["SAIL_REGISTRY"], os.environ["SAIL_REGISTRY_TOKEN"]
    mesh = sail.Mesh.from_bootstrap(
        bootstrap(registry, f"{service}-{version}", service),
        services=upstreams(service, version),
        registrar=RemoteRegistrar(registry, token),
    )
    workload = mesh.service(
        service, port=port, service_port=SERVICE_PORT, labels={"version": version}, drain=DRAIN
    )(make_app(mesh, service, version))
    try:
        uvicorn.run(workload, host="127.0.0.1", port=port, log_level="warning")
    finally:
        mesh.close()


if __name__ == "__main__":
    main()
