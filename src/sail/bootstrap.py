"""gRPC's xDS bootstrap: where the control plane is, who this node is, and naming templates.

The format is gRPC's own (gRFC A27, A29 `certificate_providers`, A47 `authorities`, A71
fallback through an ordered `xds_servers` list), so one file drives sail and grpcio's native
`xds:///` resolver alike. As in gRPC, unknown fields are ignored. Every error is a
`BootstrapError` whose message names the source and the field path, e.g.
`/etc/sail/bootstrap.json: xds_servers[0].server_uri: missing required field`.

The trap: `channel_creds` is a list of *choices*, not a stack. The first type sail supports
(`insecure` or `tls`) wins and the rest are ignored; `google_default` is recognised by gRPC
but not usable by sail, so a list holding only it is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import attrs

from sail.errors import BootstrapError
from sail.model import Locality

__all__ = [
    "DEFAULT_SERVER_LISTENER_TEMPLATE",
    "ENV_VARS",
    "SUPPORTED_CHANNEL_CREDS",
    "Authority",
    "Bootstrap",
    "CertificateProvider",
    "ChannelCreds",
    "Node",
    "XdsServer",
    "load_bootstrap",
    "parse_bootstrap",
]

#: Channel credential types sail can use to reach an xDS server, in no particular order.
SUPPORTED_CHANNEL_CREDS: Final = frozenset({"insecure", "tls"})
#: Environment variables `load_bootstrap` reads, in order; the last one holds inline JSON.
ENV_VARS: Final = ("SAIL_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")
_LISTENER_TYPE: Final = "envoy.config.listener.v3.Listener"
# RFC 3986 section 3.3: a path keeps unreserved, sub-delims, ":", "@" and "/"; A47 encodes
# everything else when substituting into an xdstp: template.
_PATH_SAFE: Final = "/:@!$&'()*+,;="


def _freeze(value: Any) -> Any:
    """Deep read-only copy of JSON: objects become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen: Mapping[str, Any] = _freeze(value)
    return frozen


def _expand(template: str, value: str) -> str:
    """Replace every `%s`; A47 percent-encodes the value when the template is `xdstp:`."""
    if template.startswith("xdstp:"):
        value = quote(value, safe=_PATH_SAFE)
    return template.replace("%s", value)


@attrs.frozen
class ChannelCreds:
    """One choice of credentials for reaching an xDS server.

    **Parameters**

    * `type` - `insecure`, `tls`, `google_default`, ... (only `insecure` and `tls` are usable).
    * `config` - the type's own settings; for `tls` (gRFC A65) `ca_certificate_file`
      (unset: the system's roots), `certificate_file` and `private_key_file` (mTLS),
      `refresh_interval`, checked when parsed. Stored read-only.
    """

    type: str
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)


def _has_supported_creds(_: object, __: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    if not any(c.type in SUPPORTED_CHANNEL_CREDS for c in value):
        raise ValueError(f"no supported channel_creds type among {[c.type for c in value]}")


@attrs.frozen
class XdsServer:
    """One xDS management server.

    **Parameters**

    * `server_uri` - a gRPC target, e.g. `registry.mesh:15010` or `dns:///xds.example:443`.
    * `channel_creds` - the choices as listed; the first supported one is used (`creds`).
    * `server_features` - e.g. `ignore_resource_deletion` (gRFC A53), `xds_v3`.
    """

    server_uri: str
    channel_creds: tuple[ChannelCreds, ...] = attrs.field(validator=_has_supported_creds)
    server_features: frozenset[str] = frozenset()

    @property
    def creds(self) -> ChannelCreds:
        """The credentials sail uses: the first entry whose type it supports."""
        return next(c for c in self.channel_creds if c.type in SUPPORTED_CHANNEL_CREDS)

    @property
    def insecure(self) -> bool:
        return self.creds.type == "insecure"

    @property
    def ignore_resource_deletion(self) -> bool:
        """Keep a resource the server stops sending instead of dropping it (gRFC A53)."""
        return "ignore_resource_deletion" in self.server_features


@attrs.frozen
class Node:
    """The `node` sent on every xDS stream.

    **Parameters**

    * `id` - the node id; may be empty (gRPC allows it) and sail never invents one.
    * `cluster` - Envoy's service cluster.
    * `locality` - where this node runs; used for locality-aware balancing.
    * `metadata` - free-form JSON, sent as the node's `metadata` Struct. Stored read-only.
    """

    id: str = ""
    cluster: str = ""
    locality: Locality = attrs.field(factory=Locality)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)


@attrs.frozen
class CertificateProvider:
    """A certificate provider instance (gRFC A29), referenced by name from xDS TLS config.

    **Parameters**

    * `plugin_name` - e.g. `file_watcher`.
    * `config` - the plugin's settings. Stored read-only.
    """

    plugin_name: str
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)


