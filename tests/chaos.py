"""Numbered senders, subscribers, and a broker that keeps dying.

Shared by the fault tests (short runs in ``make test``) and the chaos
benchmark (a minute in ``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from client import Client, Reconnected
from messages import MsgEvent

from .helpers import Broker, whole_history


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
    min_kills: int = 0,
) -> Report:
    """Send numbered messages while the broker is killed and restarted (for
    ``seconds``, and on until ``min_kills`` kills: a loaded machine restarts
    brokers slowly);
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
            while report.kills < min_kills:
                await asyncio.sleep(0.05)  # polling the killer; the caller bounds the time
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
        events = await whole_history(subs[0])
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


# ------------------------------------------------------------ full speed
#
# The scenario of issue 12: one raw sender with up to 200 `say` requests
# unacknowledged (a `--rate 0` broker takes them as fast as it can), the
# broker SIGKILLed every 1-3 s and back after 0-2 s, and subscribers that
# lag thousands of events behind. Sender and killer run in threads, so the
# subscriber under test (a Client in the caller's loop, or `zchat tail` in
# a subprocess) is the only thing that decides how far behind it falls.


RETRY_CODES = ("rate_limited", "unavailable")


class RawSender:
    """Says ``m0``, ``m1``, ... in ``room`` with up to ``window`` requests
    unacknowledged. When the broker goes silent for ``silence`` seconds or
    forgets the session, it says hello again (with its token) on a new
    connection and resends every unacknowledged number, in order: the
    broker answers a resent id with its first ack, so each number is
    published once and in order. A say refused for now (``rate_limited``,
    ``unavailable``) is sent again after ``retry_ms`` with all that follow
    it; the numbers may then be stored out of order (``refused`` counts
    such refusals)."""

    def __init__(
        self,
        endpoint: str,
        *,
        nick: str = "flood",
        room: str = "general",
        window: int = 200,
        silence: float = 0.5,
    ) -> None:
        self.endpoint = endpoint
        self.nick = nick
        self.room = room
        self.window = window
        self.silence_ms = int(silence * 1000)
        self.acked: dict[int, int] = {}  # number -> seq
        self.sent = 0
        self.reconnects = 0
        self.refused = 0
        self.token: str | None = None

    def run(self, stop: threading.Event, timeout: float = 120.0) -> None:
        """Send until ``stop``, then until every number sent is acknowledged."""
        deadline = time.monotonic() + timeout
        unacked: dict[int, None] = {}  # insertion order is number order
        ctx: zmq.Context[Any] = zmq.Context()
        sock: zmq.Socket[Any] | None = None
        try:
            while not (stop.is_set() and not unacked):
                if time.monotonic() > deadline:
                    raise AssertionError(f"sender: {len(unacked)} still unacknowledged")
                if sock is None:
                    sock = self._connect(ctx, deadline)
                    if not all(self._send(sock, i) for i in unacked):
                        sock = self._drop(sock)
                        continue
                while not stop.is_set() and len(unacked) < self.window:
                    if not self._send(sock, self.sent):
                        break
                    unacked[self.sent] = None
                    self.sent += 1
                if not sock.poll(self.silence_ms):
                    sock = self._drop(sock)
                    continue
                while True:
                    # Not poll() then recv(): the connection can die between
                    # the two (the broker is killed all the time here), taking
                    # the message with it, and a blocking recv() would wait
                    # for a broker that may never answer again.
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = json.loads(frame)
                    if reply["type"] == "ack":
                        i = int(reply["id"][1:])
                        if unacked.pop(i, 0) is None:
                            self.acked[i] = reply["seq"]
                    elif reply.get("code") == "no_session":
                        sock = self._drop(sock)
                        break
                    elif reply.get("code") in RETRY_CODES:
                        self.refused += 1
                        stop.wait((reply.get("retry_ms") or 100) / 1000)  # as told
                        if not all(self._send(sock, i) for i in unacked):
                            sock = self._drop(sock)
                        break
                    elif reply["type"] == "error":
                        raise AssertionError(f"sender: {reply}")
        finally:
            if sock is not None:
                sock.close(0)
            ctx.term()

    def _send(self, sock: zmq.Socket[Any], i: int) -> bool:
        body = b'{"type":"say","id":"m%d","room":"%s","text":"m%d"}' % (
            i,
            self.room.encode(),
            i,
        )
        try:
            sock.send(body, zmq.NOBLOCK)
            return True
        except zmq.Again:  # IMMEDIATE and no connection: the broker is down
            return False

    def _drop(self, sock: zmq.Socket[Any]) -> None:
        sock.close(0)
        self.reconnects += 1
        return None

    def _connect(self, ctx: zmq.Context[Any], deadline: float) -> zmq.Socket[Any]:
        hello = {"type": "hello", "id": "h", "nick": self.nick}
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("sender: the broker never came back")
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.endpoint)
            ok = sock.poll(1000, zmq.POLLOUT)
            if ok:
                sock.send_json(dict(hello, token=self.token) if self.token else hello)
            if ok and sock.poll(1000):
                welcome = sock.recv_json()
                if welcome.get("type") == "welcome":
                    self.token = welcome["token"]
                    sock.send_json({"type": "join", "id": "j", "room": self.room})
                    if sock.poll(1000) and sock.recv_json().get("type") == "joined":
                        return sock
                elif welcome.get("code") in RETRY_CODES:
                    threading.Event().wait((welcome.get("retry_ms") or 100) / 1000)  # as told
            sock.close(0)


