"""Fail closed in the registry: a kind or field sail does not enforce is an error at
`sail apply` and at `sail registry --config` start, naming it, never accepted and ignored.

Each test fails if the config is silently accepted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sail.cli.main import main
from sail.model import HealthStatus
from sail.registry.istio import IstioConfigError, load_documents, validate
from sail.registry.istio.validate import check_supported
from sail.registry.server import Registry
from sail.registry.translate import translate
from sail.xds.codec.types import RESOURCE_TYPES, unpack
from sail.xds.resolver import CDS, LDS
from tests.helpers import wait_until
from tests.unit.registry.test_istio_parse import BOOKINFO, SECURITY
from tests.unit.registry.test_registry_server import REVIEWS, Running, on_loop, run

PEER_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: prod}
spec:
  mtls: {mode: STRICT}
"""

DENY_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec:
  action: DENY
  rules: [{}]
"""

REQUEST_AUTHN = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules: [{issuer: https://issuer.example}]
"""

DENY_REASON = (
    "AuthorizationPolicy default/deny-all: not enforced by sail yet (sail fails closed: "
    "refusing it rather than accepting it and allowing every call)"
)

SERVICES = {"reviews", "ratings", "productpage"}


def refused(text: str, known: set[str] | None = SERVICES) -> IstioConfigError:
    with pytest.raises(IstioConfigError) as info:
        validate(load_documents(text, "mesh.yaml"), known)
    return info.value


# -- the kinds sail does not enforce ----------------------------------------------------


def test_peer_authentication_is_accepted_now_and_two_namespace_wide_ones_are_refused() -> None:
    validate(load_documents(PEER_STRICT, "mesh.yaml"), SERVICES)
    twice = PEER_STRICT + "---\n" + PEER_STRICT.replace("name: strict", "name: second")
    err = refused(twice)
    assert (err.object, err.field) == ("PeerAuthentication prod/strict", "spec.selector")
    assert "one PeerAuthentication without a selector per namespace" in str(err)


def test_authorization_policy_deny_is_refused_naming_it() -> None:
    assert str(refused(DENY_ALL)) == f"mesh.yaml: {DENY_REASON}"


def test_every_action_is_refused_not_only_deny() -> None:
    for action in ("ALLOW", "AUDIT"):
        assert "not enforced by sail yet" in str(refused(DENY_ALL.replace("DENY", action)))


def test_request_authentication_is_refused_when_read() -> None:
    with pytest.raises(IstioConfigError) as info:
        load_documents(REQUEST_AUTHN, "jwt.yaml")
    assert str(info.value) == (
        "jwt.yaml: RequestAuthentication default/jwt: not enforced by sail yet (sail fails "
        "closed: refusing it rather than accepting it and letting requests with any token, "
        "or a forged one, through)"
    )


def test_security_objects_still_parse_and_are_refused_beside_good_config() -> None:
    """Parsing keeps working (the authorization work reads the specs); validate, translate
    and check_supported refuse an AuthorizationPolicy, and with it the whole config set."""
    objects = load_documents(BOOKINFO + SECURITY, "mesh.yaml")
    assert [o.kind for o in objects[-2:]] == ["PeerAuthentication", "AuthorizationPolicy"]
    for check in (
        lambda: validate(objects, SERVICES),
        lambda: validate(objects, None),
        lambda: check_supported(objects),
        lambda: translate(objects, []),
    ):
        with pytest.raises(IstioConfigError, match=r"AuthorizationPolicy .*: "
                           r"not enforced by sail yet"):
            check()


# -- fields that are parsed but not translated ------------------------------------------


def test_service_entry_mesh_internal_is_refused() -> None:
    text = BOOKINFO.replace("location: MESH_EXTERNAL", "location: MESH_INTERNAL")
    err = refused(text)
    assert (err.object, err.field) == ("ServiceEntry default/httpbin", "spec.location")
    assert "MESH_INTERNAL: not supported yet (only MESH_EXTERNAL)" in str(err)
    validate(load_documents(BOOKINFO, "mesh.yaml"), SERVICES)  # MESH_EXTERNAL is accepted


@pytest.mark.parametrize("mode", ["SIMPLE", "MUTUAL"])
def test_destination_rule_tls_is_refused_saying_traffic_would_be_plaintext(mode: str) -> None:
    text = BOOKINFO.replace(
        "    loadBalancer: {simple: RANDOM}", f"    loadBalancer: {{simple: RANDOM}}\n"
        f"    tls: {{mode: {mode}}}"
    )
    err = refused(text)
    assert err.field == "spec.trafficPolicy.tls.mode"
    assert f"{mode}: not supported yet (ISTIO_MUTUAL or DISABLE)" in str(err)
    assert "plaintext" in str(err)


