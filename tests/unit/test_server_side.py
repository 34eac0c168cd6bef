"""`@mesh.service` on ASGI and WSGI apps: registration, drain, request context."""

from __future__ import annotations

import asyncio
from pathlib import Path

import flask
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sail
from sail import testing
from sail.model import HealthStatus


def local_mesh(tmp_path: Path) -> sail.Mesh:
    path = tmp_path / "mesh.yaml"
    import yaml

    path.write_text(yaml.safe_dump(testing.service("x", {"x": [("127.0.0.1", 1)]})))
    return sail.Mesh.local(path, poll_interval=0)


def test_asgi_service_registers_sets_context_and_drains(tmp_path: Path) -> None:
    registrar = sail.InProcessRegistrar()
    history: list[dict[str, tuple[sail.Workload, HealthStatus]]] = []
    registrar.subscribe(lambda w: history.append(dict(w)))
    mesh = local_mesh(tmp_path)
    mesh.registrar = registrar

    @sail.operation("GetReview")
    async def handler(request: Request) -> JSONResponse:
        ctx = sail.current_request()
        assert ctx is not None
        return JSONResponse({"service": ctx.service, "operation": ctx.operation,
                             "user": ctx.headers.get("end-user")})

    app = mesh.service("reviews", port=9080, labels={"version": "v2"})(
        Starlette(routes=[Route("/r", handler)])
    )

    async def run() -> dict[str, object]:
        # Drive the ASGI lifespan as a server would.
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[dict[str, str]] = []

        async def send(message: dict[str, str]) -> None:
            sent.append(message)

        task = asyncio.create_task(app({"type": "lifespan"}, queue.get, send))
        await queue.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.01)
        assert "reviews/127.0.0.1:9080" in registrar.workloads
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reviews") as c:
            body = (await c.get("/r", headers={"end-user": "jason"})).json()
        await queue.put({"type": "lifespan.shutdown"})
        await task
        return body  # type: ignore[no-any-return]

    body = asyncio.run(run())
    assert body == {"service": "reviews", "operation": "GetReview", "user": "jason"}
    assert registrar.workloads == {}
    # Drained before removal: the last states were DRAINING, then gone.
    states = [h.get("reviews/127.0.0.1:9080") for h in history]
    assert states[-2] is not None and states[-2][1] is HealthStatus.DRAINING
    assert states[-1] is None
    workload = states[-3][0] if states[-3] else None
    assert workload is not None and workload.labels == {"version": "v2"}
    mesh.close()


def test_wsgi_service(tmp_path: Path) -> None:
    mesh = local_mesh(tmp_path)
    flask_app = flask.Flask("ratings")

    @flask_app.get("/rate")
    @sail.operation("Rate")
    def rate() -> dict[str, object]:
        ctx = sail.current_request()
        assert ctx is not None
        return {"service": ctx.service, "operation": ctx.operation}

    app = mesh.service("ratings", port=9090)(flask_app)
    registrar = mesh.registrar
    assert isinstance(registrar, sail.InProcessRegistrar)
    assert "ratings/127.0.0.1:9090" in registrar.workloads
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://r") as c:
        assert c.get("/rate").json() == {"service": "ratings", "operation": "Rate"}
    app.close()  # type: ignore[attr-defined]
    assert registrar.workloads == {}
    assert sail.current_request() is None
    mesh.close()
