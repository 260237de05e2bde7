"""Reliability under load: crash chaos at full speed, slow joiners, churn.

* chaos: a raw sender keeps 200 say requests in flight on a ``--rate 0``
  broker (as fast as it takes them) while the broker is SIGKILLed every
  1-3 s and back after 0-2 s; three subscribers, a client that keeps up, a
  client whose reader lags far behind and ``zchat tail`` whose pipe stalls,
  must each deliver exactly the room's history from their join on: every
  acknowledged message once, in order. The run fails otherwise.
* slow joiner: trials of connect, join and say at once; the joiner must see
  its own join and message.
* churn: sessions connecting and leaving at a steady rate; the broker's
  memory and file descriptors before and after.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from client import Client
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, TopicEvent
from tests.chaos import Row, Tail, check_exact, event_row, full_speed_chaos, until, wait_for_reader
from tests.helpers import ROOT, Broker

ROOM_EVENTS = (MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent)


def _proc(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# Every client of these benches comes from one address: it may open as many
# sessions, and as fast, as the bench needs.
ONE_ADDRESS = (
    "--hello-rate",
    "100000",
    "--hello-burst",
    "100000",
    "--sessions-per-address",
    "10000",
    "--connections-per-address",
    "20000",
)


def _broker(tmp: Path, *args: str) -> Broker:
    workdir = tmp / f"b{time.monotonic_ns()}"
    workdir.mkdir()
    return Broker(workdir, "-q", "--timeout-ms", "3000", "--heartbeat-ms", "500", *args).start()


@dataclass
class Chaos:
    """What one full-speed chaos run did, per subscriber."""

    seconds: float
    messages: int
    kills: int
    stats: dict[str, dict[str, int]]  # the two clients' counters
    caught_up: dict[str, float]  # seconds after the traffic stopped
    tail_events: int
    tail_recovered: int  # what zchat tail said it recovered at reconnects
    tail_skipped: int  # events zchat tail said were gone

    def rows(self) -> list[tuple[str, str, str]]:
        lag, prompt = self.stats["lagging"], self.stats["prompt"]
        return [
            (
                f"chaos at full speed, {self.seconds:g} s",
                f"{self.messages:,} msgs",
                f"{self.kills} SIGKILLs, {self.messages / self.seconds:,.0f} msg/s; every ack "
                "delivered once, in order, to 3 subscribers (2 clients, zchat tail)",
            ),
            (
                "chaos, lagging client",
                f"{lag['repaired']:,} repaired",
                f"{lag['skipped']} events skipped; caught up {self.caught_up['lagging']:.1f} s "
                f"after the traffic; {lag['reconnects']} reconnects",
            ),
            (
                "chaos, prompt client",
                f"{prompt['repaired']:,} repaired",
                f"{prompt['skipped']} events skipped, {prompt['duplicates']:,} duplicates dropped",
            ),
            (
                "chaos, zchat tail",
                f"{self.tail_events:,} events",
                f"{self.tail_skipped} skipped, {self.tail_recovered:,} recovered at reconnects; "
                f"reader stalled 0.5 s every 20,000 lines; caught up "
                f"{self.caught_up['tail']:.1f} s after the traffic",
            ),
        ]


async def _chaos(b: Broker, seconds: float, seed: int) -> Chaos:
    """The full-speed chaos with three subscribers; raises if any of them
    did not deliver exactly the room's history."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME="/nonexistent-zchat-bench")
    tail = Tail(b.endpoint, env, stall=(20_000, 0.5))
    clients = {"prompt": Client(b.endpoint, "prompt"), "lagging": Client(b.endpoint, "lagging")}
    got: dict[str, list[Row]] = {name: [] for name in clients}
    caught_up: dict[str, float] = {}

    async def consume(name: str, c: Client, pause: float) -> None:
        rows = got[name]
        async for item in c.items():
            if isinstance(item, ROOM_EVENTS) and item.room == "general":
                rows.append(event_row(item))
                if pause and len(rows) % 5000 == 0:
                    await asyncio.sleep(pause)  # the lag under test

    consumers = []
    try:
        # The tail is quiet (no join of its own): where it came in is the
        # room's last seq once it is listed, before anyone else comes.
        came = await asyncio.to_thread(wait_for_reader, b.endpoint, "tail")
        for c in clients.values():
            await c.start()
        consumers = [
            asyncio.ensure_future(consume("prompt", clients["prompt"], 0.0)),
            asyncio.ensure_future(consume("lagging", clients["lagging"], 0.5)),
        ]
        chaos = await full_speed_chaos(b, seconds=seconds, seed=seed)
        last = chaos.history[-1][0]
        done = {
            "prompt": lambda: bool(got["prompt"]) and got["prompt"][-1][0] >= last,
            "lagging": lambda: bool(got["lagging"]) and got["lagging"][-1][0] >= last,
            "tail": lambda: tail.last_seq() >= last,
        }

        def all_done() -> bool:
            for name, cond in done.items():
                if name not in caught_up and cond():
                    caught_up[name] = time.monotonic() - chaos.ended
            return len(caught_up) == len(done)

        await until(all_done, 600, f"every subscriber to deliver up to seq {last}")
        stats = {name: c.stats for name, c in clients.items()}
        failures = []
        for name, rows, start in [
            *((name, rows, None) for name, rows in got.items()),
            ("zchat tail", tail.got(), came + 1),
        ]:
            try:
                check_exact(chaos.sender, chaos.history, rows, name, start=start)
            except AssertionError as err:
                failures.append(str(err))
    finally:
        for task in consumers:
            task.cancel()
        for c in clients.values():
            await c.close(quiet=True)
        tail.close()
    if failures:
        raise AssertionError("; ".join(failures))
    said = tail.stderr.decode(errors="replace")
    gone = re.findall(r"events (\d+)\.\.(\d+) are gone", said)
    return Chaos(
        seconds=seconds,
        messages=chaos.messages,
        kills=chaos.killer.kills,
        stats=stats,
        caught_up=caught_up,
        tail_events=len(tail.lines),
        tail_recovered=sum(int(n) for n in re.findall(r"reconnected, (\d+) missed", said)),
        tail_skipped=sum(int(b) - int(a) + 1 for a, b in gone),
    )


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
            rows += asyncio.run(_chaos(b, 8 if quick else 30, seed=7)).rows()
        finally:
            b.close()
        b = _broker(tmp, *ONE_ADDRESS)
        try:
            trials = 100 if quick else 1000
            missing = asyncio.run(_slow_joiners(b, trials))
        finally:
            b.close()
        rows.append(
            (f"slow joiner, {trials} trials", f"{missing} missing", "connect + join + say at once")
        )
        b = _broker(tmp, *ONE_ADDRESS)
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


