"""Reliability under load: crash chaos, slow joiners, churn.

* chaos: numbered messages from several senders while the broker is
  SIGKILLed every 1-3 s and back after 0-2 s; every acknowledged message
  reaches every subscriber once, in each sender's order.
* slow joiner: trials of connect, join and say at once; the joiner must see
  its own join and message.
* churn: sessions connecting and leaving at a steady rate; the broker's
  memory and file descriptors before and after.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from client import Client
from messages import JoinEvent, MsgEvent
from tests.chaos import run_chaos
from tests.helpers import Broker


def _proc(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _broker(tmp: Path, *args: str) -> Broker:
    workdir = tmp / f"b{time.monotonic_ns()}"
    workdir.mkdir()
    return Broker(workdir, "-q", "--timeout-ms", "3000", "--heartbeat-ms", "500", *args).start()


async def _slow_joiner(b: Broker, i: int) -> int:
    """One trial: connect, join and say at once; how many of the joiner's
    own two events it never saw."""
    async with Client(b.endpoint, f"j{i}") as c:
        await c.say("general", f"hi {i}")
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            item = await c.next_item(10)
            if isinstance(item, JoinEvent) and item.nick == f"j{i}":
                seen.add("join")
            if isinstance(item, MsgEvent) and item.text == f"hi {i}":
                seen.add("msg")
        return 2 - len(seen)


async def _slow_joiners(b: Broker, trials: int, at_once: int = 10) -> int:
    missing = 0
    for start in range(0, trials, at_once):
        batch = range(start, min(trials, start + at_once))
        missing += sum(await asyncio.gather(*(_slow_joiner(b, i) for i in batch)))
    return missing


async def _churn(b: Broker, seconds: float, per_second: int) -> int:
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        batch = [Client(b.endpoint, f"c{done + i}") for i in range(per_second // 10)]
        await asyncio.gather(*(c.start() for c in batch))
        await asyncio.gather(*(c.close() for c in batch))
        done += len(batch)
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))  # pacing the rate
    return done


def run(quick: bool = False) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        b = _broker(tmp, "--rate", "0")
        try:
            seconds = 10 if quick else 60
            # 30,000 messages over the minute: 6 senders at about 83/s each.
            report: Any = asyncio.run(
                run_chaos(b, senders=6, subscribers=2, seconds=seconds, seed=7, pace=83.4)
            )
        finally:
            b.close()
        rows += [
            (
                f"chaos, {seconds} s",
                f"{report.total_acked:,} msgs",
                f"{report.kills} SIGKILLs; every ack delivered once to each of 2 subscribers, in order",
            ),
            (
                "chaos, duplicates suppressed",
                f"{report.duplicates_suppressed:,}",
                f"{report.repaired:,} events repaired from history, {report.reconnects} reconnects",
            ),
        ]
        b = _broker(tmp)
        try:
            trials = 100 if quick else 1000
            missing = asyncio.run(_slow_joiners(b, trials))
        finally:
            b.close()
        rows.append(
            (f"slow joiner, {trials} trials", f"{missing} missing", "connect + join + say at once")
        )
        b = _broker(tmp)
        try:
            assert b.proc is not None
            asyncio.run(_churn(b, 2, 200))  # warm up allocators and caches
            rss0, fds0 = _proc(b.proc.pid)
            n = asyncio.run(_churn(b, 5 if quick else 10, 200))
            rss1, fds1 = _proc(b.proc.pid)
        finally:
            b.close()
        rows.append(
            (
                f"churn, {n} sessions at ~200/s",
                f"RSS {100 * (rss1 - rss0) / rss0:+.1f}%",
                f"{rss0} -> {rss1} KiB, fds {fds0} -> {fds1}",
            )
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
