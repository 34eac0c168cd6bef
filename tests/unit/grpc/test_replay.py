"""The replay buffer of streamed requests (`sail.grpc._replay`): one buffer, a sync and an
async reader, and the aio channel's `write()` calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sail.grpc._replay import (
    REPLAY_LIMIT,
    Replay,
    aread,
    done_writing,
    message_size,
    read,
    rewrite,
    write,
)


def test_each_view_reads_from_the_start_and_the_source_once() -> None:
    pulled: list[int] = []

    def source() -> Any:
        for n in range(4):
            pulled.append(n)
            yield n

    replay = Replay(source(), threading.Lock())
    first = read(replay)
    assert [next(first), next(first)] == [0, 1]
    second = read(replay)
    assert list(second) == [0, 1, 2, 3]
    assert list(first) == [2, 3]  # a view behind the front reads what was kept
    assert pulled == [0, 1, 2, 3]


def test_past_the_limit_only_the_latest_view_goes_on() -> None:
    big = b"x" * (REPLAY_LIMIT // 2 + 1)
    replay = Replay(iter([big, big, b"a", b"b"]), threading.Lock())
    stale = read(replay)
    assert [next(stale), next(stale)] == [big, big]
    assert replay.overflowed and replay.kept == []
    latest = read(replay)
    assert list(stale) == []  # no longer the latest: it stops
    assert list(latest) == [b"a", b"b"]  # the latest reads on from the source


def test_the_async_reader_takes_sync_and_async_sources() -> None:
    async def parts() -> Any:
        for part in (b"1", b"2"):
            yield part

    async def main() -> None:
        for source in (parts().__aiter__(), iter([b"1", b"2"])):
            replay = Replay(source, asyncio.Lock())
            assert [m async for m in aread(replay)] == [b"1", b"2"]
            assert [m async for m in aread(replay)] == [b"1", b"2"]

    asyncio.run(main())


class Inner:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.done = False

    async def write(self, message: bytes) -> None:
        self.written.append(message)

    async def done_writing(self) -> None:
        self.done = True


def test_writes_are_kept_and_written_again_to_a_new_attempt() -> None:
    async def main() -> None:
        replay = Replay(None, asyncio.Lock())
        first = Inner()
        await write(replay, lambda: first, b"a")
        await write(replay, lambda: first, b"b")
        await done_writing(replay, lambda: first)
        second = Inner()
        await rewrite(replay, second)
        assert first.written == second.written == [b"a", b"b"]
        assert first.done and second.done

    asyncio.run(main())


def test_message_sizes() -> None:
    class Proto:
        def ByteSize(self) -> int:
            return 7

    assert message_size(Proto()) == 7
    assert message_size(b"abc") == 3
    assert message_size(object()) == 0
