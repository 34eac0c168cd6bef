"""Filter-chain selection of xDS-enabled servers (gRFC A36, Envoy's order of criteria)."""

from __future__ import annotations

import ipaddress

import pytest

from sail.grpc.xds_server import ChainSelector
from sail.model import (
    CidrRange,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    SourceType,
)

HCM = HttpConnectionManager(rds_name="r")


def selector(
    *matches: FilterChainMatch, default: bool = False, local: str | None = "10.1.2.3"
) -> ChainSelector:
    listener = Listener(
        "in", HCM, ("0.0.0.0", 1), tuple(FilterChain(HCM, m) for m in matches),
        FilterChain(HCM) if default else None,
    )
    return ChainSelector(listener, ipaddress.ip_address(local) if local else None, {})


def cidr(text: str) -> tuple[CidrRange, ...]:
    address, _, length = text.partition("/")
    return (CidrRange(address, int(length)),)


def test_the_longest_destination_prefix_wins_and_empty_is_the_fallback() -> None:
    s = selector(
        FilterChainMatch(),
        FilterChainMatch(prefix_ranges=cidr("10.0.0.0/8")),
        FilterChainMatch(prefix_ranges=cidr("10.1.0.0/16")),
    )
    assert s.select("ipv4:192.168.0.9:4000") == "in#chain-2"
    other = selector(FilterChainMatch(), FilterChainMatch(prefix_ranges=cidr("10.9.0.0/16")))
    assert other.select("ipv4:192.168.0.9:4000") == "in"


def test_a_wildcard_bind_has_no_destination_only_chains_without_prefixes_match() -> None:
    s = selector(FilterChainMatch(prefix_ranges=cidr("0.0.0.0/0")), default=True, local=None)
    assert s.select("ipv4:127.0.0.1:4000") == "in#chain-1"  # the default


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:5000", "in#chain-1"),  # loopback: SAME_IP_OR_LOOPBACK
        ("ipv4:10.1.2.3:5000", "in#chain-1"),  # the server's own address: same IP
        ("ipv4:192.168.0.9:5000", "in#chain-2"),  # EXTERNAL
        ("ipv6:[::1]:5000", "in#chain-1"),
        ("unix:/tmp/sock", "in"),  # no address: only ANY matches
    ],
)
def test_source_type(peer: str, expected: str) -> None:
    s = selector(
        FilterChainMatch(),
        FilterChainMatch(source_type=SourceType.SAME_IP_OR_LOOPBACK),
        FilterChainMatch(source_type=SourceType.EXTERNAL),
    )
    assert s.select(peer) == expected


def test_source_prefix_then_source_port() -> None:
    s = selector(
        FilterChainMatch(source_prefix_ranges=cidr("192.168.0.0/16")),
        FilterChainMatch(source_prefix_ranges=cidr("192.168.0.0/16"), source_ports=(4000,)),
        FilterChainMatch(source_prefix_ranges=cidr("192.168.0.0/24")),
    )
    assert s.select("ipv4:192.168.0.9:4000") == "in#chain-2"  # /24 beats /16 before ports
    assert s.select("ipv4:192.168.7.9:4000") == "in#chain-1"  # the port decides
    assert s.select("ipv4:192.168.7.9:4001") == "in"
    assert s.select("ipv4:172.16.0.1:4000") is None  # no chain, no default


def test_raw_buffer_beats_unset_and_never_chains_are_skipped() -> None:
    s = selector(
        FilterChainMatch(),
        FilterChainMatch(raw_buffer=True),
        FilterChainMatch(source_type=SourceType.SAME_IP_OR_LOOPBACK, never=True),
    )
    assert s.select("ipv4:127.0.0.1:1") == "in#chain-1"
