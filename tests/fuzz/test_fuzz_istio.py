"""Istio YAML on hostile input: reading (`load_documents`), the checks across objects
(`validate`), translation into xDS (`translate`) and encoding give a value or raise exactly
`IstioConfigError`, naming the file; and so does `Registry.check_configs`, what `sail apply`
(the registry API's Apply) runs on the config set an apply would leave. The API's own body
parsing is checked too: a body is JSON or refused, and a Register body's fields are a
workload or a `BodyError`.

Documents are generated from the spec classes themselves (their attrs fields are the
schema: `sail.registry.istio.schema`), each field given a plausible value (hosts, subsets
and ports from a small pool so objects refer to each other) or a hostile one."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sail.model import HealthStatus, Locality
from sail.registration import Workload
from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.model import KINDS, NETWORKING
from sail.registry.istio.parse import API_VERSIONS, load_documents
from sail.registry.istio.schema import _fields
from sail.registry.istio.validate import validate
from sail.registry.translate import translate
from sail.registry.wire import BodyError, workload_from_json
from sail.xds.codec.encode import (
    encode_cluster,
    encode_cluster_load_assignment,
    encode_listener,
    encode_route_configuration,
)
from tests.fuzz.mutate import (
    expect_only,
    fuzz_settings,
    hostile_floats,
    hostile_strings,
    json_values,
    mutated_trees,
)

GOOD_HOSTS = ("reviews", "ratings", "reviews.default.svc.cluster.local", "db.example.com")
BAD_HOSTS = ("*", "*.example.com", "Reviews", "a..b", "-x", "")
SUBSETS = ("v1", "v2", "", "V1")
_WORKLOADS = [
    (Workload("reviews", "10.0.0.1", 9080, {"version": "v1"}, Locality("r", "z")),
     HealthStatus.HEALTHY),
    (Workload("reviews", "10.0.0.2", 9081, {"version": "v2"}, service_port=9080),
     HealthStatus.DRAINING),
    (Workload("ratings", "fd00::1", 8080), HealthStatus.HEALTHY),
]
_KNOWN = {w.service for w, _ in _WORKLOADS}

_DURATIONS = st.one_of(
    st.sampled_from(["5s", "100ms", "1.5s", "1m", "1h30m", "0s", "1ns", "0.5ns", "-1s", "5",
                     "2562047h", "2562048h", "9" * 30 + "h", ".5s", "1.s", "1µs", "s", ""]),
    hostile_strings,
)
_STRINGS_BY_FIELD: dict[str, st.SearchStrategy[Any]] = {
    "host": st.one_of(*[st.sampled_from(GOOD_HOSTS)] * 5, st.sampled_from(BAD_HOSTS)),
    "hosts": st.one_of(*[st.sampled_from(GOOD_HOSTS)] * 5, st.sampled_from(BAD_HOSTS)),
    "subset": st.sampled_from(SUBSETS),
    "name": st.sampled_from([*SUBSETS, "http", "reviews", "x" * 300]),
    "namespace": st.sampled_from(["default", "prod", "Bad_NS"]),
    "regex": st.sampled_from(["a.*", "a{4294967296}", "(" * 600 + ")" * 600, "\\²", "a(b"]),
    "exact": st.sampled_from(["/", "v1", ""]),
    "prefix": st.sampled_from(["/", "/api", "", "api"]),
    "uri": st.sampled_from(["/", "/v2", ""]),
    "authority": st.sampled_from(["reviews", ""]),
    "address": st.sampled_from(["10.0.0.9", "fd00::9", "db.example.com", "", "999.1.1.1"]),
    "retry_on": st.sampled_from(["5xx,reset", "connect-failure", "503", "nonsense", ""]),
}
_INTS = st.one_of(st.sampled_from([0, 1, 80, 9080, 65535, 65536, -1, 2**31, 2**63, 2**70]),
                  st.integers(-(2**64), 2**64))


def _plain(tp: Any) -> tuple[Any, bool]:
    """`tp` without `| None`, and whether it had it."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner, True
    return tp, False


def _value(tp: Any, field: str, depth: int, duration: bool = False) -> st.SearchStrategy[Any]:
    """Strategy for the YAML value of one field of type `tp`: plausible, or (rarely) any
    JSON value."""
    tp, _ = _plain(tp)
    if duration:
        good: st.SearchStrategy[Any] = _DURATIONS
    else:
        good = _typed(tp, field, depth)
    return st.one_of(*[good] * 15, json_values)


def _typed(tp: Any, field: str, depth: int) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return st.lists(_value(item, field, depth + 1), min_size=int(field == "hosts"),
                        max_size=3 if depth < 5 else 1)
    if origin is Mapping:
        item = typing.get_args(tp)[1]
        keys = st.sampled_from(["version", "app", "x-user", "", "Bad Key", "a" * 70])
        return st.dictionaries(keys, _value(item, field, depth + 1), max_size=2)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.one_of(st.sampled_from([m.value for m in tp]), hostile_strings)
    if attrs.has(tp):
        return _objects(tp, depth + 1) if depth < 7 else st.just({})
    if tp is str:
        return _STRINGS_BY_FIELD.get(field, st.one_of(st.sampled_from(SUBSETS), hostile_strings))
    if tp is int:
        return _INTS
    if tp is float:
        return st.one_of(hostile_floats, st.sampled_from([0, 50, 100, 101, -1]))
    if tp is bool:
        return st.booleans()
    raise AssertionError(f"no strategy for {tp!r}")


