"""Hostile clients at full speed, against a broker with its default limits.

Each attack of issue 11 runs for a few seconds as fast as this machine
allows, from other loopback addresses, while a polite client chats beside
it (a round trip every 20 ms, one in five a say). Reported per attack: the
polite client's p50 and p99 round trip, and the broker's memory before the
attack, at its peak (sampled every 20 ms) and a few seconds after; the note
says how the broker answered.
"""

from __future__ import annotations

import os
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from tests.attack import Polite, Zmtp, broker_rss, from_address, percentile
from tests.helpers import Broker, RawClient

MIB = 1024 * 1024
SECONDS = 5.0
FAST = ("--rate", "100000", "--burst", "100000", "--address-rate", "0")


def _fds(b: Broker) -> int:
    assert b.proc is not None
    return len(os.listdir(f"/proc/{b.proc.pid}/fd"))


class Sampler:
    """The broker's peak memory and open files while an attack runs."""

    def __init__(self, b: Broker) -> None:
        self.b = b
        self.peak = broker_rss(b)
        self.fds = _fds(b)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, broker_rss(self.b))
                self.fds = max(self.fds, _fds(self.b))
            except (AssertionError, OSError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._t.join(5)
        return self.peak


def _until(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


def attack_bad_utf8(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
    sent = 0
    while going():
        for _ in range(1000):
            c.send(b'{"type":"ping","id":"\xff"}')
        sent += 1000
        while c.dealer.poll(0):
            c.recv()
    c.close()
    return f"{sent:,} frames of invalid UTF-8, each a bad_request"


def attack_unread_history(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.rcvhwm = 1
    d.connect(from_address(b.endpoint, "127.0.0.2"))
    d.send(b'{"type":"hello","nick":"hoarder"}')
    d.send(b'{"type":"join","room":"big"}')
    n = 0
    while going():
        try:
            d.send(b'{"type":"history","room":"big","limit":500}', zmq.NOBLOCK)
            n += 1
        except zmq.Again:
            time.sleep(0.001)  # its own queue is full: the broker dropped it
    d.close()
    return f"{n:,} history requests never read"


def attack_unfinished(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    parts = cut = 0
    while going():
        z = Zmtp(b.endpoint, source="127.0.0.2")
        parts += z.send_parts(30_000_000, finish=False)
        cut += z.closed_by_peer(5)
        z.close()
    return f"{parts:,} parts of unfinished messages; {cut} connections cut"


def attack_finished(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    parts = cut = 0
    while going():
        z = Zmtp(b.endpoint, source="127.0.0.2")
        parts += z.send_parts(5_000_000, finish=True)
        cut += z.closed_by_peer(5)
        z.close()
    return f"{parts:,} parts of 5-million-part messages; {cut} connections cut"


def attack_subscriptions(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    n = 0
    while going():
        s = ctx.socket(zmq.SUB)
        s.linger = 0
        s.connect(from_address(b.events, "127.0.0.2"))
        for _ in range(20_000):
            s.subscribe(os.urandom(200))
        n += 20_000
        s.close()
    return f"{n:,} junk subscriptions"


def attack_rooms(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
    c.request({"type": "hello", "nick": "roomer"})
    joined = refused = 0
    i = 0
    while going():
        i += 1
        r = c.request({"type": "join", "room": f"r{i}"})
        joined += r["type"] == "joined"
        refused += r["type"] == "error"
        if i % 50 == 0:
            c.request({"type": "nick", "nick": f"roomer{i}"})
    c.close()
    return f"{joined} rooms joined, {refused:,} joins refused"


def attack_cycling(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
    said = sessions = 0
    start = time.monotonic()
    i = 0
    while going():
        i += 1
        if c.request({"type": "hello", "nick": f"cyc{i}"})["type"] != "welcome":
            continue
        sessions += 1
        c.request({"type": "join", "room": "general"})
        for j in range(40):
            c.send({"type": "say", "room": "general", "text": f"{i}.{j}"})
        said += sum(c.recv()["type"] == "ack" for _ in range(40))
        c.request({"type": "bye"})
    c.close()
    rate = said / (time.monotonic() - start)
    return f"{sessions} sessions, {rate:.0f} messages/s (limit 20/s)"


def attack_join_part(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
    c.request({"type": "hello", "nick": "door"})
    start = time.monotonic()
    ok = 0
    while going():
        for kind in ("join", "part"):
            r = c.request({"type": kind, "room": "lobby"})
            ok += r["type"] in ("joined", "parted") and kind == "part"
    c.close()
    return f"{2 * ok / (time.monotonic() - start):.0f} join/leave events/s (limit 20/s)"


def _store_bytes(b: Broker) -> int:
    return sum(
        os.path.getsize(b.store + ext) for ext in ("", "-wal") if os.path.exists(b.store + ext)
    )


def attack_moderation(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    """Owners of rooms (anyone who makes one) filling their ban lists with
    300-character reasons as fast as they may: each change rewrites the
    room's moderation in the store."""
    before = _store_bytes(b)
    owners = []
    for i in range(5):
        c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
        c.request({"type": "hello", "nick": f"owner{i}"})
        c.request({"type": "join", "room": f"mine{i}"})
        owners.append(c)
    acked = refused = n = 0
    while going():
        for i, c in enumerate(owners):
            n += 1
            mask = f"addr:10.{i}.{n // 250 % 250}.{n % 250}"
            r = c.request({"type": "ban", "room": f"mine{i}", "mask": mask, "reason": "x" * 300})
            acked += r["type"] == "ack"
            refused += r["type"] == "error"
    for c in owners:
        c.close()
    grown = (_store_bytes(b) - before) / MIB
    return (
        f"{acked:,} bans made, {refused:,} refused (rate, --max-moderation); store +{grown:.1f} MiB"
    )


def attack_pms(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    for i in range(50):
        gone = RawClient(ctx, from_address(b.endpoint, "127.0.0.3"))
        gone.request({"type": "hello", "nick": f"away{i}"})
        gone.close()
    acked = refused = 0
    i = 0
    while going():
        i += 1
        c = RawClient(ctx, from_address(b.endpoint, "127.0.0.2"))
        if c.request({"type": "hello", "nick": f"pm{i}"})["type"] == "welcome":
            for k in range(100):
                r = c.request({"type": "pm", "to": f"away{k % 50}", "text": "y" * 4000})
                acked += r["type"] == "ack"
                refused += r.get("code") in ("unavailable", "rate_limited")
            c.request({"type": "bye"})
        c.close()
    return f"{acked * 4:,} KiB of pms acknowledged and held, {refused:,} refused"


def attack_lazy_subscriber(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    lazy = ctx.socket(zmq.SUB)
    lazy.linger = 0
    lazy.rcvhwm = 1
    lazy.setsockopt(zmq.RCVBUF, 4096)
    lazy.subscribe(b"#general\x00")
    lazy.connect(from_address(b.events, "127.0.0.2"))
    w = RawClient(ctx, from_address(b.endpoint, "127.0.0.4"))
    w.request({"type": "hello", "nick": "flood"})
    w.request({"type": "join", "room": "general"})
    n = 0
    while going():
        for _ in range(40):
            w.send({"type": "say", "room": "general", "text": "z" * 4000})
        n += sum(w.recv()["type"] == "ack" for _ in range(40))
    lazy.close()
    w.close()
    return f"{n:,} 4,000-character messages past a subscriber that never reads"


def attack_connections(b: Broker, ctx: Any, going: Callable[[], bool]) -> str:
    host, port = b.endpoint.split("://")[1].rsplit(":", 1)
    socks = []
    opened = 0
    while going() and opened < 10_000:
        s = socket.socket()
        s.bind((f"127.0.0.{2 + opened % 50}", 0))
        s.setblocking(False)
        try:
            s.connect((host, int(port)))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            break
        socks.append(s)
        opened += 1
    time.sleep(1.0)  # let the broker see them all
    held = _fds(b)
    for s in socks:
        s.close()
    return f"{opened:,} bare connections from 50 addresses; the broker held {held} files"


ATTACKS: list[tuple[str, Callable[[Broker, Any, Callable[[], bool]], str], tuple[str, ...]]] = [
    ("1 invalid UTF-8", attack_bad_utf8, ()),
    ("2 history never read", attack_unread_history, ()),
    ("3 unfinished 30M-part messages", attack_unfinished, ()),
    ("3 finished 5M-part messages", attack_finished, ()),
    ("4 junk subscriptions", attack_subscriptions, ()),
    ("5 joining every room", attack_rooms, ()),
    ("6 hello/say/bye cycling", attack_cycling, ()),
    ("7 join/part loop", attack_join_part, ()),
    # The rate limits would hold these two back before their own bounds:
    # the senders here may go as fast as they can.
    # A total of 16 MiB (not 64) for what is held, so that five seconds reach it.
    ("8 pms for the absent", attack_pms, ("--timeout-ms", "60000", "--held-pm-mb", "16", *FAST)),
    ("9 a subscriber that never reads", attack_lazy_subscriber, ("--timeout-ms", "3000", *FAST)),
    ("10 10,000 connections", attack_connections, ("--max-connections", "500")),
    ("11 ban lists filled", attack_moderation, ()),
]


def _fill_big_room(store: str) -> None:
    from broker import Store
    from messages import MsgEvent, encode, format_ts

    s = Store(store)
    for seq in range(1, 501):
        ev = MsgEvent(room="big", seq=seq, ts=format_ts(0), from_="f", text="x" * 4000)
        s.add("big", seq, encode(ev), 0.0)
    s.close()


def run(quick: bool = False) -> list[tuple[str, str, str]]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[tuple[str, str, str]] = []
    seconds = 2.0 if quick else SECONDS
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for i, (name, attack, extra) in enumerate(ATTACKS):
            workdir = tmp / f"b{i}"
            workdir.mkdir()
            store = str(workdir / "broker.db")
            _fill_big_room(store)
            b = Broker(workdir, "-q", *extra, store=store).start()
            ctx: zmq.Context[Any] = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, 20_000)
            try:
                before = broker_rss(b)
                with Polite(b) as polite:
                    sampler = Sampler(b)
                    fds = _fds(b)
                    note = attack(b, ctx, _until(seconds))
                    peak = sampler.stop()
                    note += f"; open files {fds} -> {sampler.fds} at most"
                    time.sleep(1.0)  # the victim's round trips after the attack, too
                    polite.stop()
                time.sleep(5.0)  # what the broker gives back afterwards
                after = broker_rss(b)
                alive = b.proc is not None and b.proc.poll() is None
                rtts = polite.rtts
                p50 = percentile(rtts, 0.5) * 1000 if rtts else float("nan")
                p99 = percentile(rtts, 0.99) * 1000 if rtts else float("nan")
                rows.append(
                    (
                        f"hostile {name}",
                        f"{p50:.1f} / {p99:.1f} ms",
                        f"polite p50/p99 over {len(rtts)} round trips"
                        f"{'' if not polite.failures else f', {len(polite.failures)} failed'}; "
                        f"RSS {before // MIB} -> {peak // MIB} -> {after // MIB} MiB; "
                        f"{note}{'' if alive else '; THE BROKER DIED'}",
                    )
                )
            finally:
                ctx.destroy(linger=0)
                b.close()
            print(f"   {rows[-1][0]}: {rows[-1][1]} ({rows[-1][2]})", flush=True)
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
