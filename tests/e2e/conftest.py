from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.procs import stop, uvicorn_backend
from tests.helpers import free_port


@pytest.fixture(scope="session")
def backends() -> Iterator[dict[str, int]]:
    """Three real uvicorn upstreams, `{name: port}`, for the whole session."""
    ports = {name: free_port() for name in ("a", "b", "c")}
    procs = []
    try:
        for name, port in ports.items():
            procs.append(uvicorn_backend(name, port))
        yield ports
    finally:
        for proc in procs:
            stop(proc)
