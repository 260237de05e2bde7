"""Faults: the broker killed, clients frozen, networks stalled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from client import Client, Disconnected, Reconnected
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, TopicEvent

from .chaos import (
    RawSender,
    Row,
    Tail,
    check_exact,
    event_row,
    full_speed_chaos,
    room_history,
    run_chaos,
    until,
    wait_for_reader,
)
from .helpers import ROOT, Broker, PausableProxy, RawClient, run, wait_until


def test_broker_killed_under_steady_traffic(broker: Broker) -> None:
    report = run(
        run_chaos(broker, seconds=4, kill_every=(1.5, 1.5), down_for=(0.3, 0.3), min_kills=2), 120
    )
    assert report.kills >= 2 and report.total_acked > 50
    print(
        f"\nkilled {report.kills}x, {report.total_acked} acked, "
        f"{report.duplicates_suppressed} duplicates suppressed, {report.repaired} repaired"
    )


def test_crash_chaos(broker: Broker) -> None:
    """After NATS's chaos test: SIGKILL every 1-3 s, back after 0-2 s."""
    report = run(run_chaos(broker, seconds=8, kill_every=(1.0, 2.0), seed=42, min_kills=3), 180)
    assert report.kills >= 3
    print(
        f"\nchaos: {report.kills} kills, {report.total_acked} acked messages, "
        f"{report.delivered} deliveries, {report.duplicates_suppressed} duplicates "
        f"suppressed, {report.repaired} repaired, {report.reconnects} reconnects"
    )


# The scenario of issue 12, a few seconds long: a raw sender with 200 say
# requests in flight on a --rate 0 broker, SIGKILLed every 1-3 s and back
# after 0-2 s, and a subscriber that lags thousands of events behind. The
# subscriber must deliver exactly the room's history from its join on.

FULL_SPEED = ("--rate", "0", "--timeout-ms", "3000", "--heartbeat-ms", "500")
ROOM_EVENTS = (MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent)


def test_tail_at_full_speed_through_crash_chaos(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(*FULL_SPEED)
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME="/nonexistent-zchat-test")
    # Whoever reads the tail's output stops now and then: the tail falls
    # behind, as behind a slow pipe, and catches up from history.
    tail = Tail(b.endpoint, env, stall=(20_000, 0.3))
    try:
        came = wait_for_reader(b.endpoint, "tail")
        chaos = run(full_speed_chaos(b, seconds=7, seed=4), 120)
        last = chaos.history[-1][0]
        wait_until(lambda: tail.last_seq() >= last, 90, f"the tail to print up to {last}")
        check_exact(chaos.sender, chaos.history, tail.got(), "zchat tail", start=came + 1)
    finally:
        tail.close()
    assert chaos.killer.kills >= 2 and chaos.messages > 10_000
    print(
        f"\ntail at full speed: {chaos.messages} messages, {chaos.killer.kills} kills, "
        f"{len(tail.lines)} events printed; {tail.stderr.decode().count('reconnected')} reconnects"
    )


def test_a_slow_client_at_full_speed_through_crash_chaos(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker(*FULL_SPEED)

    async def body() -> None:
        # A small receive queue and a reader slower than the sender (at most
        # 10,000 events/s): the broker's queue for it fills and drops, as
        # for a client on a slow link, besides what each kill loses.
        async with Client(b.endpoint, "slow", rcvhwm=1000) as c:
            got: list[Row] = []

            async def consume() -> None:
                async for item in c.items():
                    if isinstance(item, ROOM_EVENTS) and item.room == "general":
                        got.append(event_row(item))
                        if len(got) % 2000 == 0:
                            await asyncio.sleep(0.2)  # the slowness under test

            consumer = asyncio.ensure_future(consume())
            try:
                chaos = await full_speed_chaos(b, seconds=7, seed=4)
                last = chaos.history[-1][0]
                await until(lambda: bool(got) and got[-1][0] >= last, 90, f"seq {last}")
            finally:
                consumer.cancel()
            check_exact(chaos.sender, chaos.history, got, "the slow client")
            stats = c.stats
        assert chaos.killer.kills >= 2 and chaos.messages > 10_000
        # Whether a gap opened depends on the machine's speed (a slow
        # sender never outruns the reader); that none was skipped does not.
        assert stats["skipped"] == 0 and stats["reconnects"] >= 1
        print(
            f"\nslow client at full speed: {chaos.messages} messages, "
            f"{chaos.killer.kills} kills, {stats['repaired']} repaired, "
            f"{stats['duplicates']} duplicates dropped, {stats['reconnects']} reconnects"
        )

    run(body(), 200)


def test_a_tail_stalled_through_a_broker_kill_lives_and_misses_nothing(
    make_broker: Callable[..., Broker],
) -> None:
    """Nobody reads the tail while a flood fills its SUB queue, the broker is
    killed, and the stall outlasts a heartbeat interval: libzmq 4.3.5 would
    abort the tail there if its SUB had ZMTP heartbeats. Then it reads on
    and prints the room's history exactly."""
    b = make_broker(*FULL_SPEED)
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME="/nonexistent-zchat-test")
    tail = Tail(b.endpoint, env, hold=True)
    stop = threading.Event()
    sender = RawSender(b.endpoint)
    flood = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    try:
        came = wait_for_reader(b.endpoint, "tail")
        flood.start()
        # More than the tail can queue: its SUB stops reading for good.
        wait_until(lambda: len(sender.acked) > 200_000, 60, "the flood")
        stop.set()
        flood.join(60)
        b.kill()
        threading.Event().wait(6)  # the outage, longer than a 5 s heartbeat interval
        assert tail.proc.poll() is None, "the tail died while it was stalled"
        b.start()
        tail.release()
        history = room_history(b.endpoint)
        last = history[-1][0]
        wait_until(
            lambda: tail.proc.poll() is not None or tail.last_seq() >= last, 90, f"seq {last}"
        )
        assert tail.proc.poll() is None, "the tail died"
        check_exact(sender, history, tail.got(), "the stalled tail", start=came + 1)
    finally:
        stop.set()
        tail.close()


