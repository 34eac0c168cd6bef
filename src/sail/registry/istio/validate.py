"""Checks across Istio objects, and refusal of what parses but cannot be applied yet.

`validate(objects, known_hosts)` raises the first `IstioConfigError` found, naming the
file, the object and the field:

* the same kind/namespace/name twice;
* what parses but cannot be translated (`check_supported`, which `translate` runs too): a
  VirtualService's `rewrite.uri` on a rule with a `regex` uri match (Istio rewrites a
  matched prefix); a DestinationRule's `loadBalancer.simple: PASSTHROUGH`, or `tls.mode`
  SIMPLE or MUTUAL (TLS with certificates of the client's own: not yet); a ServiceEntry's
  `location: MESH_INTERNAL`. The registry refuses these rather than serve config that
  quietly does less than it says;
* a kind sail does not enforce yet (`NOT_ENFORCED`): AuthorizationPolicy is parsed and
  validated (for the authorization work) but refused by `check_supported` with
  `not_enforced`'s reason; RequestAuthentication, which sail does not parse, is refused by
  the parser with the same reason. sail fails closed: accepting a DENY rule and then
  allowing the call would be a security hole. PeerAuthentication is enforced (with
  `portLevelMtls`), and two of one namespace without a selector are refused (Istio would
  take the older). Since `sail apply`
  (`Registry.check_configs`) and `sail registry --config` both read through the parser and
  `validate`, both refuse them the same way;
* two VirtualServices, two DestinationRules or two ServiceEntries for one host (Istio
  would pick one arbitrarily);
* a route or mirror destination (or its `subset`) that does not exist: the host must be a
  known service or a ServiceEntry host, the subset defined by the host's DestinationRule;
* destination weights of one rule that do not sum to 100 (a single destination may leave
  `weight` out, or say 100).

Hosts are compared in their short form (`sail.registry.istio.hosts.short_host`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

from sail.registry.istio.destination_rule import SimpleLB, TLSMode, TrafficPolicy
from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.hosts import short_host
from sail.registry.istio.model import (
    AuthorizationPolicy,
    DestinationRule,
    IstioObject,
    PeerAuthentication,
    ServiceEntry,
    VirtualService,
)
from sail.registry.istio.service_entry import Location
from sail.registry.istio.virtual_service import Destination, HTTPRoute

__all__ = ["NOT_ENFORCED", "check_supported", "not_enforced", "validate"]

_NOT_YET = "not supported yet"

NOT_ENFORCED: Mapping[str, str] = {
    "AuthorizationPolicy": "allowing every call",
    "RequestAuthentication": "letting requests with any token, or a forged one, through",
}
"""The Istio kinds sail does not enforce yet, and what accepting one would do instead."""


def not_enforced(kind: str, ref: str, source: str) -> IstioConfigError:
    """The error refusing an object of a `NOT_ENFORCED` kind (`ref` is `Kind ns/name`)."""
    return IstioConfigError(
        f"not enforced by sail yet (sail fails closed: refusing it rather than accepting it "
        f"and {NOT_ENFORCED[kind]})",
        source=source,
        object=ref,
    )


def validate(objects: Sequence[IstioObject], known_hosts: Collection[str] | None) -> None:
    """Raise `IstioConfigError` for the first problem across `objects`.

    `known_hosts` are the registered services (short names, `.svc.cluster.local` forms
    accepted). `None` skips the check that route destinations exist, for when the services
    are not known yet (a registry starting before any workload registered); ServiceEntry
    hosts count as known either way, and subsets are always checked.
    """
    _check_duplicates(objects)
    check_supported(objects)
    _check_peer_authentications(objects)
    owners = _check_one_per_host(objects)
    entries = {short_host(h) for o in objects if isinstance(o, ServiceEntry) for h in o.spec.hosts}
    known = None if known_hosts is None else {short_host(h) for h in known_hosts} | entries
    rules = {host: o for (kind, host), o in owners.items() if kind == "DestinationRule"}
    for obj in objects:
        if isinstance(obj, VirtualService):
            for i, rule in enumerate(obj.spec.http):
                _check_rule(obj, f"spec.http[{i}]", rule, known, rules)


def check_supported(objects: Sequence[IstioObject]) -> None:
    """Raise `IstioConfigError` for the first object of a kind sail does not enforce yet
    (`not_enforced`), or field that parses but is not translated yet."""
    for obj in objects:
        if isinstance(obj, AuthorizationPolicy):
            raise not_enforced(obj.kind, obj.ref, obj.source)
        for field, reason in _unsupported(obj):
            raise _error(obj, field, reason)


def _unsupported(obj: IstioObject) -> Iterator[tuple[str, str]]:
    if isinstance(obj, VirtualService):
        for i, rule in enumerate(obj.spec.http):
            if rule.rewrite is not None and rule.rewrite.uri is not None:
                for j, match in enumerate(rule.match):
                    if match.uri is not None and match.uri.regex is not None:
                        yield (
                            f"spec.http[{i}].rewrite.uri",
                            f"cannot rewrite a regex uri match (spec.http[{i}].match[{j}].uri);"
                            " Istio rewrites a matched prefix or exact path",
                        )
    elif isinstance(obj, DestinationRule):
        yield from _unsupported_policy("spec.trafficPolicy", obj.spec.traffic_policy)
        for i, subset in enumerate(obj.spec.subsets):
            yield from _unsupported_policy(
                f"spec.subsets[{i}].trafficPolicy", subset.traffic_policy
            )
    elif isinstance(obj, ServiceEntry) and obj.spec.location is Location.MESH_INTERNAL:
        yield (
            "spec.location",
            f"MESH_INTERNAL: {_NOT_YET} (only MESH_EXTERNAL): sail treats every ServiceEntry "
            "host as outside the mesh (plaintext, no server-side policy)",
        )


def _unsupported_policy(path: str, policy: TrafficPolicy | None) -> Iterator[tuple[str, str]]:
    if policy is None:
        return
    lb = policy.load_balancer
    if lb is not None and lb.simple is SimpleLB.PASSTHROUGH:
        yield f"{path}.loadBalancer.simple", f"PASSTHROUGH: {_NOT_YET}"
    if policy.tls is not None and policy.tls.mode in (TLSMode.SIMPLE, TLSMode.MUTUAL):
        yield (
            f"{path}.tls.mode",
            f"{policy.tls.mode.value}: {_NOT_YET} (ISTIO_MUTUAL or DISABLE): sail does not "
            "originate TLS with certificates of its own yet, and would send this traffic in "
            "plaintext",
        )


def _check_peer_authentications(objects: Sequence[IstioObject]) -> None:
    """Two PeerAuthentications without a selector in one namespace: Istio takes the older,
    which sail cannot know, so it refuses the pair."""
    seen: dict[str, PeerAuthentication] = {}
    for obj in sorted(objects, key=lambda o: o.key):
        if isinstance(obj, PeerAuthentication) and obj.spec.selector is None:
            other = seen.setdefault(obj.meta.namespace, obj)
            if other is not obj:
                raise _error(obj, "spec.selector", (
                    f"unset, as in {other.ref}: one PeerAuthentication without a selector "
                    "per namespace (Istio would pick the older; sail refuses the pair)"
                ))


def _check_duplicates(objects: Sequence[IstioObject]) -> None:
    seen: dict[tuple[str, str, str], IstioObject] = {}
    for obj in objects:
        first = seen.setdefault(obj.key, obj)
        if first is not obj:
            where = f" (in {first.source})" if first.source else ""
            raise _error(obj, "", f"defined twice: also {first.ref}{where}")


def _check_one_per_host(
    objects: Sequence[IstioObject],
) -> dict[tuple[str, str], IstioObject]:
    """Each host's VirtualService, DestinationRule and ServiceEntry, by (kind, host)."""
    owners: dict[tuple[str, str], IstioObject] = {}
    for obj in objects:
        for field, host in _hosts(obj):
            first = owners.setdefault((obj.kind, short_host(host)), obj)
            if first is not obj:
                where = f" (in {first.source})" if first.source else ""
                raise _error(
                    obj,
                    field,
                    f"host {host!r} already has {first.ref}{where}; one {obj.kind} per host",
                )
    return owners


