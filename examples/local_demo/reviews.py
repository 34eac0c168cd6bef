"""One version of the `reviews` service: a Starlette app made a mesh workload by sail.

Run by run.py as `python reviews.py VERSION PORT MESH_FILE`.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sail

version, port, mesh_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mesh = sail.Mesh.local(mesh_file)


@sail.operation("GetReview")
async def get_review(request: Request) -> JSONResponse:
    ctx = sail.current_request()
    return JSONResponse(
        {
            "version": version,
            "id": request.path_params["id"],
            "operation": ctx.operation if ctx else None,
        }
    )


app = mesh.service("reviews", port=port, labels={"version": version})(
    Starlette(routes=[Route("/reviews/{id}", get_review)])
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
