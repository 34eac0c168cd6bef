"""An ADS server in a process of its own, driven over stdin, for tests that must not share
gRPC with the process under test (fork tests). Each stdin line is a JSON list of resources
to serve; the server prints its port first, then "ok" after each change."""

from __future__ import annotations

import json
import sys

from sail import testing


def main() -> None:
    server = testing.XdsServer().start()
    print(server.port, flush=True)
    for line in sys.stdin:
        server.set(json.loads(line))
        print("ok", flush=True)
    server.close()


if __name__ == "__main__":
    main()
