"""Local mode on hostile files: `sail.local.load_file` returns resources (and per-resource
errors) or raises exactly `ConfigError` naming the file, whatever the file holds.

Files are valid-looking resource lists (`@type`d Envoy JSON, the `{"resources": [...]}`
and Envoy bootstrap shapes) with values replaced, keys added, deep nesting and odd `@type`s,
written as JSON or YAML, then sometimes damaged as text: cut, given YAML tags, anchors, or
bytes that are not UTF-8."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from sail import testing
from sail.errors import ConfigError
from sail.xds.codec.encode import (
    encode_cluster,
    encode_cluster_load_assignment,
    encode_listener,
    encode_route_configuration,
)
from sail.xds.codec.extensions import type_url_of
from tests.fuzz.mutate import (
    expect_only,
    fuzz_settings,
    hostile_strings,
    mutated_trees,
)
from tests.fuzz.seeds import CLUSTERS, ROUTES
from tests.unit.xds import strategies as model
from tests.unit.xds.strategies import registered_policies


def _as_json(message: Any) -> dict[str, Any]:
    # through JSON text: MessageToDict gives an `Any` as an OrderedDict, which YAML refuses
    body = json.loads(json_format.MessageToJson(message))
    return {"@type": type_url_of(message), **body}


_HANDWRITTEN: list[dict[str, Any]] = [
    *testing.service("reviews", {"reviews-v1": [("127.0.0.1", 8001)]}),
    testing.route_config("r", ROUTES),
    testing.server_listener("0.0.0.0", 8080),
    *CLUSTERS,
]

_RESOURCES = st.one_of(
    st.sampled_from(_HANDWRITTEN),
    model.listeners.map(encode_listener).map(_as_json),
    model.route_configs().map(encode_route_configuration).map(_as_json),
    model.clusters().map(encode_cluster).map(_as_json),
    model.load_assignments().map(encode_cluster_load_assignment).map(_as_json),
)


def _static(resources: list[dict[str, Any]]) -> dict[str, Any]:
    def strip(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k != "@type"}

    return {"static_resources": {
        "listeners": [strip(r) for r in resources if "Listener" in str(r.get("@type"))],
        "clusters": [strip(r) for r in resources if r.get("@type") == testing.CLUSTER],
    }}


_DOCUMENTS = st.lists(_RESOURCES, max_size=3).flatmap(
    lambda rs: st.sampled_from([rs, {"resources": rs}, _static(rs)])
)

_TAGS = ("!!timestamp 2020-13-45", "!!bool x", "!!int 0xZZ", "!!float y", "!!binary ===",
         "!!python/object:os.system x", "!!set {a: 1}", "!!omap [a, b]", "!!null 1",
         "!!str", "!custom x", "&a [*a]", "*undefined", "? [a, b]\n: c", "<<: {a: 1}",
         "1e400", "-.inf", ".nan", "0b102", "0o8", "9" * 5000, "{", "]", "\t", "%YAML 9.9\n---",
         "---\n...\n---", "\ufeff", "\x00",
         "[" * 1200, "{a: " * 400, "- " * 600 + "x")

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when built with it


def _dump(document: Any, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(document, allow_nan=True)
    return yaml.dump(document, Dumper=_DUMPER, allow_unicode=True)


@st.composite
def _files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A suffix and the bytes of a file."""
    suffix = draw(st.sampled_from([".json", ".yaml", ".yml"]))
    document = draw(st.one_of(_DOCUMENTS, mutated_trees(_DOCUMENTS)))
    text = _dump(document, suffix)
    damage = draw(st.sampled_from(["none", "none", "cut", "tag", "bytes", "replace"]))
    data = text.encode()
    if damage == "cut" and text:
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "tag":
        where = draw(st.integers(0, 2**16)) % (len(text) + 1)
        data = (text[:where] + " " + draw(st.sampled_from(_TAGS)) + " " + text[where:]).encode()
    elif damage == "bytes":
        where = draw(st.integers(0, 2**16)) % (len(data) + 1)
        data = data[:where] + draw(st.binary(min_size=1, max_size=4)) + data[where:]
    elif damage == "replace":
        data = text.replace(draw(st.sampled_from(['"', ":", "[", "-", "1", "s"])),
                            draw(hostile_strings)).encode()
    return suffix, data


def load(suffix: str, data: bytes) -> Any:
    from sail.local import load_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mesh{suffix}"
        path.write_bytes(data)
        with registered_policies("my_policy"):
            result = expect_only(ConfigError, lambda: load_file(path))
    return result


@fuzz_settings(scale=1.5)
@given(_files())
def test_local_file(case: tuple[str, bytes]) -> None:
    suffix, data = case
    result = load(suffix, data)
    if result is not None:
        _, errors = result
        assert all(isinstance(e, str) and "mesh" in e for e in errors.values())


def test_local_file_names_the_file_in_its_error() -> None:
    """The property above can fail: a file that is not a resource list is a ConfigError."""
    from sail.local import load_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bad.json"
        path.write_text(json.dumps({"x": math.pi}))
        try:
            load_file(path)
        except ConfigError as exc:
            assert os.fspath(path) in str(exc)
        else:
            raise AssertionError("a file with no resources list was accepted")
