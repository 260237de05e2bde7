"""The history store: every room event, kept in SQLite.

Theory of operation. The broker handles a batch of requests, then calls
:meth:`Store.commit` once, and only then publishes and acknowledges what the
batch produced. So an event is on disk before anyone can have seen it, and
a batch of many events costs one transaction (group commit). Events are kept
as the exact JSON bytes that were published, so ``history`` splices them
into its reply without re-encoding.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed
transaction survives the broker being killed (it is in the WAL, in the
operating system's hands), and only a power cut can lose the last commits.
``fsync=True`` trades speed for that last guarantee too.

Request ids of ``say`` travel in the event itself; ``pm`` produces no event,
so its ids go into a table of their own. Both let a resent request be
answered with its first acknowledgement after a restart.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from messages import TopicEvent, decode_event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,          -- seconds since the epoch, for dedup windows
    sender TEXT,               -- nick key of the sender of a msg
    req_id TEXT,               -- the sender's request id of a msg
    kind TEXT NOT NULL,        -- the event's type
    body BLOB NOT NULL,        -- the event, exactly as published
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_recent_ids ON events (at) WHERE req_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS pm_ids (
    sender TEXT NOT NULL,
    req_id TEXT NOT NULL,
    at REAL NOT NULL,
    reply BLOB NOT NULL,       -- the ack, as first sent
    PRIMARY KEY (sender, req_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nick_keys (
    nick TEXT PRIMARY KEY,     -- nick key (lower case)
    key TEXT NOT NULL          -- the CURVE public key that owns it, Z85
) WITHOUT ROWID;
"""


class StoredEvent(NamedTuple):
    """One room event as it goes to disk and to the PUB socket.

    A NamedTuple: made once per event on the hot path, and cheaper to make
    than a frozen dataclass.
    """

    room: str
    seq: int
    at: float
    kind: str
    body: bytes
    sender: str | None = None
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoomState:
    last_seq: int
    topic: str


class Store:
    """An SQLite file (or ``:memory:``) holding room events.

    Writes are buffered until :meth:`flush` (the batch's ``executemany``)
    and made durable by :meth:`commit`; reads flush first, so a query sees
    everything added before it.
    """

    def __init__(self, path: str = ":memory:", *, fsync: bool = False) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, once a batch.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Checkpoints copy the WAL into the database file, taking
            # milliseconds; in the loop they would land on the messages in
            # flight (p99 latency 5 ms instead of 1). A thread of its own,
            # on its own connection, does them instead (sqlite3 releases
            # the GIL while it works).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._stop = threading.Event()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="wal-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if row is None:
            self.store_id = secrets.token_hex(8)
            self._db.execute("INSERT INTO meta VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = str(row[0])
        self._events: list[StoredEvent] = []
        self._pm_ids: list[tuple[object, ...]] = []
        self._in_tx = False

    # ------------------------------------------------------------ writing

    def add(self, ev: StoredEvent) -> None:
        self._events.append(ev)

    def add_pm_id(self, sender: str, req_id: str, at: float, reply: bytes) -> None:
        self._pm_ids.append((sender, req_id, at, reply))

    def set_nick_key(self, nick: str, key: str) -> None:
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO nick_keys VALUES (?, ?)", (nick, key))

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def flush(self) -> None:
        if self._events:
            self._begin()
            self._db.executemany(
                "INSERT INTO events (room, seq, at, kind, body, sender, req_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                self._events,
            )
            self._events.clear()
        if self._pm_ids:
            self._begin()
            self._db.executemany("INSERT OR REPLACE INTO pm_ids VALUES (?, ?, ?, ?)", self._pm_ids)
            self._pm_ids.clear()

    def commit(self) -> None:
        """Make everything added so far durable, in one transaction."""
        self.flush()
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(1.0):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def close(self) -> None:
        if self.path != ":memory:":
            self._stop.set()
            self._checkpointer.join()
        self.commit()
        if self.path != ":memory:":
            # Fold the WAL back into the main file so a clean shutdown
            # leaves one self-contained database behind.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # ------------------------------------------------------------ reading

    def rooms(self) -> dict[str, RoomState]:
        """Every room with events: its last seq and current topic."""
        self.flush()
        state: dict[str, RoomState] = {}
        for room, last in self._db.execute("SELECT room, MAX(seq) FROM events GROUP BY room"):
            row = self._db.execute(
                "SELECT body FROM events WHERE room = ? AND kind = 'topic' "
                "ORDER BY seq DESC LIMIT 1",
                (room,),
            ).fetchone()
            topic = ""
            if row is not None:
                ev = decode_event(row[0])
                if isinstance(ev, TopicEvent):
                    topic = ev.topic
            state[room] = RoomState(last_seq=last, topic=topic)
        return state

    def history(
        self, room: str, *, after: int | None, before: int | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to ``limit`` event bodies of ``room``, oldest first, and whether
        more lie beyond them.

        With ``after``, the events just after it (``more``: newer ones remain);
        otherwise the events just before ``before`` or the end (``more``:
        older ones remain).
        """
        self.flush()
        lo = after if after is not None else -1
        hi = before if before is not None else 2**63 - 1
        if after is not None:
            rows = self._db.execute(
                "SELECT body FROM events WHERE room = ? AND seq > ? AND seq < ? "
                "ORDER BY seq LIMIT ?",
                (room, lo, hi, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            return [r[0] for r in rows[:limit]], more
        rows = self._db.execute(
            "SELECT body FROM events WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (room, hi, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        return [r[0] for r in reversed(rows[:limit])], more

    def recent_ids(self, since: float) -> Iterator[tuple[str, str, str, bytes]]:
        """``(kind, sender, req_id, body)`` of requests acknowledged since
        ``since``: ``("say", ...)`` with the event, ``("pm", ...)`` with the ack."""
        self.flush()
        for sender, req_id, body in self._db.execute(
            "SELECT sender, req_id, body FROM events WHERE req_id IS NOT NULL AND at >= ? "
            "ORDER BY at",
            (since,),
        ):
            yield "say", sender, req_id, body
        for sender, req_id, reply in self._db.execute(
            "SELECT sender, req_id, reply FROM pm_ids WHERE at >= ? ORDER BY at", (since,)
        ):
            yield "pm", sender, req_id, reply

    def forget_pm_ids(self, before: float) -> None:
        self._begin()
        self._db.execute("DELETE FROM pm_ids WHERE at < ?", (before,))

    def nick_keys(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT nick, key FROM nick_keys"))

    def count(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def all_events(self, room: str) -> Iterable[bytes]:
        self.flush()
        return [
            r[0]
            for r in self._db.execute(
                "SELECT body FROM events WHERE room = ? ORDER BY seq", (room,)
            )
        ]
