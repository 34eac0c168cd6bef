"""The upstream the HTTP benchmark sends to: a tiny HTTP/1.1 server, in its own process.

```
python benchmarks/upstream.py 8001 8002 8003               # built-in asyncio server
python benchmarks/upstream.py --server uvicorn 8001        # uvicorn (h11) and an ASGI app
```

Every request gets the same small `200` response, kept alive. The built-in server is a bare
`asyncio.Protocol` that only finds where each request ends (headers, then `Content-Length`
bytes of body): with no framework in the way it costs the least CPU per request, so on a
small machine it steals the least from the clients being measured. `uvicorn` is the
realistic choice (h11, no access log, log level warning). Both listen on `127.0.0.1` only,
on every port given, with `TCP_NODELAY` set on every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

BODY = b"hello from the upstream\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
MAX_HEADER = 64 * 1024


class _Http11(asyncio.Protocol):
    """Answers pipelined or sequential requests on one keep-alive connection."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        answers = 0
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER:
                    close = True
                break
            head = bytes(buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break  # the body is still on its way
            del buffer[: end + 4 + length]
            answers += 1
            if b"\r\nconnection: close" in head:
                close = True
                break
        if answers and self._transport is not None:
            self._transport.write(RESPONSE * answers)
        if close and self._transport is not None:
            self._transport.close()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same response as a minimal ASGI app (for `--server uvicorn`)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _listen(port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when
    # their `proto` says TCP, and accepted sockets inherit it from the listener (0 if not
    # given). Without it the chunked responses of uvicorn wait out delayed ACKs (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve_asyncio(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Http11, sock=_listen(p)) for p in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def _serve_uvicorn(ports: list[int]) -> None:
    import uvicorn

    config = uvicorn.Config(
        app, http="h11", access_log=False, log_level="warning", lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[_listen(p) for p in ports])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--server", choices=("asyncio", "uvicorn"), default="asyncio")
    args = parser.parse_args()
    if args.server == "uvicorn":
        _serve_uvicorn(args.ports)
    else:
        asyncio.run(_serve_asyncio(args.ports))


if __name__ == "__main__":
    main()
