"""Rendering, without a terminal: rich Console recording into a string."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from datetime import date

import pytest
from rich.console import Console

from client import _render as r
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, Notice, PmPush, TopicEvent, WhoUser

TS = "2026-11-24T12:34:56.789Z"


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def plain(renderable: object, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(renderable, soft_wrap=True)
    return console.file.getvalue()  # type: ignore[attr-defined]


def styled(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=80, color_system="truecolor", force_terminal=True)
    console.print(renderable, soft_wrap=True)
    return console.file.getvalue()  # type: ignore[attr-defined]


def msg(text: str, sender: str = "bob", **kw: object) -> MsgEvent:
    return MsgEvent(room="general", seq=1, ts=TS, from_=sender, text=text, **kw)  # type: ignore[arg-type]


def test_message_line_has_time_nick_and_text() -> None:
    assert (
        plain(r.event_line(msg("hello"), me="alice", current="general"))
        == "[12:34:56] <bob> hello\n"
    )


def test_other_room_is_named() -> None:
    assert (
        plain(r.event_line(msg("hi"), me="alice", current="dev"))
        == "[12:34:56] #general <bob> hi\n"
    )


def test_markup_from_the_network_stays_literal() -> None:
    line = r.event_line(msg("[bold red]boom[/] :smile:"), me="alice", current="general")
    assert plain(line) == "[12:34:56] <bob> [bold red]boom[/] :smile:\n"
    assert "\x1b[1;31m" not in styled(line)


def test_action_pm_notice_and_presence_lines() -> None:
    me = "alice"
    assert (
        plain(r.event_line(msg("waves", action=True), me=me, current="general"))
        == "[12:34:56] * bob waves\n"
    )
    pm = PmPush(from_="bob", to="alice", text="psst", ts=TS)
    assert plain(r.event_line(pm, me=me)) == "[12:34:56] [pm from bob] psst\n"
    assert plain(r.sent_pm_line("bob", "hi", TS)) == "[12:34:56] [pm to bob] hi\n"
    assert plain(r.event_line(Notice(text="bye all"), me=me)) == "*** bye all\n"
    assert plain(r.event_line(JoinEvent(room="general", seq=2, ts=TS, nick="bob"), me=me)) == (
        "[12:34:56] --> bob joined #general\n"
    )
    leave = LeaveEvent(room="general", seq=3, ts=TS, nick="bob", reason="timeout")
    assert plain(r.event_line(leave, me=me)) == "[12:34:56] <-- bob left #general (timed out)\n"
    nick = NickEvent(room="general", seq=4, ts=TS, old="bob", new="rob")
    assert plain(r.event_line(nick, me=me)) == "[12:34:56] --- bob is now known as rob\n"
    topic = TopicEvent(room="general", seq=5, ts=TS, nick="bob", topic="[i]x[/i]")
    assert (
        plain(r.event_line(topic, me=me))
        == "[12:34:56] --- bob set the topic of #general: [i]x[/i]\n"
    )


def test_mentions_are_words_and_highlighted() -> None:
    assert r.mentions("hey alice!", "alice") and r.mentions("ALICE: hi", "alice")
    assert not r.mentions("malice aforethought", "alice") and not r.mentions("alice2", "alice")
    assert "\x1b[1;7m" in styled(r.event_line(msg("hi alice"), me="alice", current="general"))
    assert "\x1b[1;7m" not in styled(r.event_line(msg("hi bob"), me="alice", current="general"))


def test_nick_colors_are_stable_and_spread() -> None:
    assert r.nick_color("Alice") == r.nick_color("alice")
    assert len({r.nick_color(f"user{i}") for i in range(50)}) > 5


def test_tables_and_date_line() -> None:
    out = plain(
        r.who_table(
            "online: 2", [WhoUser(nick="bob", idle_ms=125_000), WhoUser(nick="al", idle_ms=0)]
        )
    )
    assert out.splitlines()[0] == "online: 2"
    assert out.index("al ") < out.index("bob") and "2m" in out and "0s" in out
    assert plain(r.date_line(date(2026, 11, 25))) == "--- Wednesday 25 November 2026 ---\n"
    help_text = plain(r.help_table(), width=120)
    for name, _, _ in r.COMMANDS:
        assert name in help_text
    assert r.idle(3_723_000) == "1h02m"
