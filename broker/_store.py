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

Search (an addition) finds a room's ``msg`` events by the words of their
text, with an FTS5 index of one row per segment: the texts of its ``msg``
events, with the room, keyed by the segment's rowid and holding no copy of
the text (contentless). FTS5 pays about 0.1 ms per transaction that writes
to it, more than a batch of a few messages costs in all, so the index is
written in bulk, in the transaction of a later batch: when
:data:`INDEX_SEGMENTS` segments or :data:`INDEX_BYTES` wait, or the
oldest waited :data:`INDEX_DELAY_S`, and at housekeeping; ``meta.indexed`` (the rowid of
the last segment indexed) goes with it, and a store opened with segments
past it (a crash; a store of schema 2, with none) indexes them then. A
search asks the index for the segments of the room whose texts hold every
word typed (as the beginning of a word), newest first, reads the segments
not indexed yet as they are, and checks each event with
:func:`messages.words_match`, the same test a cluster applies. User input
never reaches FTS5's syntax: what is matched is the words of the text, runs
of letters and digits, each quoted.

A commit that fails for want of room (the disk, or ``max_mb``, is full)
keeps what it was writing and raises :class:`StoreFull`; the next
:meth:`Store.commit` tries again, and until one succeeds nothing new is
written (the broker refuses writes meanwhile) while reads go on. One broker
at a time holds a store: an exclusive ``flock`` on the file, taken at open.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator

import msgspec

from messages import search_words

from ._backend import (
    SEARCH_BUDGET_S,
    SEARCH_SCAN,
    Page,
    RoomState,
    StoreError,
    StoreFull,
    _Text,
    matcher,
)
from ._recent import DEDUP_S

__all__ = ["Page", "RoomState", "Store", "StoreError", "StoreFull"]

SEGMENT_MAX = 256
# PRAGMA user_version of the schema this code writes; a store with a higher
# one was made by a newer zchat and is refused rather than misread.
SCHEMA_VERSION = 3
# The search index is written when this many segments wait for it, or the
# oldest has waited this long (see the module's text).
INDEX_SEGMENTS = 256
INDEX_DELAY_S = 1.0
# And at most this many bytes of events wait (kept in memory until then): a
# flood of 4,000-character messages held 80 MiB within the second.
INDEX_BYTES = 4 * 1024 * 1024
OUR_TABLES = {"segments", "events", "topics", "pm_ids", "meta", "nick_keys", "rules"}


def _explain(err: sqlite3.Error) -> str:
    text = str(err)
    if "not a database" in text:
        return "not an SQLite database (truncated, or another program's file?)"
    if "malformed" in text:
        return "the file is damaged (database disk image is malformed)"
    return text


def _retryable(err: sqlite3.Error) -> bool:
    """Whether a failed write may succeed later: the disk or the size bound
    was full, or the disk failed; not a broken invariant."""
    text = str(err).lower()
    return "full" in text or "disk i/o" in text or "no space" in text or "locked" in text


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
CREATE TABLE IF NOT EXISTS rules (
    room TEXT PRIMARY KEY,     -- a room, or '*' for the whole server
    body BLOB NOT NULL         -- its moderation, JSON (see _moderation.py)
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
    key TEXT NOT NULL,         -- the CURVE public key that owns it, Z85
    used REAL NOT NULL DEFAULT 0  -- when its owner last used it (0: unknown)
) WITHOUT ROWID;
"""
# One row per segment with msg events, its rowid the segment's: the room,
# and the texts of its msg events, a line each (see the module's text).
_WORDS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS msg_words USING fts5(
    room, text, content='', tokenize='unicode61 remove_diacritics 0'
);
"""


_events_text = msgspec.json.Decoder(list[_Text]).decode


