"""The broker core as a state machine: no sockets, time is an argument."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import messages as m
from broker import Config, Core, Outbox, Store, error_reply

T0 = 1_795_521_600.0  # 2026-11-24T12:00:00Z
_worlds: list[World] = []


@pytest.fixture(autouse=True)
def _close_worlds() -> Iterator[None]:
    yield
    while _worlds:
        _worlds.pop().store.close()


class World:
    """A core, its store, and a clock that moves only when told."""

    def __init__(self, store: Store | None = None, **config: Any) -> None:
        self.store = store or Store(":memory:")
        _worlds.append(self)  # closed after the test
        self.core = Core(Config(**config), self.store)
        self.now = T0
        self.published: list[Any] = []

    def send(self, ident: bytes, req: Any) -> list[tuple[bytes, Any]]:
        """One request, through the decoder as the shell does; returns the
        replies and pushes, remembers the events."""
        out = Outbox()
        try:
            req = m.decode_request(m.encode(req), max_text=self.core.config.max_text)
        except m.ProtocolError as err:
            out.reply(ident, error_reply(err))
        else:
            self.core.handle(ident, req, self.now, out)
        return self._flush(out)

    def _flush(self, out: Outbox) -> list[tuple[bytes, Any]]:
        self.store.commit()
        for topic, body in out.events:
            ev = m.decode_event(body)
            assert topic == m.room_topic(ev.room)
            self.published.append(ev)
        return [(to, m.decode_reply(frame)) for to, frame in out.free + out.replies + out.pushes]

    def ask(self, ident: bytes, req: Any) -> Any:
        """The one reply to ``ident``."""
        replies = [msg for to, msg in self.send(ident, req) if to == ident]
        assert len(replies) == 1, replies
        return replies[0]

    def hello(self, ident: bytes, nick: str, *rooms: str) -> m.Welcome:
        w = self.ask(ident, m.Hello(nick=nick))
        assert isinstance(w, m.Welcome), w
        for room in rooms:
            assert isinstance(self.ask(ident, m.Join(room=room)), m.Joined)
        return w

    def expire(self) -> list[tuple[bytes, Any]]:
        out = Outbox()
        self.core.expire(self.now, out)
        return self._flush(out)

    def seqs(self, room: str) -> list[int]:
        return [e.seq for e in self.published if getattr(e, "room", None) == room]


def code(reply: Any) -> str:
    assert isinstance(reply, m.Error), reply
    return reply.code


def test_hello_welcome_and_nick_rules() -> None:
    w = World(heartbeat_ms=1000, timeout_ms=5000)
    welcome = w.hello(b"a", "Alice")
    assert welcome.nick == "Alice" and welcome.heartbeat_ms == 1000 and welcome.timeout_ms == 5000
    assert welcome.server.epoch == w.core.epoch and welcome.server.store == w.store.store_id
    assert code(w.ask(b"b", m.Hello(nick="alice"))) == "nick_taken"
    again = w.ask(b"a", m.Hello(nick="Alice", id="2"))
    assert isinstance(again, m.Welcome) and again.token == welcome.token and again.id == "2"
    assert code(w.ask(b"a", m.Hello(nick="other"))) == "bad_request"
    assert code(w.ask(b"c", m.Say(room="general", text="hi", id="s"))) == "no_session"


def test_token_takes_over_without_leave_or_join() -> None:
    w = World()
    token = w.hello(b"old", "alice", "general").token
    before = len(w.published)
    assert code(w.ask(b"new", m.Hello(nick="alice", token="nope"))) == "nick_taken"
    assert w.ask(b"new", m.Hello(nick="alice", token=token)).token == token
    assert len(w.published) == before
    # The shell is told, for the private messages it holds back while the
    # store is full: they follow the session too.
    assert w.core.moved == {b"old": b"new"}
    pong = w.ask(b"new", m.Ping())
    assert pong.seqs == {"general": 1}
    assert w.ask(b"old", m.Ping()).seqs == {}  # the old connection has no session now


def test_join_part_and_membership() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.hello(b"b", "bob")
    joined = w.ask(b"b", m.Join(room="general"))
    assert joined.members == ["alice", "bob"] and joined.seq == 2
    again = w.ask(b"b", m.Join(room="general"))
    assert again.seq == 2 and w.seqs("general") == [1, 2]
    assert w.ask(b"b", m.Part(room="general", id="p")) == m.Parted(room="general", id="p")
    assert w.published[-1] == m.LeaveEvent(
        room="general", seq=3, ts=m.format_ts(T0), nick="bob", reason="part"
    )
    assert code(w.ask(b"b", m.Part(room="general"))) == "not_in_room"
    assert code(w.ask(b"b", m.Say(room="general", text="x"))) == "not_in_room"
    who = w.ask(b"b", m.Who(room="general"))
    assert [u.nick for u in who.users] == ["alice"]


def test_say_is_numbered_stamped_and_acked() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.now += 1.5
    ack = w.ask(b"a", m.Say(room="general", text="hi", id="x"))
    assert ack == m.Ack(room="general", seq=2, ts=m.format_ts(T0 + 1.5), id="x")
    assert w.published[-1] == m.MsgEvent(
        room="general", seq=2, ts=ack.ts, from_="alice", text="hi", id="x"
    )
    w.ask(b"a", m.Say(room="general", text="me", action=True))
    assert w.published[-1].action is True
    assert w.seqs("general") == [1, 2, 3]


def test_pm_is_pushed_not_published() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.hello(b"b", "bob")
    before = len(w.published)
    replies = w.send(b"a", m.Pm(to="BOB", text="psst", id="1"))
    assert (b"b", m.PmPush(from_="alice", to="bob", text="psst", ts=m.format_ts(T0))) in replies
    assert (b"a", m.Ack(to="bob", ts=m.format_ts(T0), id="1")) in replies
    assert len(w.published) == before
    assert code(w.ask(b"a", m.Pm(to="carol", text="x"))) == "no_such_user"


def test_repeated_ids_are_answered_with_the_first_ack() -> None:
    w = World(timeout_ms=3_600_000)
    w.hello(b"a", "alice", "general")
    w.hello(b"b", "bob")
    first = w.ask(b"a", m.Say(room="general", text="once", id="d"))
    w.now += 5
    assert w.ask(b"a", m.Say(room="general", text="once", id="d")) == first
    assert [e.text for e in w.published if isinstance(e, m.MsgEvent)] == ["once"]
    pm = w.send(b"a", m.Pm(to="bob", text="x", id="p"))
    again = w.send(b"a", m.Pm(to="bob", text="x", id="p"))
    assert [r for r in again if r[0] == b"b"] == []  # not pushed twice
    assert [r for r in again if r[0] == b"a"] == [r for r in pm if r[0] == b"a"]
    # Another nick may use the same id.
    w.hello(b"c", "carol", "general")
    assert w.ask(b"c", m.Say(room="general", text="mine", id="d")).seq != first.seq
    # After ten minutes the id may be used again.
    w.now += 601
    w.expire()
    w.ask(b"a", m.Ping())
    assert w.ask(b"a", m.Say(room="general", text="once", id="d")).seq > first.seq


def test_dedup_and_seq_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    w = World(Store(path))
    w.hello(b"a", "alice", "general")
    ack = w.ask(b"a", m.Say(room="general", text="stored", id="s1"))
    pm_ack = w.send(b"a", m.Pm(to="alice", text="self", id="p1"))
    w.ask(b"a", m.Topic(room="general", topic="kept"))
    w.store.close()
    # A new broker on the same store: new epoch, same numbering, same ids.
    w2 = World(Store(path))
    assert w2.core.epoch != w.core.epoch and w2.store.store_id == w.store.store_id
    assert w2.core.load_recent(T0 + 10) == 2
    w2.now = T0 + 10
    w2.hello(b"a2", "alice")
    joined = w2.ask(b"a2", m.Join(room="general"))
    assert joined.seq == 4 and joined.topic == "kept"
    assert w2.ask(b"a2", m.Say(room="general", text="stored", id="s1")) == ack
    first_pm_ack = [msg for _, msg in pm_ack if isinstance(msg, m.Ack)]
    again = [msg for _, msg in w2.send(b"a2", m.Pm(to="alice", text="self", id="p1"))]
    assert again == first_pm_ack  # answered from the store: no second push
    events, more = w2.store.history("general", after=None, before=None, limit=50)
    assert [m.decode_event(e).seq for e in events] == [1, 2, 3, 4] and not more


def test_rate_limit_with_a_fake_clock() -> None:
    w = World(rate=2.0, burst=4)
    w.hello(b"a", "alice", "general")  # the join costs a token
    replies = [w.ask(b"a", m.Say(room="general", text=str(i))) for i in range(4)]
    assert [type(r).__name__ for r in replies] == ["Ack", "Ack", "Ack", "Error"]
    assert replies[3].code == "rate_limited" and replies[3].retry_ms == 500
    assert w.seqs("general") == [1, 2, 3, 4]  # the refused one published nothing
    # Pings cost nothing; a join does, even of a room one is in (its
    # answer lists the members: work).
    assert isinstance(w.ask(b"a", m.Ping()), m.Pong)
    assert code(w.ask(b"a", m.Join(room="general"))) == "rate_limited"
    assert code(w.ask(b"a", m.Join(room="dev"))) == "rate_limited"
    w.now += 0.5
    assert isinstance(w.ask(b"a", m.Say(room="general", text="later")), m.Ack)
    assert code(w.ask(b"a", m.Say(room="general", text="too soon"))) == "rate_limited"
    # Reading costs too: history, who, rooms and commands make work.
    w.now += 0.5
    assert isinstance(w.ask(b"a", m.History(room="general")), m.HistoryReply)
    assert code(w.ask(b"a", m.Who())) == "rate_limited"


def test_rate_zero_is_unlimited() -> None:
    w = World(rate=0, burst=1)
    w.hello(b"a", "alice", "general")
    assert all(
        isinstance(w.ask(b"a", m.Say(room="general", text=str(i))), m.Ack) for i in range(100)
    )


def test_nick_change_publishes_in_every_room() -> None:
    w = World()
    w.hello(b"a", "alice", "general", "dev")
    w.hello(b"b", "bob")
    assert code(w.ask(b"a", m.Nick(nick="BOB"))) == "nick_taken"
    assert w.ask(b"a", m.Nick(nick="alicia")) == m.NickReply(old="alice", new="alicia")
    nick_events = [(e.room, e.old, e.new) for e in w.published if isinstance(e, m.NickEvent)]
    assert nick_events == [("general", "alice", "alicia"), ("dev", "alice", "alicia")]
    assert isinstance(w.ask(b"c", m.Hello(nick="alice")), m.Welcome)  # the old nick is free
    assert w.ask(b"a", m.Nick(nick="ALICIA")).new == "ALICIA"  # a change of case is allowed


def test_topic_rooms_and_history() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.hello(b"b", "bob", "dev")
    assert code(w.ask(b"a", m.Topic(room="dev", topic="x"))) == "not_in_room"
    ack = w.ask(b"b", m.Topic(room="dev", topic="ship"))
    assert isinstance(ack, m.Ack) and ack.room == "dev"
    rooms = w.ask(b"a", m.Rooms())
    assert [(r.name, r.topic, r.members) for r in rooms.rooms] == [
        ("dev", "ship", ["bob"]),
        ("general", "", ["alice"]),
    ]
    for i in range(10):
        w.ask(b"a", m.Say(room="general", text=str(i)))
    h = w.ask(b"a", m.History(room="general", limit=3))
    assert [msgspec.json.decode(e)["seq"] for e in h.events] == [9, 10, 11] and h.more
    h = w.ask(b"a", m.History(room="general", after=9))
    assert [msgspec.json.decode(e)["seq"] for e in h.events] == [10, 11] and not h.more
    h = w.ask(b"a", m.History(room="general", before=3))
    assert [msgspec.json.decode(e)["seq"] for e in h.events] == [1, 2] and not h.more


def test_silent_sessions_expire_with_a_timeout_leave() -> None:
    w = World(timeout_ms=10_000)
    w.hello(b"a", "alice", "general")
    w.hello(b"b", "bob", "general")
    w.now += 6
    w.ask(b"b", m.Ping())  # bob stays alive, alice is silent
    w.now += 5
    replies = w.expire()
    assert replies == [(b"a", m.Notice(text="you were disconnected for inactivity"))]
    leave = w.published[-1]
    assert isinstance(leave, m.LeaveEvent) and (leave.nick, leave.reason) == ("alice", "timeout")
    assert [u.nick for u in w.ask(b"b", m.Who()).users] == ["bob"]
    assert code(w.ask(b"a", m.Say(room="general", text="x"))) == "no_session"
    assert w.core.next_expiry() == pytest.approx(T0 + 6 + 10)


def test_bye_and_ping_without_session() -> None:
    w = World()
    w.hello(b"a", "alice", "general", "dev")
    assert w.ask(b"a", m.Bye(id="b")) == m.ByeReply(id="b")
    leaves = [(e.room, e.reason) for e in w.published if isinstance(e, m.LeaveEvent)]
    assert leaves == [("general", "quit"), ("dev", "quit")]
    pong = w.ask(b"a", m.Ping(id="p"))
    assert pong.seqs == {} and pong.epoch == w.core.epoch and pong.id == "p"


def test_who_reports_idle_time() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.now += 3
    w.hello(b"b", "bob")
    w.ask(b"a", m.Ping())  # pings keep a session alive but do not make it active
    users = w.ask(b"b", m.Who(room="general")).users
    assert users == [m.WhoUser(nick="alice", idle_ms=3000, role="owner")]  # (she made the room)


def test_offers_and_commands() -> None:
    w = World()
    w.hello(b"a", "dice", "general")
    w.hello(b"b", "human", "general")
    spec = m.CommandSpec(name="roll", usage="!roll NdM", help="dice")
    assert w.ask(b"a", m.Offer(commands=[spec])) == m.Offered(count=1)
    found = w.ask(b"b", m.Commands(room="general"))
    assert found.commands == [
        m.CommandInfo(nick="dice", name="roll", usage="!roll NdM", help="dice")
    ]
    assert w.ask(b"b", m.Commands(room="dev")).commands == []
    w.ask(b"a", m.Bye())
    assert w.ask(b"b", m.Commands()).commands == []


def test_recent_acks_expire_by_group_and_never_early() -> None:
    from broker._recent import DEDUP_S, Recent, dedup_key

    r = Recent(Config().dedup_max)
    r.add(dedup_key("alice", "1"), b"a1", T0)
    r.add(dedup_key("alice", "2"), b"a2", T0)  # same batch, same group
    r.add(dedup_key("bob", "1"), b"b1", T0 + 5)
    r.add(dedup_key("bob", "2"), b"b2", T0 + 1)  # the clock stepped back
    r.expire(T0 + DEDUP_S - 0.001)
    assert len(r) == 4
    r.expire(T0 + DEDUP_S)
    assert sorted(r.acks.values()) == [b"b1", b"b2"]
    # bob/2 waits for the group before it: remembered too long, not too short.
    r.expire(T0 + 1 + DEDUP_S)
    assert len(r) == 2
    r.expire(T0 + 5 + DEDUP_S)
    assert len(r) == 0 and dedup_key("alice", "1") not in r
    # A nick cannot hold a NUL, so "al" + "\0ice..." never meets "alice".
    assert dedup_key("al", "ice") != dedup_key("alice", "")


def test_a_private_message_the_router_could_not_deliver_waits_for_its_session() -> None:
    """The shell hands back a push it could not send (peer gone or full);
    the recipient gets it when next heard from, on the same connection or
    on a new one that takes the session over with its token."""
    w = World()
    w.hello(b"a", "alice")
    token = w.hello(b"b", "bob").token
    out = Outbox()
    w.core.handle(b"a", m.Pm(to="bob", text="one", id="1"), w.now, out)
    [(to, push)] = out.pushes
    assert to == b"b" and w.core.hold(to, push) == "bob"  # the ROUTER said EHOSTUNREACH
    assert w.core.hold(b"nobody", push) is None
    # bob's next request brings the held message along.
    replies = w.send(b"b", m.Ping())
    assert [(to, type(r).__name__) for to, r in replies] == [(b"b", "Pong"), (b"b", "PmPush")]
    assert replies[1][1] == m.PmPush(from_="alice", to="bob", text="one", ts=m.format_ts(T0))
    assert [type(r).__name__ for _, r in w.send(b"b", m.Ping())] == ["Pong"]  # given once
    # Held again, then bob comes back on a new connection with his token.
    out = Outbox()
    w.core.handle(b"a", m.Pm(to="bob", text="two", id="2"), w.now, out)
    w.core.hold(*out.pushes[0])
    replies = w.send(b"b2", m.Hello(nick="bob", token=token))
    assert [(to, type(r).__name__) for to, r in replies] == [(b"b2", "Welcome"), (b"b2", "PmPush")]
    assert replies[1][1].text == "two"


def test_recent_acks_stay_under_their_limit_oldest_first() -> None:
    from broker._recent import Recent, dedup_key

    r = Recent(max_entries=3)
    for i in range(5):  # five batches of one, a second apart
        r.add(dedup_key("alice", str(i)), b"ack%d" % i, T0 + i)
    r.expire(T0 + 5)  # all young; two over the limit
    assert sorted(r.acks.values()) == [b"ack2", b"ack3", b"ack4"]
    assert r.forgotten_early == 2


def test_a_resend_past_the_dedup_limit_is_published_again_not_lost() -> None:
    w = World(dedup_max=1)
    w.hello(b"a", "alice", "general")
    first = w.ask(b"a", m.Say(room="general", text="one", id="1"))
    w.now += 1  # a later batch
    w.ask(b"a", m.Say(room="general", text="two", id="2"))
    w.expire()
    assert w.ask(b"a", m.Say(room="general", text="two", id="2")).seq == first.seq + 1
    again = w.ask(b"a", m.Say(room="general", text="one", id="1"))
    assert again.seq > first.seq and w.core.recent.forgotten_early == 1


def test_history_older_than_the_retention_goes_and_numbering_goes_on() -> None:
    w = World(retain_days=1 / 24)
    w.hello(b"a", "alice", "general")
    for i in range(3):
        w.ask(b"a", m.Say(room="general", text=f"old {i}"))
    w.now += 3600 + 61
    last = w.ask(b"a", m.Say(room="general", text="new"))
    w.store.trim(w.now - w.core.config.retain_s)  # the shell's housekeeping
    h = w.ask(b"a", m.History(room="general"))
    assert [msgspec.json.decode(e)["seq"] for e in h.events] == [last.seq]
    # What a client missing seq 2 learns: the store starts past it, for good.
    gone = w.ask(b"a", m.History(room="general", after=1))
    assert gone.first == last.seq and h.first == last.seq
    assert w.ask(b"a", m.History(room="nowhere")).first is None
    assert w.ask(b"a", m.Say(room="general", text="next")).seq == last.seq + 1


def test_a_private_message_follows_a_session_taken_over_in_the_same_batch() -> None:
    w = World()
    w.hello(b"a", "alice")
    token = w.hello(b"b", "bob").token
    out = Outbox()
    handle = w.core.batch(w.now, out)
    handle(b"a", m.Pm(to="bob", text="hi", id="1"))
    handle(b"b2", m.Hello(nick="bob", token=token))  # bob is back on a new connection
    assert [to for to, _ in out.pushes] == [b"b2"]


# ------------------------------------------------------------ issue 11 bounds


def hello_from(w: World, ident: bytes, nick: str, addr: str, *rooms: str) -> Any:
    out = Outbox()
    w.core.handle(ident, m.Hello(nick=nick), w.now, out, addr=addr)
    replies = [msg for to, msg in w._flush(out) if to == ident]
    for room in rooms:
        assert isinstance(w.ask(ident, m.Join(room=room)), m.Joined)
    return replies[0]


def test_sessions_of_an_address_share_a_bucket() -> None:
    w = World(rate=100.0, burst=100, address_rate=1.0, address_burst=10)
    hello_from(w, b"a", "alice", "10.0.0.1", "general")
    hello_from(w, b"b", "bob", "10.0.0.1", "general")
    hello_from(w, b"c", "carol", "10.0.0.2", "general")
    said = [w.ask(ident, m.Say(room="general", text="x")) for ident in (b"a", b"b") * 6]
    # 10 for both together, less the two joins.
    assert sum(isinstance(r, m.Ack) for r in said) == 8
    refused = [r for r in said if isinstance(r, m.Error)]
    assert refused[0].code == "rate_limited" and "your address" in refused[0].message
    assert isinstance(w.ask(b"c", m.Say(room="general", text="other address")), m.Ack)


def test_a_new_session_from_an_address_starts_where_the_last_left() -> None:
    w = World(rate=2.0, burst=10)
    hello_from(w, b"a", "alice", "10.0.0.1", "general")
    for _ in range(9):
        assert isinstance(w.ask(b"a", m.Say(room="general", text="x")), m.Ack)
    w.ask(b"a", m.Bye())
    hello_from(w, b"a2", "alice2", "10.0.0.1")  # nothing left: even a join waits
    assert code(w.ask(b"a2", m.Join(room="general"))) == "rate_limited"
    hello_from(w, b"b", "bob", "10.0.0.9")  # another address has its own
    assert isinstance(w.ask(b"b", m.Join(room="general")), m.Joined)
    w.now += 1.0  # two tokens back
    assert isinstance(w.ask(b"a2", m.Join(room="general")), m.Joined)
    # An address with no session is forgotten once its buckets would be full.
    for ident in (b"a2", b"b"):
        w.ask(ident, m.Bye())
    w.expire()
    assert set(w.core.addresses) == {"10.0.0.1", "10.0.0.9"}
    w.now += 60
    w.expire()
    assert w.core.addresses == {}


def test_new_sessions_per_address_and_sessions_in_all() -> None:
    w = World(hello_rate=1.0, hello_burst=3, sessions_per_address=4, max_sessions=6)
    for i in range(3):
        assert isinstance(hello_from(w, b"%d" % i, f"n{i}", "10.0.0.1"), m.Welcome)
    assert hello_from(w, b"3", "n3", "10.0.0.1").code == "rate_limited"
    w.now += 1.0
    assert isinstance(hello_from(w, b"3", "n3", "10.0.0.1"), m.Welcome)
    w.now += 10.0
    assert hello_from(w, b"4", "n4", "10.0.0.1").code == "limit_reached"
    assert isinstance(hello_from(w, b"5", "m5", "10.0.0.2"), m.Welcome)
    assert isinstance(hello_from(w, b"6", "m6", "10.0.0.2"), m.Welcome)
    assert hello_from(w, b"7", "m7", "10.0.0.3").code == "limit_reached"  # six in all


def test_rooms_are_bounded_and_an_empty_room_is_forgotten() -> None:
    w = World(rooms_per_session=2, max_rooms=3, rate=0)
    w.hello(b"a", "alice", "one", "two")
    assert code(w.ask(b"a", m.Join(room="three"))) == "limit_reached"
    w.hello(b"b", "bob", "three")
    assert code(w.ask(b"b", m.Join(room="four"))) == "limit_reached"  # three in all
    w.ask(b"a", m.Topic(room="one", topic="kept"))
    w.ask(b"a", m.Part(room="one"))
    assert "one" not in w.core.rooms
    again = w.ask(b"b", m.Join(room="one"))
    assert (again.seq, again.topic) == (4, "kept")  # join, topic, leave, this join


def test_private_messages_held_for_an_absent_recipient_are_bounded() -> None:
    w = World(held_pm_kb=1, rate=0)
    w.hello(b"a", "alice")
    w.hello(b"b", "bob")
    pushed = [w.ask(b"a", m.Pm(to="bob", text="y" * 300, id=str(i))) for i in range(2)]
    assert all(isinstance(r, m.Ack) for r in pushed)
    # The shell could not deliver them: bob's connection is gone.
    push = m.encode(m.PmPush(from_="alice", to="bob", text="y" * 380, ts=m.format_ts(T0)))
    for _ in range(2):
        w.core.hold(b"b", push)
    refused = w.ask(b"a", m.Pm(to="bob", text="y" * 300, id="3"))
    assert refused.code == "unavailable" and refused.retry_ms > 0
    assert w.core.held_total == 2 * len(push)
    back = w.send(b"b", m.Ping())  # bob is back: what was held goes to him
    assert [type(msg).__name__ for _, msg in back] == ["Pong", "PmPush", "PmPush"]
    assert w.core.held_total == 0
    assert isinstance(w.ask(b"a", m.Pm(to="bob", text="again", id="4")), m.Ack)


def test_a_read_only_store_refuses_writes_and_answers_reads() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    w.core.read_only = True
    for req in (
        m.Say(room="general", text="x"),
        m.Join(room="dev"),
        m.Part(room="general"),
        m.Nick(nick="alicia"),
        m.Topic(room="general", topic="t"),
        m.Bye(),
    ):
        r = w.ask(b"a", req)
        assert r.code == "unavailable" and r.retry_ms > 0, req
    assert isinstance(w.ask(b"a", m.Who(room="general")), m.WhoReply)
    assert isinstance(w.ask(b"a", m.History(room="general")), m.HistoryReply)
    w.now += 60
    assert w.expire() == [] and b"a" in w.core.sessions  # no timeouts meanwhile
    w.core.read_only = False
    assert isinstance(w.ask(b"a", m.Say(room="general", text="x")), m.Ack)


def test_nicks_that_look_alike_clash() -> None:
    w = World()
    w.hello(b"a", "alice")
    for nick in ("aIice", "a1ice", "ALlCE"):
        r = w.ask(b"b", m.Hello(nick=nick))
        assert r.code == "nick_taken" and "alice" in r.message
    w.hello(b"b", "rnary")
    assert code(w.ask(b"c", m.Hello(nick="mary"))) == "nick_taken"
    assert code(w.ask(b"b", m.Nick(nick="aIice"))) == "nick_taken"
    assert isinstance(w.ask(b"a", m.Nick(nick="ALICE")), m.NickReply)  # one's own


def test_long_lists_come_in_pages() -> None:
    w = World(max_reply_bytes=1536, rate=0, sessions_per_address=1000)
    for i in range(150):
        w.hello(b"%d" % i, f"user{i:03d}", "general")
    seen: list[str] = []
    after = None
    while True:
        page = w.ask(b"0", m.Who(room="general", after=after))
        seen += [u.nick for u in page.users]
        if not page.more:
            break
        after = page.users[-1].nick.lower()
    assert seen == [f"user{i:03d}" for i in range(150)]
    assert len(msgspec.json.encode(page)) <= 1536
    joined = w.ask(b"0", m.Join(room="general"))
    assert joined.member_count == 150 and 0 < len(joined.members) < 150
    for i in range(30):
        w.ask(b"0", m.Say(room="general", text=f"{i} " + "z" * 200))
    h = w.ask(b"0", m.History(room="general", limit=500))
    assert h.more and 0 < len(h.events) < 30 and h.events[-1]
    rooms = w.ask(b"0", m.Rooms())
    assert rooms.rooms[0].member_count == 150 and len(rooms.rooms[0].members) == 50


def test_the_address_that_limits_count_is_the_ip_or_an_ipv6_slash_64() -> None:
    from broker._config import address_key

    assert address_key("10.1.2.3") == "10.1.2.3"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:abcd") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"


# ---------------------------------------------------------------- issue 13


def test_a_leave_carries_what_the_leaver_typed() -> None:
    w = World()
    w.hello(b"a", "alice", "general", "ops")
    w.ask(b"a", m.Part(room="ops", reason="lunch break  "))
    assert w.published[-1].text == "lunch break" and w.published[-1].reason == "part"
    w.ask(b"a", m.Bye(reason="gone home"))
    assert (w.published[-1].reason, w.published[-1].text) == ("quit", "gone home")
    w.hello(b"b", "bob", "general")
    assert code(w.ask(b"b", m.Part(room="general", reason="bad \x1b[2J"))) == "text_invalid"
    assert code(w.ask(b"b", m.Bye(reason="x" * 301))) == "text_invalid"
    w.ask(b"b", m.Part(room="general", reason="   "))
    assert w.published[-1].text is None


def test_a_quiet_session_publishes_no_presence_and_is_listed_apart() -> None:
    w = World()
    w.hello(b"a", "alice", "general")
    before = len(w.published)
    assert isinstance(w.ask(b"t", m.Hello(nick="tail-1", quiet=True)), m.Welcome)
    joined = w.ask(b"t", m.Join(room="general"))
    assert joined.seq == 1 and joined.members == ["alice"]  # where it came in; not a member
    assert len(w.published) == before
    assert isinstance(w.ask(b"t", m.Say(room="general", text="deploy done")), m.Ack)
    assert w.published[-1].from_ == "tail-1"  # what it says is published
    who = w.ask(b"a", m.Who(room="general"))
    assert [(u.nick, u.quiet) for u in who.users] == [("alice", False), ("tail-1", True)]
    assert w.ask(b"a", m.Rooms()).rooms[0].members == ["alice"]
    w.ask(b"t", m.Nick(nick="tail-2"))
    w.ask(b"t", m.Bye())
    assert [type(e).__name__ for e in w.published[before:]] == ["MsgEvent"]


def test_nick_claims_are_bounded_in_all_and_lapsed_ones_make_room() -> None:
    """Keys cost nothing to make: a key's five claims times as many keys as
    one likes had no bound. Past ``max_claims`` nicks are used unclaimed;
    claims that lapsed make room once the cap is reached."""
    from broker._claims import DAY_S, Claims

    store = Store(":memory:")
    try:
        claims = Claims(store, per_key=2, lapse_days=1, bounded=True, max_claims=3)
        for i in range(3):
            claims.use(f"nick{i}", f"key{i}", T0)
        claims.use("nick3", "key3", T0)  # past the cap: used unclaimed
        assert len(claims) == 3 and claims.owner("nick3", T0) is None
        assert claims.check("nick3", "anyone", T0)
        # A day and a bit later nick1 and nick2 were never used again, but
        # nick0 was: the two lapsed claims go when the cap is next reached.
        later = T0 + DAY_S + 60
        claims.use("nick0", "key0", T0 + DAY_S - 60)
        claims.use("nick4", "key4", later)
        assert claims.owner("nick4", later) == "key4"
        assert claims.owner("nick0", later) == "key0"
        assert len(claims) == 2 and set(claims.count) == {"key0", "key4"}
        assert set(store.nick_claims()) == {"nick0", "nick4"}
    finally:
        store.close()


def test_once_a_write_failed_in_a_batch_its_later_writes_are_refused() -> None:
    """A full disk fails a flush mid-batch; the store's answers then miss
    what the batch made. A forgotten room's last seq read from it would be
    used again, and the retried commit would stop the broker."""
    import sqlite3

    w = World()
    w.hello(b"a", "alice", "r")
    w.hello(b"b", "bob")
    out = Outbox()
    w.core.handle(b"a", m.Part(room="r", id="p"), w.now, out)  # #r is forgotten; its leave waits
    w.store._fail(sqlite3.OperationalError("database or disk is full"))  # as a flush would
    w.core.handle(b"b", m.Join(room="r", id="j"), w.now, out)
    replies = {to: m.decode_reply(frame) for to, frame in out.free + out.replies}
    assert code(replies[b"b"]) == "unavailable"
    w.store.commit()  # room again: the batch's leave is written, as seq 2
    assert isinstance(w.ask(b"b", m.Join(room="r")), m.Joined)
    events, _ = w.store.history("r", after=0, before=None, limit=10)
    assert [m.decode_event(e).seq for e in events] == [1, 2, 3]


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b"]),
            st.sampled_from(["general", "dev", "nowhere"]),
            st.sampled_from([None, "1", "2", "3"]),
            st.floats(min_value=0, max_value=0.6),
        ),
        max_size=40,
    )
)
def test_a_say_answers_alike_on_the_batch_path_and_the_general_one(
    says: list[tuple[bytes, str, str | None, float]],
) -> None:
    """The batch's own path for say (Core.batch) is a copy, written out for
    speed, of the handler every other request goes through: same replies,
    events and buckets, resends, refusals and rate limits included."""
    worlds = [World(rate=5.0, burst=3, address_rate=8.0, address_burst=5) for _ in range(2)]
    worlds[1].core.fast_say = False
    seen: list[list[Any]] = [[], []]
    for w, log in zip(worlds, seen, strict=True):
        w.hello(b"a", "alice", "general")
        w.hello(b"b", "bob", "general", "dev")
        w.now += 10
        for ident, room, rid, dt in says:
            w.now += dt
            log.append(w.send(ident, m.Say(room=room, text="hi", id=rid)))
        log.append(w.published)
    assert seen[0] == seen[1]
