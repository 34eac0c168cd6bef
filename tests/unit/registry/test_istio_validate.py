"""Checks across Istio objects, and refusal of fields that parse but are not translated."""

from __future__ import annotations

import pytest

from sail.registry.istio import IstioConfigError, load_documents, validate
from tests.unit.registry.test_istio_parse import BOOKINFO

SERVICES = {"productpage", "details", "reviews", "ratings"}


def problem(text: str, known: set[str] | None = SERVICES) -> IstioConfigError:
    objects = load_documents(text, "mesh.yaml")
    with pytest.raises(IstioConfigError) as info:
        validate(objects, known)
    return info.value


def test_bookinfo_is_valid() -> None:
    validate(load_documents(BOOKINFO, "mesh.yaml"), SERVICES)


def test_long_host_names_count_as_the_short_service() -> None:
    known = {f"{s}.default.svc.cluster.local" for s in SERVICES}
    validate(load_documents(BOOKINFO, "mesh.yaml"), known)
    text = BOOKINFO.replace(
        "{host: reviews, subset: v2}", "{host: reviews.prod.svc.cluster.local, subset: v2}"
    )
    validate(load_documents(text, "mesh.yaml"), SERVICES)


def test_route_to_unknown_host() -> None:
    err = problem(BOOKINFO.replace("{host: productpage}", "{host: productpag}"))
    assert str(err) == (
        "mesh.yaml: VirtualService default/productpage: spec.http[0].route[0].destination.host: "
        "unknown host 'productpag' (known: details, httpbin.org, legacy.internal, productpage, "
        "ratings, reviews)"
    )


def test_service_entry_hosts_are_known_and_none_skips_the_host_check() -> None:
    text = BOOKINFO.replace("{host: productpage}", "{host: httpbin.org}")
    validate(load_documents(text, "mesh.yaml"), SERVICES - {"productpage"})
    validate(load_documents(BOOKINFO, "mesh.yaml"), None)
    err = problem(BOOKINFO, set())
    assert "unknown host 'reviews' (known: httpbin.org, legacy.internal)" in str(err)


def test_undefined_subset() -> None:
    err = problem(BOOKINFO.replace("subset: v2}", "subset: v4}"))
    assert err.object == "VirtualService default/reviews"
    assert err.field == "spec.http[0].route[0].destination.subset"
    assert (
        "subset 'v4' is not defined by DestinationRule default/reviews (defined: v1, v2, v3)"
        in str(err)
    )


def test_subset_of_a_host_without_destination_rule() -> None:
    err = problem(BOOKINFO.replace("{host: productpage}", "{host: details, subset: v1}"))
    assert err.field == "spec.http[0].route[0].destination.subset"
    assert "no DestinationRule for host 'details'" in str(err)


def test_subset_found_through_a_long_destination_rule_host() -> None:
    # the ratings rule names its host in the long form, the route in the short one
    validate(load_documents(BOOKINFO, "mesh.yaml"), SERVICES)
    err = problem(BOOKINFO.replace("{host: ratings, subset: v1}", "{host: ratings, subset: v2}"))
    assert "DestinationRule default/ratings (defined: v1)" in str(err)


def test_weights_must_sum_to_100() -> None:
    err = problem(BOOKINFO.replace("weight: 10", "weight: 5"))
    assert str(err) == (
        "mesh.yaml: VirtualService default/reviews: spec.http[1].route: "
        "weights sum to 95 (90 + 5), not 100"
    )
    err = problem(BOOKINFO.replace("      weight: 10\n", ""))
    assert "weights sum to 90 (90 + 0), not 100" in str(err)


def test_single_destination_weight_is_all_or_nothing_said() -> None:
    validate(
        load_documents(
            BOOKINFO.replace("{host: productpage}", "{host: productpage}\n      weight: 100"),
            "mesh.yaml",
        ),
        SERVICES,
    )
    err = problem(BOOKINFO.replace("{host: productpage}", "{host: productpage}\n      weight: 50"))
    assert err.field == "spec.http[0].route[0].weight"
    assert "a single destination takes all traffic" in str(err)


def test_duplicate_objects_name_both_files() -> None:
    objects = load_documents(BOOKINFO, "a.yaml") + load_documents(
        BOOKINFO.split("---\n")[3], "b.yaml"
    )
    with pytest.raises(IstioConfigError) as info:
        validate(objects, SERVICES)
    assert str(info.value) == (
        "b.yaml: DestinationRule default/reviews: defined twice: "
        "also DestinationRule default/reviews (in a.yaml)"
    )


