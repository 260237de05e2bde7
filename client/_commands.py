"""The terminal client's commands, in one table.

Each :class:`Command` has its name, aliases, usage, help and handler; the
dispatcher, ``/help`` and Tab completion all read :data:`COMMANDS`. A
handler checks its arguments and raises :class:`Usage` when they are not
what it takes: a mistyped command is refused with its usage, never guessed
at (``/part notjoined`` does not leave the current room with "notjoined" as
the reason, and ``/nick bad nick`` does not rename to "bad").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from messages import (
    HISTORY_MAX,
    MsgEvent,
    ProtocolError,
    check_nick,
    check_search,
    is_room,
    normalize_room,
)

from . import _render as r

if TYPE_CHECKING:
    from ._tui import ChatUI


class Usage(Exception):
    """The arguments of a command are not what it takes: show its usage
    (and, when given, why)."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


Handler = Callable[["ChatUI", str], Awaitable[bool]]


@dataclass(frozen=True)
class Command:
    """A command: ``/name`` (or an alias), its arguments' form, what it does,
    and the coroutine that does it (False from it means quit)."""

    name: str
    args: str
    help: str
    run: Handler
    aliases: tuple[str, ...] = ()
    # What Tab completes in its first argument: "room", or nicks (as anywhere).
    completes: str = ""

    @property
    def usage(self) -> str:
        return f"/{self.name} {self.args}".rstrip()


def _none(rest: str) -> None:
    if rest:
        raise Usage(f"no arguments, not {rest!r}")


def _room_word(ui: ChatUI, word: str) -> str:
    name = normalize_room(word)
    if not is_room(name):
        raise Usage(f"{word!r} is not a room name (a-z 0-9 _ -, up to 32)")
    return name


async def _help(ui: ChatUI, rest: str) -> bool:
    _none(rest)
    await ui.refresh_bot_commands()
    ui.show(r.help_table([(c.usage, c.help, c.aliases) for c in COMMANDS], ui.bot_commands))
    return True


