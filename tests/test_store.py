"""The history store on its own: segments, history windows, restarts and
the upgrade from one row per event."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import Store
from broker._store import SEGMENT_MAX


def body(room: str, seq: int) -> bytes:
    return msgspec.json.encode({"type": "msg", "room": room, "seq": seq, "text": f"line\n{seq}"})


def seqs(bodies: list[bytes]) -> list[int]:
    return [msgspec.json.decode(b)["seq"] for b in bodies]


def fill(store: Store, batches: list[int], room: str = "r", at: float = 1000.0) -> int:
    """Add events in batches of the given sizes, one commit each; returns the last seq."""
    seq = 0
    for size in batches:
        for _ in range(size):
            seq += 1
            store.add(room, seq, body(room, seq), at)
        store.commit()
    return seq


def old_store(path: Path, rows: list[tuple[object, ...]]) -> None:
    """Write ``rows`` into a store as zchat 0.1 kept it: one row per event."""
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS events (room TEXT NOT NULL, seq INTEGER NOT NULL, "
            "at REAL NOT NULL, sender TEXT, req_id TEXT, kind TEXT NOT NULL, "
            "body BLOB NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID"
        )
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()


def expected(n: int, after: int | None, before: int | None, limit: int) -> tuple[list[int], bool]:
    """What ``history`` means, written as plainly as possible."""
    hi = before if before is not None else n + 1
    if after is not None:
        window = [s for s in range(1, n + 1) if after < s < hi]
        return window[:limit], len(window) > limit
    window = [s for s in range(1, n + 1) if s < hi]
    return window[-limit:] if limit else [], len(window) > limit


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.integers(1, 2 * SEGMENT_MAX + 3), min_size=0, max_size=6),
    after=st.none() | st.integers(-1, 1600),
    before=st.none() | st.integers(0, 1600),
    limit=st.integers(1, 600),
)
def test_history_matches_a_plain_list(
    batches: list[int], after: int | None, before: int | None, limit: int
) -> None:
    with closing(Store(":memory:")) as store:
        n = fill(store, batches)
        fill(store, [3], room="other")  # another room's events never leak in
        found, more = store.history("r", after=after, before=before, limit=limit)
        assert (seqs(found), more) == expected(n, after, before, limit)
        assert store.count() == n + 3


def test_a_batch_is_split_into_bounded_segments(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.db"))
    fill(store, [SEGMENT_MAX * 2 + 1, 1])
    store.close()
    with closing(sqlite3.connect(tmp_path / "s.db")) as db:
        rows = db.execute("SELECT first, last FROM segments ORDER BY first").fetchall()
    assert rows == [
        (1, SEGMENT_MAX),
        (SEGMENT_MAX + 1, 2 * SEGMENT_MAX),
        (2 * SEGMENT_MAX + 1, 2 * SEGMENT_MAX + 1),
        (2 * SEGMENT_MAX + 2, 2 * SEGMENT_MAX + 2),
    ]


def test_events_topics_and_pm_ids_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = Store(path)
    fill(store, [5, 2], at=1000.0)
    fill(store, [4], room="dev", at=2000.0)
    store.set_topic("dev", "ship it")
    store.add_pm_id("alice", "p1", 2000.0, b'{"type":"ack"}')
    store.commit()
    store.close()
    again = Store(path)
    assert {r: (s.last_seq, s.topic) for r, s in again.rooms().items()} == {
        "r": (7, ""),
        "dev": (4, "ship it"),
    }
    assert seqs(list(again.recent_events(1500.0))) == [1, 2, 3, 4]
    assert list(again.recent_pm_acks(1500.0)) == [("alice", "p1", b'{"type":"ack"}')]
    again.forget_pm_ids(2001.0)
    assert list(again.recent_pm_acks(0)) == []
    found, more = again.history("r", after=None, before=None, limit=100)
    assert seqs(found) == list(range(1, 8)) and not more
    again.close()


def test_a_store_of_one_row_per_event_is_upgraded(tmp_path: Path) -> None:
    """zchat 0.1 kept an ``events`` table; opening it moves every event into
    segments, keeps the topics, and drops the old table."""
    path = tmp_path / "old.db"
    rows = [("r", s, 1000.0 + s, "alice", f"m{s}", "msg", body("r", s)) for s in range(1, 601)]
    topic = msgspec.json.encode({"type": "topic", "room": "dev", "seq": 1, "topic": "old"})
    rows.append(("dev", 1, 5.0, None, None, "topic", topic))
    old_store(path, rows)
    store = Store(str(path))
    assert {r: (s.last_seq, s.topic) for r, s in store.rooms().items()} == {
        "r": (600, ""),
        "dev": (1, "old"),
    }
    found, more = store.history("r", after=250, before=None, limit=20)
    assert seqs(found) == list(range(251, 271)) and more
    assert store.count() == 601
    # The newest segment is dated by its newest event, so dedup reload sees it.
    assert 600 in seqs(list(store.recent_events(1599.0)))
    store.close()
    with closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert "events" not in tables and "segments" in tables


def test_an_idle_store_holds_no_write_lock(tmp_path: Path) -> None:
    """Dropping old pm ids happens between batches; it must not leave a
    transaction open on a broker that then goes quiet."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    store.add_pm_id("alice", "p1", 1000.0, b"{}")
    store.commit()
    store.forget_pm_ids(2000.0)
    other = sqlite3.connect(path, timeout=0)
    other.execute("INSERT INTO meta VALUES ('probe', 'x')")  # "database is locked" if held
    other.commit()
    other.close()
    assert list(store.recent_pm_acks(0)) == []
    store.close()


def test_an_upgrade_that_fails_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_store(path, [("r", 1, 1.0, None, None, "msg", body("r", 1))])
    old_store(path, [("r", 2, 2.0, None, None, "topic", b"{")])  # not JSON
    with pytest.raises(msgspec.DecodeError):
        Store(str(path))
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0
    db.close()


def test_trim_drops_old_segments_but_each_rooms_newest(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = Store(path)
    fill(store, [3, 3, 3], at=1000.0)  # r: three old segments
    fill(store, [2], room="quiet", at=1000.0)  # its only segment, old too
    for seq in (10, 11):
        store.add("r", seq, body("r", seq), 5000.0)
    store.commit()
    assert store.trim(2000.0, limit=2) == 2  # a slice at a time
    assert store.trim(2000.0) == 1
    assert store.trim(2000.0) == 0
    found, more = store.history("r", after=None, before=None, limit=50)
    assert seqs(found) == [10, 11] and not more
    assert seqs(store.history("quiet", after=0, before=None, limit=50)[0]) == [1, 2]
    store.close()
    again = Store(path)  # the last seq of every room survives
    assert {r: s.last_seq for r, s in again.rooms().items()} == {"r": 11, "quiet": 2}
    again.close()