def repeat(runs: int, seconds: float) -> int:
    """Issue 12's scenario ``runs`` times in a row, one line each; stops at
    the first run where a subscriber missed something (status 1)."""
    with tempfile.TemporaryDirectory() as tmpdir:
        for seed in range(1, runs + 1):
            b = _broker(Path(tmpdir), "--rate", "0")
            try:
                r = asyncio.run(_chaos(b, seconds, seed=seed))
            except AssertionError as err:
                print(f"run {seed}: FAILED: {err}", flush=True)
                return 1
            finally:
                b.close()
            lag, prompt = r.stats["lagging"], r.stats["prompt"]
            print(
                f"run {seed}: {r.messages:,} msgs, {r.kills} kills; repaired: lagging client "
                f"{lag['repaired']:,}, prompt client {prompt['repaired']:,}, tail "
                f"{r.tail_recovered:,} at reconnects; skipped {lag['skipped']}/"
                f"{prompt['skipped']}/{r.tail_skipped}; tail printed {r.tail_events:,}, "
                f"caught up {r.caught_up['tail']:.1f} s (lagging client "
                f"{r.caught_up['lagging']:.1f} s) after the traffic",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m tests.bench.bench_faults")
    p.add_argument("--repeat", type=int, metavar="N", help="issue 12's scenario N times")
    p.add_argument("--seconds", type=float, default=30.0, help="traffic per run (default 30)")
    args = p.parse_args()
    if args.repeat:
        sys.exit(repeat(args.repeat, args.seconds))
    for row in run():
        print(" | ".join(row))
