"""`sail`: inspect and check mesh config.

* `sail check FILE` - validate a local-mode file as xDS would (exit 1 with the errors).
* `sail config-dump (--local FILE | --bootstrap PATH) [--service NAME ...]` - resolve the
  config and print, as JSON, the listeners, routes, clusters and endpoints a process would
  run with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from sail.errors import SailError

__all__ = ["main"]


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if f.repr is not False
        }
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    return value


def _check(path: str) -> int:
    from sail.local import load_file

    resources, errors = load_file(Path(path))
    for message in errors.values():
        print(message, file=sys.stderr)
    counts = ", ".join(f"{len(v)} {t.rsplit('.', 1)[-1]}" for t, v in resources.items())
    print(f"{path}: {counts}; {len(errors)} rejected")
    return 1 if errors else 0


def _dump(args: argparse.Namespace) -> int:
    from sail.mesh import Mesh

    if args.local:
        mesh = Mesh.local(args.local, poll_interval=0)
    else:
        mesh = Mesh.from_bootstrap(args.bootstrap, services=args.service)
        deadline = time.monotonic() + args.wait
        for name in args.service:
            mesh.is_mesh_host(name.split(":")[0], name)
            if time.monotonic() > deadline:
                break
    try:
        print(json.dumps(_jsonable(mesh.snapshot), indent=2, sort_keys=True))
    finally:
        mesh.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sail", description="sail, a proxyless service mesh")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a local-mode config file")
    check.add_argument("file")
    dump = sub.add_parser("config-dump", help="print the resolved config as JSON")
    source = dump.add_mutually_exclusive_group(required=True)
    source.add_argument("--local", metavar="FILE", help="a local-mode config file")
    source.add_argument("--bootstrap", metavar="PATH", help="an xDS bootstrap file")
    dump.add_argument("--service", action="append", default=[], help="service to resolve")
    dump.add_argument("--wait", type=float, default=15.0, help="seconds to wait for xDS")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.file)
        return _dump(args)
    except SailError as exc:
        print(f"sail: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