def test_port_level_settings_are_refused() -> None:
    text = BOOKINFO.replace(
        "    loadBalancer: {simple: RANDOM}",
        "    loadBalancer: {simple: RANDOM}\n"
        "    portLevelSettings: [{port: {number: 9080}, tls: {mode: ISTIO_MUTUAL}}]",
    )
    with pytest.raises(IstioConfigError) as info:
        load_documents(text, "mesh.yaml")
    assert info.value.field == "spec.trafficPolicy.portLevelSettings"


def test_match_names_are_translated_into_route_names() -> None:
    text = BOOKINFO.replace(
        "    - headers:\n        end-user:",
        "    - name: by-user\n      headers:\n        end-user:",
    )
    resources = translate(load_documents(text, "mesh.yaml"), [(REVIEWS, HealthStatus.HEALTHY)])
    config = next(c for c in resources.route_configs if c.name == "reviews")
    names = [r.name for r in config.virtual_hosts[0].routes]
    assert names[:2] == ["jason.by-user", "canary"]


# -- sail apply, through the registry's API and the CLI ---------------------------------


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(registration_grace=0, token="fail-closed")
    on_loop(lambda: r.registry.store.put_workload(REVIEWS, HealthStatus.HEALTHY, 30))
    try:
        yield r
    finally:
        run(r.registry.stop(0))


def cli(running: Running, *args: str) -> int:
    return main([*args, "--registry", running.address, "--token", "fail-closed"])


@pytest.mark.parametrize(("text", "reason"), [(DENY_ALL, DENY_REASON)])
def test_sail_apply_refuses_them_with_the_reason_and_exit_code_1(
    running: Running,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    reason: str,
) -> None:
    path = tmp_path / "security.yaml"
    path.write_text(text)
    assert cli(running, "apply", "-f", str(path)) == 1
    assert capsys.readouterr().err == f"sail: Apply: {path}: {reason}\n"
    assert on_loop(running.registry.store.configs) == {}  # nothing stored


def test_sail_apply_refuses_request_authentication(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jwt.yaml"
    path.write_text(REQUEST_AUTHN)
    assert cli(running, "apply", "-f", str(path)) == 1
    assert "RequestAuthentication default/jwt: not enforced by sail yet" in capsys.readouterr().err
    assert on_loop(running.registry.store.configs) == {}


def test_nothing_the_registry_serves_is_nacked_by_the_codec(running: Running) -> None:
    """Client, server (A36) and Envoy port listeners, routes, clusters and endpoints of a
    BookInfo mesh all decode: failing closed refuses nothing the registry itself makes."""
    on_loop(lambda: running.registry.store.put_config("bookinfo.yaml", BOOKINFO))
    wait_until(lambda: running.registry.resources.resources(CDS))
    assert running.registry.last_error == ""
    decoded = 0
    for type_url, rtype in RESOURCE_TYPES.items():
        for packed in running.registry.resources.resources(type_url).values():
            rtype.decode(unpack(packed)[1])  # raises ResourceError if NACKed
            decoded += 1
    names = running.registry.resources.resources(LDS)
    assert any(n.startswith("grpc/server?") for n in names)  # A36 server listeners
    assert any("_" in n for n in names)  # Envoy port listeners
    assert decoded > 10


def test_a_stored_authorization_policy_is_never_served(running: Running) -> None:
    """One left in a shared store (etcd) by an older registry: the rebuild refuses it and
    says why, rather than serve the mesh without it."""
    on_loop(lambda: running.registry.store.put_config("old.yaml", DENY_ALL))
    wait_until(lambda: running.registry.last_error != "")
    assert running.registry.status()["config_error"] == f"old.yaml: {DENY_REASON}"


# -- sail registry --config -------------------------------------------------------------


def test_registry_with_an_authorization_policy_in_its_config_does_not_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deny.yaml"
    path.write_text(DENY_ALL)
    with pytest.raises(IstioConfigError) as info:
        Registry(config_paths=[path])
    assert str(info.value) == f"{path}: {DENY_REASON}"


def test_sail_registry_config_refuses_to_start_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "mesh"
    folder.mkdir()
    (folder / "a-deny.yaml").write_text(DENY_ALL)
    proc = subprocess.run(
        [sys.executable, "-m", "sail.cli.main", "registry", "--config", str(folder),
         "--address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert f"sail: {folder / 'a-deny.yaml'}: {DENY_REASON}" in proc.stderr
    assert "listening" not in proc.stdout