def _hosts(obj: IstioObject) -> Iterator[tuple[str, str]]:
    if isinstance(obj, VirtualService | ServiceEntry):
        for i, host in enumerate(obj.spec.hosts):
            yield f"spec.hosts[{i}]", host
    elif isinstance(obj, DestinationRule):
        yield "spec.host", obj.spec.host


def _check_rule(
    vs: VirtualService,
    path: str,
    rule: HTTPRoute,
    known: set[str] | None,
    rules: dict[str, IstioObject],
) -> None:
    destinations = [
        (f"{path}.route[{j}].destination", target.destination)
        for j, target in enumerate(rule.route)
    ]
    if rule.mirror is not None:
        destinations.append((f"{path}.mirror", rule.mirror))
    destinations.extend(
        (f"{path}.mirrors[{j}].destination", m.destination) for j, m in enumerate(rule.mirrors)
    )
    for where, destination in destinations:
        _check_destination(vs, where, destination, known, rules)
    _check_weights(vs, path, rule)


def _check_destination(
    vs: VirtualService,
    where: str,
    destination: Destination,
    known: set[str] | None,
    rules: dict[str, IstioObject],
) -> None:
    host = short_host(destination.host)
    if known is not None and host not in known:
        raise _error(vs, f"{where}.host", f"unknown host {host!r} ({_listed(known)})")
    subset = destination.subset
    if subset is None:
        return
    dr = rules.get(host)
    if not isinstance(dr, DestinationRule):
        raise _error(
            vs, f"{where}.subset", f"subset {subset!r}: no DestinationRule for host {host!r}"
        )
    if dr.spec.subset(subset) is None:
        defined = ", ".join(s.name for s in dr.spec.subsets) or "none"
        raise _error(
            vs,
            f"{where}.subset",
            f"subset {subset!r} is not defined by {dr.ref} (defined: {defined})",
        )


def _check_weights(vs: VirtualService, path: str, rule: HTTPRoute) -> None:
    if len(rule.route) == 1:
        weight = rule.route[0].weight
        if weight not in (None, 100):
            raise _error(
                vs,
                f"{path}.route[0].weight",
                f"is {weight}, but a single destination takes all traffic: "
                "leave weight out or set 100",
            )
        return
    total = sum(t.weight or 0 for t in rule.route)
    if total != 100:
        weights = " + ".join(str(t.weight or 0) for t in rule.route)
        raise _error(vs, f"{path}.route", f"weights sum to {total} ({weights}), not 100")


def _listed(known: set[str]) -> str:
    names = sorted(known)
    if not names:
        return "no services are known"
    shown = ", ".join(names[:10])
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return f"known: {shown}{more}"


def _error(obj: IstioObject, field: str, reason: str) -> IstioConfigError:
    return IstioConfigError(reason, source=obj.source, object=obj.ref, field=field)
