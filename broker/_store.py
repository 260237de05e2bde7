"""The history store: every room event, kept in SQLite.

Theory of operation. The broker handles a batch of requests, then calls
:meth:`Store.commit` once, and only then publishes and acknowledges what the
batch produced. So an event is on disk before anyone can have seen it, and
a batch of many events costs one transaction (group commit).

Events are kept as the exact JSON bytes that were published, so ``history``
splices them into its reply without re-encoding. The consecutive events a
batch adds to one room are stored together, as one row: a *segment*, its
events one per line (NDJSON; JSON text never holds a raw newline), keyed by
the room and the seq of its first and last event. This is how Kafka stores
record batches, for the same reason: one row per batch rather than one per
event cut the store's share of the broker's time per message from 3.8 to
0.3 microseconds. A segment holds at most :data:`SEGMENT_MAX` events, so
``history`` never reads much more than it returns.

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
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

SEGMENT_MAX = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    room TEXT NOT NULL,
    first INTEGER NOT NULL,    -- seq of its first event
    last INTEGER NOT NULL,     -- seq of its last event
    at REAL NOT NULL,          -- seconds since the epoch, for dedup windows
    events BLOB NOT NULL       -- the events, exactly as published, one a line
);
CREATE UNIQUE INDEX IF NOT EXISTS segments_first ON segments (room, first);
CREATE UNIQUE INDEX IF NOT EXISTS segments_last ON segments (room, last);
CREATE INDEX IF NOT EXISTS segments_at ON segments (at);
CREATE TABLE IF NOT EXISTS topics (
    room TEXT PRIMARY KEY,
    topic TEXT NOT NULL
) WITHOUT ROWID;
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


@dataclass(frozen=True, slots=True)
class RoomState:
    last_seq: int
    topic: str


class _Open:
    """A segment being filled by the current batch."""

    __slots__ = ("at", "bodies", "first", "room")

    def __init__(self, room: str, first: int, at: float) -> None:
        self.room = room
        self.first = first
        self.at = at
        self.bodies: list[bytes] = []


class Store:
    """An SQLite file (or ``:memory:``) holding room events.

    Writes are buffered until :meth:`flush` and made durable by
    :meth:`commit`; reads flush first, so a query sees everything added
    before it.
    """

    def __init__(self, path: str = ":memory:", *, fsync: bool = False) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, once a batch.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._closed = False
        try:
            self._setup(fsync)
        except BaseException:
            self._db.close()  # a store that failed to open holds nothing open
            raise
        self._open: dict[str, _Open] = {}
        self._segments: list[_Open] = []
        self._topics: dict[str, str] = {}
        self._pm_ids: list[tuple[object, ...]] = []
        self._in_tx = False
        if path != ":memory:":
            self._stop = threading.Event()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="wal-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _setup(self, fsync: bool) -> None:
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Checkpoints copy the WAL into the database file, taking
            # milliseconds; in the loop they would land on the messages in
            # flight (p99 latency 5 ms instead of 1). A thread of its own,
            # on its own connection, does them instead (sqlite3 releases
            # the GIL while it works).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._migrate()
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if row is None:
            self.store_id = secrets.token_hex(8)
            self._db.execute("INSERT INTO meta VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = str(row[0])

    def _migrate(self) -> None:
        """Fold the one-row-per-event table of zchat 0.1 stores into segments."""
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None:
            return
        db.execute("BEGIN")
        try:
            run: _Open | None = None

            def close(run: _Open | None) -> None:
                if run is not None:
                    db.execute(
                        "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                        (
                            run.room,
                            run.first,
                            run.first + len(run.bodies) - 1,
                            run.at,
                            b"\n".join(run.bodies),
                        ),
                    )

            for room, seq, at, kind, body in db.execute(
                "SELECT room, seq, at, kind, body FROM events ORDER BY room, seq"
            ).fetchall():
                if (
                    run is None
                    or run.room != room
                    or run.first + len(run.bodies) != seq
                    or len(run.bodies) >= SEGMENT_MAX
                ):
                    close(run)
                    run = _Open(room, seq, at)
                run.bodies.append(body)
                run.at = max(run.at, at)
                if kind == "topic":
                    topic = msgspec.json.decode(body).get("topic", "")
                    db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?)", (room, topic))
            close(run)
            db.execute("DROP TABLE events")
        except BaseException:
            db.execute("ROLLBACK")  # the old table stays as it was
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------ writing

    def add(self, room: str, seq: int, body: bytes, at: float) -> None:
        """Add the event ``seq`` of ``room``, encoded as ``body``, to the batch."""
        seg = self._open.get(room)
        if seg is None or seg.first + len(seg.bodies) != seq or len(seg.bodies) >= SEGMENT_MAX:
            seg = self._open[room] = _Open(room, seq, at)
            self._segments.append(seg)
        seg.bodies.append(body)

    def set_topic(self, room: str, topic: str) -> None:
        self._topics[room] = topic

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
        """Write what was added, inside the batch's transaction."""
        if self._segments:
            self._begin()
            self._db.executemany(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                [
                    (s.room, s.first, s.first + len(s.bodies) - 1, s.at, b"\n".join(s.bodies))
                    for s in self._segments
                ],
            )
            self._segments.clear()
            self._open.clear()
        if self._topics:
            self._begin()
            self._db.executemany(
                "INSERT OR REPLACE INTO topics VALUES (?, ?)", self._topics.items()
            )
            self._topics.clear()
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
        """Commit what is pending and close; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
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
        topics = dict(self._db.execute("SELECT room, topic FROM topics"))
        return {
            room: RoomState(last_seq=last, topic=topics.get(room, ""))
            for room, last in self._db.execute("SELECT room, MAX(last) FROM segments GROUP BY room")
        }

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
        hi = before if before is not None else 2**63 - 1
        if after is not None:
            found: list[bytes] = []
            for first, blob in self._db.execute(
                "SELECT first, events FROM segments WHERE room = ? AND last > ? AND first < ? "
                "ORDER BY last",
                (room, after, hi),
            ):
                bodies = blob.split(b"\n")
                found += bodies[max(0, after + 1 - first) : max(0, hi - first)]
                if len(found) > limit:
                    break
            return found[:limit], len(found) > limit
        chunks: list[list[bytes]] = []
        count = 0
        for first, blob in self._db.execute(
            "SELECT first, events FROM segments WHERE room = ? AND first < ? ORDER BY first DESC",
            (room, hi),
        ):
            bodies = blob.split(b"\n")[: hi - first]
            chunks.append(bodies)
            count += len(bodies)
            if count > limit:
                break
        found = [b for chunk in reversed(chunks) for b in chunk]
        return found[len(found) - limit :] if len(found) > limit else found, count > limit

    def first_seq(self, room: str) -> int | None:
        """The seq of the oldest event kept for ``room``, None when none is."""
        self.flush()
        row = self._db.execute("SELECT MIN(first) FROM segments WHERE room = ?", (room,)).fetchone()
        return None if row[0] is None else int(row[0])

    def recent_events(self, since: float) -> Iterator[bytes]:
        """The bodies of events stored since ``since`` (and perhaps a few
        before it: a segment is dated by its newest event)."""
        self.flush()
        for (blob,) in self._db.execute(
            "SELECT events FROM segments WHERE at >= ? ORDER BY at, room, first", (since,)
        ):
            yield from blob.split(b"\n")

    def recent_pm_acks(self, since: float) -> Iterator[tuple[str, str, bytes]]:
        """``(sender, req_id, ack)`` of each ``pm`` acknowledged since ``since``."""
        self.flush()
        yield from self._db.execute(
            "SELECT sender, req_id, reply FROM pm_ids WHERE at >= ? ORDER BY at", (since,)
        )

    def trim(self, before: float, *, limit: int = 1000) -> int:
        """Drop up to ``limit`` segments stored before ``before``, except each
        room's newest, which carries its last seq across restarts (a seq is
        never used twice). Returns how many went; like :meth:`forget_pm_ids`
        it is a transaction of its own when no batch is open."""
        cur = self._db.execute(
            "DELETE FROM segments WHERE rowid IN ("
            " SELECT s.rowid FROM segments AS s WHERE s.at < ?"
            " AND s.last < (SELECT MAX(t.last) FROM segments AS t WHERE t.room = s.room)"
            " LIMIT ?)",
            (before, limit),
        )
        return cur.rowcount

    def forget_pm_ids(self, before: float) -> None:
        # Its own transaction when no batch is open (the connection is in
        # autocommit mode): an idle broker must not sit on the write lock.
        self._db.execute("DELETE FROM pm_ids WHERE at < ?", (before,))

    def nick_keys(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT nick, key FROM nick_keys"))

    def count(self) -> int:
        """How many events the store holds."""
        self.flush()
        return int(
            self._db.execute("SELECT COALESCE(SUM(last - first + 1), 0) FROM segments").fetchone()[
                0
            ]
        )
