"""``make bench``: run every ``tests/bench/bench_*.py`` and print one table.

Each module has ``run(quick=False) -> list[(metric, value, note)]``. Figures
are ratios against baselines measured in the same run wherever they can
be, since the machines here are shared and noisy. The table also goes to
``tests/bench/RESULTS.md`` with the date and the machine.

    python -m tests.bench [--quick] [MODULE...]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"
    )


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench")
    p.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    p.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    p.add_argument("modules", nargs="*", help="bench_* modules to run (default: all)")
    args = p.parse_args()
    names = args.modules or sorted(f.stem for f in HERE.glob("bench_*.py"))
    rows: list[tuple[str, str, str]] = []
    started = time.monotonic()
    for name in names:
        name = name if name.startswith("bench_") else f"bench_{name}"
        print(f"== {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"tests.bench.{name}")
        t0 = time.monotonic()
        rows.extend(module.run(quick=args.quick))
        print(f"   {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    table = [
        f"| {'metric':<{width}} | {'value':>{vwidth}} | note |",
        f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|------|",
    ]
    table += [f"| {m:<{width}} | {v:>{vwidth}} | {n} |" for m, v, n in rows]
    print("\n".join(table))
    total = time.monotonic() - started
    print(f"\n{len(rows)} figures in {total:.0f} s", file=sys.stderr)
    if not args.no_write and not args.quick:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        (HERE / "RESULTS.md").write_text(
            f"# Benchmark results\n\n{when} on {machine()}.\n"
            f"Produced by `make bench` in {total:.0f} s.\n\n" + "\n".join(table) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
