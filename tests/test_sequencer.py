"""The client's sequencer as a pure state machine: no sockets, no clock.

Examples first, each one input at a time; then a hypothesis state machine
whose model is the broker's log of one room, against which every delivery
is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from client._sequencer import Fetch, Gap, Sequencer, Step


@dataclass(frozen=True)
class Ev:
    """An event of ``room`` numbered ``seq`` by the store ``store``."""

    room: str
    seq: int
    store: int = 1


def evs(first: int, last: int, room: str = "general", store: int = 1) -> list[Ev]:
    return [Ev(room, s, store) for s in range(first, last + 1)]


def seqs(step: Step[Ev]) -> list[int]:
    return [e.seq for e in step.deliver]


def joined_at(seq: int, room: str = "general") -> Sequencer[Ev]:
    """A sequencer following ``room``, placed by a joined reply at ``seq``."""
    s: Sequencer[Ev] = Sequencer()
    s.track(room)
    assert s.joined(room, seq) == Step()
    return s


# -------------------------------------------------------------- examples


def test_in_order_events_are_delivered_and_repeats_dropped() -> None:
    s = joined_at(5)
    assert seqs(s.event(Ev("general", 5))) == [5]
    assert seqs(s.event(Ev("general", 6))) == [6]
    assert s.event(Ev("general", 6)) == Step() and s.event(Ev("general", 2)) == Step()
    assert s.duplicates == 2 and s.last("general") == 6


def test_events_before_the_joined_reply_wait_for_it() -> None:
    s: Sequencer[Ev] = Sequencer()
    s.track("general")
    for seq in (3, 4, 5, 6):  # 3 and 4 are from before our join (5)
        assert s.event(Ev("general", seq)) == Step()
    assert s.last("general") is None
    assert seqs(s.joined("general", 5)) == [5, 6]


def test_a_quiet_join_comes_in_after_the_last_event() -> None:
    """A quiet session's join makes no event: joined names the room's last
    seq, which is before it came, not its own."""
    s: Sequencer[Ev] = Sequencer()
    s.track("general")
    for seq in (4, 5, 6):
        assert s.event(Ev("general", seq)) == Step()
    assert seqs(s.joined("general", 5, own_event=False)) == [6]
    assert s.pong({"general": 6}) == Step() and s.pong({"general": 6}) == Step()


def test_other_rooms_and_forgotten_rooms_are_ignored() -> None:
    s = joined_at(1)
    assert s.event(Ev("dev", 1)) == Step()
    fetch = s.event(Ev("general", 3)).fetch[0]
    s.forget("general")
    assert s.page(fetch, evs(2, 3), more=False, first=1) == Step()
    assert s.last("general") is None and s.caught_up("general", 99)


def test_a_hole_is_fetched_once_and_filled_from_history() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    step = s.event(Ev("general", 4))
    assert step.fetch == [Fetch("general", after=1, token=1)] and not step.deliver
    # More live events past the hole: held, and no second fetch.
    assert s.event(Ev("general", 5)) == Step() and s.event(Ev("general", 7)) == Step()
    step = s.page(step.fetch[0], evs(2, 7), more=False, first=1)
    assert seqs(step) == [2, 3, 4, 5, 6, 7]
    assert step.repaired == 3 and step.fetch == [] and step.gaps == []  # 2, 3 and 6
    assert s.caught_up("general", 7)


def test_a_page_of_events_already_delivered_skips_nothing() -> None:
    """The bug of issue 12: a page whose events were all delivered already
    (by live events meanwhile) while later ones are held is no proof that
    the hole is gone: the sequencer fetches on from where it is."""
    s = joined_at(1)
    s.event(Ev("general", 1))
    fetch = s.event(Ev("general", 600)).fetch[0]
    for seq in range(2, 502):  # PUB delivers these after all
        s.event(Ev("general", seq))
    step = s.page(fetch, evs(2, 501), more=True, first=1)
    assert step.deliver == [] and step.gaps == []
    assert step.fetch == [Fetch("general", after=501, token=2)]
    step = s.page(step.fetch[0], evs(502, 600), more=False, first=1)
    assert seqs(step) == list(range(502, 601)) and step.gaps == []


def test_an_empty_or_short_page_proves_nothing() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    fetch = s.event(Ev("general", 9)).fetch[0]
    # A broker that just restarted answers with nothing: nothing is skipped,
    # and nothing is asked again until there is news.
    assert s.page(fetch, [], more=False, first=None) == Step()
    assert s.page(fetch, evs(2, 8), more=False, first=1) == Step()  # not current any more
    assert s.last("general") == 1
    retry = s.pong({"general": 9}).fetch
    assert retry == [Fetch("general", after=1, token=2)]
    # A short page with more: fetch on at once.
    step = s.page(retry[0], evs(2, 3), more=True, first=1)
    assert seqs(step) == [2, 3] and step.fetch == [Fetch("general", after=3, token=3)]
    step = s.page(step.fetch[0], evs(4, 9), more=False, first=1)
    assert seqs(step) == [4, 5, 6, 7, 8, 9] and step.gaps == []


def test_a_hole_the_store_no_longer_holds_is_skipped_with_proof() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    fetch = s.event(Ev("general", 300)).fetch[0]
    s.event(Ev("general", 301))
    step = s.page(fetch, evs(250, 260), more=True, first=250)
    assert step.gaps == [Gap("general", 2, 249)] and step.gaps[0].count == 248
    assert seqs(step) == list(range(250, 261))
    assert step.fetch == [Fetch("general", after=260, token=2)]


def test_a_pong_ahead_is_a_claim_until_the_next_pong() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    assert s.pong({"general": 3}) == Step()  # PUB is just behind
    s.event(Ev("general", 2))
    assert s.pong({"general": 4}).fetch == [Fetch("general", after=2, token=1)]
    s2 = joined_at(1)
    s2.event(Ev("general", 1))
    s2.pong({"general": 3})
    s2.event(Ev("general", 2))
    s2.event(Ev("general", 3))
    assert s2.pong({"general": 3}) == Step()


def test_an_own_join_event_still_missing_at_the_next_pong_is_fetched() -> None:
    s = joined_at(7)
    assert s.pong({"general": 7}).fetch == [Fetch("general", after=6, token=1)]
    s2 = joined_at(7)
    s2.event(Ev("general", 7))
    assert s2.pong({"general": 7}) == Step()


def test_a_restart_on_the_same_store_rejoins_and_fetches_what_was_missed() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    old = s.event(Ev("general", 5)).fetch[0]
    assert s.reconnected(same_store=True) == Step()
    # Events of the new broker life come before the rejoin: held, no fetch.
    assert s.event(Ev("general", 9)) == Step()
    step = s.joined("general", 8)
    assert step.fetch == [Fetch("general", after=1, token=2)]
    assert s.page(old, evs(2, 5), more=False, first=1) == Step()  # made before: ignored
    step = s.page(step.fetch[0], evs(2, 9), more=False, first=1)
    assert seqs(step) == list(range(2, 10))


def test_a_lost_store_starts_numbering_again_at_the_rejoin() -> None:
    s = joined_at(1)
    for seq in (1, 2, 3):
        s.event(Ev("general", seq))
    fetch = s.event(Ev("general", 6)).fetch[0]
    s.reconnected(same_store=False)
    assert s.last("general") is None
    assert s.event(Ev("general", 2, store=2)) == Step()  # new numbering, held
    assert seqs(s.joined("general", 2)) == [2]
    assert s.page(fetch, evs(1, 2, store=2), more=False, first=1) == Step()
    assert seqs(s.event(Ev("general", 3, store=2))) == [3]


def test_a_broker_that_names_no_store_is_judged_by_its_numbering() -> None:
    s = joined_at(1)
    for seq in (1, 2, 3):
        s.event(Ev("general", seq))
    s.reconnected(same_store=None)
    assert s.joined("general", 2) == Step()  # went back: a new numbering
    assert s.last("general") == 1
    s.reconnected(same_store=None)
    assert s.joined("general", 9).fetch == [Fetch("general", after=1, token=1)]


def test_an_abandoned_fetch_is_asked_again_on_news() -> None:
    s = joined_at(1)
    s.event(Ev("general", 1))
    fetch = s.event(Ev("general", 3)).fetch[0]
    assert s.abandon(fetch) == Step()
    assert s.event(Ev("general", 3)) == Step()  # a repeat is no news
    assert s.pong({"general": 3}).fetch == [Fetch("general", after=1, token=2)]


def test_rooms_are_repaired_independently() -> None:
    s = joined_at(1)
    s.track("dev")
    s.joined("dev", 1)
    a = s.event(Ev("general", 3)).fetch
    b = s.event(Ev("dev", 4)).fetch
    assert [f.room for f in a + b] == ["general", "dev"]
    assert seqs(s.page(b[0], evs(1, 4, room="dev"), more=False, first=1)) == [1, 2, 3, 4]
    assert s.last("general") == 0


# ---------------------------------------------------------------- model

ROOM = "general"


class BrokerLogMachine(RuleBasedStateMachine):
    """The broker's log of one room against what the sequencer delivers.

    The broker appends events and publishes them; live events arrive in any
    order, some twice, some never; fetches are answered by pages of any
    size, delivered late or not at all; the broker restarts (same store, or
    a lost one numbering from 1 again) and the client reconnects and
    rejoins later; retention drops old events; pongs report a recent seq.
    Every step, what was delivered must be the log, in order, each once,
    skipping only what a page's ``first`` proved gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sq: Sequencer[Ev] = Sequencer()
        self.sq.track(ROOM)
        # The broker.
        self.store = 1
        self.life = 1
        self.size = 0  # events in the current store: seq 1..size
        self.first: int | None = None  # the oldest it still holds
        self.member = False  # the client's session is in the room
        # Between them.
        self.live: list[Ev] = []  # published, not received yet
        self.fetches: list[tuple[Fetch, int]] = []  # asked, with the store asked
        self.replies: list[tuple[Fetch, list[Ev], bool, int | None]] = []
        self.joining: tuple[int, int] | None = None  # (life, seq) of a joined reply
        # The client.
        self.client_store = 1
        self.client_life = 1
        self.received: list[Ev] = []
        self.current: Fetch | None = None  # the sequencer's fetch in flight
        self.placed = False  # a joined reply came since the last reconnect
        self.start: int | None = None  # where the client came in
        self.last: int | None = None  # what the sequencer must say its last is
        self.delivered: list[Ev] = []

    @initialize(before=st.integers(0, 4))
    def subscribe_and_join(self, before: int) -> None:
        self.size = before  # not published to us: we were not subscribed
        self.first = 1 if before else None
        self.join()

    # ------------------------------------------------------ the checks

    def apply(self, step: Step[Ev], proof: int | None = None) -> None:
        """Check one step: it skips only holes below ``proof`` (a page's
        ``first``) and reports them, then delivers the events right after
        ``last``, each once, in order; it fetches one thing at a time, and
        only once joined."""
        for gap in step.gaps:
            assert gap.room == ROOM and self.last is not None
            assert gap.first == self.last + 1 <= gap.last, f"{gap} after {self.last}"
            assert proof is not None and gap.last < proof, f"{gap} skipped, first {proof}"
            self.last = gap.last
        for ev in step.deliver:
            assert ev.store == self.client_store, f"{ev} is from a store we left"
            assert self.last is not None, f"{ev} delivered before the joined reply"
            assert ev.seq == self.last + 1, f"{ev} delivered after {self.last}"
            self.last = ev.seq
        self.delivered += step.deliver
        for fetch in step.fetch:
            assert self.current is None, f"{fetch} while {self.current} is in flight"
            assert self.placed, f"{fetch} before the joined reply"
            assert fetch.after == self.last
            self.current = fetch
            self.fetches.append((fetch, self.client_store))

    @invariant()
    def sequencer_agrees_on_last(self) -> None:
        assert self.sq.last(ROOM) == self.last

    # ------------------------------------------------------- the broker

    def publish(self) -> int:
        self.size += 1
        self.first = self.first or 1
        self.live.append(Ev(ROOM, self.size, self.store))
        return self.size

    @rule(n=st.integers(1, 6))
    def append(self, n: int) -> None:
        for _ in range(n):
            self.publish()

    @precondition(lambda self: self.size > 0)
    @rule(k=st.integers(1, 5))
    def retain(self, k: int) -> None:
        assert self.first is not None
        self.first = min(self.first + k, self.size)  # the newest stays

    @rule(lost=st.booleans(), rarely=st.integers(0, 3))
    def restart(self, lost: bool, rarely: int) -> None:
        if rarely != 1:
            return  # so that most runs get somewhere between restarts
        self.life += 1
        self.member = False
        self.joining = None
        if lost:
            self.store += 1
            self.size = 0
            self.first = None

    # ------------------------------------------------------- the client

    def receivable(self) -> list[int]:
        # A lost store's successor is numbered anew: its events wait until
        # the client has noticed (before, they cannot be told apart).
        return [i for i, e in enumerate(self.live) if e.store == self.client_store]

    @precondition(lambda self: self.receivable())
    @rule(data=st.data(), keep=st.booleans())
    def receive(self, data: st.DataObject, keep: bool) -> None:
        """A live event, in any order; with ``keep`` it comes again later."""
        i = data.draw(st.sampled_from(self.receivable()))
        ev = self.live[i] if keep else self.live.pop(i)
        self.received.append(ev)
        self.apply(self.sq.event(ev))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))

    @precondition(lambda self: self.received)
    @rule(data=st.data())
    def receive_again(self, data: st.DataObject) -> None:
        ev = data.draw(st.sampled_from(self.received))
        if ev.store == self.client_store:
            self.apply(self.sq.event(ev))

    def page_for(self, fetch: Fetch, size: int) -> tuple[list[Ev], bool, int | None]:
        """What the broker's store answers: up to ``size`` events (even
        none, a page cut short by its byte cap), ``more`` and ``first``."""
        if self.first is None:
            return [], False, None
        lo = max(fetch.after + 1, self.first)
        events = [Ev(ROOM, s, self.store) for s in range(lo, min(self.size, lo + size - 1) + 1)]
        return events, lo + size - 1 < self.size, self.first

    def answerable(self) -> list[tuple[Fetch, int]]:
        # The store a fetch asked answers it; one that died with a lost
        # store is answered by the next only once the client has moved on.
        return [(f, s) for f, s in self.fetches if s == self.store or f != self.current]

    @precondition(lambda self: self.answerable())
    @rule(data=st.data(), size=st.integers(0, 5), late=st.booleans())
    def answer(self, data: st.DataObject, size: int, late: bool) -> None:
        """The broker answers a fetch; the reply comes now, or ``late``."""
        fetch, store = data.draw(st.sampled_from(self.answerable()))
        self.fetches.remove((fetch, store))
        self.replies.append((fetch, *self.page_for(fetch, size)))
        if not late:
            self.reply_arrives(len(self.replies) - 1)

    @precondition(lambda self: self.replies)
    @rule(data=st.data())
    def late_reply(self, data: st.DataObject) -> None:
        self.reply_arrives(data.draw(st.integers(0, len(self.replies) - 1)))

    def reply_arrives(self, i: int) -> None:
        fetch, events, more, first = self.replies.pop(i)
        if fetch == self.current:
            self.current = None
        self.apply(self.sq.page(fetch, events, more=more, first=first), proof=first)

    @precondition(lambda self: self.fetches)
    @rule(data=st.data(), rarely=st.integers(0, 3))
    def fetch_fails(self, data: st.DataObject, rarely: int) -> None:
        if rarely != 1:
            return
        fetch, store = data.draw(st.sampled_from(self.fetches))
        self.fetches.remove((fetch, store))
        if fetch == self.current:
            self.current = None
        self.apply(self.sq.abandon(fetch))

    @precondition(lambda self: self.member and self.client_life == self.life)
    @rule(behind=st.integers(0, 3))
    def pong(self, behind: int) -> None:
        self.apply(self.sq.pong({ROOM: max(0, self.size - behind)}))

    @rule(rarely=st.integers(0, 3))
    def reconnect(self, rarely: int = 1) -> None:
        """The client has a session again (after a restart, or a stall),
        and asks to join the room again."""
        if rarely != 1:
            return
        same = self.store == self.client_store
        self.apply(self.sq.reconnected(same_store=same))
        self.current = None
        self.client_life = self.life
        self.placed = False
        if not same:
            self.client_store = self.store
            self.live = [e for e in self.live if e.store == self.store]
            self.start = self.last = None
        self.join()

    def join(self) -> None:
        # Joining a room the session is in publishes nothing.
        seq = self.size if self.member else self.publish()
        self.member = True
        self.joining = (self.life, seq)

    @precondition(lambda self: self.joining is not None and self.joining[0] == self.life)
    @rule()
    def joined_reply(self) -> None:
        assert self.joining is not None
        seq = self.joining[1]
        self.joining = None
        self.placed = True
        if self.start is None:
            self.start = seq
            self.last = seq - 1
        self.apply(self.sq.joined(ROOM, seq))

    # ------------------------------------------------------- liveness

    def teardown(self) -> None:
        """With the broker still and every fetch answered, the client gets
        everything up to the newest event, after at most a few pongs."""
        if self.client_life != self.life or self.client_store != self.store:
            self.reconnect()
        # Fetches made before the last reconnect are never answered: the
        # client dropped them (the sequencer must not wait for them).
        self.fetches = [(f, s) for f, s in self.fetches if f == self.current]
        for _ in range(50):
            if self.joining is not None:
                self.joined_reply()
            while self.live:
                ev = self.live.pop(0)
                self.received.append(ev)
                self.apply(self.sq.event(ev))
            while self.answerable() or self.replies:
                for fetch, store in self.answerable():
                    self.fetches.remove((fetch, store))
                    self.replies.append((fetch, *self.page_for(fetch, 1000)))
                while self.replies:
                    self.reply_arrives(0)
            if self.last == self.size:
                return
            self.pong(0)
        raise AssertionError(f"stuck at {self.last} of {self.size}")


# Derandomized, so CI runs the same examples every time.
BrokerLogMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=60, deadline=None, derandomize=True
)
TestBrokerLog = BrokerLogMachine.TestCase
