"""A tiny ASGI upstream for end-to-end tests: answers every request with who it is and what
it saw. Run as `python -m uvicorn tests.e2e.backend:app`, named by $BACKEND_NAME."""

from __future__ import annotations

import json
import os
from typing import Any

NAME = os.environ.get("BACKEND_NAME", "backend")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    body = json.dumps(
        {
            "name": NAME,
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "host": headers.get("host", ""),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            # a length, as web frameworks send for a body they hold whole (Starlette's
            # Response does): without it uvicorn sends the body chunked
            "headers": [(b"content-type", b"application/json"), (b"x-backend", NAME.encode()),
                        (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
