"""The fuzz suite's checks can fail: a subclass of the expected error, another exception
or a logged traceback from a `sail.*` logger is caught; and the mutators change things."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import ConfigError, ResourceError
from sail.xds.codec.encode import encode_cluster_load_assignment
from tests.fuzz.mutate import expect_only, fuzz_settings, mutated_messages, mutated_trees
from tests.unit.xds import strategies as model


def _raise(exc: BaseException) -> Any:
    raise exc


def test_expect_only_takes_exactly_the_documented_error() -> None:
    assert expect_only(ConfigError, lambda: 5) == 5
    assert expect_only(ResourceError, lambda: _raise(ResourceError("Cluster", "c", "x"))) is None
    with pytest.raises(AssertionError, match="not ConfigError"):
        expect_only(ConfigError, lambda: _raise(ResourceError("Cluster", "c", "x")))
    with pytest.raises(KeyError):
        expect_only(ConfigError, lambda: _raise(KeyError("x")))


def test_expect_only_fails_on_a_logged_traceback() -> None:
    def swallowed() -> None:
        try:
            raise ValueError("inside")
        except ValueError:
            logging.getLogger("sail.local").exception("a crash, caught and logged")

    with pytest.raises(AssertionError, match="a crash, caught and logged"):
        expect_only(ConfigError, swallowed)


_CLAS = model.load_assignments().map(encode_cluster_load_assignment)


@fuzz_settings(scale=0.2)
@given(mutated_messages(_CLAS))
def test_mutated_messages_still_serialize(mutated: Any) -> None:
    assert mutated.IsInitialized()
    mutated.SerializeToString()


def test_mutations_put_hostile_values_in() -> None:
    from hypothesis import find

    repeatable = settings(database=None, derandomize=True, max_examples=5000)
    hostile = [s.encode() for s in ("a{4294967296}", "(" * 600, "\\²", "x" * 5000)]
    find(mutated_messages(_CLAS),
         lambda m: any(h in m.SerializeToString() for h in hostile), settings=repeatable)
    find(mutated_trees(st.just({"a": [1, 2]})), lambda t: t != {"a": [1, 2]},
         settings=repeatable)
