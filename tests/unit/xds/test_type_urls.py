"""Type URLs the model spells out so that no shell imports the wire's codec for them."""

from __future__ import annotations

from sail.model.listener import FAULT_TYPE_URL, ROUTER_TYPE_URL, HttpFilter
from sail.xds.codec.extensions import CLIENT_HTTP_FILTERS, FAULT, ROUTER


def test_the_model_names_the_router_as_the_codec_does() -> None:
    assert ROUTER_TYPE_URL == ROUTER
    assert FAULT_TYPE_URL == FAULT
    assert {ROUTER_TYPE_URL, FAULT_TYPE_URL} == CLIENT_HTTP_FILTERS
    assert HttpFilter("envoy.filters.http.router", ROUTER).is_router
    assert not HttpFilter("envoy.filters.http.fault", ROUTER + "x").is_router