@attrs.frozen
class Authority:
    """One entry of the `authorities` map (gRFC A47).

    **Parameters**

    * `client_listener_resource_name_template` - starts with `xdstp://<authority>/`;
      defaults to `xdstp://<authority>/envoy.config.listener.v3.Listener/%s`.
    * `xds_servers` - this authority's servers; empty means the top-level list
      (`Bootstrap.servers_for` resolves that).
    """

    client_listener_resource_name_template: str
    xds_servers: tuple[XdsServer, ...] = ()


DEFAULT_SERVER_LISTENER_TEMPLATE = "grpc/server?xds.resource.listening_address=%s"
"""gRPC's usual `server_listener_resource_name_template`: what `sail registry` serves server
listeners under, and what local mode names them (a bootstrap has no default, as in gRPC)."""

@attrs.frozen
class Bootstrap:
    """A validated bootstrap.

    **Parameters**

    * `xds_servers` - the default servers, in order; later ones are fallbacks (gRFC A71).
    * `node` - this process's identity on the xDS stream.
    * `certificate_providers` - provider instances by instance name.
    * `server_listener_resource_name_template` - the Listener name for xDS-enabled servers,
      `%s` being the listening `ip:port`; None when unset.
    * `client_default_listener_resource_name_template` - the Listener name for a client
      target without authority; default `%s`.
    * `authorities` - A47 authorities by name.
    * `source` - where the bootstrap came from (a path, `$GRPC_XDS_BOOTSTRAP_CONFIG`,
      `<inline>`); not part of equality.
    """

    xds_servers: tuple[XdsServer, ...]
    node: Node = attrs.field(factory=Node)
    certificate_providers: Mapping[str, CertificateProvider] = attrs.field(factory=dict)
    server_listener_resource_name_template: str | None = None
    client_default_listener_resource_name_template: str = "%s"
    authorities: Mapping[str, Authority] = attrs.field(factory=dict)
    source: str = attrs.field(default="<inline>", eq=False)

    def listener_name(self, target: str) -> str:
        """The Listener resource name for a client target.

        `target` is a service authority (`reviews:9080`) or an `xds:` URI. An
        `xds://<authority>/name` target uses that authority's template (it must exist);
        anything else uses `client_default_listener_resource_name_template`.
        """
        template = self.client_default_listener_resource_name_template
        if target.startswith("xds:"):
            parts = urlsplit(target)
            target = unquote(parts.path).lstrip("/")
            if parts.netloc:
                template = self._authority(parts.netloc).client_listener_resource_name_template
        return _expand(template, target)

    def server_listener_name(self, address: str) -> str:
        """The Listener resource name for a server listening on `address` (`ip:port`)."""
        template = self.server_listener_resource_name_template
        if template is None:
            raise BootstrapError(
                f"{self.source}: server_listener_resource_name_template: "
                "not set, but an xDS-enabled server needs it"
            )
        return _expand(template, address)

    def servers_for(self, resource_name: str) -> tuple[XdsServer, ...]:
        """The servers to ask for a resource: its `xdstp://` authority's, else the default."""
        if not resource_name.startswith("xdstp:"):
            return self.xds_servers
        authority = urlsplit(resource_name).netloc
        return self._authority(authority).xds_servers or self.xds_servers

    def _authority(self, name: str) -> Authority:
        try:
            return self.authorities[name]
        except KeyError:
            raise BootstrapError(
                f"{self.source}: authorities: no entry for authority {name!r}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        """The gRPC JSON form, e.g. to write a file grpcio's own `xds:` resolver reads.

        `parse_bootstrap(b.to_json()) == b` for every bootstrap `b`.
        """
        out: dict[str, Any] = {
            "xds_servers": _servers_json(self.xds_servers),
            "node": {
                "id": self.node.id,
                "cluster": self.node.cluster,
                "locality": attrs.asdict(self.node.locality),
                "metadata": _thaw(self.node.metadata),
            },
            "certificate_providers": {
                name: {"plugin_name": p.plugin_name, "config": _thaw(p.config)}
                for name, p in self.certificate_providers.items()
            },
            "client_default_listener_resource_name_template": (
                self.client_default_listener_resource_name_template
            ),
            "authorities": {
                name: {
                    "client_listener_resource_name_template": (
                        a.client_listener_resource_name_template
                    ),
                    "xds_servers": _servers_json(a.xds_servers),
                }
                for name, a in self.authorities.items()
            },
        }
        if self.server_listener_resource_name_template is not None:
            out["server_listener_resource_name_template"] = (
                self.server_listener_resource_name_template
            )
        return out


def _servers_json(servers: tuple[XdsServer, ...]) -> list[dict[str, Any]]:
    return [
        {
            "server_uri": s.server_uri,
            "channel_creds": [{"type": c.type, "config": _thaw(c.config)} for c in s.channel_creds],
            "server_features": sorted(s.server_features),
        }
        for s in servers
    ]


# -- parsing -------------------------------------------------------------------------------

_KINDS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "a string": str,
    "an object": Mapping,
    "an array": (list, tuple),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


_MAX_DEPTH: Final = 64


def _too_deep(value: object) -> bool:
    """Whether objects and arrays in `value` nest more than `_MAX_DEPTH` deep (iteratively, so
    that checking cannot exhaust the stack that freezing it would)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return False


class _Reader:
    """Type-checked access to raw JSON; every error names the source and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> BootstrapError:
        return BootstrapError(f"{self.source}: {path}: {message}")

    def check(self, value: object, path: str, kind: str) -> Any:
        if not isinstance(value, _KINDS[kind]):
            raise self.error(path, f"expected {kind}, got {_show(value)}")
        return value

    def free_json(self, obj: Mapping[str, Any], path: str, key: str) -> Mapping[str, Any]:
        """An optional free-form object (`metadata`, `config`), `{}` when absent."""
        value = self.get(obj, path, key, "an object") or {}
        if _too_deep(value):
            raise self.error(_join(path, key), f"nested more than {_MAX_DEPTH} deep")
        return value

    def get(self, obj: Mapping[str, Any], path: str, key: str, kind: str) -> Any:
        """`obj[key]` checked against `kind`, or None when the key is absent."""
        return self.check(obj[key], _join(path, key), kind) if key in obj else None

    def need(self, obj: Mapping[str, Any], path: str, key: str, kind: str) -> Any:
        if key not in obj:
            raise self.error(_join(path, key), "missing required field")
        return self.check(obj[key], _join(path, key), kind)


def _parse_servers(r: _Reader, value: list[Any], path: str) -> tuple[XdsServer, ...]:
    servers = []
    for i, raw in enumerate(value):
        at = f"{path}[{i}]"
        obj = r.check(raw, at, "an object")
        uri: str = r.need(obj, at, "server_uri", "a string")
        if not uri.strip():
            raise r.error(f"{at}.server_uri", "must not be empty")
        creds = []
        for j, c in enumerate(r.need(obj, at, "channel_creds", "an array")):
            c_at = f"{at}.channel_creds[{j}]"
            c_obj = r.check(c, c_at, "an object")
            c_type = r.need(c_obj, c_at, "type", "a string")
            config = r.free_json(c_obj, c_at, "config")
            if c_type == "tls":
                _check_tls_config(r, config, f"{c_at}.config")
            creds.append(ChannelCreds(c_type, config))
        if not any(c.type in SUPPORTED_CHANNEL_CREDS for c in creds):
            seen = ", ".join(repr(c.type) for c in creds) or "none"
            raise r.error(
                f"{at}.channel_creds",
                f"no supported type (saw {seen}); sail supports 'insecure' and 'tls'",
            )
        features = r.get(obj, at, "server_features", "an array") or []
        for k, f in enumerate(features):
            r.check(f, f"{at}.server_features[{k}]", "a string")
        servers.append(XdsServer(uri, tuple(creds), frozenset(features)))
    return tuple(servers)


_TLS_FILES = ("ca_certificate_file", "certificate_file", "private_key_file")


def _check_tls_config(r: _Reader, config: Mapping[str, Any], at: str) -> None:
    """gRFC A65's `tls` channel credentials: `ca_certificate_file` (unset: the system's
    roots), `certificate_file` and `private_key_file` (both or neither: mTLS),
    `refresh_interval`. Unlike gRPC, an unknown field is an error: a typo in a security
    setting must not pass for its default."""
    unknown = sorted(set(config) - {*_TLS_FILES, "refresh_interval"})
    if unknown:
        raise r.error(at, f"unknown field(s) {', '.join(unknown)}")
    for field in _TLS_FILES:
        value = config.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise r.error(f"{at}.{field}", "expected a file path")
    if ("certificate_file" in config) != ("private_key_file" in config):
        raise r.error(at, "certificate_file and private_key_file go together")
    refresh = config.get("refresh_interval")
    if refresh is not None and not (isinstance(refresh, str) and _is_duration(refresh)):
        raise r.error(f"{at}.refresh_interval", f"expected a duration like '600s', got "
                      f"{_show(refresh)}")


def _is_duration(text: str) -> bool:
    number = text.removesuffix("s")
    if number == text:
        return False
    whole, _, fraction = number.partition(".")
    return whole.isdigit() and (not fraction or fraction.isdigit())


def _parse_node(r: _Reader, obj: Mapping[str, Any]) -> Node:
    loc = r.get(obj, "node", "locality", "an object") or {}
    parts = [
        r.get(loc, "node.locality", k, "a string") or "" for k in ("region", "zone", "sub_zone")
    ]
    return Node(
        id=r.get(obj, "node", "id", "a string") or "",
        cluster=r.get(obj, "node", "cluster", "a string") or "",
        locality=Locality(*parts),
        metadata=r.free_json(obj, "node", "metadata"),
    )


def parse_bootstrap(
    data: str | bytes | Mapping[str, Any], *, source: str = "<inline>"
) -> Bootstrap:
    """Parse and validate a bootstrap given as JSON text or an already-decoded mapping.

    `source` names the origin in error messages. Raises `BootstrapError`.
    """
    raw: object = data
    if isinstance(data, str | bytes):
        try:
            raw = json.loads(data)
        except json.JSONDecodeError as e:
            raise BootstrapError(
                f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except UnicodeDecodeError as e:
            raise BootstrapError(f"{source}: not UTF-8 text: {e.reason}") from None
        except RecursionError:
            raise BootstrapError(f"{source}: invalid JSON: nested too deeply") from None
    r = _Reader(source)
    if not isinstance(raw, Mapping):
        raise BootstrapError(f"{source}: expected a JSON object at the top level, got {_show(raw)}")
    top: Mapping[str, Any] = raw
    servers_raw = r.need(top, "", "xds_servers", "an array")
    if not servers_raw:
        raise r.error("xds_servers", "must list at least one server")
    servers = _parse_servers(r, servers_raw, "xds_servers")

    providers = {}
    for name, value in (r.get(top, "", "certificate_providers", "an object") or {}).items():
        at = f"certificate_providers[{name!r}]"
        obj = r.check(value, at, "an object")
        plugin = r.need(obj, at, "plugin_name", "a string")
        providers[name] = CertificateProvider(plugin, r.free_json(obj, at, "config"))
        if plugin == "file_watcher":  # checked now, so a typo fails at start, not at TLS
            from sail.security.providers import file_watcher_from_config

            try:
                file_watcher_from_config(name, providers[name].config)
            except BootstrapError as exc:
                raise BootstrapError(f"{r.source}: {exc}") from None

    authorities = {}
    for name, value in (r.get(top, "", "authorities", "an object") or {}).items():
        at = f"authorities[{name!r}]"
        obj = r.check(value, at, "an object")
        prefix = f"xdstp://{name}/"
        template = r.get(obj, at, "client_listener_resource_name_template", "a string")
        if template is None:
            template = f"{prefix}{_LISTENER_TYPE}/%s"
        elif not template.startswith(prefix):
            raise r.error(
                f"{at}.client_listener_resource_name_template",
                f"must start with {prefix!r}, got {template!r}",
            )
        own = r.get(obj, at, "xds_servers", "an array") or []
        authorities[name] = Authority(template, _parse_servers(r, own, f"{at}.xds_servers"))

    client_template = r.get(top, "", "client_default_listener_resource_name_template", "a string")
    return Bootstrap(
        xds_servers=servers,
        node=_parse_node(r, r.get(top, "", "node", "an object") or {}),
        certificate_providers=MappingProxyType(providers),
        server_listener_resource_name_template=r.get(
            top, "", "server_listener_resource_name_template", "a string"
        ),
        client_default_listener_resource_name_template=(
            "%s" if client_template is None else client_template
        ),
        authorities=MappingProxyType(authorities),
        source=source,
    )


def load_bootstrap(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Bootstrap:
    """Find, read and parse the bootstrap.

    Order: the explicit `path`; else the file named by `$SAIL_BOOTSTRAP`, then by
    `$GRPC_XDS_BOOTSTRAP`; else the JSON held in `$GRPC_XDS_BOOTSTRAP_CONFIG`. An empty
    variable counts as unset. `environ` defaults to `os.environ`.
    """
    env = os.environ if environ is None else environ
    via = ""
    if path is None:
        for var in ENV_VARS[:2]:
            if env.get(var):
                path, via = env[var], f" (from ${var})"
                break
    if path is not None:
        where = os.fspath(path)
        try:
            text = Path(where).read_bytes()
        except OSError as e:
            reason = e.strerror or str(e)
            raise BootstrapError(f"{where}{via}: cannot read bootstrap file: {reason}") from None
        return parse_bootstrap(text, source=where)
    inline = env.get(ENV_VARS[2])
    if inline:
        return parse_bootstrap(inline, source=f"${ENV_VARS[2]}")
    looked = ", ".join(f"${v}" for v in ENV_VARS)
    raise BootstrapError(f"no xDS bootstrap found: no path given and {looked} are all unset")
