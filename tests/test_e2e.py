"""End to end: real brokers in subprocesses, real sockets on loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

import messages as m
from client import Client, Reconnected, ZchatError
from messages import CommandSpec, JoinEvent, MsgEvent, PmPush

from .helpers import Broker, FakeBroker, run


async def _until(client: Client, pred, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    while True:
        item = await client.next_item(timeout)
        if pred(item):
            return item


def test_two_clients_chat(broker: Broker) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "alice") as alice, Client(broker.endpoint, "bob") as bob:
            ack = await alice.say("general", "hello bob")
            got = await _until(bob, lambda i: isinstance(i, MsgEvent))
            assert (got.from_, got.text, got.seq) == ("alice", "hello bob", ack.seq)
            seen = await _until(alice, lambda i: isinstance(i, MsgEvent))
            assert seen.seq == ack.seq
            joins = [e for e in (await alice.history("general"))[0] if isinstance(e, JoinEvent)]
            assert [j.nick for j in joins] == ["alice", "bob"]

    run(body())


async def _drain_until(client: Client, pred, timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    """Items until ``pred`` holds for the list so far."""
    got: list = []
    while not pred(got):
        got.append(await client.next_item(timeout))
    return got


def _msgs(items: list) -> list[MsgEvent]:  # type: ignore[type-arg]
    return [i for i in items if isinstance(i, MsgEvent)]


def test_pm_both_ways_and_who(broker: Broker) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "alice") as alice, Client(broker.endpoint, "bob") as bob:
            await alice.pm("bob", "hi bob")
            await bob.pm("alice", "hi alice")
            got_b = await _until(bob, lambda i: isinstance(i, PmPush))
            got_a = await _until(alice, lambda i: isinstance(i, PmPush))
            assert (got_b.from_, got_b.text) == ("alice", "hi bob")
            assert (got_a.from_, got_a.text) == ("bob", "hi alice")
            who = await alice.who("general")
            assert sorted(u.nick for u in who.users) == ["alice", "bob"]
            with pytest.raises(ZchatError) as err:
                await alice.pm("nobody", "x")
            assert err.value.code == "no_such_user"

    run(body())


def test_broker_killed_and_restarted_loses_nothing(broker: Broker) -> None:
    """SIGKILL, restart on the same store: acked messages all there, seq goes
    on, both clients come back by themselves and see every event once."""

    async def body() -> None:
        async with Client(broker.endpoint, "alice") as alice, Client(broker.endpoint, "bob") as bob:
            acks = [await alice.say("general", f"before {i}") for i in range(5)]
            broker.kill()
            # Sent while the broker is down: kept and resent.
            pending = asyncio.ensure_future(alice.say("general", "during"))
            broker.start()
            during = await asyncio.wait_for(pending, 30)
            after = await bob.say("general", "after")
            assert during.seq > acks[-1].seq and after.seq > during.seq
            items = await _drain_until(
                bob,
                lambda got: (
                    any(isinstance(i, MsgEvent) and i.text == "after" for i in got)
                    and any(isinstance(i, Reconnected) for i in got)
                ),
            )
            texts = [m.text for m in _msgs(items)]
            assert texts == [f"before {i}" for i in range(5)] + ["during", "after"]
            assert any(isinstance(i, Reconnected) for i in items)
            seqs = [i.seq for i in items if hasattr(i, "seq")]
            assert seqs == sorted(set(seqs))
            events, _ = await alice.history("general", limit=500)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            stored = [e.text for e in events if isinstance(e, MsgEvent)]
            assert stored.count("during") == 1 and stored[:5] == [f"before {i}" for i in range(5)]

    run(body(), 90)


def test_subscriber_whose_pub_queue_overflows_still_gets_everything(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker("--rate", "0", "--pub-hwm", "10")

    async def body() -> None:
        async with (
            Client(b.endpoint, "writer") as writer,
            Client(b.endpoint, "reader", rcvhwm=10) as reader,
        ):
            n = 3000
            await asyncio.gather(*(writer.say("general", str(i)) for i in range(n)))
            items = await _drain_until(reader, lambda got: len(_msgs(got)) == n, 60)
            assert [m.text for m in _msgs(items)] == [str(i) for i in range(n)]
            assert reader.stats["repaired"] > 0

    run(body(), 120)


def test_memory_store_restart_restarts_numbering(make_broker: Callable[..., Broker]) -> None:
    b = make_broker("--timeout-ms", "3000", "--heartbeat-ms", "500", store=":memory:")

    async def body() -> None:
        async with Client(b.endpoint, "alice") as alice:
            for i in range(5):
                await alice.say("general", str(i))
            b.restart()
            await _until(alice, lambda i: isinstance(i, Reconnected), 30)
            ack = await alice.say("general", "fresh")
            got = await _until(alice, lambda i: isinstance(i, MsgEvent) and i.text == "fresh")
            assert got.seq == ack.seq

    run(body(), 60)


def test_a_session_taken_back_by_token_does_not_deliver_the_last_event_again(
    broker: Broker,
) -> None:
    """A bot restarted after a crash takes its session back by token and
    joins its rooms; the broker answers with the room's last seq, an event
    the last run handled. Taken for the joiner's own join, it was delivered
    again (the logger bot wrote it twice): ``joined.already`` tells them apart."""

    async def body() -> None:
        first = Client(broker.endpoint, "keeper")
        await first.start()
        ack = await first.say("general", "before the crash")
        await _until(first, lambda i: isinstance(i, MsgEvent) and i.seq == ack.seq)
        token = first.token
        await first.close(quiet=True)  # a crash: no bye, the session lives on
        async with Client(broker.endpoint, "keeper", token=token) as second:
            async with Client(broker.endpoint, "other") as other:
                later = await other.say("general", "after")
                got = await _until(second, lambda i: isinstance(i, MsgEvent))
                assert (got.text, got.seq) == ("after", later.seq)

    run(body())


def test_a_refused_join_leaves_nothing_behind_and_a_refused_rejoin_is_told(
    make_broker: Callable[..., Broker],
) -> None:
    """A join refused (a limit) stayed followed: its events piled up
    unreleased and every reconnect asked for it again. And a room the broker
    would not let the client back into after a restart was dropped silently."""
    b = make_broker("--rooms-per-session", "2", "--timeout-ms", "3000", "--heartbeat-ms", "500")

    async def body() -> None:
        async with Client(b.endpoint, "alice", rooms=["general", "dev"]) as alice:
            with pytest.raises(ZchatError) as refused:
                await alice.join("third")
            assert refused.value.code == "limit_reached"
            assert alice.rooms == ["general", "dev"]
            b.kill()
            b.args = (*b.args, "--rooms-per-session", "1")
            b.start()
            back = await _until(alice, lambda i: isinstance(i, Reconnected), 30)
            assert [room for room, _ in back.lost] == ["dev"]
            assert "rooms" in back.lost[0][1]
            assert alice.rooms == ["general"]

    run(body(), 60)


def test_a_hole_the_store_no_longer_keeps_is_skipped_not_waited_on(
    make_broker: Callable[..., Broker],
) -> None:
    """History trimmed by retention can leave a hole nobody can fill: after
    a restart the client learns that the room went on, history's ``first``
    says the store starts past the hole, and the client delivers from there."""
    import time

    from broker import Store
    from messages import encode, format_ts

    b = make_broker("--timeout-ms", "3000", "--heartbeat-ms", "500")

    async def body() -> None:
        async with Client(b.endpoint, "reader") as reader:
            ack = await reader.say("general", "before")
            await _until(reader, lambda i: isinstance(i, MsgEvent) and i.text == "before")
            b.kill()
            # What the broker stored while the reader was away; retention
            # then dropped everything older than the last three.
            store = Store(b.store)
            for seq in range(ack.seq + 1, ack.seq + 8):
                ev = MsgEvent(
                    room="general", seq=seq, ts=format_ts(0), from_="w", text=f"kept {seq}"
                )
                kept = seq >= ack.seq + 5
                store.add("general", seq, encode(ev), time.time() + 3600 if kept else 0.0)
                if seq == ack.seq + 4:
                    store.commit()  # the kept ones in a segment of their own
            store.commit()
            store.trim(time.time())
            assert store.first_seq("general") == ack.seq + 5
            store.close()
            b.start()
            got = await _until(
                reader, lambda i: isinstance(i, MsgEvent) and i.text.startswith("kept"), 30
            )
            assert got.seq == ack.seq + 5
            rest = [await _until(reader, lambda i: isinstance(i, MsgEvent)) for _ in range(2)]
            assert [e.seq for e in rest] == [ack.seq + 6, ack.seq + 7]
            assert reader.stats["skipped"] == 4

    run(body(), 60)


class _Fussy(FakeBroker):
    """A stand-in broker that refuses every hello, join and history twice
    (``unavailable``, then ``rate_limited``) before it answers, publishes
    only what it is told to, and can restart (a new epoch, the same store)."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        super().__init__(ctx)
        self.epoch = "e1"
        self.log: list[MsgEvent | JoinEvent] = []
        self.refused: Counter[str] = Counter()
        self.tries: Counter[str] = Counter()

    def add(self, ev: MsgEvent | JoinEvent, *, publish: bool) -> None:
        self.log.append(ev)
        if publish:
            self.pub.send_multipart([m.room_topic(ev.room), m.encode(ev)])

    def say(self, text: str, *, publish: bool) -> None:
        seq = len(self.log) + 1
        ev = MsgEvent(room="general", seq=seq, ts=m.format_ts(0), from_="bob", text=text)
        self.add(ev, publish=publish)

    def answer(self, req: Any) -> Any:
        kind = f"{type(req).__name__} {self.epoch}"
        self.tries[kind] += 1
        if isinstance(req, m.Hello | m.Join | m.History) and self.tries[kind] % 3 != 0:
            self.refused[kind] += 1
            code = "unavailable" if self.tries[kind] % 3 == 1 else "rate_limited"
            return m.Error(id=req.id, code=code, message="not now", retry_ms=20)
        if isinstance(req, m.Hello):
            server = m.ServerInfo(name="fussy", version="0", epoch=self.epoch, store="s1")
            return self.welcome(req, server, timeout_ms=5000)
        if isinstance(req, m.Join):
            seq = len(self.log) + 1
            self.add(
                JoinEvent(room="general", seq=seq, ts=m.format_ts(0), nick="alice"), publish=True
            )
            return m.Joined(id=req.id, room="general", topic="", members=["alice"], seq=seq)
        if isinstance(req, m.History):
            after = req.after or 0
            page = self.log[after : after + 3]  # short pages
            return m.HistoryReply(
                id=req.id,
                room="general",
                events=[msgspec.Raw(m.encode(e)) for e in page],
                more=after + 3 < len(self.log),
                first=1,
            )
        if isinstance(req, m.Ping):
            seqs = {"general": len(self.log)}
            return m.Pong(id=req.id, epoch=self.epoch, ts=m.format_ts(0), seqs=seqs)
        if isinstance(req, m.Bye):
            return m.ByeReply(id=req.id)
        return m.Error(id=req.id, code="bad_request", message="not here")


