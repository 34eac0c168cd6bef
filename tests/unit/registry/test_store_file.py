"""`FileStore`: applied config and values survive a new store on the same directory; a
corrupt state file is sail's own error naming it; a failed write changes nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sail.errors import SailError
from sail.registry.file_store import FileStore, StoreCorrupt
from sail.registry.store import StoreUnavailable
from sail.registry.stores import open_store


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_configs_and_values_survive_a_restart(tmp_path: Path) -> None:
    async def first() -> None:
        store = FileStore(tmp_path)
        await store.start()
        await store.put_config("a.yaml", "A")
        await store.put_config("b.yaml", "B")
        assert await store.delete_config("b.yaml")
        await store.put_value("ca/root-key", "PEM")
        await store.close()

    async def second() -> tuple[dict[str, str], str | None]:
        store = FileStore(tmp_path)
        seen: list[int] = []
        store.watch(lambda: seen.append(1))
        await store.start()
        assert seen  # watchers hear of the loaded config
        return store.configs(), store.get_value("ca/root-key")

    run(first())
    assert run(second()) == ({"a.yaml": "A"}, "PEM")
    assert oct(os.stat(tmp_path / "state.json").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 9}', '{"format": 1, "configs": {"a": 1}}',
                                  "[" * 5000])
def test_corrupt_state_file_is_a_sail_error_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(StoreCorrupt, match=r"state\.json") as info:
        run(FileStore(tmp_path).start())
    assert isinstance(info.value, SailError)


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    async def go() -> dict[str, str]:
        store = FileStore(tmp_path / "state")
        await store.start()  # no state yet
        (tmp_path / "state").write_text("")  # a file where the directory should be
        with pytest.raises(StoreUnavailable, match=r"state\.json"):
            await store.put_config("a.yaml", "A")
        return store.configs()

    assert run(go()) == {}


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}"), FileStore)
    with pytest.raises(ValueError, match="ABSOLUTE"):
        open_store("file://relative")