def test_same_name_in_two_namespaces_is_not_a_duplicate_but_one_host_has_one_rule() -> None:
    other = BOOKINFO.split("---\n")[3].replace(
        "{name: reviews}", "{name: reviews, namespace: prod}"
    )
    objects = load_documents(BOOKINFO, "a.yaml") + load_documents(other, "b.yaml")
    with pytest.raises(IstioConfigError) as info:
        validate(objects, SERVICES)
    err = info.value
    assert (err.source, err.object, err.field) == (
        "b.yaml",
        "DestinationRule prod/reviews",
        "spec.host",
    )
    assert "host 'reviews' already has DestinationRule default/reviews (in a.yaml)" in str(err)


def test_two_virtual_services_for_one_host() -> None:
    extra = BOOKINFO.split("---\n")[1].replace(
        "{name: ratings, namespace: default}", "{name: ratings-2}"
    )
    objects = load_documents(BOOKINFO + "---\n" + extra, "mesh.yaml")
    with pytest.raises(IstioConfigError) as info:
        validate(objects, SERVICES)
    assert info.value.object == "VirtualService default/ratings-2"
    assert info.value.field == "spec.hosts[0]"
    assert (
        "host 'ratings.default.svc.cluster.local' already has VirtualService default/ratings"
        in str(info.value)
    )


@pytest.mark.parametrize(
    ("addition", "field"),
    [
        ("fault: {abort: {httpStatus: 500, percentage: {value: 10}}}", "spec.http[0].fault"),
        ("fault: {delay: {fixedDelay: 5s}}", "spec.http[0].fault"),
        ("mirror: {host: ratings, subset: v1}", "spec.http[0].mirror"),
        ("headers: {request: {set: {x-a: b}}, response: {remove: [x-b]}}", "spec.http[0].headers"),
    ],
)
def test_virtual_service_fault_mirror_and_headers_are_accepted(addition: str, field: str) -> None:
    # once refused as "not supported yet"; translated since (tests/unit/registry/test_vs_*)
    text = BOOKINFO.replace("    timeout: 1.5s\n", f"    timeout: 1.5s\n    {addition}\n")
    validate(load_documents(text, "mesh.yaml"), SERVICES)


@pytest.mark.parametrize(
    ("before", "after", "field", "reason"),
    [
        (
            "loadBalancer: {simple: RANDOM}",
            "loadBalancer: {simple: PASSTHROUGH}",
            "spec.trafficPolicy.loadBalancer.simple",
            "PASSTHROUGH: not supported yet",
        ),
        (
            "loadBalancer: {simple: RANDOM}",
            "tls: {mode: SIMPLE}",
            "spec.trafficPolicy.tls.mode",
            "SIMPLE: not supported yet",
        ),
    ],
)
def test_destination_rule_features_not_translated_yet(
    before: str, after: str, field: str, reason: str
) -> None:
    err = problem(BOOKINFO.replace(before, after))
    assert err.object == "DestinationRule default/reviews"
    assert err.field == field
    assert reason in str(err)


def test_every_istio_outlier_detection_field_is_accepted() -> None:
    fields = (
        "outlierDetection: {consecutiveGatewayErrors: 3, consecutive5xxErrors: 4,"
        " splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2,"
        " interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 20, minHealthPercent: 30}"
    )
    text = BOOKINFO.replace("loadBalancer: {simple: ROUND_ROBIN}", fields)
    validate(load_documents(text, "mesh.yaml"), SERVICES)


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ("{minHealthPercent: 101}", "minHealthPercent", "must be between 0 and 100, got 101"),
        ("{maxEjectionPercent: -1}", "maxEjectionPercent", "must be between 0 and 100, got -1"),
        (
            "{consecutiveLocalOriginFailures: -1}",
            "consecutiveLocalOriginFailures",
            "must be between 0 and",
        ),
        ("{splitExternalLocalOriginErrors: 1}", "splitExternalLocalOriginErrors", "a boolean"),
        ("{consecutiveErrors: 5}", "consecutiveErrors", "not supported yet"),
    ],
)
def test_invalid_outlier_detection_fields(fields: str, field: str, reason: str) -> None:
    text = BOOKINFO.replace("loadBalancer: {simple: ROUND_ROBIN}", f"outlierDetection: {fields}")
    with pytest.raises(IstioConfigError) as info:
        load_documents(text, "mesh.yaml")
    assert info.value.field == f"spec.subsets[1].trafficPolicy.outlierDetection.{field}"
    assert reason in str(info.value)


def test_tls_disable_is_accepted() -> None:
    validate(
        load_documents(
            BOOKINFO.replace("loadBalancer: {simple: RANDOM}", "tls: {mode: DISABLE}"), "mesh.yaml"
        ),
        SERVICES,
    )


def test_uri_rewrite_of_a_regex_match_is_refused() -> None:
    text = BOOKINFO.replace(
        "    - destination: {host: productpage}\n",
        "    - destination: {host: productpage}\n    rewrite: {uri: /v2/}\n",
    )
    err = problem(text)
    assert err.field == "spec.http[0].rewrite.uri"
    assert "cannot rewrite a regex uri match (spec.http[0].match[2].uri)" in str(err)
