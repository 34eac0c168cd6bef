"""SPIFFE IDs and join tokens, by attack."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import InvalidSpiffeId, TokenError
from sail.security.spiffe import SpiffeId
from sail.security.tokens import issue_token, new_secret, verify_token

REVIEWS = SpiffeId.workload("example.org", "default", "reviews")
SECRET = new_secret()
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    [("spiffe://example.org/ns/default/sa/reviews", "example.org", "/ns/default/sa/reviews"),
     ("spiffe://example.org", "example.org", ""),
     ("spiffe://a_b-c.d/x.y/Z-9", "a_b-c.d", "/x.y/Z-9")],
)
def test_spiffe_ids_that_parse(text: str, trust_domain: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert (sid.trust_domain, sid.path, str(sid)) == (trust_domain, path, text)


@pytest.mark.parametrize(
    ("text", "rule"),
    [("http://example.org/a", "does not start with 'spiffe://'"),
     ("SPIFFE://example.org/a", "does not start with"),
     ("spiffe://", "trust domain is empty"),
     ("spiffe:///a", "trust domain is empty"),
     ("spiffe://Example.org/a", "only lower-case"),
     ("spiffe://example.org:8080/a", "no port"),
     ("spiffe://user@example.org/a", "no user info"),
     ("spiffe://example.org/", "empty segment"),
     ("spiffe://example.org/a//b", "empty segment"),
     ("spiffe://example.org/a/../b", "'..' segment"),
     ("spiffe://example.org/a/./b", "'.' segment"),
     ("spiffe://example.org/a b", "only letters"),
     ("spiffe://example.org/a?x=1", "a query"),
     ("spiffe://example.org/a#f", "a fragment"),
     ("spiffe://example.org/" + "a" * 2100, "at most 2048 bytes"),
     ("spiffe://" + "a" * 256, "over 255 characters")],
)
def test_what_is_not_a_spiffe_id(text: str, rule: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=rule.replace("?", r"\?")):
        SpiffeId.parse(text)


def test_workload_ids_have_istios_form() -> None:
    assert str(REVIEWS) == "spiffe://example.org/ns/default/sa/reviews"
    assert (REVIEWS.namespace, REVIEWS.service_account) == ("default", "reviews")
    assert SpiffeId.parse("spiffe://example.org/x/y").namespace is None


@pytest.mark.parametrize(("text", "name"), [
    ("spiffe://example.org/ns/default/sa/reviews", "reviews.default.sa.example.org"),
    ("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings",
     "bookinfo-ratings.bookinfo.sa.cluster.local"),
    ("spiffe://example.org/ns/default/sa/Reviews", None),  # hostname checks ignore case
    ("spiffe://example.org/ns/default/sa/a.b", None),  # would be ambiguous
    ("spiffe://example.org/ns/default/sa/" + "a" * 64, None),  # not a DNS label
    ("spiffe://example.org/workload/reviews", None),  # not Istio's form
])
def test_a_workload_identity_has_one_dns_name(text: str, name: str | None) -> None:
    assert SpiffeId.parse(text).dns_name == name


@given(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
@settings(max_examples=200)
def test_dns_names_are_one_to_one(ns_a: str, sa_a: str, ns_b: str, sa_b: str) -> None:
    a = SpiffeId.workload("example.org", ns_a, sa_a)
    b = SpiffeId.workload("example.org", ns_b, sa_b)
    assert (a.dns_name == b.dns_name) == (a == b)



@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_spiffe_id_or_invalid(text: str) -> None:
    try:
        sid = SpiffeId.parse("spiffe://" + text)
    except InvalidSpiffeId:
        return
    assert SpiffeId.parse(str(sid)) == sid


def test_a_token_grants_its_identity_until_it_expires() -> None:
    token = issue_token(SECRET, REVIEWS, lifetime=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59) == REVIEWS
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, now=NOW + 60)


def test_a_token_from_another_secret_is_refused() -> None:
    token = issue_token(new_secret(), REVIEWS, now=NOW)
    with pytest.raises(TokenError, match="not made by this registry"):
        verify_token(SECRET, token, now=NOW)


def test_a_token_whose_identity_was_changed_is_refused() -> None:
    prefix, body, mac = issue_token(SECRET, REVIEWS, now=NOW).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["sub"] = "spiffe://example.org/ns/kube-system/sa/admin"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="MAC does not verify"):
        verify_token(SECRET, f"{prefix}.{forged}.{mac}", now=NOW)


@pytest.mark.parametrize(
    ("token", "rule"),
    [(None, "no join token"), ("", "no join token"), ("abc", "not a join token"),
     ("sailjt1.a.b.c", "not a join token"), ("other.a.b", "not a join token"),
     ("sailjt1.a.!!!", "not base64url"), ("sailjt1." + "a" * 5000 + ".b", "at most 4096")],
)
def test_malformed_tokens_are_refused(token: object, rule: str) -> None:
    with pytest.raises(TokenError, match=rule):
        verify_token(SECRET, token, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_refused_or_was_made_here(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, text, now=NOW)
