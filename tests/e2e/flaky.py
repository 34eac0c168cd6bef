"""A scriptable HTTP/1.1 upstream for resilience tests: it fails on command.

Run as `python -m tests.e2e.flaky PORT NAME`. Every request is answered (or not) according
to the current *mode*, set by a request to the control path:

* `GET /__mode?mode=ok` - answer 200 (the default);
* `GET /__mode?mode=status&status=503` - answer that status;
* `GET /__mode?mode=reset` - read the request, then reset the connection (TCP RST);
* `GET /__mode?mode=slow&delay=2.0` - wait `delay` seconds, then answer 200;
* any of them with `&count=N` - only for the next N requests, then back to `ok`.

`GET /__stats` answers JSON: requests served (control requests excluded) in total and by
method, the `x-envoy-expected-rq-timeout-ms` values seen and the wall-clock arrival times, and the
headers of the last request;
`GET /__clear` zeroes them.
Ordinary responses are JSON `{"name": NAME, "n": <request number>}` with `x-backend: NAME`.
A raw asyncio server rather than uvicorn, so that a reset is a real reset.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
import urllib.parse
from typing import Any


class Upstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode: dict[str, Any] = {"mode": "ok"}
        self.remaining: int | None = None
        self.requests = 0
        self.methods: dict[str, int] = {}
        self.timeouts: list[str] = []
        self.arrivals: list[float] = []
        self.last_headers: dict[str, str] = {}

    def control(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        if path == "/__mode":
            self.mode = dict(query)
            self.remaining = int(query["count"]) if "count" in query else None
            return 200, b"{}"
        if path == "/__stats":
            stats = {
                "name": self.name,
                "requests": self.requests,
                "methods": self.methods,
                "timeouts": self.timeouts[-50:],
                "arrivals": self.arrivals[-50:],
                "last_headers": self.last_headers,
            }
            return 200, json.dumps(stats).encode()
        if path == "/__clear":
            self.requests, self.methods, self.timeouts, self.arrivals = 0, {}, [], []
            return 200, b"{}"
        return 404, b"{}"

    def current(self) -> dict[str, Any]:
        """The mode for this request (consuming one of `count`)."""
        mode = self.mode
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining < 0:
                self.mode, self.remaining = {"mode": "ok"}, None
                mode = self.mode
        return mode

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                url = urllib.parse.urlsplit(target)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path.startswith("/__"):
                    status, body = self.control(url.path, query)
                else:
                    self.requests += 1
                    self.arrivals.append(time.time())
                    self.last_headers = headers
                    self.methods[method] = self.methods.get(method, 0) + 1
                    if "x-envoy-expected-rq-timeout-ms" in headers:
                        self.timeouts.append(headers["x-envoy-expected-rq-timeout-ms"])
                    mode = self.current()
                    kind = mode.get("mode", "ok")
                    if kind == "reset":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        writer.transport.abort()
                        return
                    if kind == "slow":
                        await asyncio.sleep(float(mode.get("delay", "1")))
                    status = int(mode.get("status", "200")) if kind == "status" else 200
                    body = json.dumps({"name": self.name, "n": self.requests}).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"x-backend: {self.name}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


async def main(port: int, name: str) -> None:
    upstream = Upstream(name)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
