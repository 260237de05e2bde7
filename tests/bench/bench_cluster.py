"""Cluster mode (``--cluster``): nodes on one Redis against the single broker.

* Redis's ceiling: how fast a pipelined redis-py client runs the broker's
  own append script (``_APPEND`` of ``broker/_redis.py``), a batch of 100
  events of ~160 bytes to one room per round trip, as a commit does, on a
  Redis with AOF fsynced always and one subscriber on ``zchat:events``.
* ingest: ``say`` requests per second through one node and through three
  (one generator per node), all in the one room ``bench``, each acknowledged
  and counted where a subscriber on every node receives it; quoted against
  the single-node SQLite broker fed by the same generator in the same run,
  and against the script's rate.
* fan-out: 300 subscribers, 100 on each of three nodes, against 300 on one
  single-node broker.
* failover: a :class:`~client.Client` given all three endpoints says
  something on its node, the node is SIGKILLed, and the time is taken until
  its next ``say`` is acknowledged on another node and seen by a client on
  the third; the node comes back and the next round kills the client's new
  node. Every message is then checked once, in order, on every node.

Load generator, targets and subscriber counting are those of
``bench_core``; Redis is ``tests/redis_servers.py``'s, on a free port.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from broker._recent import dedup_key
from broker._redis import _APPEND, append_call, room_key
from client import Client
from messages import MsgEvent, encode, format_ts
from tests.bench.bench_core import ROOM, Target, measure, measure_nodes
from tests.helpers import Broker
from tests.redis_servers import RedisServer

BATCH = 100
# Failover is dominated by how long a client waits before it gives its
# node up: the broker's --timeout-ms, told to clients in welcome.
TIMEOUT_MS, HEARTBEAT_MS = 1000, 250
# 300 raw subscribers from one address: past the default 256 connections.
MANY = ("--connections-per-address", "10000")


# ------------------------------------------------------------ raw script


def _batches(count: int) -> list[tuple[list[str], list[Any]]]:
    """``count`` append-script calls of ``BATCH`` say events each, keys and
    arguments made as ``RedisBackend.commit`` makes them."""
    ts = format_ts(time.time())
    calls = []
    for b in range(count):
        events = []
        for j in range(BATCH):
            i = b * BATCH + j
            rid = f"{i:08x}-{j}"
            body = encode(
                MsgEvent(
                    room=ROOM,
                    seq=i + 1,
                    ts=ts,
                    from_=f"gen{j % 4}",
                    text=f"message number {i} of the benchmark, with some words",
                    id=rid,
                )
            )
            events.append((body, ts, "r" + dedup_key(f"gen{j % 4}", rid)))
        calls.append(append_call(ROOM, events, first=b * BATCH + 1))
    return calls


def script_rate(server: RedisServer, seconds: float) -> tuple[float, int, float]:
    """Events per second through the append script, one batch per round
    trip, for about ``seconds``; the bytes of one event body; and the
    microseconds per event Redis spent in the script."""
    r = server.client()
    script = r.register_script(_APPEND)
    # One node's worth of listener on the channel, so PUBLISH has a reader.
    listener = subprocess.Popen(
        [server.cli_bin, "-h", server.host, "-p", str(server.port), "subscribe", "zchat:events"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        warm = _batches(20)
        for keys, args in warm:  # loads the script, grows the stream a little
            pipe = r.pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            pipe.execute()
        r.flushall()
        # Enough batches for the time at any plausible rate; made beforehand,
        # so the measured loop is what the broker does at commit.
        calls = _batches(int(seconds * 600))
        r.config_resetstat()
        done = 0
        t0 = time.perf_counter()
        for keys, args in calls:
            pipe = r.pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            (seqs,) = pipe.execute()
            assert len(seqs) == BATCH
            done += BATCH
            if time.perf_counter() - t0 > seconds:
                break
        elapsed = time.perf_counter() - t0
        assert int(r.hget(room_key(ROOM, "meta"), "seq")) == done
        inside = r.info("commandstats")["cmdstat_evalsha"]["usec"] / done
        return done / elapsed, len(calls[0][1][5].split(b"\n")[0]), inside
    finally:
        listener.kill()
        listener.wait(10)
        r.flushall()


# ------------------------------------------------------------- failover


class _Watch:
    """A client's room events by text: (seq, when received) each time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: dict[str, list[tuple[int, float]]] = {}
        self.order: list[int] = []
        self.task: asyncio.Task[Any] | None = None

    async def _consume(self) -> None:
        async for item in self.client.items():
            if isinstance(item, MsgEvent) and item.room == "general":
                self.seen.setdefault(item.text, []).append((item.seq, time.monotonic()))
                self.order.append(item.seq)

    async def start(self) -> None:
        await self.client.start()
        self.task = asyncio.ensure_future(self._consume())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.client.close(quiet=True)


async def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)  # polling interval of a deadline wait


