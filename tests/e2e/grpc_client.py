"""grpcio's own xDS client, for end-to-end tests: a fresh process (so grpcio's xDS client
state is its own) that calls `/sail.test.Greeter/Hello` through `xds:///greeter:50051` and
counts who answered.

```
GRPC_XDS_BOOTSTRAP=bootstrap.json python -m tests.e2e.grpc_client 2000 end-user=jason
{"greeter-v2": 2000}
```

Arguments: the number of calls, then metadata as `key=value` sent with every call.
Options: `--target` (default `xds:///greeter:50051`), `--timeout` (seconds per call; the
first call waits for the xDS config, as `wait_for_ready`), `--xds-creds` (the channel's
TLS from the xDS config, `grpc.xds_channel_credentials`, with certificates from the
bootstrap's `certificate_providers`; plaintext where the config has no TLS). With
`--interactive` it keeps one channel and reads such lines (`N [key=value ...]`) from
stdin, printing one JSON line for each, until stdin closes: what one long-lived client
sees as config changes.

It prints the counts as JSON (one line) on stdout; on a failed call it prints the status
code and details on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence

import grpc
import grpc.experimental

METHOD = "/sail.test.Greeter/Hello"


class CallFailed(Exception):
    pass


def parse_metadata(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"metadata must be key=value, got {pair!r}")
        out.append((key.lower(), value))
    return tuple(out)


def call_many(
    hello: grpc.UnaryUnaryMultiCallable,
    n: int,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for i in range(n):
        try:
            reply = hello(b"hi", timeout=timeout, metadata=metadata, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise CallFailed(
                f"call {i + 1} of {n} failed: {exc.code().name}: {exc.details()}"
            ) from None
        counts[reply.decode(errors="replace")] += 1
    return dict(sorted(counts.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpc_client")
    parser.add_argument("--target", default="xds:///greeter:50051")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--interactive", action="store_true")
    parser.add_argument("--xds-creds", action="store_true")
    parser.add_argument("n", type=int, nargs="?", default=1)
    parser.add_argument("metadata", nargs="*")
    args = parser.parse_args(argv)

    if args.xds_creds:
        credentials = grpc.xds_channel_credentials(
            grpc.experimental.insecure_channel_credentials()
        )
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        hello = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        try:
            if not args.interactive:
                counts = call_many(hello, args.n, parse_metadata(args.metadata), args.timeout)
                print(json.dumps(counts), flush=True)
                return 0
            for line in sys.stdin:
                words = line.split()
                if not words:
                    continue
                counts = call_many(hello, int(words[0]), parse_metadata(words[1:]), args.timeout)
                print(json.dumps(counts), flush=True)
        except CallFailed as exc:
            print(exc, file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
