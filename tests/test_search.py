"""Search (an addition): the contract, the SQLite store and its index, the
core's handler (rate limit, page bound), a real broker, and /search."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

import messages as m
from broker import Store
from broker._backend import SEARCH_SCAN
from broker._store import INDEX_SEGMENTS
from client import Client

from .helpers import Broker, run
from .test_commands import chat
from .test_core import World, code


def msg(room: str, seq: int, text: str) -> bytes:
    return m.encode(
        m.MsgEvent(room=room, seq=seq, ts="2026-11-24T12:00:00.123Z", from_="alice", text=text)
    )


def seqs(bodies: list[bytes]) -> list[int]:
    return [msgspec.json.decode(b)["seq"] for b in bodies]


def fill(store: Store, texts: list[str], room: str = "r", at: float = 1000.0) -> None:
    """A msg event a text, one commit (so one segment) each."""
    seq = store.room_state(room).last_seq if store.room_state(room) else 0  # type: ignore[union-attr]
    for text in texts:
        seq += 1
        store.add(room, seq, msg(room, seq, text), at)
        store.commit()


def find(store: Store, text: str, room: str = "r", **kw: int) -> list[int]:
    page = store.search(
        room,
        text,
        before=kw.get("before"),
        limit=kw.get("limit", 50),
        max_bytes=kw.get("max_bytes", 1 << 20),
    )
    return seqs(page.events)


# ------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no word"),
        ("   ", "no word"),
        ("*** ?!", "no word"),
        ("x" * (m.SEARCH_TEXT_MAX + 1), "limit is 200"),
        (" ".join("w" * (m.SEARCH_WORDS_MAX + 1)), "limit is 10"),
        ("bell\x07", "control character"),
    ],
)
def test_a_search_without_words_or_too_long_is_a_bad_request(text: str, why: str) -> None:
    frame = m.encode(m.Search(id="s1", room="general", text=text))
    with pytest.raises(m.ProtocolError) as err:
        m.decode_request(frame)
    assert err.value.code == m.Code.BAD_REQUEST and why in err.value.message


def test_words_are_letters_and_digits_matched_as_beginnings_in_any_case() -> None:
    assert m.search_words('Déjà-vu "NEAR(x)" OR a_b 42*') == [
        "déjà",
        "vu",
        "near",
        "x",
        "or",
        "a",
        "b",
        "42",
    ]
    assert m.words_match(["deploy", "fri"], "Deploying on FRIDAY, again")
    assert not m.words_match(["ploy"], "deploying")  # the beginning of a word only
    assert not m.words_match(["deploy", "monday"], "deploying on friday")


# ----------------------------------------------------------------- the store


def test_search_finds_messages_newest_page_first(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.db"))
    fill(store, ["hello world", "deploying now", "Hello again", "nothing here", "HELLO!"])
    store.add("r", 6, m.encode(m.JoinEvent(room="r", seq=6, ts="t", nick="hello")), 1000.0)
    fill(store, ["a world apart"], room="other")
    store.commit()
    assert find(store, "hello") == [1, 3, 5]  # not the join whose nick is hello
    assert find(store, "hello world") == [1]
    assert find(store, "WORLD") == [1]  # not the other room's
    assert find(store, "depl") == [2]
    assert find(store, "loy") == []
    page = store.search("r", "hello", before=None, limit=2, max_bytes=1 << 20)
    assert seqs(page.events) == [3, 5] and page.more and page.before == 2
    page = store.search("r", "hello", before=page.before, limit=2, max_bytes=1 << 20)
    assert seqs(page.events) == [1] and not page.more and page.before is None
    assert find(store, "hello", room="nowhere") == []
    store.close()


@pytest.mark.parametrize(
    "typed",
    [
        '"',
        '""',
        "*",
        "OR",
        "AND",
        "NOT",
        "NEAR(",
        "NEAR(a b, 2)",
        "room:",
        "^x",
        "x OR y",
        "(",
        "{r}: x",
        "'",
        "\\",
    ],
)
def test_what_is_typed_never_reaches_fts5_syntax(typed: str) -> None:
    store = Store()
    fill(store, ["x OR y", 'a "quoted" NEAR( b', "plain", "room: r", "^x"])
    store.add("r", 6, msg("r", 6, "and not near"), 1000.0)
    store.commit()
    words = m.search_words(typed)
    expected = [
        s
        for s, t in enumerate(
            ["x OR y", 'a "quoted" NEAR( b', "plain", "room: r", "^x", "and not near"], 1
        )
        if words and m.words_match(words, t)
    ]
    assert find(store, typed) == expected
    store.close()


def test_unicode_words() -> None:
    store = Store()
    fill(store, ["Ünïcödé rocks", "日本語 テキスト", "emoji 🎉 party", "ÉTÉ chaud", "ete froid"])
    assert find(store, "ünïcödé") == [1]
    assert find(store, "日本語") == [2]
    assert find(store, "party 🎉") == [3]  # the emoji is no word: party is
    assert find(store, "été") == [4]  # case folds, accents stay
    store.close()


def test_the_index_is_written_in_bulk_and_the_rest_is_read_as_it_is(tmp_path: Path) -> None:
    """Segments wait for the index until INDEX_SEGMENTS of them do, or the
    oldest waited a second, or housekeeping; a search sees them meanwhile,
    and a store killed before its index was written indexes them at open."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    fill(store, [f"needle {i}" for i in range(INDEX_SEGMENTS - 1)])
    assert store._indexed == 0 and find(store, "needle", limit=500) == list(
        range(1, INDEX_SEGMENTS)
    )
    fill(store, ["needle last"])
    assert (
        store._indexed == INDEX_SEGMENTS and len(find(store, "needle", limit=500)) == INDEX_SEGMENTS
    )
    fill(store, ["needle later"], at=1000.5)
    assert store._indexed == INDEX_SEGMENTS
    fill(store, ["needle a second on"], at=1001.5)
    assert store._indexed == INDEX_SEGMENTS + 2
    fill(store, ["needle unindexed"], at=1001.5)
    # Killed: the segment is committed, its index row is not.
    store._stop.set()
    store._db.close()
    store._unlock()
    again = Store(path)
    assert again._indexed == INDEX_SEGMENTS + 3
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'indexed'").fetchone() == ("259",)
    assert find(again, "unindexed") == [INDEX_SEGMENTS + 3]
    fill(again, ["needle housekept"])
    again.housekeeping(2000.0, 0)
    assert again._indexed == INDEX_SEGMENTS + 4 and find(again, "housekept") == [INDEX_SEGMENTS + 4]
    again.close()


