"""The docs name things that exist: every dotted `sail.x.y` name in README.md and docs/*.md
imports (the longest importable module prefix, then attributes), and `sail.http` exports
the errors the docs tell callers to catch."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import sail
import sail.errors

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# `sail.x.y` not preceded by a word character, dot, slash or dash (file paths, URLs)
NAME = re.compile(r"(?<![\w./-])sail(?:\.[A-Za-z_]\w*)+")

NOT_PYTHON = {
    "sail.registry.v1.Registry",  # the gRPC service of the registration/admin API
}


def _names() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in DOCS:
        for name in NAME.findall(path.read_text()):
            found.setdefault(name, []).append(path.name)
    return found


def resolve(name: str) -> Any:
    """The object a dotted name stands for; `LookupError` if there is none."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: ModuleType | Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but imports something missing
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:i])} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no module {parts[0]!r}")


NAMES = _names()


def test_the_docs_name_something() -> None:
    assert len(NAMES) > 10  # the pattern still finds the names


@pytest.mark.parametrize("name", sorted(set(NAMES) - NOT_PYTHON))
def test_named_in_the_docs_and_exists(name: str) -> None:
    try:
        resolve(name)
    except LookupError as exc:
        pytest.fail(f"{name} (in {', '.join(sorted(set(NAMES[name])))}): {exc}")


def test_resolve_refuses_what_does_not_exist() -> None:
    with pytest.raises(LookupError):
        resolve("sail.http.NoSuchError")
    with pytest.raises(LookupError):
        resolve("sail.no_such_module.Name")
    assert resolve("sail.Mesh.from_bootstrap") == sail.Mesh.from_bootstrap


def test_sail_http_exports_its_errors() -> None:
    import sail.http
    import sail.http.errors

    # every error class there, whatever gets added
    assert set(sail.http.__all__) == {n for n in sail.http.errors.__all__ if n.endswith("Error")}
    assert set(sail.http.__all__) >= {
        "DeadlineExceededError",
        "NoHealthyUpstreamError",
        "NoRouteError",
        "UnknownServiceError",
        "UpstreamOverflowError",
    }
    for name in sail.http.__all__:
        cls = getattr(sail.http, name)
        assert cls is getattr(sail.http.errors, name)
        # an httpx exception and the sail.errors class of the same name, less `Error`
        assert issubclass(cls, httpx.TransportError)
        assert issubclass(cls, getattr(sail.errors, name.removesuffix("Error")))
    assert issubclass(sail.http.DeadlineExceededError, httpx.TimeoutException)
    assert issubclass(sail.http.UpstreamOverflowError, httpx.ConnectError)