class Killer:
    """SIGKILLs ``broker`` every ``every`` seconds and starts it again after
    ``down`` (both ranges, drawn from ``seed``), until stopped; the broker is
    always running again when :meth:`run` returns."""

    def __init__(
        self,
        broker: Broker,
        *,
        every: tuple[float, float] = (1.0, 3.0),
        down: tuple[float, float] = (0.0, 2.0),
        seed: int = 1,
    ) -> None:
        self.broker = broker
        self.every = every
        self.down = down
        self.rng = random.Random(seed)
        self.kills = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.rng.uniform(*self.every)):
            self.broker.kill()
            self.kills += 1
            stop.wait(self.rng.uniform(*self.down))  # the outage itself, cut short by stop
            self.broker.start()


Row = tuple[int, str, str | None]  # (seq, type, text): what the checks compare


class _Event(msgspec.Struct):
    seq: int
    type: str
    text: str | None = None


class _Welcome(msgspec.Struct, tag="welcome"):
    id: str | None = None


class _Page(msgspec.Struct, tag="history"):
    id: str | None = None
    events: list[_Event] = []
    more: bool = False


class _Error(msgspec.Struct, tag="error"):
    id: str | None = None
    code: str = ""
    retry_ms: int | None = None


_Reply = _Welcome | _Page | _Error


def room_history(endpoint: str, room: str = "general", timeout: float = 60.0) -> list[Row]:
    """Every event the store holds for ``room``, oldest first, as rows;
    each page answered within ``timeout`` (a history of hundreds of
    thousands of events is hundreds of pages, on a machine the subscriber
    under test may be keeping busy)."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)

    def ask(req: dict[str, Any]) -> _Welcome | _Page | _Error:
        sock.send_json(req)
        deadline = time.monotonic() + timeout
        while True:
            if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                raise AssertionError(f"no answer to {req['type']} in time")
            try:
                frame = sock.recv(zmq.NOBLOCK)  # a dead connection takes its message along
            except zmq.Again:
                continue
            reply = msgspec.json.decode(frame, type=_Reply)
            if reply.id == req["id"]:
                return reply

    try:
        hello = {"type": "hello", "id": "h", "nick": f"audit{secrets.token_hex(3)}"}
        ask(hello)
        rows: list[Row] = []
        while True:
            after = rows[-1][0] if rows else 0
            page = ask(
                {"type": "history", "id": f"p{after}", "room": room, "after": after, "limit": 500}
            )
            if isinstance(page, _Error) and page.code in RETRY_CODES:
                threading.Event().wait((page.retry_ms or 100) / 1000)  # as told
                continue
            if isinstance(page, _Error) and page.code == "no_session":
                # It sends no heartbeat: on a loaded machine its session can
                # time out (these brokers run with 3 s); a client says hello
                # again, and so does the audit.
                ask(hello)
                continue
            assert isinstance(page, _Page), page
            rows += [(e.seq, e.type, e.text) for e in page.events]
            if not page.more:
                return rows
    finally:
        sock.close(0)
        ctx.term()


@dataclass
class FullSpeed:
    """What a full-speed chaos run did, and the room's history after it."""

    sender: RawSender
    killer: Killer
    history: list[Row]
    ended: float  # time.monotonic() when the last message was acknowledged

    @property
    def messages(self) -> int:
        return len(self.sender.acked)