def test_frozen_client_times_out_and_comes_back(broker: Broker, zctx: Any) -> None:
    """SIGSTOP a client past timeout_ms: others see a timeout leave; after
    SIGCONT it comes back by itself and misses nothing."""
    watcher = RawClient(zctx, broker.endpoint, broker.events)
    assert watcher.request({"type": "hello", "nick": "watcher"})["type"] == "welcome"
    watcher.subscribe(b"#general\x00")
    watcher.request({"type": "join", "room": "general"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client",
            "tail",
            "--connect",
            broker.endpoint,
            "--nick",
            "frozen",
            "--visible",
            "--json",
            "--count",
            "6",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    events: list[dict[str, Any]] = []

    def seen(pred: Callable[[dict[str, Any]], bool]) -> bool:
        watcher.request({"type": "ping"})  # the watcher itself stays alive
        while watcher.sub.poll(0):
            events.append(json.loads(watcher.sub.recv_multipart()[1]))
        return any(pred(e) for e in events)

    try:
        wait_until(
            lambda: seen(lambda e: e.get("nick") == "frozen" and e["type"] == "join"),
            30,
            "the join",
        )
        tail.send_signal(signal.SIGSTOP)
        wait_until(
            lambda: seen(lambda e: e["type"] == "leave" and e["nick"] == "frozen"), 30, "the leave"
        )
        leave = next(e for e in events if e["type"] == "leave")
        assert leave["reason"] == "timeout"
        watcher.request({"type": "say", "room": "general", "text": "while you slept"})
        tail.send_signal(signal.SIGCONT)
        wait_until(
            lambda: seen(lambda e: e["type"] == "join" and e["seq"] > leave["seq"]),
            30,
            "the rejoin",
        )
        watcher.request({"type": "say", "room": "general", "text": "welcome back"})
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.send_signal(signal.SIGCONT)
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    texts = [e.get("text") for e in got if e["type"] == "msg"]
    assert texts[:1] == ["while you slept"]
    seqs = [e["seq"] for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing missed, nothing twice
    watcher.close()


def test_stalled_network_path_recovers(broker: Broker) -> None:
    proxy = PausableProxy(broker.endpoint)

    async def body() -> None:
        async with (
            Client(proxy.endpoint, "faraway") as far,
            Client(broker.endpoint, "near") as near,
        ):
            await far.say("general", "before")
            proxy.flowing.clear()
            # Sent into the stall: kept, and resent once the path is back.
            pending = asyncio.ensure_future(far.say("general", "during"))
            while True:
                item = await far.next_item(30)
                if isinstance(item, Disconnected):
                    break
            proxy.flowing.set()
            await asyncio.wait_for(pending, 60)
            while not isinstance(await far.next_item(30), Reconnected):
                pass
            await far.say("general", "after")
            texts: list[str] = []
            while "after" not in texts:
                item = await near.next_item(30)
                if isinstance(item, MsgEvent):
                    texts.append(item.text)
            assert texts == ["before", "during", "after"]
            leaves = [e for e in (await near.history("general"))[0] if isinstance(e, LeaveEvent)]
            assert all(e.nick == "faraway" for e in leaves)

    try:
        run(body(), 120)
    finally:
        proxy.close()


def test_a_private_message_waits_for_a_recipient_whose_connection_dropped(
    broker: Broker, zctx: Any
) -> None:
    """A pm has no history to repair from: when the recipient's connection is
    gone but its session lives, the broker keeps the message and hands it
    over when the session is back (here on a new connection, by token)."""
    alice = RawClient(zctx, broker.endpoint)
    bob = RawClient(zctx, broker.endpoint)
    assert alice.request({"type": "hello", "nick": "alice"})["type"] == "welcome"
    token = bob.request({"type": "hello", "nick": "bob"})["token"]
    bob.close()
    # A pm sent before the broker has seen the connection close can still go
    # down with it; once the broker knows, each one is held (and logged).
    sent: list[str] = []

    def held() -> bool:
        text = f"p{len(sent)}"
        alice.send({"type": "pm", "to": "bob", "text": text, "id": text})
        sent.append(text)
        return "bob cannot be reached" in broker.log_text()

    wait_until(held, timeout=5, what="a held private message")
    alice.send({"type": "pm", "to": "bob", "text": "last", "id": "last"})
    assert alice.recv_until(lambda r: r.get("id") == "last")["type"] == "ack"
    back = RawClient(zctx, broker.endpoint)
    assert back.request({"type": "hello", "nick": "bob", "token": token})["type"] == "welcome"
    got: list[str] = []
    while not got or got[-1] != "last":
        got.append(back.recv_until(lambda r: r["type"] == "pm")["text"])
    # Everything sent once the broker knew is there, each once, in order.
    assert sent[-1] in got
    assert got == [text for text in [*sent, "last"] if text in got]
    for c in (alice, back):
        c.close()
