"""Hypothesis strategies that break things: hostile scalars, mutated protobuf messages and
mutated JSON-like trees, for the fuzz suite in this folder.

`mutated_messages(seeds)` draws a valid message from `seeds` and sets a few fields anywhere
in it (inside `Any`s too: they are unpacked, mutated and packed again) to hostile values,
walking the protobuf descriptors, so every field of every message type sail reads can be
hit. `mutated_trees(seeds)` does the same to a JSON-like tree (dicts, lists, scalars).

`no_sail_tracebacks()` fails a test when a `sail.*` logger records an error with a
traceback while the block runs: a parser that catches its own crash and logs it has still
crashed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, duration_pb2, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import settings
from hypothesis import strategies as st
from xds.type.v3 import typed_struct_pb2

import sail.xds.codec.extensions  # registers the typed configs sail reads
import sail.xds.codec.transport_socket  # noqa: F401  (and the transport sockets)
from sail.xds.codec.types import RESOURCE_TYPES

__all__ = [
    "HOSTILE_STRINGS",
    "KNOWN_TYPE_URLS",
    "expect_only",
    "fuzz_settings",
    "garbage_anys",
    "hostile_floats",
    "hostile_strings",
    "json_values",
    "mutated_messages",
    "mutated_trees",
    "no_sail_tracebacks",
]

# -- hostile scalars ----------------------------------------------------------------------

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "*",
    "**",
    "/",
    "a{4294967296}",
    "a{1001}",
    "((a{100}){100}){100}",
    "(" * 600 + "a" + ")" * 600,
    "(" * 600,
    "\\²",
    "\\",
    "a(b",
    "[z-a]",
    "(?P<n>a)(?P=n)",
    "\\1",
    "(?=a)",
    "\\C",
    "\\p{Nope}",
    "(?i)A",
    "\x00",
    "a\r\nb: c",
    "\U0010ffff",
    "é" * 50,
    "x" * 5000,
    "%s%s%n",
    "${HOME}",
    "{}",
    "[]",
    "-1",
    "1e400",
    "NaN",
    "inf",
    "0x10",
    "::",
    "[::1]",
    "::1",
    "1.2.3.4",
    "256.0.0.1",
    "localhost:99999",
    "host:-1",
    "xdstp://",
    "xdstp://authority/envoy.config.listener.v3.Listener/x",
    "envoy.filters.http.router",
    "envoy.filters.http.fault",
    "envoy.transport_sockets.raw_buffer",
    "envoy.transport_sockets.tls",
    "type.googleapis.com/",
    "type.googleapis.com/google.protobuf.Struct",
    *RESOURCE_TYPES,
    "ROUND_ROBIN",
    "round_robin",
    "ring_hash",
    "5xx,reset,connect-failure,retriable-status-codes",
    "x-envoy-\x7f",
    ":authority",
    "Host",
)

_NICE_TEXT = st.text(st.characters(codec="utf-8"), max_size=24)  # utf-8: no surrogates

hostile_strings = st.one_of(st.sampled_from(HOSTILE_STRINGS), _NICE_TEXT)

hostile_floats = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e-9]),
    st.floats(),
)


def _interesting_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = {0, 1, -1, 2, 100, 101, 1000, 65535, 65536, 10**9, 10**9 + 1,
             315_576_000_000, 315_576_000_001, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
             2**53 + 1, 2**63 - 1, -(2**31), -(2**63), 2**64 - 1, low, high, low + 1, high - 1}
    return st.one_of(
        st.sampled_from(sorted(e for e in edges if low <= e <= high)), st.integers(low, high)
    )


_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT_STRATEGIES = {t: _interesting_ints(lo, hi) for t, (lo, hi) in _INT_RANGES.items()}


def _scalar(draw: st.DrawFn, field: FieldDescriptor) -> Any:
    t = field.type
    if t in _INT_STRATEGIES:
        return draw(_INT_STRATEGIES[t])
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        value = draw(hostile_floats)
        if t == _T.TYPE_FLOAT and math.isfinite(value) and abs(value) > 3.4e38:
            value = math.copysign(math.inf, value)
        return value
    if t == _T.TYPE_BOOL:
        return draw(st.booleans())
    if t == _T.TYPE_STRING:
        return draw(hostile_strings)
    if t == _T.TYPE_BYTES:
        return draw(st.binary(max_size=48))
    if t == _T.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return draw(st.one_of(st.sampled_from(known), _INT_STRATEGIES[_T.TYPE_INT32]))
    raise AssertionError(f"not a scalar field: {field.full_name}")


# -- Any ----------------------------------------------------------------------------------

_POOL = descriptor_pool.Default()
_PREFIX = "type.googleapis.com/"


def _message_class(type_url: str) -> Any | None:
    name = type_url.rsplit("/", 1)[-1]
    try:
        return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))
    except (KeyError, TypeError):
        return None


def _known_type_urls() -> list[str]:
    from sail.xds.codec import extensions, transport_socket

    urls = {*RESOURCE_TYPES, *extensions.HTTP_FILTERS, *extensions.LB_POLICIES,
            extensions.HCM, transport_socket.RAW_BUFFER,
            _PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            _PREFIX + "xds.type.v3.TypedStruct", _PREFIX + "udpa.type.v1.TypedStruct",
            _PREFIX + "google.protobuf.Struct", _PREFIX + "google.protobuf.Duration"}
    return sorted(u for u in urls if _message_class(u) is not None)


KNOWN_TYPE_URLS = _known_type_urls()


def _struct_values(draw: st.DrawFn) -> Any:
    leaf = st.one_of(st.none(), st.booleans(), hostile_floats, hostile_strings)
    return draw(st.one_of(
        leaf,
        st.dictionaries(hostile_strings, leaf, max_size=3),
        st.lists(leaf, max_size=3),
    ))


@st.composite
def garbage_anys(draw: st.DrawFn) -> Any:
    """An `Any` that is wrong: unknown or wrong type, bytes that do not parse, or a
    `TypedStruct` of a known type holding non-finite numbers and odd values."""
    kind = draw(st.sampled_from(["url", "bytes", "wrong", "typed_struct", "empty"]))
    out = any_pb2.Any()
    if kind == "url":
        out.type_url = draw(hostile_strings)
        out.value = draw(st.binary(max_size=32))
    elif kind == "bytes":
        out.type_url = draw(st.sampled_from(KNOWN_TYPE_URLS))
        out.value = draw(st.binary(max_size=64))
    elif kind == "wrong":
        cls = _message_class(draw(st.sampled_from(KNOWN_TYPE_URLS)))
        assert cls is not None
        inner = cls()
        out.Pack(inner)
        out.type_url = draw(st.sampled_from(KNOWN_TYPE_URLS))
        if draw(st.booleans()):
            d = duration_pb2.Duration(seconds=draw(_INT_STRATEGIES[_T.TYPE_INT64]),
                                      nanos=draw(_INT_STRATEGIES[_T.TYPE_INT32]))
            out.value = d.SerializeToString()
    elif kind == "typed_struct":
        value = struct_pb2.Struct()
        for key in draw(st.lists(hostile_strings, max_size=4)):
            item = _struct_values(draw)
            with contextlib.suppress(ValueError, TypeError):
                value[key] = item
        ts = typed_struct_pb2.TypedStruct(type_url=draw(st.sampled_from(KNOWN_TYPE_URLS)),
                                          value=value)
        out.Pack(ts)
    return out


# -- protobuf mutation --------------------------------------------------------------------


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_any(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == "google.protobuf.Any"


class _Opened:
    """The `Any`s of a message tree, unpacked so their content can be mutated too."""

    def __init__(self) -> None:
        self.anys: list[tuple[Any, Any]] = []  # (the Any, its unpacked content), preorder
        self.raw: list[Any] = []  # Anys set directly: not packed again

    def walk(self, msg: Any, out: list[tuple[Any, FieldDescriptor]]) -> None:
        if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
            cls = _message_class(msg.type_url)
            if cls is None:
                return
            inner = cls()
            try:
                msg.Unpack(inner)
            except Exception:
                return
            self.anys.append((msg, inner))
            msg = inner
        for field in msg.DESCRIPTOR.fields:
            out.append((msg, field))
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            if _is_map(field):
                if field.message_type.fields_by_name["value"].message_type is not None:
                    for item in value.values():
                        self.walk(item, out)
            elif _is_repeated(field):
                for item in value:
                    self.walk(item, out)
            else:
                self.walk(value, out)

    def repack(self) -> None:
        for any_msg, inner in reversed(self.anys):
            if not any(raw is any_msg for raw in self.raw):
                url = any_msg.type_url
                any_msg.Pack(inner)
                any_msg.type_url = url


def _set_message(draw: st.DrawFn, target: Any, field: FieldDescriptor, opened: _Opened) -> None:
    if _is_any(field):
        target.CopyFrom(draw(garbage_anys()))
        opened.raw.append(target)
    else:
        target.SetInParent()


def _mutate_slot(draw: st.DrawFn, msg: Any, field: FieldDescriptor, opened: _Opened) -> None:
    name = field.name
    if _is_map(field):
        container = getattr(msg, name)
        value_field = field.message_type.fields_by_name["value"]
        key_field = field.message_type.fields_by_name["key"]
        if container and draw(st.booleans()):
            container.clear()
            return
        key = _scalar(draw, key_field)
        if value_field.message_type is None:
            container[key] = _scalar(draw, value_field)
        else:
            _set_message(draw, container[key], value_field, opened)
        return
    if _is_repeated(field):
        container = getattr(msg, name)
        op = draw(st.sampled_from(["add", "clear", "duplicate"]))
        if op == "clear":
            del container[:]
        elif field.message_type is None:
            container.append(_scalar(draw, field))
        elif op == "duplicate" and len(container):
            container.add().CopyFrom(container[draw(st.integers(0, len(container) - 1))])
        else:
            _set_message(draw, container.add(), field, opened)
        return
    if field.message_type is not None:
        if msg.HasField(name) and draw(st.booleans()):
            msg.ClearField(name)
        else:
            _set_message(draw, getattr(msg, name), field, opened)
        return
    setattr(msg, name, _scalar(draw, field))


@st.composite
def mutated_messages(
    draw: st.DrawFn, seeds: st.SearchStrategy[Any], max_mutations: int = 5
) -> Any:
    """A message from `seeds` with 1 to `max_mutations` fields set to hostile values."""
    message = copy.deepcopy(draw(seeds))
    opened = _Opened()
    for _ in range(draw(st.integers(1, max_mutations))):
        opened.anys.clear()
        opened.raw.clear()
        slots: list[tuple[Any, FieldDescriptor]] = []
        opened.walk(message, slots)
        # modulo: spread evenly over the fields, not biased to the first (the name)
        msg, field = slots[draw(st.integers(0, 2**16)) % len(slots)]
        with contextlib.suppress(ValueError, TypeError):  # a value protobuf itself refuses
            _mutate_slot(draw, msg, field, opened)
        opened.repack()
    return message


# -- JSON-like trees ----------------------------------------------------------------------

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    _interesting_ints(-(2**70), 2**70),
    hostile_floats,
    hostile_strings,
)

json_values: st.SearchStrategy[Any] = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_strings, inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON-like value (including NaN and infinities)."""


