"""Cluster mode: several brokers on one Redis, real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from broker import Config, Core, Outbox
from broker._backend import SEARCH_SCAN
from broker._cluster import Cluster
from broker._keys import keygen
from broker._redis import RedisBackend
from client import Client, Reconnected, ZchatError
from client._keys import curve_keys
from messages import JoinEvent, LeaveEvent, MsgEvent, Pm, PmPush, decode_reply, encode

from .helpers import Broker, PausableProxy, run, wait_until, whole_history
from .redis_servers import RedisServer


async def _until(client: Client, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    while True:
        item = await client.next_item(timeout)
        if pred(item):
            return item


def test_clients_on_different_nodes_chat(nodes: Callable[[int], list[Broker]]) -> None:
    a, b, c = nodes(3)

    async def body() -> None:
        async with (
            Client(a.endpoint, "alice") as alice,
            Client(b.endpoint, "bob") as bob,
            Client(c.endpoint, "carol") as carol,
        ):
            ack = await alice.say("general", "hello from a")
            for reader in (bob, carol, alice):
                got = await _until(reader, lambda i: isinstance(i, MsgEvent))
                assert (got.from_, got.text, got.seq) == ("alice", "hello from a", ack.seq)
            back = await carol.say("general", "hello from c")
            assert back.seq == ack.seq + 1  # one numbering for the room, on every node
            got = await _until(alice, lambda i: isinstance(i, MsgEvent))
            assert (got.from_, got.seq) == ("carol", back.seq)
            # Everyone is seen from everywhere.
            for asker in (alice, bob, carol):
                who = await asker.who()
                assert sorted(u.nick for u in who.users) == ["alice", "bob", "carol"]
                here = await asker.who("general")
                assert sorted(u.nick for u in here.users) == ["alice", "bob", "carol"]
            rooms = await bob.list_rooms()
            assert [(r.name, sorted(r.members)) for r in rooms.rooms] == [
                ("general", ["alice", "bob", "carol"])
            ]
            # History is one history.
            events, _ = await bob.history("general")
            assert [e.seq for e in events] == list(range(1, back.seq + 1))
            assert [e.nick for e in events if isinstance(e, JoinEvent)] == [
                "alice",
                "bob",
                "carol",
            ]
            # A private message crosses nodes.
            pm = await alice.pm("carol", "psst")
            assert pm.to == "carol"
            got = await _until(carol, lambda i: isinstance(i, PmPush))
            assert (got.from_, got.text) == ("alice", "psst")
            # A nick is one nick across the cluster.
            with pytest.raises(Exception, match="in use"):
                async with Client(c.endpoint, "alice"):
                    pass
            await bob.part("general")
            left = await _until(alice, lambda i: isinstance(i, LeaveEvent))
            assert left.nick == "bob"

    run(body())


def test_a_session_resumes_on_another_node_by_token(nodes: Callable[[int], list[Broker]]) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with Client(b.endpoint, "bob") as bob:
            first = Client(a.endpoint, "alice")
            await first.start()
            await first.join("dev")
            token = first.token
            await first.close(quiet=True)  # as if its node died under it
            async with Client(b.endpoint, "alice", token=token) as again:
                # Its rooms came along (dev too, which this client did not ask for).
                dev = await bob.who("dev")
                assert [u.nick for u in dev.users] == ["alice"]
                ack = await bob.say("general", "still there?")
                got = await _until(again, lambda i: isinstance(i, MsgEvent))
                assert (got.text, got.seq) == ("still there?", ack.seq)
                events, _ = await bob.history("general")
                # No leave and no second join: the session went on.
                assert [type(e).__name__ for e in events].count("JoinEvent") == 2
                assert not any(isinstance(e, LeaveEvent) for e in events)

    run(body())


def test_a_dead_nodes_sessions_time_out_once(nodes: Callable[[int], list[Broker]]) -> None:
    a, b, _ = nodes(3)

    async def body() -> None:
        async with Client(b.endpoint, "bob") as bob:
            ghost = Client(a.endpoint, "ghost")
            await ghost.start()
            # Gone without a bye, as if its machine died with the node (a
            # live client would learn the other nodes from its welcome and
            # take its session there).
            await ghost.close(quiet=True)
            a.kill()
            left = await _until(bob, lambda i: isinstance(i, LeaveEvent), timeout=20)
            assert (left.nick, left.reason) == ("ghost", "timeout")
            events, _ = await bob.history("general")
            assert [e.nick for e in events if isinstance(e, LeaveEvent)] == ["ghost"]
            who = await bob.who()
            assert [u.nick for u in who.users] == ["bob"]

    run(body())


def test_redis_killed_and_restarted_loses_nothing_acknowledged(
    nodes: Callable[[int], list[Broker]], redis_server: Any
) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with Client(a.endpoint, "alice") as alice, Client(b.endpoint, "bob") as bob:
            acked = [await alice.say("general", f"before {i}") for i in range(20)]
            redis_server.kill()
            # While Redis is away, a say waits (refused as unavailable, sent again).
            later = asyncio.ensure_future(alice.say("general", "during"))
            await asyncio.sleep(0)
            redis_server.restart()
            acked.append(await asyncio.wait_for(later, 20))
            acked.append(await bob.say("general", "after"))
            seqs = [a.seq for a in acked]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            got: list[Any] = []
            while len([e for e in got if isinstance(e, MsgEvent)]) < len(acked):
                item = await bob.next_item(20)
                if isinstance(item, MsgEvent):
                    got.append(item)
            assert [(e.text, e.seq) for e in got] == [
                (f"before {i}", acked[i].seq) for i in range(20)
            ] + [("during", acked[20].seq), ("after", acked[21].seq)]
            events, _ = await bob.history("general", limit=100)
            assert [e.seq for e in events] == list(range(1, acked[-1].seq + 1))

    run(body(), timeout=90)


def test_redis_restarted_empty_starts_the_cluster_over(
    nodes: Callable[[int], list[Broker]], redis_server: Any
) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with Client(a.endpoint, "alice") as alice, Client(b.endpoint, "bob") as bob:
            store = alice.welcome.server.store if alice.welcome else None
            await alice.say("general", "before")
            redis_server.restart_empty()
            changed = await _until(alice, lambda i: isinstance(i, Reconnected), timeout=30)
            assert changed.restarted
            assert alice.welcome is not None and alice.welcome.server.store != store
            ack = await bob.say("general", "a new start")
            got = await _until(alice, lambda i: isinstance(i, MsgEvent) and i.text == "a new start")
            assert got.seq == ack.seq
            events, _ = await alice.history("general")
            assert "before" not in [getattr(e, "text", None) for e in events]

    run(body(), timeout=90)


def test_a_lost_subscription_is_noticed_and_repaired(
    nodes: Callable[[int], list[Broker]], redis_server: Any
) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with Client(a.endpoint, "alice") as alice, Client(b.endpoint, "bob") as bob:
            await alice.say("general", "first")
            await _until(bob, lambda i: isinstance(i, MsgEvent))
            r = redis_server.client()
            assert r.client_kill_filter(_type="pubsub") >= 2
            acked = [await alice.say("general", f"n{i}") for i in range(30)]
            texts = []
            while len(texts) < 30:
                item = await bob.next_item(20)
                if isinstance(item, MsgEvent):
                    texts.append((item.text, item.seq))
            assert texts == [(f"n{i}", acked[i].seq) for i in range(30)]
            r.close()

    run(body(), timeout=60)


def test_a_node_killed_at_full_speed_loses_nothing(nodes: Callable[..., list[Broker]]) -> None:
    """Three nodes, a sender and a subscriber on each; the senders keep 50
    says in flight each; node A is SIGKILLed midway. Its clients move on to
    the others by token; every acknowledged message reaches every subscriber
    once, in each sender's order, and the room's history is 1..N."""
    a, b, c = nodes(3, "--rate", "0")
    eps = [a.endpoint, b.endpoint, c.endpoint]

    def rotated(i: int) -> list[str]:
        return eps[i:] + eps[:i]

    async def body() -> None:
        subs = [Client(rotated(i), f"sub{i}") for i in range(3)]
        sends = [Client(rotated(i), f"send{i}") for i in range(3)]
        for cl in subs + sends:
            await cl.start()
        got: list[list[MsgEvent]] = [[], [], []]
        acked: dict[str, list[int]] = {}
        stop = asyncio.Event()

        async def collect(i: int) -> None:
            async for item in subs[i].items():
                if isinstance(item, MsgEvent):
                    got[i].append(item)
                    if i == 2 and len(got[i]) % 2000 == 0:
                        await asyncio.sleep(0.3)  # a subscriber that lags

        async def send(cl: Client) -> None:
            mine = acked.setdefault(cl.nick, [])
            window = asyncio.Semaphore(50)

            async def one(n: int) -> None:
                try:
                    await cl.say("general", f"{cl.nick}:{n}")
                    mine.append(n)
                finally:
                    window.release()

            n = 0
            flying = []
            while not stop.is_set():
                await window.acquire()
                flying.append(asyncio.ensure_future(one(n)))
                n += 1
            await asyncio.gather(*flying)

        collectors = [asyncio.ensure_future(collect(i)) for i in range(3)]
        senders = [asyncio.ensure_future(send(cl)) for cl in sends]
        try:
            await asyncio.sleep(1.5)  # traffic before the kill, not a wait for anything
            a.kill()
            await asyncio.sleep(5.0)  # and after it
            stop.set()
            await asyncio.wait_for(asyncio.gather(*senders), 60)
            want = {f"{name}:{n}" for name, ns in acked.items() for n in ns}
            total = len(want)
            deadline = asyncio.get_running_loop().time() + 60
            while any(not want <= {e.text for e in g} for g in got):
                assert asyncio.get_running_loop().time() < deadline, [len(g) for g in got]
                await asyncio.sleep(0.05)  # polling the collectors, bounded above
            for i, g in enumerate(got):
                texts = [e.text for e in g]
                assert len(texts) == len(set(texts)), f"subscriber {i} got duplicates"
                assert [e.seq for e in g] == sorted(e.seq for e in g)
                for name in acked:
                    mine = [int(t.split(":")[1]) for t in texts if t.split(":")[0] == name]
                    assert mine == sorted(mine), f"subscriber {i}: {name} out of order"
            events = await whole_history(subs[1])
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            stored = [e.text for e in events if isinstance(e, MsgEvent)]
            assert len(stored) == len(set(stored)) and want <= set(stored)
            # The clients of A went on elsewhere, with their sessions.
            assert subs[0].endpoint != a.endpoint and sends[0].endpoint != a.endpoint
            assert not [e for e in events if isinstance(e, LeaveEvent)]
            assert total > 3000, total
            print(f"\nnode killed at full speed: {total} messages acknowledged")
        finally:
            stop.set()
            for t in collectors + senders:
                t.cancel()
            for cl in subs + sends:
                await cl.close(quiet=True)

    run(body(), 150)


def test_on_a_redis_cluster_rooms_spread_over_its_masters(
    make_broker: Callable[..., Broker], redis_cluster: Any
) -> None:
    """The same, on a Redis Cluster of three masters: each room's keys in
    one slot (its hash tag), the rooms on different masters."""
    a, b = (
        make_broker("--cluster", redis_cluster.url, "--timeout-ms", "3000", "--heartbeat-ms", "500")
        for _ in range(2)
    )
    rooms = [f"room{i}" for i in range(8)]
    rc = redis_cluster.client()
    masters = {rc.get_node_from_key("zchat:{" + r + "}:meta").name for r in rooms}
    assert len(masters) >= 2  # the rooms are spread, or the test proves little

    async def body() -> None:
        async with (
            Client(a.endpoint, "alice", rooms=rooms) as alice,
            Client([b.endpoint, a.endpoint], "bob", rooms=rooms) as bob,
        ):
            acks = [await alice.say(r, f"in {r}") for r in rooms]
            got = {}
            while len(got) < len(rooms):
                item = await bob.next_item(10)
                if isinstance(item, MsgEvent):
                    got[item.room] = (item.text, item.seq)
            assert got == {r: (f"in {r}", ack.seq) for r, ack in zip(rooms, acks, strict=True)}
            who = await alice.who()
            assert sorted(u.nick for u in who.users) == ["alice", "bob"]
            pm = await bob.pm("alice", "psst")
            assert pm.to == "alice"
            assert (await _until(alice, lambda i: isinstance(i, PmPush))).text == "psst"
            for r in rooms[:3]:
                events, _ = await bob.history(r)
                assert [e.seq for e in events] == [1, 2, 3]
            # bob's node dies; bob goes on on alice's, with his session.
            b.kill()
            ack = await bob.say("room0", "after the kill")
            got2 = await _until(alice, lambda i: isinstance(i, MsgEvent) and i.room == "room0")
            assert (got2.text, got2.seq) == ("after the kill", ack.seq)

    run(body(), 90)


def test_redis_wait_acknowledges_only_what_a_replica_has(
    make_broker: Callable[..., Broker], redis_server: Any, tmp_path: Any
) -> None:
    replica = RedisServer(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(redis_server.port))
    )
    replica.start()
    try:
        node = make_broker("--cluster", redis_server.url, "--redis-wait", "1")

        async def body() -> None:
            async with Client(node.endpoint, "alice") as alice:
                ack = await alice.say("general", "kept twice")
                copy = replica.client()
                assert copy.xlen("zchat:{general}:log") == ack.seq  # on the replica already
                replica.kill()
                pending = asyncio.ensure_future(alice.say("general", "waits for a replica"))
                done, _ = await asyncio.wait({pending}, timeout=2.5)
                assert not done  # not acknowledged while no replica has it
                replica.restart()
                later = await asyncio.wait_for(pending, 30)
                assert later.seq == ack.seq + 1
                assert replica.client().xlen("zchat:{general}:log") == later.seq

        run(body(), 60)
    finally:
        replica.stop()


def test_a_promoted_replica_makes_clients_reload(
    make_broker: Callable[..., Broker], redis_server: Any, tmp_path: Any
) -> None:
    """The primary dies and its replica takes over (as Sentinel would make
    it; here by hand, behind a proxy that follows the primary). The replica
    may miss the last writes, so seqs clients saw could be given again: the
    nodes notice by the replication ids and start over with a new store id."""
    replica = RedisServer(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(redis_server.port))
    )
    replica.start()
    proxy = PausableProxy(f"tcp://127.0.0.1:{redis_server.port}")
    url = proxy.endpoint.replace("tcp://", "redis://") + "/0"
    try:
        a, b = (make_broker("--cluster", url, "--timeout-ms", "3000") for _ in range(2))

        async def body() -> None:
            async with Client(a.endpoint, "alice") as alice, Client(b.endpoint, "bob") as bob:
                store = alice.welcome.server.store if alice.welcome else None
                ack = await alice.say("general", "before the failover")
                copy = replica.client()
                wait_until(lambda: copy.xlen("zchat:{general}:log") >= ack.seq, 10, "replication")
                redis_server.kill()
                copy.execute_command("REPLICAOF", "NO", "ONE")
                proxy.retarget(f"tcp://127.0.0.1:{replica.port}")
                again = await _until(alice, lambda i: isinstance(i, Reconnected), timeout=30)
                assert again.restarted
                assert alice.welcome is not None and alice.welcome.server.store != store
                later = await bob.say("general", "after the failover")
                got = await _until(
                    alice, lambda i: isinstance(i, MsgEvent) and i.text == "after the failover"
                )
                assert got.seq == later.seq
                events, _ = await alice.history("general")
                assert "before the failover" in [getattr(e, "text", None) for e in events]

        run(body(), 90)
    finally:
        proxy.close()
        replica.stop()


def test_with_curve_a_nick_claimed_on_one_node_is_claimed_on_all(
    make_broker: Callable[..., Broker], redis_server: Any, tmp_path: Any
) -> None:
    keygen(tmp_path / "server")
    secret = str(tmp_path / "server" / "broker.key_secret")
    a, b = (make_broker("--cluster", redis_server.url, "--curve-secret", secret) for _ in range(2))

    def keys(who: str) -> Any:
        return curve_keys(str(tmp_path / "server" / "broker.key"), key_dir=tmp_path / who)

    async def body() -> None:
        async with Client(a.endpoint, "alice", curve=keys("alice")) as alice:
            await alice.say("general", "mine")
        # alice is gone; her nick stays hers, on the other node too.
        with pytest.raises(ZchatError, match="belongs to another key"):
            async with Client(b.endpoint, "alice", curve=keys("mallory")):
                pass
        async with Client(b.endpoint, "alice", curve=keys("alice")) as again:
            assert again.nick == "alice"

    run(body(), 60)


def test_a_pm_for_a_session_whose_node_died_waits_for_it_on_the_next(
    nodes: Callable[..., list[Broker]],
) -> None:
    a, b = nodes(2, "--held-pm-kb", "1")

    async def body() -> None:
        async with Client(a.endpoint, "alice") as alice:
            bob = Client(b.endpoint, "bob")
            await bob.start()
            token = bob.token
            await bob.close(quiet=True)
            b.kill()  # bob's node is gone; his session waits for him to come back
            ack = await alice.pm("bob", "are you there?")
            assert ack.to == "bob"
            # What waits for him is bounded (here 1 KiB), refused before its ack.
            with pytest.raises(ZchatError, match="not reading"):
                for i in range(20):
                    pm = Pm(to="bob", text=f"{i} " + "x" * 100)
                    await alice.request(pm, retry_rate_limited=False)
            async with Client(a.endpoint, "bob", token=token) as again:
                got = await _until(again, lambda i: isinstance(i, PmPush))
                assert (got.from_, got.text) == ("alice", "are you there?")
                # Delivered once: nothing waits any more.
                await alice.pm("bob", "welcome back")
                got = await _until(again, lambda i: isinstance(i, PmPush))
                assert got.text.startswith("0 ")

    run(body(), 60)


def test_search_is_one_search_from_every_node(nodes: Callable[[int], list[Broker]]) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with (
            Client(a.endpoint, "alice", rooms=["general"]) as alice,
            Client(b.endpoint, "bob", rooms=[]) as bob,
        ):
            for text in ["Deploy at noon", "lunch?", "deployed, all green", "ping"]:
                await alice.say("general", text)
            events, before = await bob.search("general", "DEPLOY")
            assert [e.text for e in events] == ["Deploy at noon", "deployed, all green"]
            assert before is None
            events, before = await bob.search("general", "deploy", limit=1)
            assert [e.text for e in events] == ["deployed, all green"] and before is not None
            events, before = await bob.search("general", "deploy", before=before)
            assert [e.text for e in events] == ["Deploy at noon"] and before is None
            assert (await bob.search("general", "green noon"))[0] == []

    run(body())


def test_a_cluster_search_looks_at_a_bounded_number_of_events(redis_server: Any) -> None:
    backend = RedisBackend(redis_server.url, node="n1")
    try:
        n = SEARCH_SCAN + 500
        for seq in range(1, n + 1):
            text = "needle in the hay" if seq in (1, n - 1) else "hay"
            ev = MsgEvent(room="r", seq=seq, ts="2026-11-24T12:00:00.123Z", from_="a", text=text)
            backend.add("r", seq, encode(ev), 1000.0)
        backend.commit()

        def seqs(page: Any) -> list[int]:
            return [msgspec.json.decode(e)["seq"] for e in page.events]

        # Page by page (each looks at SEARCH_SCAN events at most, and stops
        # sooner when its time is spent) down to both needles.
        found: list[int] = []
        before: int | None = None
        for _ in range(1000):
            page = backend.search("r", "Needle", before=before, limit=50, max_bytes=1 << 20)
            found = seqs(page) + found
            if not page.more:
                break
            assert page.before is not None and (before or n + 1) - page.before <= SEARCH_SCAN
            before = page.before
        assert found == [1, n - 1] and not page.more
        assert backend.search("r", "hay", before=5, limit=2, max_bytes=1 << 20).before == 3
    finally:
        backend.close()


def test_a_join_and_a_nick_change_in_one_batch_leave_no_stale_record(redis_server: Any) -> None:
    """The join's update of the session's record is written at the batch's
    commit, the rename at once: it must not make the old nick's record
    again (that nick would stay taken for good, with no lease to end it)."""
    import time

    import messages as m
    from broker import Config, Core, Outbox
    from broker._cluster import Cluster

    backend = RedisBackend(redis_server.url, node="n1")
    cluster = Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    try:
        core = Core(Config(), backend, directory=cluster)
        now = time.time()
        out = Outbox()
        core.handle(b"a", m.Hello(nick="alice", id="1"), now, out, addr="127.0.0.1")
        backend.commit()
        out = Outbox()
        core.handle(b"a", m.Join(room="dev", id="2"), now, out)
        core.handle(b"a", m.Nick(nick="alicia", id="3"), now, out)
        backend.commit()
        r = redis_server.client()
        assert not r.exists("zchat:{s}:u:alice")
        record = r.hgetall("zchat:{s}:u:alicia")
        assert record[b"nick"] == b"alicia" and record[b"r:dev"] == b"1"
        assert cluster.create("alice", "alice", "t", None, False, now)  # free again
    finally:
        cluster.ps.close()
        backend.close()


def _say(seq: int, nick: str, rid: str, ts: str = "2026-11-24T12:00:00.123Z") -> bytes:
    return encode(MsgEvent(room="r", seq=seq, ts=ts, from_=nick, text=f"{nick} {rid}", id=rid))


def test_a_resent_say_gets_its_first_seq_and_stamp_and_is_stored_once(redis_server: Any) -> None:
    backend = RedisBackend(redis_server.url, node="n1")
    r = redis_server.client()
    try:
        backend.add("r", 1, _say(1, "a", "x1"), 1000.0)
        backend.add("r", 2, _say(2, "b", "x1"), 1000.0)
        backend.commit()
        assert backend.results == {"r": {1: 1, 2: 2}}
        # Again later, with a stamp of its own (a resend to another node), and
        # twice in one batch: the first's seq and stamp, nothing appended.
        later = "2026-11-24T12:05:00.000Z"
        backend.add("r", 3, _say(3, "a", "x1", later), 1001.0)
        backend.add("r", 4, _say(4, "c", "x1", later), 1001.0)
        backend.add("r", 5, _say(5, "c", "x1", later), 1001.0)
        backend.commit()
        first = "2026-11-24T12:00:00.123Z"
        assert backend.results == {"r": {3: (1, first), 4: 3, 5: (3, later)}}
        assert [e[0] for e in r.xrange("zchat:{r}:log")] == [b"1-0", b"2-0", b"3-0"]
        # The ids are fields of the room's hash of the current window of
        # Redis's clock, which outlives the window by one and a minute.
        # (Two of them when the test ran across a window's end.)
        buckets = r.keys("zchat:{r}:ids:*")
        assert sum(r.hlen(b) for b in buckets) == 3
        assert all(600 < r.ttl(b) <= 1260 for b in buckets)
        assert not r.keys("zchat:{r}:id:*")
    finally:
        backend.close()


def test_a_batch_whose_answers_were_lost_is_sent_again_and_stored_once(redis_server: Any) -> None:
    from broker._backend import StoreFull

    backend = RedisBackend(redis_server.url, node="n1")
    r = redis_server.client()
    try:
        for seq in range(1, 4):
            backend.add("r", seq, _say(seq, "a", f"x{seq}"), 1000.0)
        assert backend.can_send()
        backend.send()
        # Handled while the first is in flight: it waits behind it.
        backend.add("r", 4, _say(4, "a", "x4"), 1000.0)
        backend.add("r", 5, _say(5, "a", "x1"), 1000.0)  # a resend of the first
        assert backend.room_state("r") is not None and backend.room_state("r").last_seq == 5
        # Redis ran it, but the node never reads the answers.
        wait_until(lambda: r.hget("zchat:{r}:meta", "seq") == b"3", 10, "the batch to be run")
        backend._flight[0].connection.disconnect()  # type: ignore[index]
        with pytest.raises(StoreFull):
            backend.receive()
        assert not backend.in_flight and not backend.can_send()
        backend.commit()
        ts = "2026-11-24T12:00:00.123Z"
        assert backend.results == {"r": {1: (1, ts), 2: (2, ts), 3: (3, ts), 4: 4, 5: (1, ts)}}
        assert [e[0] for e in r.xrange("zchat:{r}:log")] == [b"1-0", b"2-0", b"3-0", b"4-0"]
        # And in flight again once a commit went through.
        backend.add("r", 5, _say(5, "a", "x5"), 1000.0)
        assert backend.can_send()
        backend.send()
        backend.receive()
        assert backend.results == {"r": {5: 5}}
    finally:
        backend.close()


def test_connections_to_redis_cut_at_full_speed_lose_and_double_nothing(
    nodes: Callable[..., list[Broker]], redis_server: Any
) -> None:
    """A node's connections to Redis are cut again and again while a sender
    keeps 50 says in flight (batches in flight to Redis among them): every
    say is acknowledged once, stored once, and reaches a subscriber once,
    in order."""
    (a,) = nodes(1, "--rate", "0")

    async def body() -> None:
        r = redis_server.client()
        async with Client(a.endpoint, "send") as sender, Client(a.endpoint, "sub") as sub:
            await sub.join("general")
            window = asyncio.Semaphore(50)
            acks: dict[int, int] = {}
            cuts = 0

            async def one(n: int) -> None:
                try:
                    acks[n] = (await sender.say("general", f"m{n}")).seq
                finally:
                    window.release()

            flying = []
            for n in range(3000):
                await window.acquire()
                flying.append(asyncio.ensure_future(one(n)))
                if n % 100 == 50:
                    cuts += r.client_kill_filter(_type="normal", skipme=True)
            await asyncio.wait_for(asyncio.gather(*flying), 60)
            assert cuts >= 30
            assert len(set(acks.values())) == 3000
            got: list[MsgEvent] = []
            while len(got) < 3000:
                item = await sub.next_item(20)
                if isinstance(item, MsgEvent):
                    got.append(item)
            assert [(e.seq, e.text) for e in got] == sorted((s, f"m{n}") for n, s in acks.items())
            events = await whole_history(sub)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert sorted(e.text for e in events if isinstance(e, MsgEvent)) == sorted(
                f"m{n}" for n in range(3000)
            )
        r.close()

    run(body(), 120)


def test_a_body_is_stored_with_the_seq_redis_gave_it(redis_server: Any) -> None:
    backend = RedisBackend(redis_server.url, node="n1")
    r = redis_server.client()
    try:
        backend.add("r", 1, _say(1, "a", "x1"), 1000.0)
        backend.commit()
        # Numbered by a node that knew less, not one after another, after
        # two resends: the new one is the room's second.
        backend.add("r", 10, _say(10, "a", "x1"), 1000.0)
        backend.add("r", 11, _say(11, "a", "x1"), 1000.0)
        backend.add("r", 13, _say(13, "a", "x2"), 1000.0)
        # And one after another, but behind: each renumbered.
        backend.add("q", 7, _say(7, "a", "y1").replace(b'"r"', b'"q"', 1), 1000.0)
        backend.add("q", 8, _say(8, "a", "y2").replace(b'"r"', b'"q"', 1), 1000.0)
        backend.commit()
        assert backend.results["r"][13] == 2 and backend.results["q"] == {7: 1, 8: 2}
        for room in ("r", "q"):
            for eid, fields in r.xrange(f"zchat:{{{room}}}:log"):
                assert msgspec.json.decode(fields[b"e"])["seq"] == int(eid.split(b"-")[0])
    finally:
        backend.close()


def test_what_a_lost_subscription_missed_is_asked_of_redis(redis_server: Any) -> None:
    """A "moved" or "pm" that came while the node's subscription was down
    is never heard: after it reconnects, the node asks Redis whether its
    sessions are still its own, and for private messages held for them."""
    import time

    import messages as m
    from broker import Config, Core, Outbox
    from broker._cluster import Cluster, session_key

    backend = RedisBackend(redis_server.url, node="n1")
    cluster = Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    try:
        core = Core(Config(), backend, directory=cluster)
        now = time.time()
        out = Outbox()
        core.handle(b"a", m.Hello(nick="alice"), now, out, addr="127.0.0.1")
        core.handle(b"a", m.Join(room="dev"), now, out, addr="127.0.0.1")
        core.handle(b"b", m.Hello(nick="bob"), now, out, addr="127.0.0.1")
        core.handle(b"t", m.Hello(nick="tail", quiet=True), now, out, addr="127.0.0.1")
        core.handle(b"t", m.Join(room="ops"), now, out, addr="127.0.0.1")
        backend.commit()
        r = redis_server.client()
        r.client_kill_filter(_type="pubsub")  # the subscription is lost...
        r.hdel(session_key("tail"), "r:ops")  # ...tail is put out of ops by another node...
        r.hset(session_key("alice"), "node", "n2")  # ...alice is taken over meanwhile...
        cluster.deliver("n1", "bob", m.encode(m.PmPush(from_="carol", to="bob", text="hi", ts="x")))
        backend.commit()  # ...and bob gets a pm: the "moved" and "pm" go to nobody
        out = Outbox()
        cluster.pump(core, out, lambda topic, body: None)  # finds the connection gone
        assert cluster.reconnects == 1
        cluster._next_tick = 0.0
        cluster.tick(now + 1, core, out, lambda topic, body: None)
        assert "alice" not in core.nicks and "dev" not in core.rooms  # no leave to come
        assert [(to, m.decode_reply(f).text) for to, f in out.pushes] == [(b"b", "hi")]
        assert "bob" in core.nicks
        assert core.nicks["tail"].rooms == {}  # its "out" never came: asked of its record
    finally:
        cluster.ps.close()
        backend.close()


def test_a_gap_is_filled_a_page_at_a_time(redis_server: Any, monkeypatch: Any) -> None:
    import time

    import broker._cluster as bc
    from broker import Config, Core

    monkeypatch.setattr(bc, "FILL_PAGE", 7)
    backend = RedisBackend(redis_server.url, node="n1")
    cluster = bc.Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    try:
        for seq in range(1, 31):
            backend.add("r", seq, _say(seq, "a", f"g{seq}"), time.time())
        backend.commit()
        core = Core(Config(), backend, directory=cluster)
        room = core._room("r")
        room.published = 0
        calls: list[int] = []
        real = backend.log_range

        def counted(*args: Any, **kw: Any) -> Any:
            calls.append(kw.get("count"))
            return real(*args, **kw)

        monkeypatch.setattr(backend, "log_range", counted)
        sent: list[int] = []
        cluster._fill(
            core, room, None, lambda topic, body: sent.append(msgspec.json.decode(body)["seq"])
        )
        assert sent == list(range(1, 31))
        assert calls == [7] * 5  # four full pages and a short one
    finally:
        cluster.ps.close()
        backend.close()


def test_the_redis_password_comes_from_the_environment(
    make_broker: Callable[..., Broker], redis_server: Any, monkeypatch: Any
) -> None:
    r = redis_server.client()
    r.config_set("requirepass", "s3cret-redis-pass")
    r.close()
    # Without it the node says why and exits, rather than serve without Redis.
    with pytest.raises(AssertionError, match="asks for a password, and none was given"):
        make_broker("--cluster", redis_server.url)
    monkeypatch.setenv("ZCHAT_REDIS_PASSWORD", "not-the-password")
    with pytest.raises(AssertionError, match="asks for a password, and the one given is wrong"):
        make_broker("--cluster", redis_server.url)
    monkeypatch.setenv("ZCHAT_REDIS_PASSWORD", "s3cret-redis-pass")
    a = make_broker("--cluster", redis_server.url)

    async def body() -> None:
        async with Client(a.endpoint, "alice") as alice:
            ack = await alice.say("general", "behind a password")
            assert ack.seq is not None and ack.seq >= 1

    run(body())


def test_a_node_changes_a_rooms_moderation_from_what_redis_holds(redis_server: Any) -> None:
    """Two nodes: a rename on one moves a mute to the new nick; the other,
    which read the room's moderation before, must not write its old copy
    back when it changes something else (the mute would go back to a nick
    nobody has)."""
    import time

    import messages as m

    with two_nodes(redis_server) as (a, b):
        do = _do(time.time())

        do(a, b"o", m.Hello(nick="own"))
        do(a, b"o", m.Join(room="r"))
        do(a, b"x", m.Hello(nick="mal"))
        do(a, b"x", m.Join(room="r"))
        do(b, b"c", m.Hello(nick="carol"))
        do(b, b"c", m.Join(room="r"))  # node 2 reads the room's moderation
        assert isinstance(do(a, b"o", m.Mute(room="r", nick="mal")), m.Ack)
        assert isinstance(do(a, b"x", m.Nick(nick="mal2")), m.NickReply)
        do(a, b"o", m.Op(room="r", nick="carol"))
        assert isinstance(do(b, b"c", m.Voice(room="r", nick="dave")), m.Ack)
        stored = msgspec.json.decode(redis_server.client().get("zchat:{r}:rules"))
        assert [x["mask"] for x in stored["mutes"]] == ["nick:mal2"]
        assert stored["roles"] == {"carol": "op", "dave": "voice"}


def test_two_nodes_changing_a_rooms_moderation_at_once_lose_neither_change(
    redis_server: Any, monkeypatch: Any
) -> None:
    """A node changes a room's moderation only if it is still what the node
    read: the loser of a race is told to ask again (clients do), and then
    changes what the winner left."""
    import time

    import messages as m

    with two_nodes(redis_server) as (a, b):
        do = _do(time.time())

        do(a, b"o", m.Hello(nick="own"))
        do(a, b"o", m.Join(room="r"))
        do(b, b"c", m.Hello(nick="carol"))
        do(b, b"c", m.Join(room="r"))
        do(a, b"o", m.Op(room="r", nick="carol"))
        # Node 2 reads the room's moderation, then node 1 changes it before
        # node 2 writes (as if both acted in the same instant).
        b.rules_changed("r")
        monkeypatch.setattr(b, "rules_changed", lambda name: None)
        do(a, b"o", m.Mute(room="r", nick="mal"))
        lost = do(b, b"c", m.Voice(room="r", nick="dave"))
        assert lost.code == "unavailable" and lost.retry_ms
        monkeypatch.undo()
        assert isinstance(do(b, b"c", m.Voice(room="r", nick="dave")), m.Ack)  # asked again
        stored = msgspec.json.decode(redis_server.client().get("zchat:{r}:rules"))
        assert [x["mask"] for x in stored["mutes"]] == ["nick:mal"]
        assert stored["roles"] == {"carol": "op", "dave": "voice"}


def test_a_reaping_node_that_dies_before_its_commit_leaves_no_ghost_member(
    redis_server: Any,
) -> None:
    """Reaping takes a lapsed session at once (no other node reaps it again,
    no token takes it back meanwhile) and takes it out of its rooms' member
    lists at once: a node dying before its commit loses the leaves, never
    the lists, so no ghost stays in who and joins."""
    import time

    import broker._cluster as bc

    dead_backend = RedisBackend(redis_server.url, node="dead")
    dead = bc.Cluster(dead_backend, node="dead", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    backend = RedisBackend(redis_server.url, node="n1")
    cluster = bc.Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:2", timeout_s=3.0)
    r = redis_server.client()
    try:
        now = time.time()
        assert dead.create("ghost", "ghost", "tok", None, False, now)
        dead.joined("r", "ghost", "ghost", False)
        dead_backend.commit()
        record = bc.session_key("ghost")
        r.zadd(bc.LEASES, {record: now - 1})  # its node is gone: the lease lapsed
        core = Core(Config(), backend, directory=cluster)
        cluster._reap_due(now, core, Outbox())
        backend.discard()  # this node dies before its commit
        assert not r.exists(record) and r.zscore(bc.LEASES, record) is None
        assert cluster.members("r") == []  # no ghost
        assert cluster.take("ghost", "tok", None, now) is None  # nothing to take back
        cluster._reap_due(now + 2 * cluster.lease_s, core, Outbox())  # nothing to reap again
        assert not backend.ops
    finally:
        for c, b in ((dead, dead_backend), (cluster, backend)):
            c.ps.close()
            b.close()


@contextlib.contextmanager
def two_nodes(redis_server: Any) -> Iterator[tuple[Core, Core]]:
    """Two nodes' cores on one Redis, in this process (no sockets): what
    they do is what ``Core.handle`` and a commit do."""
    made = []
    try:
        cores = []
        for node in ("n1", "n2"):
            backend = RedisBackend(redis_server.url, node=node)
            cluster = Cluster(backend, node=node, endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
            made.append((backend, cluster))
            cores.append(Core(Config(), backend, directory=cluster))
        yield cores[0], cores[1]
    finally:
        for backend, cluster in made:
            cluster.ps.close()
            backend.close()


def _do(now: float) -> Callable[..., Any]:
    def do(core: Core, ident: bytes, req: Any) -> Any:
        out = Outbox()
        core.handle(ident, req, now, out, addr="127.0.0.1")
        core.store.commit()
        return decode_reply((out.free + out.replies)[0][1])

    return do


def test_every_session_is_looked_at_once_while_leases_are_renewed(redis_server: Any) -> None:
    """What a server ban looks through: every session, each once, though
    the nodes renew leases (and so reorder them) all the while."""
    import broker._cluster as bc

    backend = RedisBackend(redis_server.url, node="n1")
    cluster = bc.Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    r = redis_server.client()
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(2500):
            record = bc.session_key(f"u{i}")
            pipe.hset(record, mapping={"nick": f"u{i}", "node": "n2"})
            pipe.zadd(bc.LEASES, {record: 1000 + i})
        pipe.execute()
        seen = []
        for n, (key, rec) in enumerate(cluster.sessions(), 1):
            seen.append(key)
            assert rec.nick == key
            if n % 300 == 0:  # renewals: what was read goes to the end
                r.zadd(bc.LEASES, {bc.session_key(k): 10_000 + n for k in seen[-300:]})
        assert len(seen) == len(set(seen)) == 2500
    finally:
        cluster.ps.close()
        backend.close()


def test_a_lease_renewed_in_the_turn_that_made_it_is_not_taken_for_ended(
    redis_server: Any,
) -> None:
    """A lease renewed with the very deadline it was written with changes
    nothing (ZADD CH counts 0): the session is not ended for that (it was, on
    a loaded machine, when the upkeep ran in the turn of the session's hello)."""
    import messages as m

    backend = RedisBackend(redis_server.url, node="n1")
    cluster = Cluster(backend, node="n1", endpoint="tcp://127.0.0.1:1", timeout_s=3.0)
    try:
        core = Core(Config(), backend, directory=cluster)
        now = 1_795_521_600.0
        out = Outbox()
        core.handle(b"a", m.Hello(nick="alice"), now, out, addr="127.0.0.1")
        backend.commit()
        cluster._renew(now, core)  # the same now: the same deadline
        assert "alice" in core.nicks
        redis_server.client().zrem("zchat:{s}:leases", "zchat:{s}:u:alice")
        cluster._renew(now + 1, core)  # gone: ended elsewhere
        assert "alice" not in core.nicks
    finally:
        cluster.ps.close()
        backend.close()
