"""``zchat``: the interactive terminal client.

Messages print above a prompt_toolkit input line (``patch_stdout``), so
arriving text never garbles what is being typed. A typed message is erased
from the input line and appears once, rendered, when it comes back from the
broker in its room's order. When standard input or output is not a
terminal, the same client runs in plain line mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from messages import (
    DEFAULT_ROOM,
    Code,
    JoinEvent,
    LeaveEvent,
    MsgEvent,
    NickEvent,
    PmPush,
    ProtocolError,
    normalize_room,
)

from . import _render as r
from ._client import Client, Disconnected, Reconnected, Repaired, check_endpoint
from ._errors import InvalidInput, ZchatError
from ._keys import curve_keys, fingerprint
from ._programs import add_common, run_program

BACKLOG = 10
NICK_ERRORS = (Code.NICK_TAKEN, Code.NICK_INVALID, Code.UNAUTHORIZED)


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "zchat"


class ChatUI:
    """The state of one chat screen and what each command does.

    Args:
        client: a started client.
        console: where everything is printed.
    """

    def __init__(self, client: Client, console: Console) -> None:
        self.client = client
        self.console = console
        self.current: str | None = None
        self.members: dict[str, set[str]] = {}
        self.last_day: date | None = None
        self.bot_commands: list[Any] = []
        self.status = "connected"
        self.sending = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cleared while a join prints the room's backlog, so the live events
        # that follow it are not shown before it.
        self._live = asyncio.Event()
        self._live.set()

    # --------------------------------------------------------------- output

    def show(self, renderable: Any) -> None:
        self.console.print(renderable, soft_wrap=True, highlight=False)

    def _day(self, ts: str) -> None:
        day = r.local_time(ts).date()
        if self.last_day is not None and day != self.last_day:
            self.show(r.date_line(day))
        self.last_day = day

    def on_item(self, item: Any) -> None:
        """Show one item from the client, keeping nick lists up to date."""
        if isinstance(item, Disconnected):
            self.status = "reconnecting..."
            self.show(r.error(f"reconnecting... ({item.reason})"))
            return
        if isinstance(item, Reconnected):
            self.status = "connected"
            text = "reconnected"
            if item.recovered:
                text += f"; recovered {item.recovered} missed messages"
            self.show(r.info(text))
            return
        if isinstance(item, Repaired):
            return
        ts = getattr(item, "ts", None)
        if ts is not None:
            self._day(ts)
        me = self.client.nick
        if isinstance(item, JoinEvent):
            self.members.setdefault(item.room, set()).add(item.nick)
        elif isinstance(item, LeaveEvent):
            self.members.get(item.room, set()).discard(item.nick)
        elif isinstance(item, NickEvent):
            room = self.members.setdefault(item.room, set())
            room.discard(item.old)
            room.add(item.new)
        self.show(r.event_line(item, me=me, current=self.current))
        if (isinstance(item, MsgEvent) and item.from_ != me and r.mentions(item.text, me)) or (
            isinstance(item, PmPush) and item.from_ != me
        ):
            self.console.bell()

    async def pump(self) -> None:
        async for item in self.client.items():
            await self._live.wait()
            self.on_item(item)

    # -------------------------------------------------------------- input

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, line: str) -> bool:
        """Do what a typed line says; False when it is time to quit."""
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if line.startswith("/") and not line.startswith("//"):
            name, _, rest = line[1:].partition(" ")
            handler = COMMANDS.get(name.lower())
            if handler is None:
                self.show(r.error(f"unknown command /{name}; /help lists the commands"))
                return True
            try:
                return await handler(self, rest.strip())
            except ZchatError as err:
                self.show(r.error(err.message))
            except ProtocolError as err:
                self.show(r.error(err.message))
            return True
        if line.startswith("//"):
            line = line[1:]
        self.send(line)
        return True

    def send(self, text: str, *, action: bool = False) -> None:
        if self.current is None:
            self.show(r.error("you are in no room: /join one first"))
            return
        room = self.current
        self.sending += 1

        async def go() -> None:
            try:
                await self.client.say(room, text, action=action)
            except ZchatError as err:
                self.show(r.error(f"not sent: {err.message}"))
            finally:
                self.sending -= 1

        self.spawn(go())

    async def join(self, room: str, *, backlog: int = BACKLOG) -> None:
        name = normalize_room(room)
        if name in self.client.rooms:
            self.current = name
            self.show(r.info(f"now talking in #{name}"))
            return
        self._live.clear()
        try:
            await self._join(name, backlog)
        finally:
            self._live.set()
        await self.refresh_bot_commands()

    async def _join(self, name: str, backlog: int) -> None:
        joined = await self.client.join(name)
        self.current = joined.room
        self.members[joined.room] = set(joined.members)
        if backlog and joined.seq > 1:
            events, _ = await self.client.history(joined.room, before=joined.seq, limit=backlog)
            msgs = [e for e in events if isinstance(e, MsgEvent)]
            if msgs:
                self.show(r.info(f"last messages in #{joined.room}:"))
                for ev in msgs:
                    self._day(ev.ts)
                    self.show(r.event_line(ev, me=self.client.nick, current=self.current))
        if joined.topic:
            self.show(r.info(f"topic of #{joined.room}: {joined.topic}"))
        people = ", ".join(sorted(joined.members, key=str.lower))
        count = joined.member_count or len(joined.members)
        more = f" and {count - len(joined.members)} more" if count > len(joined.members) else ""
        self.show(r.info(f"#{joined.room}: {count} here: {people}{more}"))

    async def refresh_bot_commands(self) -> None:
        with contextlib.suppress(ZchatError):
            self.bot_commands = await self.client.commands(self.current)

    # ------------------------------------------------------------- helpers

    def nicks(self) -> set[str]:
        found: set[str] = set()
        for room in self.members.values():
            found |= room
        return found


async def _help(ui: ChatUI, rest: str) -> bool:
    await ui.refresh_bot_commands()
    ui.show(r.help_table(ui.bot_commands))
    return True


async def _join(ui: ChatUI, rest: str) -> bool:
    if not rest:
        ui.show(r.error("usage: /join ROOM"))
        return True
    await ui.join(rest.split()[0])
    return True


async def _part(ui: ChatUI, rest: str) -> bool:
    words = rest.split(maxsplit=1)
    if words and (words[0].startswith("#") or normalize_room(words[0]) in ui.client.rooms):
        room, reason = normalize_room(words[0]), (words[1] if len(words) > 1 else None)
    else:
        room, reason = ui.current, rest or None
    if room is None:
        ui.show(r.error("you are in no room"))
        return True
    await ui.client.part(room, reason)
    ui.members.pop(room, None)
    ui.show(r.info(f"you left #{room}"))
    if ui.current == room:
        ui.current = ui.client.rooms[-1] if ui.client.rooms else None
        if ui.current:
            ui.show(r.info(f"now talking in #{ui.current}"))
    return True


async def _rooms(ui: ChatUI, rest: str) -> bool:
    reply = await ui.client.list_rooms()
    ui.show(r.rooms_table(reply.rooms, ui.client.rooms))
    return True


async def _who(ui: ChatUI, rest: str) -> bool:
    room = normalize_room(rest) if rest else ui.current
    reply = await ui.client.who(room)
    ui.show(r.who_table(f"#{room}" if room else "online", reply.users))
    if reply.more:
        ui.show(r.info(f"and more than the {len(reply.users)} shown"))
    return True


async def _whosonline(ui: ChatUI, rest: str) -> bool:
    reply = await ui.client.who(None)
    count = f"{len(reply.users)}{'+' if reply.more else ''}"
    ui.show(r.who_table(f"online: {count}", reply.users))
    return True


async def _pm(ui: ChatUI, rest: str) -> bool:
    nick, _, text = rest.partition(" ")
    if not nick or not text.strip():
        ui.show(r.error("usage: /pm NICK TEXT"))
        return True
    ack = await ui.client.pm(nick, text)
    ui.show(r.sent_pm_line(ack.to or nick, text.rstrip(), ack.ts))
    return True


async def _me(ui: ChatUI, rest: str) -> bool:
    if not rest:
        ui.show(r.error("usage: /me TEXT"))
    else:
        ui.send(rest, action=True)
    return True


async def _nick(ui: ChatUI, rest: str) -> bool:
    if not rest:
        ui.show(r.info(f"you are {ui.client.nick}"))
        return True
    reply = await ui.client.set_nick(rest.split()[0])
    if not ui.client.rooms:
        ui.show(r.info(f"you are now known as {reply.new}"))
    return True


async def _topic(ui: ChatUI, rest: str) -> bool:
    if ui.current is None:
        ui.show(r.error("you are in no room"))
        return True
    if not rest:
        rooms = (await ui.client.list_rooms()).rooms
        topic = next((x.topic for x in rooms if x.name == ui.current), "")
        ui.show(r.info(f"topic of #{ui.current}: {topic or '(none)'}"))
        return True
    await ui.client.topic(ui.current, rest)
    return True


async def _history(ui: ChatUI, rest: str) -> bool:
    if ui.current is None:
        ui.show(r.error("you are in no room"))
        return True
    try:
        n = int(rest) if rest else 20
    except ValueError:
        ui.show(r.error("usage: /history [N]"))
        return True
    events, _ = await ui.client.history(ui.current, limit=max(1, min(n, 500)))
    ui.show(r.info(f"history of #{ui.current}:"))
    for ev in events:
        ui.show(r.event_line(ev, me=ui.client.nick, current=ui.current))
    return True


async def _quit(ui: ChatUI, rest: str) -> bool:
    ui.quit_reason = rest or None  # type: ignore[attr-defined]
    return False


COMMANDS = {
    "help": _help,
    "join": _join,
    "part": _part,
    "leave": _part,
    "rooms": _rooms,
    "who": _who,
    "whosonline": _whosonline,
    "pm": _pm,
    "msg": _pm,
    "me": _me,
    "nick": _nick,
    "topic": _topic,
    "history": _history,
    "quit": _quit,
    "exit": _quit,
}


# ------------------------------------------------------------------ running


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zchat",
        description="Chat in the terminal. Also: 'zchat send', 'zchat tail', 'zchat bot' "
        "(each with --help).",
    )
    add_common(p)
    p.add_argument(
        "--room", action="append", help=f"a room to join (repeatable; default {DEFAULT_ROOM})"
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    console = Console(highlight=False, force_terminal=interactive or None)
    rooms = args.room or [DEFAULT_ROOM]

    async def body() -> int:
        check_endpoint(args.connect)
        try:
            curve = curve_keys(args.server_key)
        except ValueError as err:
            raise InvalidInput("bad_key", str(err)) from None
        return await _run(args, rooms, curve, console, interactive)

    # Failures before the chat starts are one line on stderr, with the
    # exit status every zchat program uses.
    return run_program("zchat", body)


async def _ask(prompt: str, interactive: bool) -> str | None:
    if interactive:
        from prompt_toolkit import PromptSession

        try:
            return await PromptSession[str]().prompt_async(prompt)
        except (EOFError, KeyboardInterrupt):
            return None
    print(prompt, end="", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.strip() if line else None


async def _connect(args: Any, curve: Any, console: Console, interactive: bool) -> Client | None:
    nick = args.nick
    if not nick:
        console.print(r.info("Welcome to zchat! Pick a nick (letters, digits, _ - .; up to 24)."))
    while True:
        if not nick:
            nick = await _ask("nick: ", interactive)
            if nick is None:
                return None
            nick = nick.strip()
            if not nick:
                continue
        client = Client(args.connect, nick, rooms=[], curve=curve, client_name="zchat-tui/0.1")
        try:
            await client.start()
        except ZchatError as err:
            if err.code not in NICK_ERRORS:
                raise  # one line on stderr, by run_program
            console.print(r.error(err.message))
            nick = None
            console.print(r.info("Pick another nick."))
            continue
        if curve is not None:
            console.print(r.info(f"encrypted; broker key {fingerprint(curve.server_public)}"))
        return client


async def _run(
    args: Any, rooms: Iterable[str], curve: Any, console: Console, interactive: bool
) -> int:
    client = await _connect(args, curve, console, interactive)
    if client is None:
        return 0  # no nick given: nothing was asked of the broker
    ui = ChatUI(client, console)
    ui.show(r.info(f"connected to {args.connect} as {client.nick}; /help lists the commands"))
    pump = asyncio.ensure_future(ui.pump())
    try:
        for room in rooms:
            try:
                await ui.join(room)
            except (ZchatError, ProtocolError) as err:
                ui.show(r.error(f"cannot join {room}: {err.message}"))
        if interactive:
            await _interactive(ui)
        else:
            await _plain(ui)
    finally:
        reason = getattr(ui, "quit_reason", None)
        await client.close(reason)
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
    return 0


async def _plain(ui: ChatUI) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        if not await ui.handle(line):
            return


async def _interactive(ui: ChatUI) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    from ._tui_complete import ChatCompleter

    directory = data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(directory / "input-history")),
        completer=ChatCompleter(ui),
        complete_while_typing=False,
        erase_when_done=True,
        bottom_toolbar=lambda: _toolbar(ui),
    )
    with patch_stdout(raw=True):
        while True:
            try:
                line = await session.prompt_async(lambda: f"[#{ui.current or '-'}] ")
            except (EOFError, KeyboardInterrupt):
                return
            if not await ui.handle(line):
                return


def _toolbar(ui: ChatUI) -> str:
    parts = [f" {ui.client.nick}", f"#{ui.current}" if ui.current else "no room", ui.status]
    if ui.sending:
        parts.append(f"{ui.sending} sending")
    return "  |  ".join(parts)