def _nodes(tree: Any, out: list[tuple[Any, Any]], max_depth: int = 80) -> None:
    """Every (container, key) of `tree` down to `max_depth` (iterative: trees can be deep)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= max_depth:
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            out.append((node, key))
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))


def _deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@st.composite
def mutated_trees(
    draw: st.DrawFn,
    seeds: st.SearchStrategy[Any],
    keys: st.SearchStrategy[str] = hostile_strings,
    max_mutations: int = 4,
) -> Any:
    """A tree from `seeds` with values replaced, keys added or removed, lists grown."""
    tree = copy.deepcopy(draw(seeds))
    for _ in range(draw(st.integers(1, max_mutations))):
        nodes: list[tuple[Any, Any]] = []
        if isinstance(tree, dict | list):
            _nodes(tree, nodes)
        if not nodes:
            return draw(json_values)
        parent, key = nodes[draw(st.integers(0, 2**16)) % len(nodes)]
        op = draw(st.sampled_from(["replace", "replace", "add", "delete", "deep", "type"]))
        if op == "replace":
            parent[key] = draw(json_values)
        elif op == "deep":
            parent[key] = _deep(draw(st.sampled_from([63, 64, 65, 130])))
        elif op == "type":
            parent[key] = {"@type": draw(st.one_of(st.sampled_from(KNOWN_TYPE_URLS),
                                                    json_values))}
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return tree


# -- log check ----------------------------------------------------------------------------


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.name.startswith("sail"):
            self.records.append(record)


@contextlib.contextmanager
def no_sail_tracebacks() -> Iterator[None]:
    """Fail if a `sail.*` logger records an ERROR with a traceback inside the block."""
    handler = _Crashes()
    logger = logging.getLogger("sail")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def expect_only(error: type[BaseException], call: Callable[[], Any]) -> Any:
    """`call()`'s value, or `None` when it raised exactly `error` (a subclass of it is
    not enough: parsers document the class they raise). Anything else propagates."""
    with no_sail_tracebacks():
        try:
            return call()
        except error as exc:
            if type(exc) is not error:
                raise AssertionError(
                    f"raised {type(exc).__qualname__}, not {error.__qualname__}: {exc}"
                ) from exc
            return None


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings of the profile `SAIL_FUZZ_PROFILE` names (registered by this folder's
    conftest.py), with `scale` times its `max_examples`."""
    profile = settings.get_profile(os.environ.get("SAIL_FUZZ_PROFILE", "ci"))
    return settings(profile, max_examples=max(1, round(profile.max_examples * scale)))
