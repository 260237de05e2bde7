"""How the terminal client shows things: small functions returning rich
renderables, all printed through one Console.

Text from the network always enters as :class:`rich.text.Text` pieces,
never as markup, so ``[bold red]`` typed by someone stays literal, and
through :func:`visible`, so it cannot steer the terminal or pass for
something else: control characters (an escape sequence, a carriage return),
bidi overrides and invisible characters are shown as markers (``\x1b``,
``<U+202E>``), and the further lines of a multi-line text are indented
under its header, so that no line of one message can pass for another
sender's. The broker refuses control characters in texts already; this is
for a broker that does not, and for what it does let through.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from messages import (
    JoinEvent,
    LeaveEvent,
    ModeEvent,
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
MARKER = "reverse"
TAB = "    "  # a tab only moves right: shown as spaces, not as a marker
# What must not reach a terminal as it is: C0 and C1 controls and DEL (but
# newline, which starts an indented line, and tab), format characters (bidi
# overrides and isolates, zero-width spaces and joiners, the BOM: Unicode's
# Cf) and the line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES and ch not in "\n\t"


def _marker(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0xA0 else f"<U+{code:04X}>"


def safe(text: str) -> str:
    """``text`` on one line, with every character that could steer a
    terminal or hide itself (newlines too) written as a marker: for nicks,
    room names, reasons and topics."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        "\\n" if ch == "\n" else TAB if ch == "\t" else _marker(ch) if _hidden(ch) else ch
        for ch in text
    )


class SafeFormatter(logging.Formatter):
    """Log lines with no character that could steer a terminal (a bot's
    handler may fail on, and its traceback quote, a message's text)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(safe(line) for line in super().format(record).split("\n"))


def visible(text: str, *, indent: int = 0, style: str = "") -> Text:
    """Text from the network as a rich Text that shows what it is: markers,
    in reverse video, for hidden and control characters, and each line
    after the first indented by ``indent`` spaces, under its header."""
    result = Text(style=style)
    if text.isascii() and text.isprintable():
        result.append(text)
        return result
    plain: list[str] = []
    for ch in text:
        if ch == "\n":
            plain.append("\n" + " " * indent)
        elif ch == "\t":
            plain.append(TAB)
        elif _hidden(ch):
            result.append("".join(plain))
            plain.clear()
            result.append(_marker(ch), style=MARKER)
        else:
            plain.append(ch)
    result.append("".join(plain))
    return result


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


def event_parts(
    ev: Any, *, me: str, current: str | None = None, hang: bool = True
) -> tuple[Text, Text]:
    """One room event, push or notice as its head (time, room, sender) and
    its body; with ``hang``, the body's further lines are indented as far
    as the head is long, so that they sit under its first.

    Built from ``Text`` pieces, each with its own style: the network's text
    is never parsed as markup.
    """
    if isinstance(ev, MsgEvent):
        sender = safe(ev.from_)
        color = nick_color(sender)
        stamp, room = _stamp(ev.ts), _room(safe(ev.room), current)
        who = f"* {sender}" if ev.action else f"<{sender}>"
        head = Text.assemble(stamp, room, (who, f"bold {color}"), " ")
        body = visible(ev.text, indent=len(head) if hang else 0)
        if ev.from_ != me and mentions(ev.text, me):
            body.stylize(MENTION)
        return head, body
    if isinstance(ev, PmPush):
        if ev.from_.lower() == me.lower():
            return _pm_parts(f"[pm to {safe(ev.to)}]", ev.text, ev.ts, hang)
        return _pm_parts(f"[pm from {safe(ev.from_)}]", ev.text, ev.ts, hang)
    if isinstance(ev, Notice):
        head = Text("*** ", style="bold yellow")
        return head, visible(ev.text, indent=4 if hang else 0, style="yellow")
    if isinstance(ev, JoinEvent):
        text = f"--> {safe(ev.nick)} joined #{safe(ev.room)}"
    elif isinstance(ev, LeaveEvent):
        if ev.reason == "kick" and ev.by:
            why = f"put out by {safe(ev.by)}"
        else:
            why = LEAVE_WORDS.get(ev.reason, safe(ev.reason))
        if ev.text:
            why += f": {safe(ev.text)}"
        text = f"<-- {safe(ev.nick)} left #{safe(ev.room)} ({why})"
    elif isinstance(ev, ModeEvent):
        text = f"--- {mode_words(ev)}"
    elif isinstance(ev, NickEvent):
        text = f"--- {safe(ev.old)} is now known as {safe(ev.new)}"
    elif isinstance(ev, TopicEvent):
        text = (
            f"--- {safe(ev.nick)} set the topic of #{safe(ev.room)}: {safe(ev.topic) or '(none)'}"
        )
    else:
        return Text(), Text(safe(repr(ev)), style=DIM)
    return Text.assemble(_stamp(ev.ts)), Text(text, style=DIM)


_MODE_WORDS = {
    "op": "made {target} an operator",
    "deop": "took operator from {target}",
    "voice": "gave {target} a voice",
    "devoice": "took {target}'s voice",
    "mute": "muted {target}",
    "unmute": "unmuted {target}",
    "ban": "banned {target}",
    "unban": "lifted the ban on {target}",
    "invite": "invited {target}",
    "uninvite": "took back the invitation of {target}",
}
_FLAG_WORDS = {
    "invite_only": ("made #{room} invite-only", "opened #{room} to everyone"),
    "moderated": ("made #{room} moderated (voices only)", "let everyone speak in #{room}"),
    "topic_lock": ("locked the topic of #{room}", "unlocked the topic of #{room}"),
}


_SETTING_WORDS = {
    "invite_only": "invite-only",
    "moderated": "moderated (voices speak)",
    "topic_lock": "topic-locked",
}


def modes_words(modes: Iterable[str]) -> str:
    """A room's settings, in words: "invite-only, topic-locked"."""
    words = [_SETTING_WORDS.get(m, safe(m)) for m in modes]
    return ", ".join(words) if words else "open to all, with no settings on"


