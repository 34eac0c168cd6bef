"""Local mode: mesh config from a YAML or JSON file in Envoy's JSON form, no registry.

The file holds Listener, RouteConfiguration, Cluster and ClusterLoadAssignment resources,
either as a list (or `{"resources": [...]}`) of objects with an `"@type"`, or as an Envoy
static bootstrap (`static_resources: {listeners, clusters}`). Resources go through the same
decoders as xDS, so a file is validated exactly as a server's response would be.

The file is polled for changes (once a second by default) and re-read once a change has
held still for one interval (so a half-written file is never read). A reload with errors
keeps the last good version of each bad resource and uses the good ones, like a partial
NACK, and the errors are logged naming the file and the resource (an entry that does not
parse at all is one bad resource too, named by its `name` or its place, `[3]`); a reload
that finds no resources at all keeps the last good config. The first load refuses a file
with any error (`ConfigError`), as Envoy refuses to start on a bad static config: there
is no last good version to keep.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sail.errors import ConfigError, ResourceError
from sail.xds.codec.envoy_json import load_entries
from sail.xds.codec.types import RESOURCE_TYPES, resource_name

__all__ = ["LocalConfig", "load_file"]

log = logging.getLogger("sail.local")


def load_file(
    path: Path,
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """Read and decode `path`: `(resources by type URL and name, errors by (type URL, name))`.

    Raises `ConfigError` naming the file when it cannot be read or parsed at all.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
            yaml.YAMLError) as exc:
        # Besides YAMLError, PyYAML's constructors raise these for a bad explicit tag
        # (`!!timestamp 2020-13-45`, `!!bool x`).
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{exc}") from None
    if data is None:
        data = []
    unique, expanded = _sizes(data)
    if expanded > _MAX_EXPANSION and expanded > _ALIAS_FACTOR * unique:
        raise ConfigError(f"{path}: its YAML aliases expand {unique:,} values to "
                          f"{expanded:,}; write the repeated parts out")
    try:
        entries = load_entries(data)
    except ResourceError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    resources: dict[str, dict[str, Any]] = {t: {} for t in RESOURCE_TYPES}
    errors: dict[tuple[str, str], str] = {}
    for type_url, entry_name, parsed in entries:
        if isinstance(parsed, ResourceError):
            errors[(type_url, entry_name)] = f"{path}: {parsed}"
            continue
        name = resource_name(parsed)
        try:
            resources[type_url][name] = RESOURCE_TYPES[type_url].decode(parsed)
        except ResourceError as exc:
            errors[(type_url, name)] = f"{path}: {exc}"
    return resources, errors


_MAX_EXPANSION = 10_000
_ALIAS_FACTOR = 10


def _sizes(data: object) -> tuple[int, int]:
    """`(distinct values, values once YAML aliases are expanded)` of a loaded document, in
    time linear in the distinct ones: a "billion laughs" of a few hundred bytes is found
    without expanding it (JSON and alias-free YAML give equal counts)."""
    sizes: dict[int, int] = {}
    distinct = 0
    stack: list[tuple[object, bool]] = [(data, False)]
    while stack:
        value, children_done = stack.pop()
        if not isinstance(value, dict | list) or (id(value) in sizes and not children_done):
            continue
        items = list(value.values()) if isinstance(value, dict) else value
        if not children_done:
            stack.append((value, True))
            stack.extend((item, False) for item in items if isinstance(item, dict | list))
            continue
        sizes[id(value)] = 1 + sum(sizes.get(id(item), 1) if isinstance(item, dict | list)
                                   else 1 for item in items)
        distinct += 1 + sum(not isinstance(item, dict | list) for item in items)
    return max(distinct, 1), sizes.get(id(data), 1)


class LocalConfig:
    """Loads a file into a consumer and keeps it current.

    **Parameters**

    * `path` - the YAML (`.yaml`, `.yml`) or JSON (`.json`) file.
    * `apply` - receives the full resource set after each successful (re)load.
    * `poll_interval` - seconds between checks of the file; `0` disables watching.

    The first load raises `ConfigError` on any error, since there is no last good
    config to fall back to.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        apply: Callable[[Mapping[str, Mapping[str, Any]]], None],
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._poll = poll_interval
        self._stop = threading.Event()
        self._current: dict[str, dict[str, Any]] = {}
        self.errors: dict[tuple[str, str], str] = {}
        resources, errors = load_file(self.path)
        if errors:
            raise ConfigError("; ".join(errors.values()))
        self._stamp = self._stat()
        self._current = resources
        apply(resources)
        self._thread: threading.Thread | None = None
        self.start_watching()

    def start_watching(self) -> None:
        """Start the watcher thread (again, in a forked child)."""
        if self._poll > 0 and not self._stop.is_set():
            self._thread = threading.Thread(target=self._watch, name="sail-local", daemon=True)
            self._thread.start()

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _watch(self) -> None:
        pending: tuple[float, int] | None = None
        while not self._stop.wait(self._poll):
            try:
                stamp = self._stat()
                if stamp is None or stamp == self._stamp:
                    continue
                # Read a changed file only once it has stayed the same for one interval:
                # an editor or `write_text` may be halfway through writing it.
                if stamp != pending:
                    pending = stamp
                    continue
                self._stamp = stamp
                self.reload()
            except Exception:  # the watcher must never die silently
                log.exception("sail local: reloading %s failed; keeping the last config",
                              self.path)

    def reload(self) -> None:
        """Re-read the file now. Bad resources keep their last good version."""
        try:
            resources, errors = load_file(self.path)
        except ConfigError as exc:
            self.errors = {("", ""): str(exc)}
            log.error("sail local: %s; keeping the last good config", exc)
            return
        if not any(resources.values()) and any(self._current.values()):
            # An empty file is far more often a write gone wrong than a wish to remove every
            # service; keep serving (to start from nothing, start from an empty file).
            self.errors = {("", ""): f"{self.path}: no resources; keeping the last good config"}
            log.error("sail local: %s", self.errors[("", "")])
            return
        for (type_url, name), message in errors.items():
            log.error("sail local: %s; keeping its last good version", message)
            last_good = self._current.get(type_url, {})
            if name in last_good:
                resources[type_url][name] = last_good[name]
        self.errors = errors
        self._current = resources
        self._apply(resources)

    def close(self) -> None:
        self._stop.set()
