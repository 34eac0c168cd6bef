"""The registration and admin API of `sail registry`: gRPC, with JSON bodies.

It is served on the registry's gRPC port, beside ADS, as the service
`sail.registry.v1.Registry`. There is no .proto: each request and response is one JSON
object, UTF-8 encoded, as the gRPC message bytes, so any gRPC library can call it with a
pass-through serializer (tools that need a .proto or reflection, like grpcurl, cannot):

```python
channel = grpc.insecure_channel("registry:15010")
register = channel.unary_unary(
    "/sail.registry.v1.Registry/Register",
    request_serializer=lambda m: json.dumps(m).encode(),
    response_deserializer=json.loads,
)
lease = register({"service": "reviews", "address": "10.0.0.7", "port": 9080},
                 metadata=[("authorization", f"Bearer {token}")], timeout=5)
```

`sail.registry.remote.RemoteRegistrar` (register, heartbeat, drain) and `AdminClient`
(apply, delete, status) are its Python clients.

## Authentication

Every call carries the metadata `authorization: Bearer <token>`, the token the registry was
started with. A missing, malformed or wrong token is `UNAUTHENTICATED`, with a message that
says which and names the method (never the expected token). A registry started without a
token accepts every call: **for local development only**, since anyone who can reach the
port can then register endpoints and replace the mesh config.

## Methods

Unknown fields are rejected (`INVALID_ARGUMENT` naming the field): a typo such as
`sub-zone` would otherwise silently route by the wrong locality. Every error message starts
with the method name and names the offending field.

**Register** - a workload is up. Returns its lease.

| field | type | |
|---|---|---|
| `service` | string | required, the service name (`reviews`) |
| `address` | string | required, an IP or DNS name the workload listens on |
| `port` | int | required, 1-65535 |
| `labels` | object of string → string | default `{}`; subsets select by labels |
| `locality` | `{region, zone, sub_zone}` strings | default all empty |
| `weight` | int | default 1, from 1 to 2³²-1 (Envoy's load_balancing_weight) |
| `health` | `HealthStatus` name | default `HEALTHY` |
| `ttl` | number, seconds | default 10, at most 3600 |

→ `{"lease_id": "9f0c...", "ttl": 10.0}`. Registering the same service/address/port again
replaces the old lease.

**Heartbeat** `{"lease_id"}` → `{"ok": true}`: renews the lease for another TTL. A lease
that lapsed (or that a restarted registry never knew) is `NOT_FOUND`: the client must
`Register` again, with the health it had.

**SetHealth** `{"lease_id", "health"}` → `{"ok": true}`: `health` is a `HealthStatus` name
(`HEALTHY`, `UNHEALTHY`, `DRAINING`, `TIMEOUT`, `DEGRADED`, `UNKNOWN`; any case). Only
`HEALTHY` and `UNKNOWN` endpoints take traffic. Renews the lease. `NOT_FOUND` as Heartbeat.

**Deregister** `{"lease_id"}` → `{"ok": true}`; `NOT_FOUND` if the lease is already gone.

Graceful shutdown is `SetHealth DRAINING` (clients stop picking the endpoint once EDS
reaches them), then wait for requests in flight, then `Deregister`.

**Apply** `{"source", "yaml"}` → `{"ok": true}`: store a config document (Istio-style YAML,
possibly several documents) under a source name, replacing the previous one. The whole
resulting set of documents is validated first; if it is invalid the call is
`INVALID_ARGUMENT` with the validator's message and nothing is stored.

**Delete** `{"source"}` → `{"ok": true}`: remove a document, after validating the set
without it (`INVALID_ARGUMENT` if that is invalid); `NOT_FOUND` if there is no such source.

Apply and Delete are serialized in a registry. With a store shared by several registries
(etcd), a config changed at another registry while this one validated is noticed by the
store, and the call validates again against the new set (up to 3 times, then `ABORTED`).

**CreateJoinToken** `{"namespace", "service_account", "ttl"}` → `{"token", "identity",
"expires_in"}`: a join token granting `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`
its first certificate (`ttl` seconds, default 24 h). An operator call, with the registry's
token like Apply. `FAILED_PRECONDITION` when the registry runs no CA (no
`--trust-domain`).

**CreateCertificate** `{"csr", "validity_duration"}` → `{"cert_chain": [PEM, ...]}`, leaf
first and root last, in the shape of Istio's `IstioCertificateService/CreateCertificate`:
the mesh CA signs the CSR (`validity_duration` seconds, 0 or absent: 24 h) for the identity
of the **join token** the call carries as `authorization: Bearer <join token>`, not for the
registry's token, which this call does not take. With `"current_chain"` (a certificate
the CA issued, leaf first) it is a **renewal**, for that certificate's identity and no
token: the CSR must be for that certificate's key, its signature proving the caller holds
it (EST's re-enrollment). A missing, forged or expired join token is
`UNAUTHENTICATED`; a CSR the CA refuses (a renewal of a certificate it did not issue, or
that expired, included) (one asking for another identity, a bad signature or
key, a lifetime over the CA's maximum) is `PERMISSION_DENIED`, with the reason.

**Status** `{}` → the registry's status (connected clients and the config versions they
acknowledged, workloads...), as the server supplies it.

A store that cannot reach its backend (`--store etcd://...` while etcd is down) makes
every write `UNAVAILABLE`, with a message naming etcd and its address; registrars retry.
An unexpected failure inside the registry is `INTERNAL` and logged there.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from sail.errors import CertificateRefused, ConfigError, TokenError
from sail.registry.identity import MeshIdentity
from sail.registry.store import DEFAULT_TTL, Store, StoreConflict, StoreUnavailable
from sail.registry.wire import (
    MAX_TTL,
    SERVICE,
    BodyError,
    check_fields,
    decode,
    encode,
    health_field,
    string_field,
    workload_from_json,
)

__all__ = ["RegistryApi"]

log = logging.getLogger("sail.registry.api")

Json = dict[str, Any]
Handler = Callable[[Json], Awaitable[Json]]

_CONFIG_ATTEMPTS = 3


class _Reject(Exception):
    """Ends a call with a gRPC status; `message` goes to the client."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bound_to_caller(
    body: Json, context: Any, admits: Callable[[str, str], str | None] | None
) -> Json:
    """A Register body over mTLS, bound to the caller's certificate: the workload's identity
    is the SPIFFE ID the certificate proves (a claim of another is PERMISSION_DENIED), so
    the identities clients expect of a service are ones their holders proved, and the
    service must take workloads of that identity (`admits(service, identity)`: why not, or
    `None`). Without a client certificate (a plaintext or server-only TLS registry) the
    claim stands, on the registry's token."""
    auth = context.auth_context() or {}
    if not auth.get("x509_pem_cert"):
        return body
    proven = auth.get("peer_spiffe_id") or []
    caller = proven[0].decode() if len(proven) == 1 else None
    claimed = body.get("identity")
    if caller is None:
        if claimed is not None:
            raise _Reject(grpc.StatusCode.PERMISSION_DENIED,
                          f"Register: claims identity {claimed!r}, and the caller's "
                          "certificate has no SPIFFE ID")
        return body
    if claimed is not None and claimed != caller:
        raise _Reject(grpc.StatusCode.PERMISSION_DENIED,
                      f"Register: claims identity {claimed!r}, and the caller's certificate "
                      f"is {caller}")
    service = body.get("service")
    refused = admits(service, caller) if admits is not None and isinstance(service, str) \
        else None
    if refused is not None:
        raise _Reject(grpc.StatusCode.PERMISSION_DENIED, f"Register: {refused}")
    return {**body, "identity": caller}