class _Lines(logging.Handler):
    """What the client logs (how it moves), with when."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))


def _named(line: str, endpoints: list[str]) -> str:
    for k, e in enumerate(endpoints):
        line = line.replace(e, f"node {k}")
    return line


async def _failover(nodes: list[Broker], rounds: int) -> dict[str, Any]:
    endpoints = [b.endpoint for b in nodes]
    talker = _Watch(Client(endpoints, "talker"))
    watchers = [_Watch(Client(b.endpoint, f"watch{i}")) for i, b in enumerate(nodes)]
    times: list[float] = []
    acks: dict[str, int] = {}
    kills: list[int] = []
    moves: list[str] = []  # killed node > the node the talker moved to
    said: list[list[str]] = []  # what the talker logged in each round
    lines = _Lines()
    logger = logging.getLogger("zchat.client")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        for w in (talker, *watchers):
            await w.start()
        for i in range(rounds):
            # Steady state first: every node up, every watcher hearing the room.
            ready = f"ready {i}"
            acks[ready] = (await asyncio.wait_for(talker.client.say("general", ready), 30)).seq
            await _wait(
                lambda t=ready: all(t in w.seen for w in watchers), 30, f"{ready!r} everywhere"
            )
            x = endpoints.index(talker.client.endpoint)
            kills.append(x)
            lines.lines.clear()
            # Says in flight at the kill: handed to ZeroMQ (one turn of the
            # loop runs each task up to its send) but not yet acknowledged.
            racing = [f"in flight {i}.{k}" for k in range(3)]
            flying = [asyncio.ensure_future(talker.client.say("general", t)) for t in racing]
            await asyncio.sleep(0)
            t0 = time.monotonic()
            nodes[x].kill()
            text = f"after kill {i}"
            ack = await asyncio.wait_for(talker.client.say("general", text), 30)
            acked = time.monotonic()
            acks[text] = ack.seq
            raced = await asyncio.wait_for(asyncio.gather(*flying), 30)
            for t, done in zip(racing, raced, strict=True):
                acks[t] = done.seq
            y = endpoints.index(talker.client.endpoint)
            assert y != x, f"round {i}: the talker's say was acknowledged on the dead node"
            third = watchers[3 - x - y]
            await _wait(lambda t=text, w=third: t in w.seen, 30, f"{text!r} on node {3 - x - y}")
            times.append(max(acked, third.seen[text][0][1]) - t0)
            moves.append(f"{x}>{y}")
            said.append([f"+{t - t0:.2f}s {_named(m, endpoints)}" for t, m in lines.lines])
            lines.lines.clear()
            nodes[x].start()
        last = "the end"
        acks[last] = (await asyncio.wait_for(talker.client.say("general", last), 30)).seq
        await _wait(lambda: all(last in w.seen for w in watchers), 60, "the last message")
        # Every acknowledged message once on every node's watcher, with the
        # seq of its ack, and each watcher's seqs in order.
        problems = []
        for k, w in enumerate(watchers):
            for t, seq in acks.items():
                got = w.seen.get(t, [])
                if [s for s, _ in got] != [seq]:
                    problems.append(f"watch{k}: {t!r} acked as {seq}, seen as {got}")
            if w.order != sorted(set(w.order)):
                problems.append(f"watch{k}: seqs out of order or repeated")
        return {
            "times": times,
            "kills": kills,
            "moves": moves,
            "said": said,
            "problems": problems,
            "messages": len(acks),
            "reconnects": talker.client.stats["reconnects"],
        }
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
        for w in (talker, *watchers):
            await w.close()


# ------------------------------------------------------------------ run


def run(quick: bool = False) -> list[tuple[str, str, str]]:
    n = 5_000 if quick else 30_000
    fan_n = 1_000 if quick else 2_000
    tries = 1 if quick else 2
    rounds = 5 if quick else 20
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmpdir, RedisServer(Path(tmpdir) / "redis") as server:
        tmp = Path(tmpdir)
        url = server.url
        admin = server.client()

        def single(*extra: str, **kw: Any) -> dict[str, Any]:
            target = Target("zchat", tmp, *MANY, *extra)
            try:
                return measure(target, **kw)
            finally:
                target.close()

        def cluster(count: int, subs: int, **kw: Any) -> dict[str, Any]:
            targets: list[Target] = []
            try:
                for _ in range(count):
                    targets.append(Target("zchat", tmp, *MANY, "--cluster", url))
                return measure_nodes(targets, [(t, subs) for t in targets], **kw)
            finally:
                for t in targets:
                    t.close()
                admin.flushall()  # the next nodes start on an empty Redis

        raws, singles, fsyncs, ones, lazies, threes = [], [], [], [], [], []
        for _ in range(tries):
            raws.append(script_rate(server, 1.0 if quick else 1.5))
            singles.append(single(n=n))
            fsyncs.append(single("--fsync", n=n))
            ones.append(cluster(1, 1, n=n))
            # The durability of the single broker's default (WAL without an
            # fsync a commit: what was acked survives the process, not a
            # power cut) is Redis's appendfsync everysec.
            admin.config_set("appendfsync", "everysec")
            try:
                lazies.append(cluster(1, 1, n=n))
            finally:
                admin.config_set("appendfsync", "always")
            threes.append(cluster(3, 1, n=n))
        base = max(r["rate"] for r in singles)
        base_fsync = max(r["rate"] for r in fsyncs)
        raw, body_bytes, inside = max(raws)

        def spread(runs: list[dict[str, Any]]) -> str:
            rates = sorted(r["rate"] / 1000 for r in runs)
            return f"best of {len(runs)}: {', '.join(f'{r:,.1f}k' for r in rates)}"

        def complete(runs: list[dict[str, Any]]) -> str:
            got, want = sum(r["got"] for r in runs), sum(r["want"] for r in runs)
            acks, sent = sum(r["acks"] for r in runs), n * len(runs)
            ok = got == want and acks == sent
            return ("" if ok else "INCOMPLETE ") + f"delivered {got}/{want}, acked {acks}/{sent}"

        rows.append(
            (
                "cluster: Redis append script",
                f"{raw:,.0f} ev/s",
                f"redis-py pipeline, one {BATCH}-event batch ({body_bytes}-byte bodies, one "
                f"room) per round trip; AOF fsync always; 1 channel subscriber; "
                f"{inside:.1f} us/event inside Redis (the ceiling); best of {len(raws)}: "
                + ", ".join(f"{r / 1000:,.1f}k" for r, _, _ in sorted(raws)),
            )
        )
        rows.append(
            (
                "cluster: ingest, single SQLite broker",
                f"{base:,.0f}/s",
                f"the baseline, bench_core's generator; {spread(singles)}; {complete(singles)}",
            )
        )
        rows.append(
            (
                "cluster: ingest, single broker --fsync",
                f"{base_fsync:,.0f}/s",
                f"the baseline of appendfsync always (an fsync a commit); {spread(fsyncs)}; "
                f"{complete(fsyncs)}",
            )
        )
        for label, runs, how, against in (
            (
                "1 node, fsync always",
                ones,
                "1 generator, 1 subscriber",
                f"{max(r['rate'] for r in ones) / base_fsync:.2f} of the single broker with "
                "--fsync (the same durability), ",
            ),
            (
                "1 node, fsync everysec",
                lazies,
                "1 generator, 1 subscriber; Redis appendfsync everysec, the durability of "
                "the single broker's default",
                "",
            ),
            ("3 nodes", threes, "a generator and a subscriber on each node", ""),
        ):
            best = max(r["rate"] for r in runs)
            rows.append(
                (
                    f"cluster: ingest, {label}",
                    f"{best:,.0f}/s",
                    f"{against}{best / base:.2f} of the single broker, {best / raw:.2f} of the "
                    f"script; one room, --rate 0; {how}; {spread(runs)}; {complete(runs)}",
                )
            )

        fans = [(single(n=fan_n, subs=300), cluster(3, 100, n=fan_n)) for _ in range(tries)]
        one = max((f[0] for f in fans), key=lambda r: r["deliveries"])
        three = max((f[1] for f in fans), key=lambda r: r["deliveries"])
        rows.append(
            (
                "cluster: fan-out to 300 on 3 nodes",
                f"{three['deliveries']:,.0f}/s",
                f"{three['deliveries'] / one['deliveries']:.2f} of 300 on the single broker "
                f"({one['deliveries']:,.0f}/s); 100 per node, a generator on each"
                + f"; best of {tries}"
                + ("" if all(a["complete"] and b["complete"] for a, b in fans) else "; INCOMPLETE"),
            )
        )

        nodes: list[Broker] = []
        try:
            for k in range(3):
                workdir = tmp / f"node{k}"
                workdir.mkdir()
                args = ["-q", "--cluster", url, "--timeout-ms", str(TIMEOUT_MS)]
                args += ["--heartbeat-ms", str(HEARTBEAT_MS)]
                nodes.append(Broker(workdir, *args).start())
            f = asyncio.run(asyncio.wait_for(_failover(nodes, rounds), 60 * rounds))
        finally:
            for b in nodes:
                b.close()
        worst = f["times"].index(max(f["times"]))
        slowest = f["moves"][worst]
        # A round past twice the timeout: what the client said, to see why.
        why = "; ".join(f["said"][worst]) if max(f["times"]) > 2 * TIMEOUT_MS / 1000 else ""
        times = sorted(f["times"])
        p99 = statistics.quantiles(times, n=100, method="inclusive")[98]
        rows.append(
            (
                f"cluster: failover, {rounds} SIGKILLs",
                f"{statistics.median(times):.2f} / {p99:.2f} s",
                f"p50 / p99 (max {times[-1]:.2f} s, killed>moved to {slowest}) from SIGKILL "
                "of the client's node to its "
                f"say acked on another and seen on the third; --timeout-ms {TIMEOUT_MS} "
                f"--heartbeat-ms {HEARTBEAT_MS}; nodes killed {''.join(map(str, f['kills']))}, "
                "3 says in flight at each kill; "
                + (
                    f"{f['messages']} messages each once, in order, on every node"
                    if not f["problems"]
                    else "PROBLEMS: " + "; ".join(f["problems"][:5])
                )
                + (f"; the slowest round, the client logged: {why}" if why else ""),
            )
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
