"""The seam between the broker's core and where its state lives.

The core (``_core.py``) numbers and encodes events and decides everything;
what it keeps outside its own memory (room events and their history, topics,
request ids of private messages, nick claims) goes through :class:`Backend`,
which the single broker implements with SQLite (``_store.py``) and a
cluster of brokers with Redis (``_redis.py``). The core never knows which.

Writes are buffered for the batch and made durable by :meth:`Backend.commit`,
called by the shell once per batch before anything of it is published or
acknowledged. Reads see every write added before them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import msgspec

from messages import words_match


class StoreError(Exception):
    """The store cannot be used; the message says why, in one line."""


class StoreFull(StoreError):
    """A commit failed for want of room; what it held is kept for the next."""


@dataclass(frozen=True, slots=True)
class RoomState:
    last_seq: int
    topic: str


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a room's history: event bodies, oldest first."""

    events: list[bytes]
    more: bool  # more events lie beyond the page, in the direction asked
    first: int | None  # the seq of the oldest event kept, None when none is
    # search: where the next page goes on (older than it), when ``more``.
    before: int | None = None


# A search looks at no more stored events than this per request, matching
# or not (some events of the room, or of the segments that hold its words),
# and takes no more of the loop than SEARCH_BUDGET_S: past either, its page
# ends early, with ``more`` and where to go on. Each search costs five
# tokens (see _core._COST), so an address's searches take at most
# --address-rate / 5 times the budget a second (100 ms of each second).
SEARCH_SCAN = 20_000
SEARCH_BUDGET_S = 0.005


class _Text(msgspec.Struct):
    type: str = ""
    text: str | None = None


_event_text = msgspec.json.Decoder(_Text).decode


def matcher(words: list[str]) -> Callable[[bytes], bool]:
    """Whether an event body is a ``msg`` whose text has every one of the
    search ``words`` (see :func:`messages.words_match`).

    Most events of a search match none of its words: an ASCII body is first
    looked through for each ASCII word as bytes (in C), and decoded only
    when all are there; the decoding and matching in Python cost 12 us an
    event, and a search may look at thousands."""
    ascii_words = [w.encode() for w in words if w.isascii()]

    def matches(body: bytes) -> bool:
        if ascii_words and body.isascii():
            low = body.lower()
            if not all(w in low for w in ascii_words):
                return False
        event = _event_text(body)
        return event.type == "msg" and bool(event.text) and words_match(words, event.text or "")

    return matches


