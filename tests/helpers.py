"""Shared test helpers: ports, polling, a recording xDS handler."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class Recorder:
    """An XdsHandler that records every call, for protocol tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.values: dict[tuple[str, str], Any] = {}
        self.absent: set[tuple[str, str]] = set()
        self.removed: set[tuple[str, str]] = set()
        self.errors: dict[tuple[str, str], str] = {}
        self.connected = False
        self.lock = threading.Lock()

    def on_resources(self, type_url, changed, removed, errors, absent):  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append(("resources", (type_url, dict(changed), removed, dict(errors),
                                              absent)))
            for name, value in changed.items():
                self.values[(type_url, name)] = value
                self.absent.discard((type_url, name))
            for name in removed:
                self.values.pop((type_url, name), None)
                self.removed.add((type_url, name))
            for name in absent:
                self.absent.add((type_url, name))
            for name, err in errors.items():
                self.errors[(type_url, name)] = err

    def on_connection(self, connected: bool, detail: str) -> None:
        with self.lock:
            self.connected = connected
            self.events.append(("connection", (connected, detail)))
