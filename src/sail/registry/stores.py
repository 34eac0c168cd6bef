"""`open_store(url)`: the `Store` a `--store` URL names.

* `file:///PATH` (what `sail registry` uses by default, `PATH` being its `--state-dir`): a
  `sail.registry.file_store.FileStore`, keeping applied config in `PATH/state.json`;
* `memory` (also `memory:` and `memory://`): a `sail.registry.store.MemoryStore`, losing
  applied config when the registry stops;
* `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`: a `sail.registry.etcd.EtcdStore`.

It lives apart from both so that neither imports the other for it: `sail.registry.etcd`
imports `sail.registry.store` (the `Store` interface it implements), and nothing in
`sail.registry.store` imports `sail.registry.etcd`.
"""

from __future__ import annotations

from sail.registry.etcd import EtcdStore
from sail.registry.file_store import FileStore
from sail.registry.store import MemoryStore, Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """The store a `--store` URL names: `file:///PATH`, `memory` or
    `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (see `sail.registry.etcd`). `ValueError` for
    anything else."""
    text = url.strip()
    if text in ("memory", "memory:", "memory://"):
        return MemoryStore()
    if text.startswith("file://"):
        path = text[len("file://"):]
        if not path.startswith("/"):
            raise ValueError(f"store {url!r}: expected file:///ABSOLUTE/PATH")
        return FileStore(path)
    if text.startswith("etcd://"):
        return EtcdStore.from_url(text)
    raise ValueError(
        f"unknown store {url!r}: expected 'file:///PATH', 'memory' or "
        "'etcd://HOST:PORT[/PREFIX]'"
    )
