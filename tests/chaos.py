"""Numbered senders, subscribers, and a broker that keeps dying.

Shared by the fault tests (short runs in ``make test``) and the chaos
benchmark (a minute in ``make bench``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from client import Client, Reconnected
from messages import MsgEvent

from .helpers import Broker


@dataclass
class Report:
    acked: dict[str, list[int]] = field(default_factory=dict)
    kills: int = 0
    duplicates_suppressed: int = 0
    reconnects: int = 0
    repaired: int = 0
    delivered: int = 0

    @property
    def total_acked(self) -> int:
        return sum(len(v) for v in self.acked.values())


async def _sender(
    c: Client, name: str, stop: asyncio.Event, acked: list[int], limit: int, pace: float
) -> None:
    i = 0
    start = time.monotonic()
    while not stop.is_set() and i < limit:
        if pace:
            # Offered load: message i leaves no earlier than i / pace seconds in.
            await asyncio.sleep(max(0.0, start + i / pace - time.monotonic()))
        # The payload is the number; each sender's numbers must arrive in order.
        await c.say("general", f"{name}:{i}")
        acked.append(i)
        i += 1


async def _chaos(
    broker: Broker,
    stop: asyncio.Event,
    report: Report,
    rng: random.Random,
    *,
    kill_every: tuple[float, float],
    down_for: tuple[float, float],
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(*kill_every))
            return
        except asyncio.TimeoutError:
            pass
        broker.kill()
        report.kills += 1
        await asyncio.sleep(rng.uniform(*down_for))  # the outage itself, not a wait for anything
        await asyncio.to_thread(broker.start)


async def run_chaos(
    broker: Broker,
    *,
    senders: int = 3,
    subscribers: int = 2,
    seconds: float = 15.0,
    per_sender: int = 10**9,
    kill_every: tuple[float, float] = (1.0, 3.0),
    down_for: tuple[float, float] = (0.0, 2.0),
    seed: int = 1,
    pace: float = 0.0,
) -> Report:
    """Send numbered messages while the broker is killed and restarted;
    check that every subscriber got every acknowledged message exactly once,
    in each sender's order, and that the store has each once with no hole."""
    rng = random.Random(seed)
    report = Report()
    stop = asyncio.Event()
    subs = [Client(broker.endpoint, f"sub{i}") for i in range(subscribers)]
    sends = [Client(broker.endpoint, f"send{i}") for i in range(senders)]
    for c in subs + sends:
        await c.start()
    got: list[list[MsgEvent]] = [[] for _ in subs]
    seqs: list[list[int]] = [[] for _ in subs]

    async def collect(i: int, c: Client) -> None:
        async for item in c.items():
            if isinstance(item, MsgEvent):
                got[i].append(item)
            if hasattr(item, "seq") and getattr(item, "room", None) == "general":
                seqs[i].append(item.seq)
            if isinstance(item, Reconnected):
                report.reconnects += 1

    collectors = [asyncio.ensure_future(collect(i, c)) for i, c in enumerate(subs)]
    tasks = []
    for i, c in enumerate(sends):
        report.acked[f"send{i}"] = []
        tasks.append(
            asyncio.ensure_future(
                _sender(c, f"send{i}", stop, report.acked[f"send{i}"], per_sender, pace)
            )
        )
    chaos = asyncio.ensure_future(
        _chaos(broker, stop, report, rng, kill_every=kill_every, down_for=down_for)
    )
    try:
        if per_sender < 10**9:
            await asyncio.gather(*tasks)
        else:
            await asyncio.sleep(seconds)  # the length of the run, not a wait for anything
        stop.set()
        await chaos
        await asyncio.gather(*tasks)
        if broker.proc is None or broker.proc.poll() is not None:
            await asyncio.to_thread(broker.start)
        # Every acknowledged message must reach every subscriber.
        want = {f"{name}:{i}" for name, nums in report.acked.items() for i in nums}
        while any(not want <= {e.text for e in g} for g in got):
            await asyncio.sleep(0.05)  # polling the collectors; the caller bounds the time
        for i, g in enumerate(got):
            texts = [e.text for e in g]
            dupes = [t for t, n in Counter(texts).items() if n > 1]
            assert not dupes, f"subscriber {i} got duplicates: {dupes[:5]}"
            for name, nums in report.acked.items():
                mine = [int(t.split(":")[1]) for t in texts if t.split(":")[0] == name]
                assert mine == sorted(mine), f"subscriber {i}: {name} out of order"
                assert set(nums) <= set(mine)
            assert seqs[i] == sorted(set(seqs[i])), f"subscriber {i} saw seqs out of order"
        # The store: every acknowledged message once, seq 1..N without a hole.
        events: list[Any] = []
        after = 0
        while True:
            batch, more = await subs[0].history("general", after=after, limit=500)
            events += batch
            if not more:
                break
            after = batch[-1].seq
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        stored = Counter(e.text for e in events if isinstance(e, MsgEvent))
        assert all(stored[t] == 1 for t in want), "an acknowledged message is missing or doubled"
        for c in subs + sends:
            report.duplicates_suppressed += c.stats["duplicates"]
            report.repaired += c.stats["repaired"]
        report.delivered = sum(len(g) for g in got)
    finally:
        stop.set()
        chaos.cancel()
        for t in [*tasks, *collectors]:
            t.cancel()
        for c in subs + sends:
            await c.close(quiet=True)
    return report
