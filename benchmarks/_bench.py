"""What the benchmark scripts share: starting, watching and stopping their processes on
loopback, reading /proc, and printing tables. Imported by the scripts next to it (each runs
as `python benchmarks/<script>.py`, which puts this folder on `sys.path`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 30.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def log_tail(log: Path, lines: int = 20) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[Any], what: str, log: Path,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll `ready()` until it is true; fail, quoting the end of `log`, if `proc` exits or
    `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            problem = f"{what} exited with status {proc.returncode}"
            break
        if ready():
            return
        time.sleep(0.05)
    else:
        problem = f"{what}: not ready after {timeout:.0f} s"
    raise RuntimeError("\n    ".join([problem, *log_tail(log)]))


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM by PID, then SIGKILL if it is still there after 5 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sail_command() -> list[str]:
    """The `sail` console script next to this Python, else `python -m sail.cli.main`."""
    script = Path(sys.executable).with_name("sail")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sail.cli.main"]


def table(rows: list[list[str]]) -> str:
    """Rows as aligned columns (the first left, the rest right), a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def blocks(total: int, size: int) -> list[int]:
    """`total` split into blocks of `size` (the last one maybe shorter)."""
    return [min(size, total - start) for start in range(0, total, size)]


def interleaved(contenders: list[T], round_: int, block: int) -> list[T]:
    """The order of the contenders in one block: shifted each block and each round, so that
    each one takes every position equally often."""
    shift = (round_ + block) % len(contenders)
    return contenders[shift:] + contenders[:shift]


def progress(line: str) -> None:
    """One self-erasing status line on a terminal; nothing when stderr is not one."""
    if sys.stderr.isatty():
        print(f"\r  {line:<60}", end="" if line else "\r", file=sys.stderr, flush=True)