def mask_words(mask: str) -> str:
    """A ban's mask for people: ``nick:dave`` is "dave", ``addr:10.0.0.0/8``
    "the address 10.0.0.0/8", ``key:...`` "the key" and its fingerprint."""
    kind, _, value = mask.partition(":")
    if kind == "nick":
        return safe(value)
    if kind == "addr":
        return f"the address {safe(value)}"
    if kind == "key":
        return f"the key {safe(value[:8])}..."
    return safe(mask)


def mode_words(ev: Any) -> str:
    """A moderation change, in words: "alice banned bob until ...: spam"."""
    room, target = safe(ev.room), safe(ev.target or "")
    if ev.mode in _FLAG_WORDS:
        on, off = _FLAG_WORDS[ev.mode]
        what = (on if ev.on else off).format(room=room)
    elif ev.mode in ("deop", "devoice") and ev.target == ev.nick:
        role = "an operator" if ev.mode == "deop" else "a voice"
        return f"{safe(ev.nick)} is no longer {role} in #{room}"
    else:
        if ev.mode in ("ban", "unban"):
            target = mask_words(ev.target or "")
        what = _MODE_WORDS.get(ev.mode, safe(ev.mode) + " {target}").format(target=target)
        what += f" {'to' if ev.mode == 'invite' else 'in'} #{room}"
    if ev.until:
        what += f" until {local_time(ev.until):%Y-%m-%d %H:%M:%S}"
    if ev.text:
        what += f": {safe(ev.text)}"
    return f"{safe(ev.nick)} {what}"


def bans_table(reply: Any) -> Table:
    """A room's moderation: roles, settings, bans and mutes."""
    where = "the server" if reply.room == "*" else f"#{safe(reply.room)}"
    table = Table(
        title=f"moderation of {where}", title_justify="left", show_edge=False, pad_edge=False
    )
    table.add_column("what")
    table.add_column("who")
    table.add_column("by")
    table.add_column("until")
    table.add_column("why")
    for nick, role in sorted(reply.roles.items(), key=lambda x: (x[1] != "owner", x[0])):
        table.add_row(role, Text(safe(nick), style=nick_color(nick)), "", "", "")
    if reply.modes:
        table.add_row("settings", Text(", ".join(safe(m) for m in reply.modes)), "", "", "")
    for kind, entries in (("ban", reply.bans), ("mute", reply.mutes)):
        for e in entries:
            until = f"{local_time(e.until):%Y-%m-%d %H:%M}" if e.until else "for good"
            who = e.mask if kind == "ban" else e.nick
            table.add_row(
                kind, Text(safe(who)), Text(safe(e.by)), until, Text(safe(e.reason or ""))
            )
    if reply.invited:
        table.add_row("invited", Text(", ".join(safe(n) for n in reply.invited)), "", "", "")
    return table


