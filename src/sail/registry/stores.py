"""`open_store(url)`: the `Store` a `--store` URL names.

* `memory` (also `memory:` and `memory://`, the default of `sail registry`): a
  `sail.registry.store.MemoryStore`;
* `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`: a `sail.registry.etcd.EtcdStore`.

It lives apart from both so that neither imports the other for it: `sail.registry.etcd`
imports `sail.registry.store` (the `Store` interface it implements), and nothing in
`sail.registry.store` imports `sail.registry.etcd`.
"""

from __future__ import annotations

from sail.registry.etcd import EtcdStore
from sail.registry.store import MemoryStore, Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """The store a `--store` URL names: `memory` (the default) or
    `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (see `sail.registry.etcd`). `ValueError` for
    anything else."""
    text = url.strip()
    if text in ("memory", "memory:", "memory://"):
        return MemoryStore()
    if text.startswith("etcd://"):
        return EtcdStore.from_url(text)
    raise ValueError(
        f"unknown store {url!r}: expected 'memory' or 'etcd://HOST:PORT[/PREFIX]'"
    )