def _back(item: object) -> bool:
    return isinstance(item, Reconnected)


def _text(item: object) -> str | None:
    return item.text if isinstance(item, MsgEvent) else None


def test_hello_join_and_repair_wait_out_refusals_and_never_drop_a_room() -> None:
    """Every hello, join and history is refused twice (unavailable, then
    rate_limited, with retry_ms): the client waits each out, at the start,
    for a repair and across a restart, keeps its room, and misses nothing."""

    async def body() -> None:
        fussy = _Fussy(zmq.asyncio.Context.instance())
        serving = asyncio.ensure_future(fussy.serve())
        try:
            async with Client(fussy.endpoint, "alice") as alice:
                fussy.say("lost 1", publish=False)
                fussy.say("lost 2", publish=False)
                fussy.say("live 3", publish=True)  # past a hole: history fills it
                got = await _drain_until(alice, lambda g: len(_msgs(g)) == 3, 20)
                fussy.epoch = "e2"  # a restart on the same store: the pong tells
                fussy.say("while away", publish=False)
                got += await _drain_until(alice, lambda g: any(_back(i) for i in g))
                fussy.say("after", publish=True)
                got += await _drain_until(alice, lambda g: any(_text(i) == "after" for i in g))
                assert alice.rooms == ["general"]
            seqs = [i.seq for i in got if isinstance(i, MsgEvent | JoinEvent)]
            assert seqs == list(range(1, len(fussy.log) + 1))
            assert [e.text for e in _msgs(got)] == [
                "lost 1",
                "lost 2",
                "live 3",
                "while away",
                "after",
            ]
            for kind in ("Hello e1", "Join e1", "History e1", "Hello e2", "Join e2", "History e2"):
                assert fussy.refused[kind] >= 2, (kind, fussy.refused)
        finally:
            serving.cancel()
            fussy.close()

    run(body(), 60)


def test_long_lists_are_read_page_by_page(make_broker: Callable[..., Broker]) -> None:
    """who, rooms and commands come in pages of --max-reply-bytes; the
    client follows them."""
    b = make_broker("--max-reply-bytes", "1024", "--rate", "0", store=":memory:")

    async def body() -> None:
        clients = [
            Client(b.endpoint, f"member{i:03d}", rooms=["general", f"r{i:03d}"]) for i in range(60)
        ]
        try:
            for c in clients:
                await c.start()
            await clients[0].offer_commands(
                [CommandSpec(name=f"cmd{i:02d}", usage="!x", help="h" * 40) for i in range(30)]
            )
            who = await clients[0].who("general")
            assert [u.nick for u in who.users] == [f"member{i:03d}" for i in range(60)]
            assert not who.more
            rooms = await clients[0].list_rooms()
            assert [r.name for r in rooms.rooms] == ["general"] + [f"r{i:03d}" for i in range(60)]
            cmds = await clients[1].commands("general")
            assert [c.name for c in cmds] == [f"cmd{i:02d}" for i in range(30)]
            few = await clients[0].who("general", pages=1)
            assert few.more and 0 < len(few.users) < 60
        finally:
            for c in clients:
                await c.close()

    run(body(), 90)
