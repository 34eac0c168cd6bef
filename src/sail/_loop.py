"""sail's one background event loop, for grpc.aio servers run inside a process that has
no loop of its own: `sail.testing.XdsServer`, and a `Registry` embedded in tests.

grpc.aio binds its completion-queue poller to the first event loop that uses it and
forwards events for other loops through it, so a loop that closes while others still use
gRPC breaks them ("Event loop is closed"). One long-lived daemon loop avoids that. (The xDS
client uses sync grpcio on threads instead; see `sail.xds.client`.) A forked child gets a
fresh loop on first use.
"""

from __future__ import annotations

import asyncio
import os
import threading

__all__ = ["background_loop"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The running background loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None and _thread is not None and _thread.is_alive():
        return loop
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def main() -> None:
                asyncio.set_event_loop(new_loop)
                ready.set()
                new_loop.run_forever()

            _thread = threading.Thread(target=main, name="sail-io", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
        return _loop


def _after_fork_in_child() -> None:
    global _loop, _thread
    _loop = None
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
