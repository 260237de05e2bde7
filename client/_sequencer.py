"""Every event of a room once and in order, with no sockets and no clock.

Theory of operation. The broker numbers each room's events 1, 2, 3, ...
and keeps them in its store before anyone sees them. A client receives
them over PUB, which may drop, delay or (across reconnects) repeat them,
and can fetch any range it missed with ``history``. The :class:`Sequencer`
turns what arrives into what to deliver: the caller feeds it every input
and does what the returned :class:`Step` asks, delivering ``deliver`` in
order and making each :class:`Fetch` in ``fetch``.

Per room it keeps ``last``, the last seq delivered (None until the
``joined`` reply says where the client came in), the events ``held`` that
arrived past a hole, and ``target``, the highest seq known to exist. A hole
is ``last < target``; it is filled by fetching ``history`` after ``last``,
one fetch per room at a time. What tells the sequencer that an event exists:

* a live event: itself, and by its seq, every one before it;
* a ``joined`` reply: everything up to its seq (on a rejoin after a
  reconnect, what happened while the client was away);
* a ``history`` page with ``more``: the event after its last;
* a ``pong``: ``seqs`` names the last event of each room. PUB is usually
  just behind such a reply, so a pong only makes a *claim*; the claim
  becomes a hole if it is still not delivered when the next pong comes,
  a heartbeat later. The ``joined`` seq of a first join (the client's own
  join event, on its way over PUB) is such a claim too.

A hole is skipped only when history proves the events are gone: a page's
``first`` (the oldest seq the store still holds) past ``last + 1`` means
retention dropped ``last + 1 .. first - 1`` for good, and they are reported
as a :class:`Gap`. A page that is empty or short proves nothing: a page
that brought nothing new leaves the room *stalled*, and it is asked again
on the next news (a pong, a rejoin, a live event past a hole) instead of at
once, so a broker that cannot answer is not hammered.

Each fetch carries a token; the page answering it is handed back with it.
A page whose fetch is no longer the room's current one (superseded, or
made before a reconnect) is ignored. After a reconnect
(:meth:`Sequencer.reconnected`) a room fetches nothing until its ``joined``
reply: with the same store, numbering goes on and ``joined.seq`` is the
new target; with a changed store (a ``:memory:`` broker restarted), the
numbering started again, so the room starts again from its ``joined``
reply, as on a first join. When the broker does not say which store it
has, a ``joined`` seq at or below ``last`` is taken as a new numbering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["Fetch", "Gap", "Sequenced", "Sequencer", "Step"]


class Sequenced(Protocol):
    """What the sequencer reads of an event: its room and its seq."""

    @property
    def room(self) -> str: ...

    @property
    def seq(self) -> int: ...


E = TypeVar("E", bound=Sequenced)


@dataclass(frozen=True)
class Fetch:
    """Ask ``history`` for ``room``'s events after seq ``after``, and hand
    the reply to :meth:`Sequencer.page` with this same object."""

    room: str
    after: int
    token: int


@dataclass(frozen=True)
class Gap:
    """Events ``first`` to ``last`` of ``room`` are gone for good: the store
    no longer holds them (retention), so they were skipped."""

    room: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass
class Step(Generic[E]):
    """What the caller does after one input: deliver ``deliver`` in this
    order, make each fetch in ``fetch``. ``gaps`` are holes skipped for
    good; ``repaired`` counts the delivered events that came from history."""

    deliver: list[E] = field(default_factory=list)
    fetch: list[Fetch] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    repaired: int = 0


@dataclass
class _Room(Generic[E]):
    name: str
    last: int | None = None  # None until a joined reply places us
    held: dict[int, E] = field(default_factory=dict)  # every key > last
    target: int = 0  # the highest seq known to exist
    claim: int = 0  # a seq said to exist, trusted at the next pong
    fetch: Fetch | None = None  # the one fetch in flight
    ready: bool = False  # joined since the last reconnect: may fetch
    stalled: bool = False  # the last page brought nothing: wait for news


class Sequencer(Generic[E]):
    """Per-room ordering and repair; see the module docstring.

    Every method returns at once and does no I/O. ``duplicates`` counts the
    events that arrived again and were dropped.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _Room[E]] = {}
        self._tokens = 0
        self._unsure = False  # reconnected to a broker that names no store
        self.duplicates = 0

    # ------------------------------------------------------------- rooms

    def track(self, room: str) -> None:
        """Start following ``room`` (subscribed, join not answered yet):
        its events are held until :meth:`joined` says where we came in."""
        self._rooms.setdefault(room, _Room(room))

    def forget(self, room: str) -> None:
        """Stop following ``room``; a page still on its way is ignored."""
        self._rooms.pop(room, None)

    def last(self, room: str) -> int | None:
        """The seq of the last event of ``room`` delivered."""
        st = self._rooms.get(room)
        return None if st is None else st.last

    def caught_up(self, room: str, seq: int) -> bool:
        """Whether everything of ``room`` up to ``seq`` was delivered (or
        the room is no longer followed)."""
        st = self._rooms.get(room)
        return st is None or (st.last is not None and st.last >= seq)

    # ------------------------------------------------------------ inputs

    def joined(self, room: str, seq: int, *, own_event: bool = True) -> Step[E]:
        """A ``joined`` reply for ``room``: ``seq`` is our join event, or the
        room's last seq when we were already in it, or when the join made no
        event (``own_event`` False: a quiet session's), so that we come in
        after it."""
        step: Step[E] = Step()
        st = self._rooms.get(room)
        if st is None:
            return step
        if st.last is not None and self._unsure and seq <= st.last:
            # A broker that names no store, numbering again from below
            # what we had: it lost its history, so start again here.
            st.last = None
            st.held.clear()
            st.target = st.claim = 0
        st.ready = True
        st.stalled = False
        if st.last is None:
            st.last = max(seq - 1, 0) if own_event else seq
            st.held = {s: ev for s, ev in st.held.items() if s > st.last}
            st.claim = max(st.claim, seq)
        elif seq > st.last + 1:
            # Rejoined after a reconnect: what happened meanwhile is a hole.
            st.target = max(st.target, seq)
        else:
            st.claim = max(st.claim, seq)
        self._release(st, step)
        self._want(st, step)
        return step

    def event(self, ev: E) -> Step[E]:
        """A live event from PUB."""
        step: Step[E] = Step()
        st = self._rooms.get(ev.room)
        if st is None:
            return step
        seq = ev.seq
        if st.last is not None and seq <= st.last:
            self.duplicates += 1
        elif st.last is not None and seq == st.last + 1:
            self._deliver(st, ev, step)
            self._release(st, step)
        elif seq in st.held:
            self.duplicates += 1
        else:
            st.held[seq] = ev
            st.target = max(st.target, seq)
            st.stalled = False  # a hole we had not seen: worth asking again
            self._want(st, step)
        return step

    def pong(self, seqs: Mapping[str, int]) -> Step[E]:
        """A ``pong``: ``seqs`` holds the last seq of each of our rooms."""
        step: Step[E] = Step()
        for room, seq in seqs.items():
            st = self._rooms.get(room)
            if st is None or not st.ready or st.last is None:
                continue
            if st.claim > st.last:
                # Claimed a heartbeat ago and still not here: PUB lost it.
                st.target = max(st.target, st.claim)
            st.claim = seq
            st.stalled = False
            self._want(st, step)
        return step

    def page(self, fetch: Fetch, events: Iterable[E], *, more: bool, first: int | None) -> Step[E]:
        """The ``history`` reply to ``fetch``: its events (oldest first),
        ``more`` (newer ones remain) and ``first`` (the oldest seq the store
        still holds, None when it holds none)."""
        step: Step[E] = Step()
        st = self._rooms.get(fetch.room)
        if st is None or st.fetch != fetch or st.last is None:
            return step  # superseded, or made before a reconnect
        st.fetch = None
        if first is not None and first > st.last + 1:
            gap = Gap(st.name, st.last + 1, first - 1)
            step.gaps.append(gap)
            self._skip_to(st, first - 1)
            self._release(st, step)
        newest = None
        for ev in events:
            seq = ev.seq
            newest = seq
            if seq == st.last + 1:
                self._deliver(st, ev, step)
                step.repaired += 1
                self._release(st, step)
            elif seq > st.last + 1 and seq not in st.held:
                # A hole inside a page proves nothing; keep what came.
                st.held[seq] = ev
                st.target = max(st.target, seq)
        if more and newest is not None:
            st.target = max(st.target, newest + 1)
        st.stalled = st.last == fetch.after
        self._want(st, step)
        return step

    def abandon(self, fetch: Fetch) -> Step[E]:
        """``fetch`` failed for good: ask again on the next news."""
        st = self._rooms.get(fetch.room)
        if st is not None and st.fetch == fetch:
            st.fetch = None
            st.stalled = True
        return Step()

    def reconnected(self, *, same_store: bool | None) -> Step[E]:
        """The client has a session again, before it rejoins its rooms.

        Args:
            same_store: True when the broker kept its store (``welcome.
                server.store`` unchanged, or the same broker): numbering goes
                on. False when it changed: numbering started again. None when
                the broker does not say: each room decides at its rejoin.
        """
        self._unsure = same_store is None
        for st in self._rooms.values():
            st.fetch = None  # its page, if it ever comes, is ignored
            st.ready = False
            st.stalled = False
            st.claim = 0
            if same_store is False:
                st.last = None
                st.held.clear()
                st.target = 0
        return Step()

    # ----------------------------------------------------------- helpers

    def _deliver(self, st: _Room[E], ev: E, step: Step[E]) -> None:
        st.last = ev.seq
        step.deliver.append(ev)
        if st.held.pop(ev.seq, None) is not None:
            self.duplicates += 1  # it came live as well

    def _release(self, st: _Room[E], step: Step[E]) -> None:
        held = st.held
        while held:
            assert st.last is not None
            ev = held.pop(st.last + 1, None)
            if ev is None:
                return
            st.last = ev.seq
            step.deliver.append(ev)

    def _skip_to(self, st: _Room[E], seq: int) -> None:
        assert st.last is not None
        if seq - st.last > len(st.held):
            st.held = {s: ev for s, ev in st.held.items() if s > seq}
        else:
            for s in range(st.last + 1, seq + 1):
                st.held.pop(s, None)
        st.last = seq
        st.target = max(st.target, seq)

    def _want(self, st: _Room[E], step: Step[E]) -> None:
        """Ask for the hole after ``last``, if there is one and nothing
        stands in the way."""
        if (
            st.ready
            and st.fetch is None
            and not st.stalled
            and st.last is not None
            and st.last < st.target
        ):
            self._tokens += 1
            st.fetch = Fetch(st.name, st.last, self._tokens)
            step.fetch.append(st.fetch)