def _pm_parts(label: str, text: str, ts: str, hang: bool) -> tuple[Text, Text]:
    head = Text.assemble(_stamp(ts), (label, PM), " ")
    return head, visible(text, indent=len(head) if hang else 0)


def event_line(ev: Any, *, me: str, current: str | None = None) -> Text:
    """One room event, push or notice as a line (for pipes and plain
    output: long lines are left to the terminal)."""
    head, body = event_parts(ev, me=me, current=current)
    return Text.assemble(head, body)


def event_grid(ev: Any, *, me: str, current: str | None = None, width: int = 80) -> Table:
    """One event for a terminal: a long text wraps at word boundaries with
    its further lines under its first, not under the time."""
    head, body = event_parts(ev, me=me, current=current, hang=False)
    grid = Table.grid(padding=0)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold", max_width=max(10, width - len(head)))
    grid.add_row(head, body)
    return grid


def rejoined_line(room: str, nicks: Sequence[str]) -> Text:
    """Everyone who came back to ``room`` after the broker restarted, in one line."""
    shown = ", ".join(safe(n) for n in nicks[:5])
    if len(nicks) > 5:
        shown += f" and {len(nicks) - 5} others"
    return info(f"#{room}: {shown} came back (the broker restarted)")


def sent_pm_line(to: str, text: str, ts: str) -> Text:
    head, body = _pm_parts(f"[pm to {safe(to)}]", text, ts, True)
    return Text.assemble(head, body)


def date_line(day: date) -> Text:
    return Text(f"--- {day:%A %d %B %Y} ---", style=DIM)


def info(text: str) -> Text:
    """A status line; whatever the network put in it is made :func:`safe`."""
    return Text.assemble(("-!- ", "bold cyan"), Text(safe(text)))


def error(text: str) -> Text:
    return Text.assemble(("-!- ", ERROR), Text(safe(text), style="red"))


# As IRC clients mark them: ~owner, @operator, +voice (* server operator).
ROLE_MARK = {"owner": "~", "op": "@", "voice": "+", "server": "*"}


def who_table(title: str, users: Iterable[Any]) -> Table:
    """People first, then the quiet sessions (scripts and readers), apart."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("nick")
    table.add_column("idle", justify="right")
    ordered = sorted(users, key=lambda u: (bool(getattr(u, "quiet", False)), u.nick.lower()))
    for u in ordered:
        if getattr(u, "quiet", False):
            name = Text.assemble((safe(u.nick), DIM), (" (script or reader)", DIM))
        else:
            name = Text(ROLE_MARK.get(getattr(u, "role", None) or "", "") + safe(u.nick))
            name.stylize(nick_color(u.nick))
        table.add_row(name, idle(u.idle_ms))
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
        count = getattr(r, "member_count", None) or len(r.members)
        table.add_row(Text(f"{mark}#{safe(r.name)}"), str(count), Text(safe(r.topic)))
    return table


def help_table(
    commands: Iterable[tuple[str, str, Sequence[str]]], bot_commands: Iterable[Any] = ()
) -> Table:
    """The commands, as ``(usage, help, aliases)``, and the bots' commands."""
    table = Table(title="commands", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("command", style="bold")
    table.add_column("what it does")
    for usage, what, aliases in commands:
        also = f" (also {', '.join('/' + a for a in aliases)})" if aliases else ""
        table.add_row(Text(usage), Text(what + also))
    for c in bot_commands:
        table.add_row(
            Text(safe(c.usage) or f"!{safe(c.name)}"), Text(f"{safe(c.help)} (bot {safe(c.nick)})")
        )
    return table