@functools.cache
def _objects(cls: type, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping for the attrs class `cls`: its required fields (and hosts), any subset of
    the optional ones, now and then an unknown or unsupported key."""
    fields = _fields(cls)
    def needed(f: Any) -> bool:
        return bool(f.required or f.name in ("host", "hosts"))

    always = {f.key: _value(f.type, f.name, depth, f.duration) for f in fields if needed(f)}
    maybe = {f.key: _value(f.type, f.name, depth, f.duration) for f in fields if not needed(f)}
    odd_keys = st.sampled_from([*getattr(cls, "UNSUPPORTED", ()), "unknownField", "1"])
    return st.builds(
        _merge,
        st.fixed_dictionaries(always, optional=maybe),
        st.one_of(*[st.just({})] * 8, st.dictionaries(odd_keys, json_values, max_size=1)),
    )


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, **b}


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    networking = sorted(k for k, c in KINDS.items() if c.GROUP == NETWORKING)
    kind = draw(st.sampled_from(networking) | st.sampled_from(networking)
                | st.sampled_from(sorted(KINDS)))
    cls = KINDS[kind]
    spec_type = typing.get_type_hints(cls)["spec"]
    return {
        "apiVersion": draw(st.sampled_from([*API_VERSIONS[cls.GROUP], "v1", "x/y"]))
        if draw(st.integers(0, 2**16)) % 10 == 1 else API_VERSIONS[cls.GROUP][0],
        "kind": kind,
        "metadata": {"name": draw(st.sampled_from(["reviews", "ratings", "db", "r-1"])),
                     "namespace": draw(st.sampled_from(["default", "default", "prod"]))},
        "spec": draw(_objects(spec_type, 0)),
    }



_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when built with it

_DOC_LISTS = st.lists(_documents(), min_size=1, max_size=4)


@st.composite
def _texts(draw: st.DrawFn) -> str:
    documents = draw(st.one_of(_DOC_LISTS, _DOC_LISTS, _DOC_LISTS, mutated_trees(_DOC_LISTS)))
    if not isinstance(documents, list):
        documents = [documents]
    text = yaml.dump_all(documents, Dumper=_DUMPER, allow_unicode=True)
    if draw(st.integers(0, 2**16)) % 10 == 1:
        where = draw(st.integers(0, 2**16)) % (len(text) + 1)
        text = text[:where] + draw(st.sampled_from(
            [" !!timestamp 2020-02-30", " &a [*a]", "\n---\n", ": :", "\t", " !!binary x"]
        )) + text[where:]
    return text


def _translate_and_encode(text: str) -> list[Any]:
    objects = load_documents(text, "mesh.yaml")
    validate(objects, _KNOWN)
    resources = translate(objects, _WORKLOADS)
    return [
        *map(encode_listener, resources.listeners),
        *map(encode_route_configuration, resources.route_configs),
        *map(encode_cluster, resources.clusters),
        *map(encode_cluster_load_assignment, resources.load_assignments),
    ]


@fuzz_settings(scale=1.5)
@given(_texts())
def test_istio_documents(text: str) -> None:
    expect_only(IstioConfigError, lambda: _translate_and_encode(text))


# -- sail apply ---------------------------------------------------------------------------


@functools.cache
def _registry() -> Any:
    """A registry (not serving: nothing listens) holding `_WORKLOADS`."""
    from sail.registry.server import Registry

    registry = Registry()

    async def register() -> None:
        for workload, health in _WORKLOADS:
            await registry.store.put_workload(workload, health, 3600)

    asyncio.run(register())
    return registry


@fuzz_settings(scale=0.5)
@given(st.dictionaries(st.sampled_from(["a.yaml", "b.yaml", "team/c"]), _texts(), max_size=2))
def test_apply_check_configs(configs: dict[str, str]) -> None:
    """What Apply and Delete validate: the whole config set, with the hosts checked against
    the registered workloads."""
    expect_only(IstioConfigError, lambda: _registry().check_configs(configs))


_REGISTER = {"service": "reviews", "address": "10.0.0.1", "port": 9080,
             "labels": {"version": "v1"}, "locality": {"zone": "z"}, "weight": 2,
             "health": "HEALTHY", "ttl": 30, "service_port": 80}
_BODY_KEYS = st.sampled_from([*_REGISTER, "lease_id", "source", "yaml", "x"])


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@fuzz_settings(scale=0.5)
@given(st.one_of(st.binary(max_size=64),
                 mutated_trees(st.just(_REGISTER), keys=_BODY_KEYS).map(_json_bytes)))
def test_api_bodies(data: bytes) -> None:
    """The API's deserializer never raises (bytes that are not JSON become a refusal), and
    a Register body is a workload or a `BodyError` naming the field."""
    from sail.registry.api import _BadBody, _decode_request

    body = _decode_request(data)
    if isinstance(body, dict):
        expect_only(BodyError, lambda: workload_from_json(body, 30.0))
    else:
        assert isinstance(body, _BadBody) or not isinstance(body, dict)