class _BadBody:
    """What the deserializer returns for bytes that are not JSON, so the handler (which
    authenticates first) can answer INVALID_ARGUMENT instead of gRPC's INTERNAL."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decode_request(data: bytes) -> Any:
    try:
        return decode(data) if data else {}
    except ValueError as exc:
        return _BadBody(str(exc))
    except RecursionError:
        return _BadBody("nested too deeply")


class RegistryApi:
    """The `sail.registry.v1.Registry` service (documented in this module's docstring).

    **Parameters**

    * `store` - where workloads and config documents live; used from the gRPC server's
      event loop only.
    * `token` - the bearer token every call must carry; `None` turns authentication off
      (local development only: a warning is logged). An empty string is refused.
    * `validate_config` - given the whole config set that an Apply or Delete would leave
      (source → YAML text), raises `ConfigError` with a clear message if it is unusable.
    * `status_provider` - returns the JSON-serializable dict that `Status` answers.
    * `default_ttl` - the lease TTL when Register gives none.

    Handlers run on the event loop and await the store's writes. Apply and Delete hold a
    lock from reading the config set to storing the change, so two of them cannot validate
    against the same old set and both be stored; a change made meanwhile at another
    registry sharing the store is `StoreConflict`, and the call validates again.
    """

    def __init__(
        self,
        store: Store,
        token: str | None,
        validate_config: Callable[[dict[str, str]], None],
        status_provider: Callable[[], Mapping[str, Any]],
        *,
        default_ttl: float = DEFAULT_TTL,
    ) -> None:
        if token is not None and not token.strip():
            raise ValueError("registry token is empty; pass None to disable authentication")
        if token is None:
            log.warning("registry API authentication is OFF (no token): local development only")
        if not 0 < default_ttl <= MAX_TTL:
            raise ValueError(f"default_ttl must be in (0, {MAX_TTL:g}], got {default_ttl!r}")
        self._store = store
        self._token = token.strip().encode() if token is not None else None
        self._validate = validate_config
        self._status = status_provider
        self._default_ttl = default_ttl
        self._config_lock = asyncio.Lock()
        self._handlers: dict[str, Handler] = {
            "Register": self._register,
            "Heartbeat": self._heartbeat,
            "SetHealth": self._set_health,
            "Deregister": self._deregister,
            "Apply": self._apply,
            "Delete": self._delete,
            "Status": self._status_call,
            "CreateJoinToken": self._create_join_token,
        }
        self.identity: MeshIdentity | None = None  # set by the registry when it runs a CA
        # why service `s` does not take a workload of identity `i` over mTLS (the registry's
        # WorkloadGroup rule), `None` to take it; unset: any
        self.admits: Callable[[str, str], str | None] | None = None

    def add_to(self, server: Any) -> None:
        """Serve the API on a `grpc.aio.Server` (before it starts)."""
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._rpc(name, handler),
                request_deserializer=_decode_request,
                response_serializer=bytes,  # `call` encodes, so a failure is reported
            )
            for name, handler in self._handlers.items()
        }
        handlers["CreateCertificate"] = self._certificate_handler()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    def add_certificates_to(self, server: Any) -> None:
        """Serve `CreateCertificate` alone on `server` (the registry's enrollment port)."""
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"CreateCertificate": self._certificate_handler()}),))

    def _certificate_handler(self) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            self._certificate_rpc, request_deserializer=_decode_request,
            response_serializer=bytes,
        )

    # -- dispatch -----------------------------------------------------------------------------

    def _rpc(self, method: str, handler: Handler) -> Callable[[Any, Any], Awaitable[bytes]]:
        async def call(request: Any, context: Any) -> bytes:
            try:
                self._authenticate(method, context.invocation_metadata() or ())
                if isinstance(request, _BadBody):
                    raise _Reject(_INVALID, f"{method}: body is not JSON: {request.reason}")
                if not isinstance(request, dict):
                    raise _Reject(_INVALID, f"{method}: body must be a JSON object")
                if method == "Register":
                    request = _bound_to_caller(request, context, self.admits)
                return encode(await handler(request))
            except _Reject as exc:
                rejection = exc
            except BodyError as exc:
                rejection = _Reject(_INVALID, f"{method}: {exc}")
            except StoreUnavailable as exc:
                log.warning("registry API %s: %s", method, exc)
                rejection = _Reject(grpc.StatusCode.UNAVAILABLE, f"{method}: {exc}")
            except Exception as exc:
                log.exception("registry API %s failed", method)
                rejection = _Reject(grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc!r}")
            await context.abort(rejection.code, rejection.message)
            raise AssertionError("context.abort returned")  # it always raises

        return call

    def _authenticate(self, method: str, metadata: Any) -> None:
        if self._token is None:
            return
        given = _bearer(method, metadata, "the registry's token")
        if not hmac.compare_digest(given.encode(), self._token):
            raise _Reject(_UNAUTHENTICATED, f"{method}: wrong bearer token")

    async def _certificate_rpc(self, request: Any, context: Any) -> bytes:
        """`CreateCertificate`: authenticated by the join token it carries as its bearer
        credential (not by the registry's token: a workload holds only its own)."""
        method = "CreateCertificate"
        try:
            if self.identity is None:
                raise _Reject(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{method}: this registry runs no CA (start it with "
                              "--trust-domain)")
            if isinstance(request, _BadBody) or not isinstance(request, dict):
                raise _Reject(_INVALID, f"{method}: body must be a JSON object")
            check_fields(request, ("csr", "validity_duration", "current_chain"))
            try:
                if "current_chain" in request:  # a renewal: the certificate is the credential
                    return encode(self.identity.renew_certificate(request))
                token = _bearer(method, context.invocation_metadata() or (), "a join token")
                return encode(self.identity.create_certificate(request, token))
            except TokenError as exc:
                raise _Reject(_UNAUTHENTICATED, f"{method}: {exc}") from None
            except CertificateRefused as exc:
                raise _Reject(grpc.StatusCode.PERMISSION_DENIED, f"{method}: {exc}") from None
            except ValueError as exc:
                raise _Reject(_INVALID, f"{method}: {exc}") from None
        except _Reject as exc:
            rejection = exc
        except BodyError as exc:
            rejection = _Reject(_INVALID, f"{method}: {exc}")
        except Exception as exc:
            log.exception("registry API %s failed", method)
            rejection = _Reject(grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc!r}")
        log.warning("registry API %s refused: %s", method, rejection.message)
        await context.abort(rejection.code, rejection.message)
        raise AssertionError("context.abort returned")

    # -- workloads ----------------------------------------------------------------------------

    async def _register(self, body: Json) -> Json:
        workload, health, ttl = workload_from_json(body, self._default_ttl)
        lease = await self._store.put_workload(workload, health, ttl)
        log.info("registered %s (%s, lease %s, ttl %gs)", workload.key, health.name, lease.id, ttl)
        return {"lease_id": lease.id, "ttl": lease.ttl}

    async def _heartbeat(self, body: Json) -> Json:
        check_fields(body, ("lease_id",))
        lease_id = string_field(body, "lease_id")
        if not await self._store.heartbeat(lease_id):
            raise _unknown_lease("Heartbeat", lease_id)
        return {"ok": True}

    async def _set_health(self, body: Json) -> Json:
        check_fields(body, ("lease_id", "health"))
        lease_id = string_field(body, "lease_id")
        health = health_field(body)
        if not await self._store.set_health(lease_id, health):
            raise _unknown_lease("SetHealth", lease_id)
        log.info("lease %s is now %s", lease_id, health.name)
        return {"ok": True}

    async def _deregister(self, body: Json) -> Json:
        check_fields(body, ("lease_id",))
        lease_id = string_field(body, "lease_id")
        if not await self._store.remove_workload(lease_id):
            raise _unknown_lease("Deregister", lease_id)
        log.info("deregistered lease %s", lease_id)
        return {"ok": True}

    # -- config and status --------------------------------------------------------------------

    async def _apply(self, body: Json) -> Json:
        check_fields(body, ("source", "yaml"))
        source = string_field(body, "source")
        text = body.get("yaml")
        if not isinstance(text, str):
            raise BodyError(f"'yaml' must be a string of YAML text, got {type(text).__name__}")
        async with self._config_lock:
            for _ in range(_CONFIG_ATTEMPTS):
                candidate = self._store.configs()
                candidate[source] = text
                self._check("Apply", candidate)
                try:
                    await self._store.put_config(source, text)
                    break
                except StoreConflict as exc:
                    log.info("Apply %r: %s", source, exc)
            else:
                raise _conflict("Apply")
        log.info("applied config source %r (%d bytes)", source, len(text))
        return {"ok": True}

    async def _delete(self, body: Json) -> Json:
        check_fields(body, ("source",))
        source = string_field(body, "source")
        async with self._config_lock:
            for _ in range(_CONFIG_ATTEMPTS):
                candidate = self._store.configs()
                if candidate.pop(source, None) is None:
                    raise _Reject(_NOT_FOUND, f"Delete: no config source {source!r}")
                self._check("Delete", candidate)
                try:
                    if not await self._store.delete_config(source):
                        raise _Reject(_NOT_FOUND, f"Delete: no config source {source!r}")
                    break
                except StoreConflict as exc:
                    log.info("Delete %r: %s", source, exc)
            else:
                raise _conflict("Delete")
        log.info("deleted config source %r", source)
        return {"ok": True}

    def _check(self, method: str, candidate: dict[str, str]) -> None:
        try:
            self._validate(candidate)
        except ConfigError as exc:
            raise _Reject(_INVALID, f"{method}: {exc}") from exc

    async def _status_call(self, body: Json) -> Json:
        check_fields(body, ())
        return dict(self._status())

    # -- identity -----------------------------------------------------------------------------

    async def _create_join_token(self, body: Json) -> Json:
        check_fields(body, ("namespace", "service_account", "ttl"))
        if self.identity is None:
            raise _Reject(grpc.StatusCode.FAILED_PRECONDITION,
                          "CreateJoinToken: this registry runs no CA (start it with "
                          "--trust-domain)")
        try:
            return self.identity.create_join_token(body)
        except ValueError as exc:
            raise BodyError(str(exc)) from None


def _bearer(method: str, metadata: Any, what: str) -> str:
    """The `authorization: Bearer <credential>` of a call, or `_Reject` saying what is
    missing (never echoing the credential)."""
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        raise _Reject(
            _UNAUTHENTICATED,
            f"{method}: missing 'authorization' metadata; send 'authorization: Bearer "
            f"<token>' with {what}",
        )
    scheme, _, given = str(values[0]).strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _Reject(
            _UNAUTHENTICATED,
            f"{method}: 'authorization' metadata must be 'Bearer <token>', got a "
            f"{scheme[:16]!r} credential",
        )
    return given.strip()


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _conflict(method: str) -> _Reject:
    return _Reject(
        grpc.StatusCode.ABORTED,
        f"{method}: the config kept changing at other registries while it was validated; "
        "try again",
    )


def _unknown_lease(method: str, lease_id: str) -> _Reject:
    return _Reject(
        _NOT_FOUND, f"{method}: lease {lease_id!r} is unknown or expired; register again"
    )