def _segment_text(bodies: list[bytes]) -> str:
    """The texts of the ``msg`` events of a segment, a line each, for the index."""
    return "\n".join(
        e.text for e in _events_text(b"[" + b",".join(bodies) + b"]") if e.type == "msg" and e.text
    )


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

    def __init__(self, path: str = ":memory:", *, fsync: bool = False, max_mb: int = 0) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._closed = False
        self._in_tx = False
        # The last write failed: what the open transaction held waits in
        # _tx_work for the next commit.
        self.failed = False
        self._tx_work: list[tuple[str, object]] = []
        if path != ":memory:":
            self._lock(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, once a batch.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            self._unlock()
            raise StoreError(f"cannot open the store {path}: {err}") from None
        try:
            self._setup(fsync, max_mb)
        except sqlite3.DatabaseError as err:
            self._db.close()  # a store that failed to open holds nothing open
            self._unlock()
            raise StoreError(f"{path} is not a usable zchat store: {_explain(err)}") from None
        except BaseException:
            self._db.close()
            self._unlock()
            raise
        self._open: dict[str, _Open] = {}
        self._segments: list[_Open] = []
        self._topics: dict[str, str] = {}
        self._rules: dict[str, bytes] = {}
        self._pm_ids: list[tuple[object, ...]] = []
        self._claims: dict[str, tuple[str, float] | None] = {}
        if path != ":memory:":
            self._stop = threading.Event()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="wal-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _lock(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StoreError(f"cannot open the store {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"{path} is in use by another zchat-broker; give each broker a store of its own"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _setup(self, fsync: bool, max_mb: int) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables & OUR_TABLES:
            raise StoreError(
                f"{self.path} is another program's SQLite database (tables: "
                f"{', '.join(sorted(tables)[:5])}); give zchat a store of its own"
            )
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer zchat (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade zchat-broker"
            )
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Checkpoints copy the WAL into the database file, taking
            # milliseconds; in the loop they would land on the messages in
            # flight (p99 latency 5 ms instead of 1). A thread of its own,
            # on its own connection, does them instead (sqlite3 releases
            # the GIL while it works).
            db.execute("PRAGMA wal_autocheckpoint=0")
            try:
                # Writable at all? Better a clear refusal now than a crash at
                # the first message.
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            except sqlite3.OperationalError as err:
                raise StoreError(f"{self.path} cannot be written: {err}") from None
        if max_mb > 0:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(16, max_mb * 1024 * 1024 // page)}")
        db.executescript(_SCHEMA + _WORDS_SCHEMA)
        self._migrate()
        self._index_stored()
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        row = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if row is None:
            self.store_id = secrets.token_hex(8)
            db.execute("INSERT INTO meta VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = str(row[0])

    def _migrate(self) -> None:
        """Bring stores of earlier versions up to date: claims get the time
        of their last use; the one-row-per-event table of zchat 0.1 is folded
        into segments."""
        db = self._db
        columns = {r[1] for r in db.execute("PRAGMA table_info(nick_keys)")}
        if "used" not in columns:
            db.execute("ALTER TABLE nick_keys ADD COLUMN used REAL NOT NULL DEFAULT 0")
        # A claim of unknown age starts its lapse now, once: counting it as
        # used at every start would keep it forever on a broker restarted
        # more often than claims lapse.
        db.execute("UPDATE nick_keys SET used = ? WHERE used = 0", (time.time(),))
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

    def _index_stored(self) -> None:
        """Index the segments stored past ``meta.indexed``: all of a store
        made before search, the last few of a broker that was killed."""
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key = 'indexed'").fetchone()
        self._indexed = int(row[0]) if row else 0
        self._rowid = int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM segments").fetchone()[0])
        # Segments made since the last write of the index: rowid, room,
        # events; and the time of the first of them.
        self._unindexed: list[tuple[int, str, list[bytes]]] = []
        self._unindexed_bytes = 0  # what they hold: memory, bounded by INDEX_BYTES
        self._unindexed_since = 0.0
        self._index_due = False  # write the index with the next flush
        if self._rowid <= self._indexed:
            return
        db.execute("BEGIN")
        try:
            for rowid, room, blob in db.execute(
                "SELECT rowid, room, events FROM segments WHERE rowid > ?", (self._indexed,)
            ):
                text = _segment_text(blob.split(b"\n"))
                if text:
                    db.execute(
                        "INSERT INTO msg_words (rowid, room, text) VALUES (?, ?, ?)",
                        (rowid, room, text),
                    )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('indexed', ?)", (str(self._rowid),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._indexed = self._rowid

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

    def set_rules(self, room: str, body: bytes) -> None:
        self._rules[room] = body

    def swap_rules(self, room: str, old: bytes | None, new: bytes) -> bool:
        # One broker owns the store (its lock): nobody changes it meanwhile.
        self.set_rules(room, new)
        return True

    def rules(self, room: str) -> bytes | None:
        pending = self._rules.get(room)
        if pending is not None:
            return pending
        row = self._db.execute("SELECT body FROM rules WHERE room = ?", (room,)).fetchone()
        return None if row is None else bytes(row[0])

    def add_pm_id(self, sender: str, req_id: str, at: float, reply: bytes) -> None:
        self._pm_ids.append((sender, req_id, at, reply))

    def set_nick_claim(self, nick: str, key: str, used: float) -> None:
        self._claims[nick] = (key, used)

    def drop_nick_claim(self, nick: str) -> None:
        self._claims[nick] = None

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _pending(self) -> list[tuple[str, object]]:
        """What was added since the last commit, as statements to run."""
        work: list[tuple[str, object]] = []
        if self._segments:
            rows = []
            for s in self._segments:
                self._rowid += 1
                rows.append(
                    (
                        self._rowid,
                        s.room,
                        s.first,
                        s.first + len(s.bodies) - 1,
                        s.at,
                        b"\n".join(s.bodies),
                    )
                )
                if not self._unindexed:
                    self._unindexed_since = s.at
                self._unindexed.append((self._rowid, s.room, s.bodies))
                self._unindexed_bytes += len(rows[-1][5])
            work.append(
                (
                    "INSERT INTO segments (rowid, room, first, last, at, events) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            )
            if (
                len(self._unindexed) >= INDEX_SEGMENTS
                or self._unindexed_bytes >= INDEX_BYTES
                or self._segments[-1].at - self._unindexed_since >= INDEX_DELAY_S
            ):
                self._index_due = True
            self._segments.clear()
            self._open.clear()
        if self._index_due:
            self._index_due = False
            self._index_work(work)
        if self._topics:
            work.append(("INSERT OR REPLACE INTO topics VALUES (?, ?)", list(self._topics.items())))
            self._topics.clear()
        if self._rules:
            work.append(("INSERT OR REPLACE INTO rules VALUES (?, ?)", list(self._rules.items())))
            self._rules.clear()
        if self._pm_ids:
            work.append(("INSERT OR REPLACE INTO pm_ids VALUES (?, ?, ?, ?)", self._pm_ids))
            self._pm_ids = []
        if self._claims:
            work.append(
                (
                    "INSERT OR REPLACE INTO nick_keys VALUES (?, ?, ?)",
                    [(n, c[0], c[1]) for n, c in self._claims.items() if c is not None],
                )
            )
            work.append(
                (
                    "DELETE FROM nick_keys WHERE nick = ?",
                    [(n,) for n, c in self._claims.items() if c is None],
                )
            )
            self._claims.clear()
        return work

    def _index_work(self, work: list[tuple[str, object]]) -> None:
        """Add the writing of the index of the segments waiting for it to ``work``."""
        if not self._unindexed:
            return
        words = []
        for rowid, room, bodies in self._unindexed:
            text = _segment_text(bodies)
            if text:
                words.append((rowid, room, text))
        if words:
            work.append(("INSERT INTO msg_words (rowid, room, text) VALUES (?, ?, ?)", words))
        self._indexed = self._unindexed[-1][0]
        work.append(("INSERT OR REPLACE INTO meta VALUES ('indexed', ?)", [(str(self._indexed),)]))
        self._unindexed = []
        self._unindexed_bytes = 0

    def flush(self) -> None:
        """Write what was added into the batch's transaction, so that queries
        see it. After a failure here (no room), nothing is written until
        :meth:`commit` succeeds (it replays the whole transaction, and
        reports what fails then), and queries see what was committed."""
        work = self._pending()
        if not work:
            return
        # Everything of the open transaction, until it commits: a failure
        # rolls back what earlier flushes of the batch wrote, too.
        self._tx_work += work
        if self.failed:
            return
        try:
            self._begin()
            for sql, rows in work:
                self._db.executemany(sql, rows)  # type: ignore[arg-type]
        except sqlite3.Error as err:
            self._fail(err)

    def _fail(self, err: sqlite3.Error) -> None:
        self.failed = True
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._in_tx = False

    def commit(self) -> None:
        """Make everything added so far durable, in one transaction.

        Raises:
            StoreFull: there was no room; it is all kept for the next commit.
            StoreError: the store failed otherwise (it is kept likewise).
        """
        self.flush()
        try:
            if self.failed:
                self._db.execute("BEGIN")
                self._in_tx = True
                for sql, rows in self._tx_work:
                    self._db.executemany(sql, rows)  # type: ignore[arg-type]
            if self._in_tx:
                self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._fail(err)
            if not _retryable(err):
                raise StoreError(f"cannot write the store {self.path}: {err}") from None
            raise StoreFull(f"cannot write the store {self.path}: {err}") from None
        self.failed = False
        self._in_tx = False
        self._tx_work = []

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(1.0):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # a full disk: the next second tries again
        finally:
            db.close()

    def close(self) -> None:
        """Commit what is pending and close; closing twice is harmless.

        Raises:
            StoreFull: what was pending could not be written (it is lost
                with the process, and was never published or acknowledged).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.path != ":memory:":
                self._stop.set()
                self._checkpointer.join()
            self.commit()
            if self.path != ":memory:":
                # Fold the WAL back into the main file so a clean shutdown
                # leaves one self-contained database behind.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._unlock()

    # ------------------------------------------------------------ reading

    def rooms(self) -> dict[str, RoomState]:
        """Every room with events: its last seq and current topic."""
        self.flush()
        topics = dict(self._db.execute("SELECT room, topic FROM topics"))
        return {
            room: RoomState(last_seq=last, topic=topics.get(room, ""))
            for room, last in self._db.execute("SELECT room, MAX(last) FROM segments GROUP BY room")
        }

    def room_state(self, room: str) -> RoomState | None:
        """The last seq and topic of ``room``, None when it has no events."""
        self.flush()
        row = self._db.execute("SELECT MAX(last) FROM segments WHERE room = ?", (room,)).fetchone()
        if row[0] is None:
            return None
        topic = self._db.execute("SELECT topic FROM topics WHERE room = ?", (room,)).fetchone()
        return RoomState(last_seq=int(row[0]), topic=topic[0] if topic else "")

    def room_count(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT COUNT(DISTINCT room) FROM segments").fetchone()[0])

    def history(
        self,
        room: str,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        max_bytes: int = 1 << 62,
    ) -> tuple[list[bytes], bool]:
        """Up to ``limit`` event bodies of ``room``, oldest first, taking at
        most ``max_bytes`` together (but at least one), and whether more lie
        beyond them.

        With ``after``, the events just after it (``more``: newer ones remain);
        otherwise the events just before ``before`` or the end (``more``:
        older ones remain).
        """
        self.flush()
        hi = before if before is not None else 2**63 - 1
        if after is not None:
            found: list[bytes] = []
            size = 0
            for first, blob in self._db.execute(
                "SELECT first, events FROM segments WHERE room = ? AND last > ? AND first < ? "
                "ORDER BY last",
                (room, after, hi),
            ):
                for body in blob.split(b"\n")[max(0, after + 1 - first) : max(0, hi - first)]:
                    size += len(body) + 1
                    if len(found) >= limit or (found and size > max_bytes):
                        return found, True
                    found.append(body)
            return found, False
        newest: list[bytes] = []  # newest first
        size = 0
        for first, blob in self._db.execute(
            "SELECT first, events FROM segments WHERE room = ? AND first < ? ORDER BY first DESC",
            (room, hi),
        ):
            for body in reversed(blob.split(b"\n")[: hi - first]):
                size += len(body) + 1
                if len(newest) >= limit or (newest and size > max_bytes):
                    newest.reverse()
                    return newest, True
                newest.append(body)
        newest.reverse()
        return newest, False

    def page(
        self, room: str, *, after: int | None, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        events, more = self.history(
            room, after=after, before=before, limit=limit, max_bytes=max_bytes
        )
        return Page(events, more, self.first_seq(room))

    def search(
        self, room: str, text: str, *, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        """See :meth:`Backend.search`: the segments of ``room`` whose index
        row holds every word, newest first, each event checked."""
        self.flush()
        words = search_words(text)
        hi = before if before is not None else 2**63 - 1
        top = self._db.execute(
            "SELECT rowid FROM segments WHERE room = ? AND first < ? ORDER BY first DESC LIMIT 1",
            (room, hi),
        ).fetchone()
        if not words or top is None:
            return Page([], False, None)
        # Words are runs of letters and digits: quoted, nothing in them is
        # FTS5 syntax. The room's words narrow the rows; its name is checked.
        match = "text : (" + " AND ".join(f'"{w}"*' for w in words) + ")"
        room_words = search_words(room)
        if room_words:
            match = f'room : ^"{" ".join(room_words)}" AND {match}'
        found: list[bytes] = []  # newest first
        last = hi  # the seq of the oldest event looked at
        size = scanned = 0
        matches = matcher(words)
        deadline = time.perf_counter() + SEARCH_BUDGET_S
        for first, blob in self._search_rows(room, hi, min(top[0], self._indexed), match):
            if scanned >= SEARCH_SCAN or time.perf_counter() > deadline:
                found.reverse()
                return Page(found, True, None, before=last)
            bodies = blob.split(b"\n")[: max(0, hi - first)]
            scanned += len(bodies)
            for i in range(len(bodies) - 1, -1, -1):
                body = bodies[i]
                if not matches(body):
                    continue
                size += len(body) + 1
                if len(found) >= limit or (found and size > max_bytes):
                    found.reverse()
                    return Page(found, True, None, before=first + i + 1)
                found.append(body)
            last = first
        found.reverse()
        return Page(found, False, None)

    def _search_rows(self, room: str, hi: int, top: int, match: str) -> Iterator[tuple[int, bytes]]:
        """``(first, events)`` of the segments of ``room`` starting before
        ``hi``, newest first, that may hold ``match``: those not indexed
        yet, all of them; then those the index finds, up to rowid ``top``."""
        for rowid, first, blob in self._db.execute(
            "SELECT rowid, first, events FROM segments WHERE room = ? AND first < ?"
            " ORDER BY first DESC",
            (room, hi),
        ):
            if rowid <= self._indexed:
                break
            yield first, blob
        yield from self._db.execute(
            "SELECT s.first, s.events FROM msg_words AS w CROSS JOIN segments AS s"
            " ON s.rowid = w.rowid WHERE msg_words MATCH ? AND w.rowid <= ? AND s.room = ?"
            " AND s.first < ? ORDER BY w.rowid DESC",
            (match, top, room, hi),
        )

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
        db = self._db
        gone = db.execute(
            "SELECT s.rowid, s.room, s.events FROM segments AS s WHERE s.at < ?"
            " AND s.last < (SELECT MAX(t.last) FROM segments AS t WHERE t.room = s.room)"
            " LIMIT ?",
            (before, limit),
        ).fetchall()
        if not gone:
            return 0
        self.flush()
        if self._unindexed:
            dropped = {rowid for rowid, _, _ in gone}
            self._unindexed = [u for u in self._unindexed if u[0] not in dropped]
        # A savepoint: the segments and their words go together, in the
        # batch's transaction or in one of their own.
        db.execute("SAVEPOINT trim")
        try:
            words = [(rowid, room, _segment_text(blob.split(b"\n"))) for rowid, room, blob in gone]
            # A contentless index forgets a row given exactly what it indexed.
            db.executemany(
                "INSERT INTO msg_words (msg_words, rowid, room, text) VALUES ('delete', ?, ?, ?)",
                [w for w in words if w[2] and w[0] <= self._indexed],
            )
            db.executemany("DELETE FROM segments WHERE rowid = ?", [(w[0],) for w in words])
        except BaseException:
            db.execute("ROLLBACK TO trim")
            db.execute("RELEASE trim")
            raise
        db.execute("RELEASE trim")
        return len(gone)

    def housekeeping(self, now: float, retain_s: float) -> bool:
        """Forget pm ids past the dedup window and, with ``retain_s``,
        history older than it, a slice at a time, each in a transaction of
        its own; True when more history is due (come back soon rather than
        stall the loop on a big backlog). Nothing while a write is failing."""
        if self.failed:
            return False
        if self._unindexed:
            self._index_due = True
            self.commit()
        self.forget_pm_ids(now - DEDUP_S)
        return retain_s > 0 and self.trim(now - retain_s) > 0

    def summary(self) -> str:
        where = "in memory (nothing survives a restart)" if self.path == ":memory:" else self.path
        return f"{where}: {self.room_count()} rooms, {self.count()} events"

    def forget_pm_ids(self, before: float) -> None:
        # Its own transaction when no batch is open (the connection is in
        # autocommit mode): an idle broker must not sit on the write lock.
        self._db.execute("DELETE FROM pm_ids WHERE at < ?", (before,))

    def pm_ack(self, sender: str, req_id: str) -> bytes | None:
        return None  # (the core remembers every one, from recent_pm_acks)

    def nick_claims(self) -> dict[str, tuple[str, float]]:
        """Every nick claim: ``nick key -> (public key, last used)``."""
        self.flush()
        return {
            nick: (key, used)
            for nick, key, used in self._db.execute("SELECT nick, key, used FROM nick_keys")
        }

    def nick_claim(self, nick: str) -> tuple[str, float] | None:
        """The claim of ``nick`` as stored now (another process may have
        released it)."""
        self.flush()
        row = self._db.execute("SELECT key, used FROM nick_keys WHERE nick = ?", (nick,)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def count(self) -> int:
        """How many events the store holds."""
        self.flush()
        return int(
            self._db.execute("SELECT COALESCE(SUM(last - first + 1), 0) FROM segments").fetchone()[
                0
            ]
        )