def test_a_store_of_schema_2_is_indexed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE segments (room TEXT NOT NULL, first INTEGER NOT NULL,"
            " last INTEGER NOT NULL, at REAL NOT NULL, events BLOB NOT NULL);"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO meta VALUES ('store_id', 'abc');"
            "PRAGMA user_version = 2;"
        )
        db.executemany(
            "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
            [
                ("r", 1, 2, 5.0, msg("r", 1, "old news") + b"\n" + msg("r", 2, "older news")),
                ("dev", 1, 1, 5.0, msg("dev", 1, "news in dev")),
                ("r", 3, 3, 6.0, msg("r", 3, "fresh")),
            ],
        )
        db.commit()
    store = Store(str(path))
    assert find(store, "news") == [1, 2] and find(store, "news", room="dev") == [1]
    fill(store, ["news again"])
    assert find(store, "news") == [1, 2, 4] and store.store_id == "abc"
    store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)


def test_retention_forgets_the_words_of_what_it_drops() -> None:
    store = Store()

    def rows() -> int:
        sql = "SELECT COUNT(*) FROM msg_words WHERE msg_words MATCH 'nothing'"
        return int(store._db.execute(sql).fetchone()[0])

    fill(store, ["keep nothing", "nothing kept"], at=1000.0)
    store.housekeeping(1000.0, 0)  # indexed
    assert rows() == 2
    fill(store, ["nothing new"], at=5000.0)
    assert store.housekeeping(5000.0, 100.0) is True  # indexed the third, dropped two
    assert store.count() == 1 and find(store, "nothing") == [3]
    assert rows() == 1
    store.close()