class Backend(Protocol):
    """Where a broker keeps what outlives a batch (see the module's text)."""

    # Names the store: a client seeing it change knows seqs may be reused.
    store_id: str
    # A write of the open batch failed: the batch must not be answered from
    # reads (a room's last seq misses what the batch made).
    failed: bool

    # -- writes, buffered until commit
    def add(self, room: str, seq: int, body: bytes, at: float) -> None:
        """Add the event ``seq`` of ``room``, encoded as ``body``."""

    def set_topic(self, room: str, topic: str) -> None: ...

    def set_rules(self, room: str, body: bytes) -> None:
        """Keep the room's moderation (see ``_moderation.py``), replacing it."""

    def add_pm_id(self, sender: str, req_id: str, at: float, reply: bytes) -> None:
        """Remember the ack of a private message, for resends after a restart."""

    def set_nick_claim(self, nick: str, key: str, used: float) -> None: ...

    def drop_nick_claim(self, nick: str) -> None: ...

    def commit(self) -> None:
        """Make the batch durable.

        Raises:
            StoreFull: no room; everything is kept for the next commit.
            StoreError: the store failed otherwise.
        """

    # -- reads
    def room_state(self, room: str) -> RoomState | None:
        """The last seq and topic of ``room``; None when it has no events."""

    def rules(self, room: str) -> bytes | None:
        """The room's moderation as last set, None when it has none."""

    def swap_rules(self, room: str, old: bytes | None, new: bytes) -> bool:
        """Set the room's moderation to ``new`` at once, if it is still
        ``old``; False when it was changed meanwhile (by another broker).

        Raises:
            StoreError: the store cannot be reached.
        """

    def page(
        self, room: str, *, after: int | None, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        """Up to ``limit`` events of ``room`` taking at most ``max_bytes``
        (but at least one): those just after ``after``, else those just
        before ``before`` or the end."""

    def search(
        self, room: str, text: str, *, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        """The newest ``msg`` events of ``room`` before ``before`` (or the
        end) whose text has every word of ``text`` (see
        :func:`messages.words_match`), up to ``limit`` taking at most
        ``max_bytes`` (but at least one), oldest first. Looks at no more
        than :data:`SEARCH_SCAN` events: ``more`` and ``before`` say where
        to go on (``first`` is None)."""

    def recent_events(self, since: float) -> Iterator[bytes]:
        """Bodies of the events stored since ``since`` (perhaps a few more)."""

    def recent_pm_acks(self, since: float) -> Iterator[tuple[str, str, bytes]]:
        """``(sender, req_id, ack)`` of each ``pm`` acknowledged since ``since``."""

    def pm_ack(self, sender: str, req_id: str) -> bytes | None:
        """The ack of a private message taken already, for a resend that
        reached another node of a cluster (a single broker has them all in
        memory, loaded by recent_pm_acks)."""

    def nick_claims(self) -> dict[str, tuple[str, float]]: ...

    def nick_claim(self, nick: str) -> tuple[str, float] | None: ...

    # -- upkeep, by the shell
    def housekeeping(self, now: float, retain_s: float) -> bool:
        """Forget what has expired (request ids, history past ``retain_s``
        when it is positive), a slice at a time; True when more is due."""

    def summary(self) -> str:
        """What the store holds or where it is, for the start-up log."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as the cluster knows it (see ``_cluster.py``)."""

    nick: str
    node: str
    token_hash: str
    peer_key: str
    quiet: bool
    rooms: list[str]
    # A server operator (by key or password), for nodes other than its own.
    oper: bool = False
    # The client's address (as _config.address_key gives it), for bans.
    addr: str = ""


class Directory(Protocol):
    """Sessions and room members across the nodes of a cluster: what a
    single broker knows from its own memory. Methods that decide (create,
    take, rename) ask at once; the others are written with the batch."""

    node: str
    # The ROUTER endpoints of the live nodes, for welcome.server.nodes.
    nodes: list[str]

    def find(self, key: str) -> SessionRecord | None: ...

    def records(self, keys: list[str]) -> list[SessionRecord | None]:
        """:meth:`find` for each of ``keys``, in one round trip."""

    def sessions(self) -> Iterator[tuple[str, SessionRecord]]:
        """Every session of the cluster, with its key."""

    def create(
        self,
        key: str,
        nick: str,
        token: str,
        peer_key: str | None,
        quiet: bool,
        now: float,
        addr: str = "",
    ) -> bool:
        """Register a new session; False when the nick is in use on a node."""

    def take(
        self, key: str, token: str, peer_key: str | None, now: float, addr: str = ""
    ) -> SessionRecord | None:
        """Move the session to this node, if the token is its own."""

    def rename(self, old: str, new: str, nick: str, rooms: list[str], quiet: bool) -> bool: ...

    def joined(self, room: str, key: str, nick: str, quiet: bool) -> None: ...

    def left(self, room: str, key: str) -> None: ...

    def ended(self, key: str, node: str | None = None) -> None:
        """The session ``key`` is over; ``node``: it was that node's (a
        kill from this one), which is told to forget it."""

    def members(self, room: str) -> list[tuple[str, bool]]:
        """``(nick, quiet)`` of everyone in ``room``, on every node."""

    def who(self, room: str | None, now: float) -> list[tuple[str, int, bool]]:
        """``(nick, idle ms, quiet)`` of everyone (in ``room``), on every node."""

    def rooms(self) -> list[tuple[str, str, list[tuple[str, bool]]]]:
        """``(name, topic, members)`` of every room with people in it."""

    def held(self, key: str) -> int:
        """Bytes of private messages waiting for ``key`` in the store."""

    def deliver(self, node: str, key: str, frame: bytes) -> None:
        """Send a private message to the session ``key`` on ``node``
        (kept for it until that node or the next one takes it)."""

    def take_held(self, key: str) -> list[bytes]:
        """The private messages waiting for ``key``, taken out."""

    def set_oper(self, key: str) -> None:
        """The session ``key`` (of this node) is a server operator."""

    def put_out(self, node: str, room: str, key: str) -> None:
        """Tell ``node`` its session ``key`` was put out of ``room``."""

    def wall(self, frame: bytes) -> None:
        """Publish a server notice (``frame``) to the clients of every node."""
