"""`sail`: run the registry, change its config, inspect what processes run with.

* `sail registry [--config PATH ...] [--address HOST:PORT]
  [--envoy-listener HOST:PORT | --no-envoy-listeners]
  [--store file:///PATH|memory|etcd://HOST:PORT[/PREFIX]] [--state-dir DIR]
  [--server-listener-template TEMPLATE]` - run the control plane (token from `--token` or
  `$SAIL_REGISTRY_TOKEN`), keeping applied config across restarts in `--state-dir` (the
  default store; `$XDG_STATE_HOME/sail/registry-PORT`), in memory only, or in etcd.
  Envoy clients get a loopback port listener per service port (`127.0.0.1:9080`), or the
  one `--envoy-listener` names, or none with `--no-envoy-listeners`.
  With `--trust-domain TD` it runs the mesh CA (`--ca-cert FILE --ca-key FILE` for an
  intermediate under a company root; else the store's own root, made at first start).
* `sail token create --namespace NS --service-account SA [--ttl SECONDS]` - print a join
  token granting `spiffe://TD/ns/NS/sa/SA` its first certificate (`$SAIL_JOIN_TOKEN`).
* `sail cert --out DIR [--lifetime SECONDS] [--once]` - get a workload certificate from
  the registry's CA with the join token in `$SAIL_JOIN_TOKEN`, write Istio's files
  (`cert-chain.pem`, `key.pem`, `root-cert.pem`) into DIR, and keep them renewed at
  half-life (the certificate is the credential of each renewal) until stopped.
* `sail apply -f FILE` / `sail delete -f FILE` - add, replace or remove Istio-style config
  in a running registry (`--registry HOST:PORT[,HOST:PORT...]` or `$SAIL_REGISTRY`,
  default `127.0.0.1:15010`; with several, the first that answers).
* `sail status` - one row per connected xDS client: node, service, ACKed version,
  SYNCED / STALE / NACKED and why (like `istioctl proxy-status`).
* `sail check FILE` - validate a local-mode file as xDS would (exit 1 with the errors).
* `sail config-dump (--local FILE | --bootstrap PATH) [--service NAME ...] [--wait N]` -
  resolve the config and print, as JSON, the listeners, routes, clusters and endpoints a
  process would run with; from xDS it waits at most N seconds (default 15) for the named
  services, then prints what it has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE
from sail.errors import SailError

__all__ = ["main"]


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if f.repr is not False
        }
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    return value


def _check(path: str) -> int:
    from sail.local import load_file

    resources, errors = load_file(Path(path))
    for message in errors.values():
        print(message, file=sys.stderr)
    counts = ", ".join(f"{len(v)} {t.rsplit('.', 1)[-1]}" for t, v in resources.items())
    print(f"{path}: {counts}; {len(errors)} rejected")
    return 1 if errors else 0


def _dump(args: argparse.Namespace) -> int:
    from sail.mesh import Mesh

    if args.local:
        mesh = Mesh.local(args.local, poll_interval=0)
    else:
        wait = max(args.wait, 0.0)
        mesh = Mesh.from_bootstrap(
            args.bootstrap, services=args.service, discovery_timeout=wait
        )
        # Each service waits in its own thread, all at once, so that together they take at
        # most `wait` seconds however many there are; threads still waiting then are left
        # behind (daemons, and none waits past `wait` anyway).
        deadline = time.monotonic() + wait
        waits = [
            threading.Thread(
                target=mesh.is_mesh_host, args=(name.split(":")[0], name), daemon=True
            )
            for name in args.service
        ]
        for thread in waits:
            thread.start()
        for thread in waits:
            thread.join(max(deadline - time.monotonic(), 0.0))
    try:
        print(json.dumps(_jsonable(mesh.snapshot), indent=2, sort_keys=True))
    finally:
        mesh.close()
    return 0


DEFAULT_REGISTRY = "127.0.0.1:15010"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _run_registry(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from sail.registry.server import Registry
    from sail.registry.stores import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = args.token or os.environ.get("SAIL_REGISTRY_TOKEN")

    url = args.store
    if url is None:
        from sail.registry.file_store import default_state_dir

        state_dir = args.state_dir or str(default_state_dir(
            int(args.address.rpartition(":")[2] or 0)
            if args.address.rpartition(":")[2].isdigit() else 0))
        url = "file://" + os.path.abspath(state_dir)
    elif args.state_dir is not None:
        raise SystemExit("sail registry: --state-dir is for the default store; "
                         "with --store, give file:///PATH instead")
    try:
        store = open_store(url)
    except ValueError as exc:
        raise SystemExit(f"sail registry: --store: {exc}") from None

    tls = _tls_files(args)
    if args.enroll_address is not None and (tls is None or tls[2] is None):
        raise SystemExit("sail registry: --enroll-address is for a registry that requires "
                         "client certificates (--tls-cert, --tls-key, --tls-client-ca)")

    async def run() -> None:
        registry = Registry(
            config_paths=args.config, token=token, envoy_listener=args.envoy_listener,
            envoy_listeners=not args.no_envoy_listeners,
            store=store, server_listener_template=args.server_listener_template,
            trust_domain=args.trust_domain,
            ca_cert=Path(args.ca_cert) if args.ca_cert else None,
            ca_key=Path(args.ca_key) if args.ca_key else None,
            tls=tls, enroll_address=args.enroll_address,
        )
        try:
            port = await registry.start(args.address)
        except OSError as exc:
            raise SystemExit(f"sail registry: {exc}") from None
        print(f"sail registry listening on {args.address.rpartition(':')[0]}:{port}",
              flush=True)
        if registry.enroll_port:
            print(f"sail registry: enrollment on {args.enroll_address.rpartition(':')[0]}:"
                  f"{registry.enroll_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await registry.stop()

    asyncio.run(run())
    return 0


def _admin(args: argparse.Namespace) -> int:
    from sail.registry.remote import AdminClient

    target = args.registry or os.environ.get("SAIL_REGISTRY", DEFAULT_REGISTRY)
    token = args.token or os.environ.get("SAIL_REGISTRY_TOKEN")
    # several registries sharing one store: HOST:PORT,HOST:PORT, tried in order
    targets = [t.strip() for t in target.split(",") if t.strip()]
    with AdminClient(targets, token) as admin:
        if args.command == "apply":
            path = Path(args.file)
            try:
                text = path.read_text()
            except OSError as exc:
                print(f"sail: {path}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            admin.apply(str(path), text)
            print(f"applied {path}")
        elif args.command == "delete":
            admin.delete(str(Path(args.file)))
            print(f"deleted {args.file}")
        elif args.command == "token":
            print(admin.create_join_token(args.namespace, args.service_account, args.ttl))
        else:
            _print_status(admin.status(), as_json=args.json)
    return 0


def _tls_files(args: argparse.Namespace) -> tuple[Path, Path, Path | None] | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise SystemExit("sail registry: --tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("sail registry: --tls-cert and --tls-key go together")
    return (Path(args.tls_cert), Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None)


def _cert(args: argparse.Namespace) -> int:
    import logging
    import signal

    from sail.registry.remote import create_certificate
    from sail.security.enroll import Enrollment, write_files

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("sail.cert")
    token = os.environ.get("SAIL_JOIN_TOKEN", "")
    if not token:
        print("sail cert: no join token in $SAIL_JOIN_TOKEN (sail token create makes one)",
              file=sys.stderr)
        return 1
    target = args.registry or os.environ.get("SAIL_REGISTRY", DEFAULT_REGISTRY)
    targets = [t.strip() for t in target.split(",") if t.strip()]

    credentials = None
    if args.ca_file:  # the registry's TLS (its enrollment port), verified against this CA
        import grpc

        try:
            credentials = grpc.ssl_channel_credentials(Path(args.ca_file).read_bytes())
        except OSError as exc:
            print(f"sail cert: --ca-file {args.ca_file}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1

    def ask(csr: str, current: Sequence[str] | None) -> list[str]:
        return create_certificate(targets, None if current else token, csr, args.lifetime,
                                  current_chain=current, credentials=credentials)

    enrollment = Enrollment(ask)
    out = Path(args.out)
    enrollment.obtain()  # the first one fails loudly: a bad token is a misconfiguration
    write_files(out, enrollment)
    print(f"wrote {out}/cert-chain.pem for {enrollment.identity}", flush=True)
    if args.once:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    failures = 0
    while not stop.wait(max(0.0, enrollment.renew_at() - time.time()) if not failures
                        else min(30.0, 0.5 * 2 ** failures)):
        try:
            enrollment.obtain()
            write_files(out, enrollment)
        except (SailError, OSError) as exc:  # keep the current files; try again soon
            failures += 1
            log.warning("renewing the certificate failed (%s); trying again", exc)
            continue
        failures = 0
        log.info("renewed the certificate of %s", enrollment.identity)
    return 0


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return
    print(f"registry version {status.get('version')}")
    if status.get("config_error"):
        print(f"config error (serving the last good config): {status['config_error']}")
    rows = [("NODE", "SERVICE", "VERSION", "STATE", "REASON")] + [
        (c["node_id"], c["service"], c["version"], c["state"], c["reason"])
        for c in status.get("clients", [])
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for row in rows:
        cells = [str(v).ljust(w) for v, w in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, str(row[4])]).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sail", description="sail, a proxyless service mesh")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a local-mode config file")
    check.add_argument("file")
    dump = sub.add_parser("config-dump", help="print the resolved config as JSON")
    source = dump.add_mutually_exclusive_group(required=True)
    source.add_argument("--local", metavar="FILE", help="a local-mode config file")
    source.add_argument("--bootstrap", metavar="PATH", help="an xDS bootstrap file")
    dump.add_argument("--service", action="append", default=[], help="service to resolve")
    dump.add_argument("--wait", type=float, default=15.0, metavar="N",
                      help="wait at most N seconds for the services' config (default 15)")
    registry = sub.add_parser("registry", help="run the control plane")
    registry.add_argument("--config", action="append", default=[], metavar="PATH",
                          help="Istio-style YAML file or folder (repeatable)")
    registry.add_argument("--address", default=DEFAULT_REGISTRY, help="HOST:PORT to serve on")
    registry.add_argument("--token", help="registration/admin API token")
    envoy = registry.add_mutually_exclusive_group()
    envoy.add_argument("--envoy-listener", type=_address, metavar="HOST:PORT",
                       help="serve Envoy clients one port listener there, routing every "
                            "service by Host, instead of one per service port on 127.0.0.1")
    envoy.add_argument("--no-envoy-listeners", action="store_true",
                       help="serve Envoy clients no port listeners (by default each service "
                            "port gets one on 127.0.0.1)")
    registry.add_argument("--store", default=None, metavar="URL",
                          help="where applied config lives: file:///DIR (the default, DIR "
                               "being --state-dir), 'memory' (lost at exit) or "
                               "etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (prefix /sail/)")
    registry.add_argument("--state-dir", default=None, metavar="DIR",
                          help="the default store's directory (default: "
                               "$XDG_STATE_HOME/sail/registry-PORT, $XDG_STATE_HOME "
                               "defaulting to ~/.local/state)")
    registry.add_argument("--server-listener-template", default=DEFAULT_SERVER_LISTENER_TEMPLATE,
                          metavar="TEMPLATE",
                          help="the names of xDS-enabled gRPC servers' Listeners, %%s being "
                               "ip:port (default: %(default)s)")
    registry.add_argument("--trust-domain", metavar="TD",
                          help="run the mesh CA, issuing spiffe://TD/ns/NS/sa/SA identities")
    registry.add_argument("--ca-cert", metavar="FILE",
                          help="the CA certificate (then the chain above it), PEM; with "
                               "--ca-key, instead of the store's own root")
    registry.add_argument("--ca-key", metavar="FILE", help="the CA's private key, PEM")
    registry.add_argument("--tls-cert", metavar="FILE",
                          help="serve over TLS with this certificate chain, PEM (its SANs "
                          "name the address clients dial)")
    registry.add_argument("--tls-key", metavar="FILE", help="the --tls-cert key, PEM")
    registry.add_argument("--tls-client-ca", metavar="FILE",
                          help="require client certificates this CA verifies (mTLS)")
    registry.add_argument("--enroll-address", metavar="HOST:PORT",
                          help="with --tls-client-ca: serve first certificates and renewals "
                          "(CreateCertificate only) here over TLS without a client "
                          "certificate")
    token = sub.add_parser("token", help="join tokens for workloads' first certificates")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="print a join token")
    create.add_argument("--namespace", required=True)
    create.add_argument("--service-account", required=True)
    create.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                        help="how long it may be used (default 24 h)")
    create.add_argument("--registry", help=f"HOST:PORT (default {DEFAULT_REGISTRY})")
    create.add_argument("--token", help="the registry's admin token")
    cert = sub.add_parser("cert", help="get and keep renewed a workload certificate")
    cert.add_argument("--out", required=True, metavar="DIR",
                      help="where to write cert-chain.pem, key.pem and root-cert.pem")
    cert.add_argument("--lifetime", type=float, default=0, metavar="SECONDS",
                      help="the lifetime to ask for (default: the CA's, 24 h)")
    cert.add_argument("--once", action="store_true", help="write the files once and exit")
    cert.add_argument("--registry", help=f"HOST:PORT (default {DEFAULT_REGISTRY})")
    cert.add_argument("--ca-file", metavar="FILE",
                      help="reach the registry over TLS, verified against this CA (PEM)")
    for name, text in (("apply", "add or replace config"), ("delete", "remove config")):
        cmd = sub.add_parser(name, help=f"{text} in a running registry")
        cmd.add_argument("-f", "--file", required=True)
        cmd.add_argument("--registry", help=f"HOST:PORT (default {DEFAULT_REGISTRY})")
        cmd.add_argument("--token")
    status = sub.add_parser("status", help="which clients run which config version")
    status.add_argument("--registry", help=f"HOST:PORT (default {DEFAULT_REGISTRY})")
    status.add_argument("--token")
    status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.file)
        if args.command == "registry":
            return _run_registry(args)
        if args.command == "cert":
            return _cert(args)
        if args.command in ("apply", "delete", "status", "token"):
            return _admin(args)
        return _dump(args)
    except SailError as exc:
        print(f"sail: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