def test_a_search_looks_at_a_bounded_number_of_events() -> None:
    """Segments whose words match but whose events do not cost reading:
    past SEARCH_SCAN events, the reply says where to go on."""
    store = Store()
    n = SEARCH_SCAN + 600
    seq = 0
    for _ in range(n // 200):
        for i in range(200):
            seq += 1
            # Both words in every segment, never in one message but the first.
            text = "alpha beta" if seq == 1 else ("alpha" if i % 2 else "beta")
            store.add("r", seq, msg("r", seq, text), 1000.0)
        store.commit()
    # Each page looks at SEARCH_SCAN events at most (and stops sooner when
    # its SEARCH_BUDGET_S is spent): the pages go on to the one match.
    before: int | None = None
    for _ in range(1000):
        page = store.search("r", "alpha beta", before=before, limit=50, max_bytes=1 << 20)
        if not page.more:
            break
        assert page.events == [] and page.before is not None
        assert (before or seq + 1) - page.before <= SEARCH_SCAN + 256
        before = page.before
    assert seqs(page.events) == [1] and not page.more
    store.close()


# ------------------------------------------------------------------ the core


def test_search_costs_five_tokens_reads_any_room_and_fits_a_page() -> None:
    w = World(rate=1, burst=10, max_reply_bytes=4096)
    w.hello(b"a", "alice", "general")
    for i in range(2):
        w.now += 1
        assert isinstance(
            w.ask(b"a", m.Say(room="general", text=f"needle {i} " + "x" * 1500)), m.Ack
        )
    w.hello(b"b", "bob")  # in no room: history and search read any room
    reply = w.ask(b"b", m.Search(id="s1", room="general", text="NEEDLE"))
    assert isinstance(reply, m.SearchReply) and reply.id == "s1"
    # 4 KiB (less the envelope) hold one or two of these: the newest last.
    found = [msgspec.json.decode(e) for e in reply.events]
    assert found[-1]["text"].startswith("needle 1") and len(m.encode(reply)) <= 4096
    # Five tokens a search (it may look through thousands of events): the
    # second of a burst of ten is the last.
    assert isinstance(w.ask(b"b", m.Search(room="general", text="needle")), m.SearchReply)
    limited = w.ask(b"b", m.Search(room="general", text="needle"))
    assert code(limited) == "rate_limited"
    assert code(w.ask(b"b", m.Search(room="Bad Room", text="x"))) == "room_invalid"
    assert code(w.ask(b"b", m.Search(room="general", text="!!"))) == "bad_request"


def test_search_pages_cut_by_bytes_then_by_limit() -> None:
    w = World(rate=0, max_reply_bytes=8192)
    w.hello(b"a", "alice", "general")
    for i in range(10):
        w.ask(b"a", m.Say(room="general", text=f"needle {i} " + "x" * 2000))
    seen: list[int] = []
    before = None
    for _ in range(10):
        reply = w.ask(b"a", m.Search(room="general", text="needle", before=before))
        got = [msgspec.json.decode(e)["seq"] for e in reply.events]
        assert got and len(m.encode(reply)) <= 8192 and got == sorted(got)
        seen = got + seen
        if not reply.more:
            assert reply.before is None
            break
        before = reply.before
    assert seen == list(range(2, 12))  # every say, once, in order (seq 1 is the join)
    reply = w.ask(b"a", m.Search(room="general", text="needle", limit=3))
    assert [msgspec.json.decode(e)["seq"] for e in reply.events] == [9, 10, 11]
    assert reply.more and reply.before == 9


# --------------------------------------------------------------- end to end


def test_search_over_real_sockets_and_the_line_client(make_broker: Callable[..., Broker]) -> None:
    b = make_broker("--rate", "0")

    async def body() -> None:
        async with Client(b.endpoint, "alice", rooms=["general"]) as alice:
            for text in ["ship the release", "lunch?", "Release notes are out", "shipping it"]:
                await alice.say("general", text)
            events, before = await alice.search("#general", "release")
            assert [e.text for e in events] == ["ship the release", "Release notes are out"]
            assert before is None
            events, before = await alice.search("general", "ship", limit=1)
            assert [e.text for e in events] == ["shipping it"] and before is not None
            events, before = await alice.search("general", "ship", before=before)
            assert [e.text for e in events] == ["ship the release"] and before is None
        async with chat(b, "bob", "general") as s:
            start = len(s.text())  # after the backlog shown at join
            assert await s.ui.handle("/search release notes")
            out = s.text()[start:]
            assert "1 in #general matching 'release notes'" in out
            assert "alice" in out and "Release notes are out" in out and "lunch" not in out
            assert await s.ui.handle("/search")
            assert "no word to look for; usage: /search TEXT" in s.text()
            assert await s.ui.handle("/search dinner")
            assert "nothing in #general matches 'dinner'" in s.text()

    run(body())
