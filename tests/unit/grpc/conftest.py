from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sail
from sail.grpc import _flow
from tests.unit.grpc.grpc_helpers import Clock, Observer, write_mesh


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_flow, "monotonic", fake)
    return fake


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[Callable[..., sail.Mesh]]:
    meshes: list[sail.Mesh] = []

    def make(**fields: Any) -> sail.Mesh:
        mesh = write_mesh(tmp_path / f"mesh{len(meshes)}.json", **fields)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


@pytest.fixture
def observer() -> Observer:
    return Observer()