async def full_speed_chaos(
    broker: Broker,
    *,
    seconds: float,
    seed: int = 1,
    every: tuple[float, float] = (1.0, 3.0),
    down: tuple[float, float] = (0.0, 2.0),
) -> FullSpeed:
    """Run the sender and the killer for ``seconds``; then wait until every
    message sent is acknowledged, and read the room's whole history.

    Subscribers must be joined before this starts, and are checked after."""
    stop = threading.Event()
    sender = RawSender(broker.endpoint)
    killer = Killer(broker, every=every, down=down, seed=seed)
    sending = asyncio.ensure_future(asyncio.to_thread(sender.run, stop))
    killing = asyncio.ensure_future(asyncio.to_thread(killer.run, stop))
    try:
        await asyncio.wait({sending, killing}, timeout=seconds)  # the length of the run
    finally:
        stop.set()  # both threads end by themselves once told
    await killing
    await sending
    ended = time.monotonic()
    history = await asyncio.to_thread(room_history, broker.endpoint)
    return FullSpeed(sender, killer, history, ended)


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted ``seqs`` as runs of consecutive numbers, for messages."""
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def check_exact(
    sender: RawSender,
    history: list[Row],
    got: list[Row],
    who: str,
    *,
    types: tuple[str, ...] | None = None,
    start: int | None = None,
) -> None:
    """The store has every number ``sender`` sent, once and in order, seq
    without a hole; ``got`` ((seq, type, text) as delivered) is exactly
    ``history`` from ``start`` (by default the first seq delivered, the
    subscriber's own join) to the end, only the events of ``types`` when
    given."""
    assert len(sender.acked) == sender.sent
    assert [e[0] for e in history] == list(range(1, len(history) + 1)), "holes in the store"
    texts = [e[2] for e in history if e[1] == "msg"]  # the sender is the only one talking
    numbers = [int(t[1:]) for t in texts if t is not None]
    if sender.refused:  # a refused say goes again after later ones: no order then
        numbers.sort()
    assert numbers == list(range(sender.sent)), "the store lost or reordered messages"
    assert got, f"{who} delivered nothing"
    want = [e for e in history[(start or got[0][0]) - 1 :] if types is None or e[1] in types]
    if got[: len(want)] != want:
        seqs = [g[0] for g in got]
        missing = {w[0] for w in want} - set(seqs)
        doubled = [s for s, n in Counter(seqs).items() if n > 1]
        raise AssertionError(
            f"{who}: {len(got)} delivered against {len(want)} in history; "
            f"missing {len(missing)} in {ranges(list(missing))[:10]}, "
            f"doubled {doubled[:10]}, in order: {seqs == sorted(seqs)}"
        )


def wait_for_reader(endpoint: str, nick: str, room: str = "general", timeout: float = 30) -> int:
    """Wait until ``nick`` (a quiet reader, which publishes no join) is in
    ``room``; returns the room's last seq then, after which the reader must
    print everything."""
    import zmq

    from .helpers import RawClient, wait_until

    ctx: zmq.Context[Any] = zmq.Context()
    probe = RawClient(ctx, endpoint)
    try:
        assert probe.request({"type": "hello", "nick": "probe-" + nick})["type"] == "welcome"

        def listed() -> bool:
            users = probe.request({"type": "who", "room": room})["users"]
            return any(u["nick"] == nick for u in users)

        wait_until(listed, timeout, f"{nick} in #{room}")
        page = probe.request({"type": "history", "room": room, "limit": 1})
        last = page["events"][-1]["seq"] if page["events"] else 0
        probe.request({"type": "bye"})
        return int(last)
    finally:
        probe.close()
        ctx.destroy(linger=0)


async def until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait until ``cond()`` holds, polling; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval of a deadline wait


def event_row(ev: Any) -> Row:
    """(seq, type, text) of a room event, as :func:`check_exact` compares."""
    return ev.seq, type(ev).__struct_config__.tag, getattr(ev, "text", None)


class Tail:
    """``zchat tail --json`` in a subprocess, its stdout read by a thread.

    ``stall`` = (every, seconds): the reader stops reading for ``seconds``
    after each ``every`` lines, so the pipe fills and the tail falls behind.
    With ``hold``, it reads the first line and then nothing until
    :meth:`release`."""

    def __init__(
        self,
        endpoint: str,
        env: dict[str, str],
        *,
        stall: tuple[int, float] | None = None,
        hold: bool = False,
    ) -> None:
        args = ["tail", "--connect", endpoint, "--nick", "tail", "--room", "general", "--json"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[bytes] = []
        self.stderr = b""
        self.stall = stall
        self.reading = threading.Event()
        if not hold:
            self.reading.set()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.stall and len(self.lines) % self.stall[0] == 0:
                time.sleep(self.stall[1])  # the stall is the fault under test
            self.reading.wait(120)

    def release(self) -> None:
        """Read on (after ``hold``)."""
        self.reading.set()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def last_seq(self) -> int:
        return msgspec.json.decode(self.lines[-1], type=_Event).seq if self.lines else 0

    def got(self) -> list[Row]:
        events = msgspec.json.decode(b"[" + b",".join(self.lines) + b"]", type=list[_Event])
        return [(e.seq, e.type, e.text) for e in events]

    def close(self) -> None:
        self.reading.set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._readers:
            t.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
