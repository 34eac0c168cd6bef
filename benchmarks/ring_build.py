"""What building a hash balancer costs: time and memory of one `ring_hash` or `maglev` picker.

```
python benchmarks/ring_build.py              # ~30 s, ~1 GiB at its peak (the "before" rows)
python benchmarks/ring_build.py --quick      # capped builds only, a few seconds
python benchmarks/ring_build.py --endpoints 100 --json out.json
```

A picker is built on the xDS thread at each change of its cluster's endpoints, and again at
each ejection or return of a host by outlier detection, under the GIL: every request waits
for it. Rows (10 endpoints of equal weight by default, one locality):

| row | config | built |
|---|---|---|
| `ring default` | no options: sizes 1024 to 8M | ~1024 entries (as before) |
| `ring at cap` | `minimum_ring_size: 4096` | 4096 entries |
| `ring 8M` | both sizes 8388608 (Envoy's limit) | 4096 entries (capped) |
| `maglev 65537` | `table_size: 65537` (Envoy's default) | 65537 slots |
| `maglev 5000011` | `table_size: 5000011` (Envoy's limit) | 65537 slots (capped) |

Each row is also built **before**, i.e. with the cap raised to Envoy's limit
(`set_ring_size_cap(8388608)`, `set_table_size_cap(5000011)`), which is what sail built
before the cap existed; `x before` is the before time over the capped time. `--quick` skips
the before builds of the two capped rows (they take ~20 s and ~1 GiB, and ~4-11 s).

Each build runs in a fresh child process, so that memory figures are the process's own:
`peak MiB` is the rise of its peak RSS (VmHWM) during the build, `kept MiB` the rise of RSS
with the picker kept. `build s` is the best of `--repeat` builds (one for builds over a
second), each with the recent builds forgotten; `reused s` is a second build from the same
inputs, which reuses the first (an ejected host's return, an update that changed no
endpoint). Builds go through the policy factory (`ring_hash_picker`, `maglev_picker`), as
`build_picker` calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bench import fmt, table  # same folder

CASES: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {
    "ring default": ("ring_hash", ()),
    "ring at cap": ("ring_hash", (("minimum_ring_size", 4096),)),
    "ring 8M": ("ring_hash", (("maximum_ring_size", 8_388_608), ("minimum_ring_size", 8_388_608))),
    "maglev 65537": ("maglev", (("table_size", 65537),)),
    "maglev 5000011": ("maglev", (("table_size", 5_000_011),)),
}
SLOW_BEFORE = ("ring 8M", "maglev 5000011")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_case(name: str, endpoints: int, repeat: int, uncapped: bool) -> dict[str, Any]:
    """In the child: build the case's picker and measure it."""
    from sail.balancing import maglev, ring_hash
    from sail.model import Endpoint, LbPolicy

    if uncapped:
        ring_hash.set_ring_size_cap(ring_hash.MAX_RING_SIZE)
        maglev.set_table_size_cap(maglev.MAX_TABLE_SIZE)
    policy_name, options = CASES[name]
    policy = LbPolicy(policy_name, options)
    factory = ring_hash.ring_hash_picker if policy_name == "ring_hash" else maglev.maglev_picker
    hosts = [Endpoint(f"10.0.{i >> 8}.{i & 255}", 8080) for i in range(endpoints)]
    def forget() -> None:  # time builds, not the reuse of a recent one
        ring_hash._recent_rings.clear()
        maglev._recent_tables.clear()

    forget()
    base_rss, base_peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    start = time.perf_counter()
    picker = factory(hosts, policy)
    best = time.perf_counter() - start
    peak = max(0, _status_kib("VmHWM") - max(base_rss, base_peak))
    kept = _status_kib("VmRSS") - base_rss
    size = len(picker.ring) if isinstance(picker, ring_hash.RingHashPicker) else (
        len(picker.table) if isinstance(picker, maglev.MaglevPicker) else 0
    )
    start = time.perf_counter()
    factory(hosts, policy)  # the same inputs again: a recent build, reused when kept
    reused = time.perf_counter() - start
    if best < 1.0:
        for _ in range(repeat - 1):
            forget()
            start = time.perf_counter()
            factory(hosts, policy)
            best = min(best, time.perf_counter() - start)
    return {"seconds": best, "reused_seconds": reused, "peak_kib": peak, "kept_kib": kept,
            "entries": size}


def measure(name: str, endpoints: int, repeat: int, uncapped: bool) -> dict[str, Any]:
    """Run one case in a child process and read its result."""
    command = [
        sys.executable, __file__, "--child", name, "--endpoints", str(endpoints),
        "--repeat", str(repeat),
    ]
    if uncapped:
        command.append("--uncapped")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: child failed\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the slow before builds")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uncapped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.endpoints, args.repeat, args.uncapped)))
        return

    rows = [["build", "entries", "build s", "reused s", "peak MiB", "kept MiB",
             "before entries", "before s", "before peak MiB", "x before"]]
    results: dict[str, Any] = {}
    for name in CASES:
        after = measure(name, args.endpoints, args.repeat, uncapped=False)
        before = None
        if not (args.quick and name in SLOW_BEFORE):
            before = measure(name, args.endpoints, args.repeat, uncapped=True)
        results[name] = {"capped": after, "before": before}
        rows.append([
            name,
            fmt(after["entries"]),
            fmt(after["seconds"], 4),
            fmt(after["reused_seconds"], 4),
            fmt(after["peak_kib"] / 1024, 1),
            fmt(after["kept_kib"] / 1024, 1),
            fmt(before["entries"]) if before else "-",
            fmt(before["seconds"], 4) if before else "-",
            fmt(before["peak_kib"] / 1024, 1) if before else "-",
            fmt(before["seconds"] / after["seconds"], 1) if before else "-",
        ])
    print(f"{args.endpoints} endpoints of equal weight, one locality; "
          f"Python {platform.python_version()}, {os.cpu_count()} cores")
    print(table(rows))
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
        args.json.write_text(json.dumps(
            {"machine": machine, "endpoints": args.endpoints, "results": results}, indent=2
        ))


if __name__ == "__main__":
    main()
