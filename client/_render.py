"""How the terminal client shows things: small functions returning rich
renderables, all printed through one Console.

Text from the network always enters as :class:`rich.text.Text` pieces,
never as markup, so ``[bold red]`` typed by someone stays literal.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from messages import (
    JoinEvent,
    LeaveEvent,
    MsgEvent,
    NickEvent,
    Notice,
    PmPush,
    TopicEvent,
    parse_ts,
)

# Colors that read well on dark and light terminals; red is kept for errors.
NICK_COLORS = (
    "cyan",
    "green",
    "yellow",
    "blue",
    "magenta",
    "bright_cyan",
    "bright_green",
    "bright_blue",
    "bright_magenta",
    "dark_orange",
    "spring_green2",
    "deep_sky_blue1",
    "orchid",
    "gold3",
)
DIM = "dim"
ERROR = "bold red"
PM = "bold magenta"
MENTION = "bold reverse"

LEAVE_WORDS = {"part": "parted", "quit": "quit", "timeout": "timed out", "kick": "kicked"}


def nick_color(nick: str) -> str:
    """A color of its own for each nick, the same in every session."""
    return NICK_COLORS[zlib.crc32(nick.lower().encode()) % len(NICK_COLORS)]


def local_time(ts: str) -> datetime:
    return parse_ts(ts).astimezone()


def mentions(text: str, nick: str) -> bool:
    """Whether ``text`` names ``nick`` as a word (case-insensitive)."""
    return re.search(rf"(?<![\w.-]){re.escape(nick)}(?![\w-])", text, re.IGNORECASE) is not None


def _stamp(ts: str) -> tuple[str, str]:
    return (f"[{local_time(ts):%H:%M:%S}] ", DIM)


def _room(room: str, current: str | None) -> tuple[str, str]:
    return ("" if room == current else f"#{room} ", DIM)


def event_line(ev: Any, *, me: str, current: str | None = None) -> Text:
    """One room event, push or notice as a line.

    Built with ``Text.assemble`` so each piece keeps its own style, and the
    network's text is never parsed as markup.
    """
    if isinstance(ev, MsgEvent):
        color = nick_color(ev.from_)
        body = Text(ev.text)
        if ev.from_ != me and mentions(ev.text, me):
            body.stylize(MENTION)
        if ev.action:
            who: tuple[str, str] = (f"* {ev.from_}", f"bold {color}")
        else:
            who = (f"<{ev.from_}>", f"bold {color}")
        return Text.assemble(_stamp(ev.ts), _room(ev.room, current), who, " ", body)
    if isinstance(ev, PmPush):
        if ev.from_.lower() == me.lower():
            return sent_pm_line(ev.to, ev.text, ev.ts)
        return Text.assemble(_stamp(ev.ts), (f"[pm from {ev.from_}]", PM), " ", Text(ev.text))
    if isinstance(ev, Notice):
        return Text.assemble(("*** ", "bold yellow"), Text(ev.text, style="yellow"))
    if isinstance(ev, JoinEvent):
        text = f"--> {ev.nick} joined #{ev.room}"
    elif isinstance(ev, LeaveEvent):
        text = f"<-- {ev.nick} left #{ev.room} ({LEAVE_WORDS.get(ev.reason, ev.reason)})"
    elif isinstance(ev, NickEvent):
        text = f"--- {ev.old} is now known as {ev.new}"
    elif isinstance(ev, TopicEvent):
        text = f"--- {ev.nick} set the topic of #{ev.room}: {ev.topic or '(none)'}"
    else:
        return Text(repr(ev), style=DIM)
    return Text.assemble(_stamp(ev.ts), Text(text, style=DIM))


def sent_pm_line(to: str, text: str, ts: str) -> Text:
    return Text.assemble(_stamp(ts), (f"[pm to {to}]", PM), " ", Text(text))


def date_line(day: date) -> Text:
    return Text(f"--- {day:%A %d %B %Y} ---", style=DIM)


def info(text: str) -> Text:
    return Text.assemble(("-!- ", "bold cyan"), Text(text))


def error(text: str) -> Text:
    return Text.assemble(("-!- ", ERROR), Text(text, style="red"))


def who_table(title: str, users: Iterable[Any]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("nick")
    table.add_column("idle", justify="right")
    for u in sorted(users, key=lambda u: u.nick.lower()):
        table.add_row(Text(u.nick, style=nick_color(u.nick)), idle(u.idle_ms))
    return table


def idle(ms: int) -> str:
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rooms_table(rooms: Iterable[Any], joined: Sequence[str]) -> Table:
    table = Table(title="rooms", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("room")
    table.add_column("people", justify="right")
    table.add_column("topic")
    for r in rooms:
        mark = "*" if r.name in joined else " "
        table.add_row(f"{mark}#{r.name}", str(len(r.members)), Text(r.topic))
    return table


COMMANDS: list[tuple[str, str, str]] = [
    ("/help", "", "this table"),
    ("/join", "ROOM", "join ROOM (or switch to it)"),
    ("/part", "[ROOM] [REASON]", "leave ROOM (the current one by default)"),
    ("/rooms", "", "rooms with people in them"),
    ("/who", "[ROOM]", "who is in ROOM (the current one by default)"),
    ("/whosonline", "", "everyone connected"),
    ("/pm", "NICK TEXT", "a private message (also /msg)"),
    ("/me", "TEXT", "an action: * you TEXT"),
    ("/nick", "NICK", "change your nick"),
    ("/topic", "[TEXT]", "show or set the room's topic"),
    ("/history", "[N]", "the last N messages of the room (default 20)"),
    ("/quit", "[REASON]", "leave zchat (also Ctrl-D)"),
]


def help_table(bot_commands: Iterable[Any] = ()) -> Table:
    table = Table(title="commands", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("command", style="bold")
    table.add_column("arguments")
    table.add_column("what it does")
    for name, args, what in COMMANDS:
        table.add_row(name, args, what)
    for c in bot_commands:
        table.add_row(Text(f"!{c.name}"), Text(c.usage), Text(f"{c.help} (bot {c.nick})"))
    return table
