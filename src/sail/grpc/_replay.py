"""The request messages of a call whose requests stream, kept so that a retry can send them
again: one buffer (`Replay`) for both channels, read through a fresh view per attempt.

```python
replay = Replay(iter(requests), threading.Lock())    # aio: asyncio.Lock(), a sync or async
send(read(replay))                                   #   iterator, or None for write() calls
send(read(replay))         # a retry: the same messages from the start, then the rest
```

The source is read once, on demand, by whichever attempt gets furthest; what it gave is
kept for the views behind. Past `REPLAY_LIMIT` bytes nothing more is kept and the buffer
`overflowed`: the flow no longer retries the call (what was sent cannot be sent again),
and only the latest view goes on reading the source. `read` and `aread` are the sync and
async readers, the same code but for `await`; the lock keeps two attempts' readers (grpcio
reads each attempt's requests on a thread of its own) from pulling the same message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from sail.resilience.retry import REPLAY_LIMIT

__all__ = [
    "REPLAY_LIMIT", "Replay", "aread", "done_writing", "message_size", "read", "rewrite", "write",
]


class _Step:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PULL = _Step("PULL")  # the view is at the front: take the next message from the source
END = _Step("END")  # the view has nothing more to read


def message_size(message: object) -> int:
    """The size of a request message, for the replay limit (`REPLAY_LIMIT`)."""
    byte_size = getattr(message, "ByteSize", None)
    if callable(byte_size):
        return int(byte_size())
    if isinstance(message, bytes | bytearray | memoryview | str):
        return len(message)
    return 0


class Replay:
    """The request messages of one call, kept for its retries (see the module docstring).
    `source`: the call's request iterator (sync, or async on the aio channel), or `None`
    when the messages come from `write()` calls; `lock`: a `threading.Lock` or an
    `asyncio.Lock`, held around each step of a reader."""

    __slots__ = ("ended", "kept", "latest", "lock", "overflowed", "size", "source")

    def __init__(self, source: Any, lock: Any) -> None:
        self.source = source
        self.lock = lock
        self.kept: list[Any] = []
        self.size = 0
        self.latest = 0
        self.ended = False
        self.overflowed = False

    def view(self) -> int:
        """A new view (the latest, for the next attempt): its number."""
        self.latest += 1
        return self.latest

    def at(self, view: int, index: int) -> Any:
        """What `view` reads as its `index`-th message: a kept message, `PULL` (take it
        from the source, then `keep` it, or `end` when the source is done), or `END`."""
        if not self.overflowed and index < len(self.kept):
            return self.kept[index]
        if self.ended or (self.overflowed and view != self.latest):
            return END
        return PULL

    def keep(self, message: Any) -> None:
        """Count a message that went out, keeping it while under `REPLAY_LIMIT`."""
        if self.overflowed:
            return
        self.size += message_size(message)
        if self.size > REPLAY_LIMIT:
            self.overflowed = True
            self.kept.clear()
        else:
            self.kept.append(message)

    def end(self) -> None:
        """The source is done (or `done_writing()` was called)."""
        self.ended = True


def read(replay: Replay) -> Iterator[Any]:
    """A sync view of `replay`: every message from the first (an attempt's requests). The
    view is the latest from now on, before it is first read."""
    return _read(replay, replay.view())


def _read(replay: Replay, view: int) -> Iterator[Any]:
    index = 0
    source = replay.source
    while True:
        with replay.lock:
            message = replay.at(view, index)
            if message is PULL:
                try:
                    message = next(source)
                except StopIteration:
                    replay.end()
                    return
                replay.keep(message)
            elif message is END:
                return
        index += 1
        yield message


def aread(replay: Replay) -> AsyncIterator[Any]:
    """`read` for the aio channel, whose source may be a sync or an async iterator."""
    return _aread(replay, replay.view())


async def _aread(replay: Replay, view: int) -> AsyncIterator[Any]:
    index = 0
    source = replay.source
    is_async = hasattr(source, "__anext__")
    while True:
        async with replay.lock:
            message = replay.at(view, index)
            if message is PULL:
                try:
                    message = await source.__anext__() if is_async else next(source)
                except (StopIteration, StopAsyncIteration):
                    replay.end()
                    return
                replay.keep(message)
            elif message is END:
                return
        index += 1
        yield message


async def write(replay: Replay, inner: Callable[[], Any], message: Any) -> None:
    """A `write()` of the aio channel: keep `message` and write it to the current attempt
    (`inner()`, read under the lock: a retry may have replaced it meanwhile)."""
    async with replay.lock:
        replay.keep(message)
        await inner().write(message)


async def done_writing(replay: Replay, inner: Callable[[], Any]) -> None:
    """A `done_writing()` of the aio channel, remembered for the retries."""
    async with replay.lock:
        replay.end()
        await inner().done_writing()


async def rewrite(replay: Replay, inner: Any) -> None:
    """Write what was written so far to a new attempt's call `inner` (write() calls)."""
    async with replay.lock:
        for message in replay.kept:
            await inner.write(message)
        if replay.ended:
            await inner.done_writing()