async def _join(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if len(words) != 1:
        raise Usage()
    await ui.join(_room_word(ui, words[0]))
    return True


async def _part(ui: ChatUI, rest: str) -> bool:
    words = rest.split(maxsplit=1)
    if not words:
        if ui.current is None:
            raise Usage("you are in no room")
        room, reason = ui.current, None
    else:
        room = normalize_room(words[0])
        if room not in ui.client.rooms:
            # Not a room we are in: refused, not taken for a reason.
            hint = (
                f"; to leave #{ui.current} saying why: /part #{ui.current} REASON"
                if ui.current
                else ""
            )
            raise Usage(f"you are not in #{room}{hint}")
        reason = words[1] if len(words) > 1 else None
    await ui.client.part(room, reason)
    ui.members.pop(room, None)
    ui.show(r.info(f"you left #{room}"))
    if ui.current == room:
        ui.current = ui.client.rooms[-1] if ui.client.rooms else None
        if ui.current:
            ui.show(r.info(f"now talking in #{ui.current}"))
    return True


async def _rooms(ui: ChatUI, rest: str) -> bool:
    _none(rest)
    reply = await ui.client.list_rooms()
    ui.show(r.rooms_table(reply.rooms, ui.client.rooms))
    if reply.more:
        ui.show(r.info(f"and more than the {len(reply.rooms)} shown"))
    return True


async def _who(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if len(words) > 1:
        raise Usage()
    room = _room_word(ui, words[0]) if words else ui.current
    if room is None:
        raise Usage("you are in no room: name one")
    reply = await ui.client.who(room)
    ui.show(r.who_table(f"#{room}", reply.users))
    if reply.more:
        ui.show(r.info(f"and more than the {len(reply.users)} shown"))
    return True


async def _whosonline(ui: ChatUI, rest: str) -> bool:
    _none(rest)
    reply = await ui.client.who(None)
    count = f"{len(reply.users)}{'+' if reply.more else ''}"
    ui.show(r.who_table(f"online: {count}", reply.users))
    return True


async def _pm(ui: ChatUI, rest: str) -> bool:
    nick, _, text = rest.partition(" ")
    if not nick or not text.strip():
        raise Usage()
    ack = await ui.client.pm(nick, text)
    ui.show(r.sent_pm_line(ack.to or nick, text.rstrip(), ack.ts))
    return True


async def _me(ui: ChatUI, rest: str) -> bool:
    if not rest.strip():
        raise Usage()
    ui.send(rest, action=True)
    return True


async def _nick(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if not words:
        ui.show(r.info(f"you are {ui.client.nick}"))
        return True
    if len(words) > 1:
        raise Usage("a nick is one word")
    try:
        check_nick(words[0])
    except ProtocolError as err:
        raise Usage(err.message) from None
    reply = await ui.client.set_nick(words[0])
    if not ui.client.rooms:
        ui.show(r.info(f"you are now known as {reply.new}"))
    return True


async def _topic(ui: ChatUI, rest: str) -> bool:
    if ui.current is None:
        raise Usage("you are in no room")
    if not rest:
        rooms = (await ui.client.list_rooms()).rooms
        topic = next((x.topic for x in rooms if x.name == ui.current), "")
        ui.show(r.info(f"topic of #{ui.current}: {topic or '(none)'}"))
        return True
    await ui.client.topic(ui.current, rest)
    return True


async def _history(ui: ChatUI, rest: str) -> bool:
    if ui.current is None:
        raise Usage("you are in no room")
    words = rest.split()
    if len(words) > 1 or (words and not words[0].isdigit()):
        raise Usage()
    n = int(words[0]) if words else 20
    if not 1 <= n <= HISTORY_MAX:
        raise Usage(f"N is 1 to {HISTORY_MAX}")
    events, _ = await ui.client.history(ui.current, limit=n)
    ui.show(r.info(f"history of #{ui.current}:"))
    for ev in events:
        ui.show_event(ev)
    return True


SEARCH_SHOWN = 20  # matches /search shows
SEARCH_PAGES = 5  # requests it makes at most to find them


async def _search(ui: ChatUI, rest: str) -> bool:
    if ui.current is None:
        raise Usage("you are in no room")
    text = rest.strip()
    try:
        check_search(text)
    except ProtocolError as err:
        raise Usage(err.message) from None
    found: list[MsgEvent] = []
    before = None
    for _ in range(SEARCH_PAGES):
        events, before = await ui.client.search(
            ui.current, text, before=before, limit=SEARCH_SHOWN - len(found)
        )
        found = events + found
        if before is None or len(found) >= SEARCH_SHOWN:
            break
    if not found:
        ui.show(r.info(f"nothing in #{ui.current} matches {text!r}"))
        return True
    older = " (older ones too)" if before is not None else ""
    ui.show(r.info(f"{len(found)} in #{ui.current} matching {text!r}{older}:"))
    for ev in found:
        ui.show_found(ev)
    await ui.on_found(ui.current, found[-1].seq)
    return True


# ---------------------------------------------------------- moderation

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration(word: str) -> int | None:
    """``90s``, ``10m``, ``2h``, ``7d``, ``1w`` in seconds; None when the
    word is not a duration."""
    if len(word) < 2 or word[-1] not in _UNITS or not word[:-1].isdigit():
        return None
    seconds = int(word[:-1]) * _UNITS[word[-1]]
    return seconds if seconds > 0 else None


def _here(ui: ChatUI) -> str:
    if ui.current is None:
        raise Usage("you are in no room")
    return ui.current


def _nick_word(word: str) -> str:
    try:
        check_nick(word)
    except ProtocolError as err:
        raise Usage(err.message) from None
    return word


def _one_nick(rest: str) -> str:
    words = rest.split()
    if len(words) != 1:
        raise Usage()
    return _nick_word(words[0])


def _role_command(name: str) -> Handler:
    async def run(ui: ChatUI, rest: str) -> bool:
        nick = _one_nick(rest)
        await getattr(ui.client, name)(_here(ui), nick)
        return True

    return run


async def _invite(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if not 1 <= len(words) <= 2:
        raise Usage()
    room = _room_word(ui, words[1]) if len(words) == 2 else _here(ui)
    await ui.client.invite(room, _nick_word(words[0]))
    ui.show(r.info(f"{words[0]} may join #{room} now"))
    return True


async def _kick(ui: ChatUI, rest: str) -> bool:
    words = rest.split(maxsplit=1)
    if not words:
        raise Usage()
    await ui.client.kick(_here(ui), _nick_word(words[0]), words[1] if len(words) > 1 else None)
    return True


def _lasting(words: list[str]) -> tuple[int | None, str | None]:
    """An optional DURATION, then an optional REASON, from ``words``; a
    first word that starts like a duration must be one (``5x`` is a typo,
    not a reason for a ban for good)."""
    seconds = duration(words[0]) if words else None
    if seconds is not None:
        words = words[1:]
    elif words and words[0][:1].isdigit():
        raise Usage(f"{words[0]!r} is not a duration: 90s, 10m, 2h, 7d, 1w")
    return seconds, " ".join(words) or None


async def _ban(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    match = None
    if words and words[0] in ("-key", "-addr"):
        match = words.pop(0)[1:]
    if not words:
        raise Usage()
    room = None
    if words[0] == "*":  # (server operators) the whole server
        words.pop(0)
        room = "*"
        if not words or ":" not in words[0]:
            raise Usage("a ban of the server takes a mask: nick:NAME, key:KEY, addr:ADDRESS")
    who = words.pop(0)
    seconds, reason = _lasting(words)
    room = room or _here(ui)
    if ":" in who:
        if match is not None:
            raise Usage("-key and -addr go with a nick, not a mask")
        await ui.client.ban(room, mask=who, duration_s=seconds, reason=reason)
        if room == "*":  # no room hears of it: said here
            ui.show(r.info(f"{r.mask_words(who)} is banned from the server"))
    else:
        await ui.client.ban(
            room, nick=_nick_word(who), match=match, duration_s=seconds, reason=reason
        )
    return True


async def _unban(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    room = None
    if len(words) == 2 and words[0] == "*":
        room = words.pop(0)
    if len(words) != 1:
        raise Usage()
    mask = words[0] if ":" in words[0] else f"nick:{_nick_word(words[0])}"
    await ui.client.unban(room or _here(ui), mask)
    return True


async def _mute(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if not words:
        raise Usage()
    nick = _nick_word(words.pop(0))
    seconds, reason = _lasting(words)
    await ui.client.mute(_here(ui), nick, duration_s=seconds, reason=reason)
    return True


MODE_WORDS = ("invite_only", "moderated", "topic_lock")


async def _mode(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if not words:
        room = _here(ui)
        on = [f for f in MODE_WORDS if f in ui.modes.get(room, ())]
        ui.show(r.info(f"#{room} is {r.modes_words(on)}; /mode +SETTING or -SETTING"))
        return True
    flags: dict[str, bool] = {}
    for word in words:
        flag = word[1:].replace("-", "_")
        if word[:1] not in "+-" or flag not in MODE_WORDS:
            raise Usage(f"{word!r}: settings are +/- " + ", ".join(MODE_WORDS))
        flags[flag] = word[0] == "+"
    await ui.client.mode(_here(ui), **flags)
    return True


async def _bans(ui: ChatUI, rest: str) -> bool:
    words = rest.split()
    if len(words) > 1:
        raise Usage()
    room = "*" if words == ["*"] else _room_word(ui, words[0]) if words else _here(ui)
    ui.show(r.bans_table(await ui.client.bans(room)))
    return True


async def _oper(ui: ChatUI, rest: str) -> bool:
    if not rest.strip():
        raise Usage()
    await ui.client.oper(rest.strip())
    ui.show(r.info("you are a server operator"))
    return True


async def _kill(ui: ChatUI, rest: str) -> bool:
    words = rest.split(maxsplit=1)
    if not words:
        raise Usage()
    await ui.client.kill(_nick_word(words[0]), words[1] if len(words) > 1 else None)
    ui.show(r.info(f"{words[0]}'s session ended"))
    return True


async def _wall(ui: ChatUI, rest: str) -> bool:
    if not rest.strip():
        raise Usage()
    await ui.client.wall(rest)
    return True


async def _quit(ui: ChatUI, rest: str) -> bool:
    ui.quit_reason = rest.strip() or None
    return False


COMMANDS: tuple[Command, ...] = (
    Command("help", "", "this table, and the commands of the room's bots", _help),
    Command("join", "ROOM", "join ROOM, or talk in it if you are in it", _join, completes="room"),
    Command(
        "part",
        "[#ROOM] [REASON]",
        "leave ROOM (the current one by default), saying why",
        _part,
        aliases=("leave",),
        completes="room",
    ),
    Command("rooms", "", "rooms with people in them, with their topics", _rooms),
    Command("who", "[ROOM]", "who is in ROOM (the current one by default)", _who, completes="room"),
    Command("whosonline", "", "everyone connected", _whosonline),
    Command("pm", "NICK TEXT", "a private message", _pm, aliases=("msg",)),
    Command("me", "TEXT", "an action: * you TEXT", _me),
    Command("nick", "[NICK]", "change your nick (or say what it is)", _nick),
    Command("topic", "[TEXT]", "show or set the room's topic", _topic),
    Command(
        "history",
        "[N]",
        f"the last N events of the room (default 20, up to {HISTORY_MAX})",
        _history,
    ),
    Command(
        "search",
        "TEXT",
        f"the room's last {SEARCH_SHOWN} messages with every word of TEXT",
        _search,
    ),
    Command("op", "NICK", "make NICK an operator of the room", _role_command("op")),
    Command("deop", "NICK", "NICK is an operator no more", _role_command("deop")),
    Command("voice", "NICK", "let NICK speak while the room is moderated", _role_command("voice")),
    Command("devoice", "NICK", "take NICK's voice back", _role_command("devoice")),
    Command("invite", "NICK [#ROOM]", "let NICK join an invite-only room", _invite),
    Command("uninvite", "NICK", "take NICK's invitation back", _role_command("uninvite")),
    Command("kick", "NICK [REASON]", "put NICK out of the room (they may come back)", _kick),
    Command(
        "ban",
        "[-key|-addr] NICK|MASK [DURATION] [REASON]",
        "keep NICK (or their key, their address; or a mask like addr:10.0.0.0/8) out "
        "of the room, for a DURATION like 10m, 2h, 7d, or for good; /ban * MASK: "
        "out of the server (server operators)",
        _ban,
    ),
    Command("unban", "[*] NICK|MASK", "lift a ban (/bans lists them; *: the server's)", _unban),
    Command("mute", "NICK [DURATION] [REASON]", "NICK reads but may not speak here", _mute),
    Command("unmute", "NICK", "let NICK speak again", _role_command("unmute")),
    Command(
        "mode",
        "[+|-SETTING...]",
        "show the room's settings, or turn them on or off: invite_only, moderated, topic_lock",
        _mode,
        completes="mode",
    ),
    Command(
        "bans",
        "[#ROOM|*]",
        "the room's operators, settings, bans and mutes (* : the server's bans)",
        _bans,
        completes="room",
    ),
    Command("oper", "PASSWORD", "become a server operator", _oper),
    Command("kill", "NICK [REASON]", "(server operators) end NICK's session", _kill),
    Command("wall", "TEXT", "(server operators) a notice to everyone", _wall),
    Command("quit", "[REASON]", "leave zchat, saying why (also Ctrl-D)", _quit, aliases=("exit",)),
)
BY_NAME: dict[str, Command] = {name: c for c in COMMANDS for name in (c.name, *c.aliases)}


# Commands whose arguments are secrets: never kept in the input history.
SECRET = frozenset({"oper"})


def secret(line: str) -> bool:
    """Whether the typed ``line`` carries a password (``/oper ...``)."""
    if not line.startswith("/") or line.startswith("//"):
        return False
    command = find(line[1:].split(" ", 1)[0])
    return command is not None and command.name in SECRET


def find(name: str) -> Command | None:
    """The command typed as ``/name`` (any case), or None."""
    return BY_NAME.get(name.lower())


def usage_error(command: Command, err: Usage) -> str:
    return f"{err.why}; usage: {command.usage}" if err.why else f"usage: {command.usage}"
