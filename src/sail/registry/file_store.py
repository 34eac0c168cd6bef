"""`FileStore`: the default store of `sail registry`, keeping applied config on disk.

Workloads are leases and live in memory exactly as in `MemoryStore` (they come back by
heartbeat and re-registration after a restart). What is durable is what nobody would send
again by itself:

* the config documents (`put_config` / `delete_config`, i.e. `sail apply` / `sail delete`);
* a small key/value area (`put_value` / `get_value` / `delete_value`: str keys, str values),
  for state the registry owns, such as the CA root key and certificate.

Both are one JSON file, `state.json` in the state directory (created with mode 0700, the file
written with mode 0600 since it may hold a private key), replaced atomically on every write:
written to a temporary file in the same directory, fsynced, `os.replace`d over the old one,
and the directory fsynced. A crash (kill -9) at any point leaves the old or the new state,
never a torn one.

**Off the event loop.** Loading (`start`) and every write run in a worker thread
(`asyncio.to_thread`); writes are serialized by an `asyncio.Lock`. The in-memory view (and
its watchers) change once the file holds the new state, before the write returns, so a read
right after a write sees it, as the `Store` interface requires; a write that fails (disk
full, no permission) raises `StoreUnavailable` (the API answers UNAVAILABLE) and changes
nothing.

**Bad input.** A state file that is not valid JSON, or not the shape written here, makes
`start()` raise `StoreCorrupt`, naming the file and what is wrong: the registry refuses to
start rather than silently serving a mesh without the applied config (fail closed). Move the
file away (or fix it) to start afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sail.errors import SailError
from sail.registry.store import MemoryStore, StoreUnavailable

__all__ = ["FileStore", "StoreCorrupt", "default_state_dir"]

STATE_FILE = "state.json"
_FORMAT = 1


class StoreCorrupt(SailError):
    """The store's state file cannot be read; the message names the file and the fault."""


def default_state_dir(port: int) -> Path:
    """`$XDG_STATE_HOME/sail/registry-<port>`, `$XDG_STATE_HOME` defaulting to
    `~/.local/state`: one state directory per registry port on one machine."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sail" / f"registry-{port}"


class FileStore(MemoryStore):
    """A `MemoryStore` whose config documents and key/value area survive restarts in
    `<state_dir>/state.json` (module docstring)."""

    def __init__(
        self, state_dir: str | os.PathLike[str], *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self._dir = Path(state_dir)
        self._path = self._dir / STATE_FILE
        self._values: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._writes = 0

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        configs, values = await asyncio.to_thread(self._load)
        self._configs.update(configs)
        self._values.update(values)
        if configs:
            self._changed()

    def status(self) -> dict[str, Any]:
        return {"kind": "file", "path": str(self._path), "configs": len(self._configs),
                "writes": self._writes}

    # -- config documents (durable) -----------------------------------------------------------

    async def put_config(self, source: str, text: str) -> None:
        async with self._lock:
            if self._configs.get(source) == text:
                return
            await self._save({**self._configs, source: text}, self._values)
            self._configs[source] = text
        self._changed()

    async def delete_config(self, source: str) -> bool:
        async with self._lock:
            if source not in self._configs:
                return False
            configs = dict(self._configs)
            del configs[source]
            await self._save(configs, self._values)
            del self._configs[source]
        self._changed()
        return True

    # -- key/value area (durable) -------------------------------------------------------------

    def get_value(self, key: str) -> str | None:
        """The value stored under `key`, or None."""
        return self._values.get(key)

    async def create_value(self, key: str, value: str) -> str:
        """`Store.create_value`, on disk when it returns."""
        async with self._lock:
            if key in self._values:
                return self._values[key]
            await self._save(self._configs, {**self._values, key: value})
            self._values[key] = value
        return value

    async def put_value(self, key: str, value: str) -> None:
        """Store `value` under `key` durably (on disk when this returns)."""
        async with self._lock:
            await self._save(self._configs, {**self._values, key: value})
            self._values[key] = value

    async def delete_value(self, key: str) -> bool:
        """Remove `key`; False if there was none."""
        async with self._lock:
            if key not in self._values:
                return False
            values = dict(self._values)
            del values[key]
            await self._save(self._configs, values)
            del self._values[key]
        return True

    # -- the file -----------------------------------------------------------------------------

    async def _save(self, configs: dict[str, str], values: dict[str, str]) -> None:
        """Write the state that will be the view once this returns; the view changes only
        after the file does, so a failed write (`StoreUnavailable`) changes nothing."""
        snapshot = {"format": _FORMAT, "configs": dict(configs), "values": dict(values)}
        # The caller holds self._lock: one read-modify-write at a time, in call order.
        try:
            await asyncio.to_thread(self._write, snapshot)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot write the registry state file {self._path}: "
                f"{exc.strerror or exc}") from None
        self._writes += 1

    def _write(self, snapshot: dict[str, Any]) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(snapshot, indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dfd = os.open(self._dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _load(self) -> tuple[dict[str, str], dict[str, str]]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return {}, {}
        except OSError as exc:
            raise StoreCorrupt(f"cannot read the registry state file {self._path}: {exc}") \
                from None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StoreCorrupt(
                f"the registry state file {self._path} is not valid JSON ({exc}); "
                "move it away to start with no applied config") from None
        if not isinstance(doc, dict):
            raise StoreCorrupt(f"the registry state file {self._path}: expected an object")
        if doc.get("format") != _FORMAT:
            raise StoreCorrupt(
                f"the registry state file {self._path}: unknown format {doc.get('format')!r}")
        return (self._str_map(doc.get("configs", {}), "configs"),
                self._str_map(doc.get("values", {}), "values"))

    def _str_map(self, value: object, field: str) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise StoreCorrupt(
                f"the registry state file {self._path}: {field!r} must map strings to strings")
        return dict(value)
