"""``zchat``: the interactive terminal client.

Messages print above a prompt_toolkit input line (``patch_stdout``), so
arriving text never garbles what is being typed. A typed message is erased
from the input line and appears once, rendered, when it comes back from the
broker in its room's order. When standard input or output is not a
terminal, the same client runs in plain line mode. Commands are in
``_commands.py``.
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
    Joined,
    JoinEvent,
    LeaveEvent,
    ModeEvent,
    MsgEvent,
    NickEvent,
    PmPush,
    normalize_room,
)

from . import _commands
from . import _render as r
from ._client import Client, Disconnected, Reconnected, Repaired, check_endpoints, valid_room
from ._errors import InvalidInput, ZchatError
from ._keys import curve_keys, fingerprint
from ._programs import add_common, read_line, run_program

BACKLOG = 10
NICK_ERRORS = (Code.NICK_TAKEN, Code.NICK_INVALID, Code.UNAUTHORIZED)
# After the broker restarted, everyone rejoins at once: joins within this
# long of our own reconnection are told in one line per room.
REJOIN_WINDOW_S = 5.0
# The same nick change comes once from each room it is announced in.
NICK_ECHO_S = 10.0


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
        wrap: wrap long messages under their first line (a terminal), rather
            than leave them on one line (a pipe).
    """

    def __init__(self, client: Client, console: Console, *, wrap: bool = False) -> None:
        self.client = client
        self.console = console
        self.wrap = wrap
        self.current: str | None = None
        self.members: dict[str, set[str]] = {}
        # The settings on in each room (invite_only, moderated, topic_lock),
        # from joined and kept by its mode events.
        self.modes: dict[str, set[str]] = {}
        self.last_day: date | None = None
        self.bot_commands: list[Any] = []
        self.status = "connected"
        self.sending = 0
        self.quit_reason: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cleared while a join prints the room's backlog, so the live events
        # that follow it are not shown before it.
        self._live = asyncio.Event()
        self._live.set()
        self._rejoin_until = 0.0
        self._reconnecting = False
        self._rejoined: dict[str, list[str]] = {}
        self._nick_changes: dict[tuple[str, str], float] = {}

    # --------------------------------------------------------------- output

    def show(self, renderable: Any) -> None:
        self.console.print(renderable, soft_wrap=True, highlight=False)

    def show_event(self, ev: Any) -> None:
        """One event or push as a line: in a terminal, a long one wraps with
        its further lines under its text."""
        ts = getattr(ev, "ts", None)
        if ts is not None:
            self._day(ts)
        me = self.client.nick
        if self.wrap:
            self.console.print(
                r.event_grid(ev, me=me, current=self.current, width=self.console.width),
                highlight=False,
            )
        else:
            self.show(r.event_line(ev, me=me, current=self.current))

    def _day(self, ts: str) -> None:
        day = r.local_time(ts).date()
        if self.last_day is not None and day != self.last_day:
            self.show(r.date_line(day))
        self.last_day = day

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def on_item(self, item: Any) -> None:
        """Show one item from the client, keeping nick lists up to date."""
        if isinstance(item, Disconnected):
            self.status = "reconnecting..."
            self._reconnecting = True
            where = f" to {item.endpoint}" if item.endpoint else ""
            self.show(r.error(f"reconnecting{where}... ({item.reason})"))
            return
        if isinstance(item, Reconnected):
            self.status = "connected"
            self._reconnecting = False
            text = "reconnected"
            if item.endpoint:
                text += f" to {item.endpoint}"  # another node: of course it "restarted"
            elif item.restarted:
                text += " (the broker restarted)"
            if item.restarted:
                self._rejoin_until = self._now() + REJOIN_WINDOW_S
                self.spawn(self._end_rejoins())
            if item.recovered:
                text += f"; recovered {item.recovered} missed messages"
            self.show(r.info(text))
            for where, why in item.lost:
                self.members.pop(where, None)
                self.show(r.error(f"could not rejoin #{where}: {why}"))
                if self.current == where:
                    rooms = self.client.rooms
                    self.current = rooms[-1] if rooms else None
                    if self.current:
                        self.show(r.info(f"now talking in #{self.current}"))
            if not item.restarted:
                # Not the burst of a restart: the joins meanwhile were real.
                for where, nicks in self._rejoined.items():
                    for nick in nicks:
                        self.show(r.info(f"{nick} joined #{where}"))
                self._rejoined.clear()
            return
        if isinstance(item, Repaired):
            return
        me = self.client.nick
        room = getattr(item, "room", None)
        if isinstance(item, JoinEvent):
            self.members.setdefault(item.room, set()).add(item.nick)
            if self._reconnecting or self._now() < self._rejoin_until:
                # Our own rejoin is said by "reconnected"; others' are told
                # together, once it is clear whether the broker restarted.
                if item.nick != me:
                    self._rejoined.setdefault(item.room, []).append(item.nick)
                return
        elif room in self._rejoined:
            if not self._reconnecting:
                self._flush_rejoins(room)  # told before what came after them
            else:
                # Whether the broker restarted is not known yet, but one who
                # speaks, leaves or changes nick now joined first: told first.
                who = item.old if isinstance(item, NickEvent) else getattr(item, "nick", None)
                who = getattr(item, "from_", who)
                held = self._rejoined[room]
                if who in held:
                    held.remove(who)
                    self.show(r.info(f"{who} joined #{room}"))
        if isinstance(item, LeaveEvent):
            self.members.get(item.room, set()).discard(item.nick)
            if item.reason == "kick" and item.nick == me and item.room not in self.client.rooms:
                self.show_event(item)
                self.put_out(item.room)
                return
        elif isinstance(item, NickEvent):
            members = self.members.setdefault(item.room, set())
            members.discard(item.old)
            members.add(item.new)
            key, now = (item.old, item.new), self._now()
            if now - self._nick_changes.get(key, -NICK_ECHO_S) < NICK_ECHO_S:
                return  # the same change, announced in another room we share
            self._nick_changes = {
                k: t for k, t in self._nick_changes.items() if now - t < NICK_ECHO_S
            }
            self._nick_changes[key] = now
        if isinstance(item, ModeEvent) and item.on is not None:
            flags = self.modes.setdefault(item.room, set())
            (flags.add if item.on else flags.discard)(item.mode)
        self.show_event(item)
        if (isinstance(item, MsgEvent) and item.from_ != me and r.mentions(item.text, me)) or (
            isinstance(item, PmPush) and item.from_ != me
        ):
            self.console.bell()

    def put_out(self, room: str) -> None:
        """Kicked or banned from ``room``: the client forgot it already."""
        self.members.pop(room, None)
        if self.current == room:
            self.current = self.client.rooms[-1] if self.client.rooms else None
            if self.current:
                self.show(r.info(f"now talking in #{self.current}"))

    def _flush_rejoins(self, room: str) -> None:
        nicks = self._rejoined.pop(room, [])
        if nicks:
            self.show(r.rejoined_line(room, nicks))

    async def _end_rejoins(self) -> None:
        await asyncio.sleep(REJOIN_WINDOW_S)  # the window itself, not a wait for anything
        for room in list(self._rejoined):
            self._flush_rejoins(room)

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
            command = _commands.find(name)
            if command is None:
                self.show(r.error(f"unknown command /{name}; /help lists the commands"))
                return True
            try:
                return await command.run(self, rest.strip())
            except _commands.Usage as err:
                self.show(r.error(_commands.usage_error(command, err)))
            except ZchatError as err:
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
        self.modes[joined.room] = set(joined.modes or ())
        self.on_joined(joined)
        if backlog and joined.seq > 1:
            events, _ = await self.client.history(joined.room, before=joined.seq, limit=backlog)
            msgs = [e for e in events if isinstance(e, MsgEvent)]
            if msgs:
                self.show(r.info(f"last messages in #{joined.room}:"))
                for ev in msgs:
                    self.show_event(ev)
        if joined.topic:
            self.show(r.info(f"topic of #{joined.room}: {joined.topic}"))
        if joined.modes:
            self.show(r.info(f"#{joined.room} is {r.modes_words(joined.modes)}"))
        people = ", ".join(sorted(joined.members, key=str.lower))
        count = joined.member_count or len(joined.members)
        more = f" and {count - len(joined.members)} more" if count > len(joined.members) else ""
        self.show(r.info(f"#{joined.room}: {count} here: {people}{more}"))

    def on_joined(self, joined: Joined) -> None:
        """Called when a join is accepted, before its backlog is shown (the
        full-screen client keeps the topic)."""

    def show_found(self, ev: Any) -> None:
        """A match of /search, shown below what is there."""
        self.show_event(ev)

    async def on_found(self, room: str, seq: int) -> None:
        """Called after /search listed its matches, with the newest one's
        seq (the full-screen client scrolls its room there)."""

    async def refresh_bot_commands(self) -> None:
        with contextlib.suppress(ZchatError):
            self.bot_commands = await self.client.commands(self.current)

    # ------------------------------------------------------------- helpers

    def nicks(self) -> set[str]:
        found: set[str] = set()
        for room in self.members.values():
            found |= room
        return found


# ------------------------------------------------------------------ running


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zchat",
        description="Chat in the terminal. Also: 'zchat send', 'zchat tail', 'zchat bot' "
        "(each with --help).",
    )
    add_common(p)
    p.add_argument(
        "--plain",
        action="store_true",
        help="the line client: messages above an input line, in one stream "
        "(the default when output is not a terminal or TERM is dumb)",
    )
    p.add_argument(
        "--room", action="append", help=f"a room to join (repeatable; default {DEFAULT_ROOM})"
    )
    return p


def wants_fullscreen(plain: bool, interactive: bool, term: str) -> bool:
    """The full-screen client on a terminal; the line client with --plain,
    a pipe, or a terminal that cannot move the cursor (TERM=dumb)."""
    return interactive and not plain and term not in ("", "dumb")


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    # Under textual-serve (make serve) the screen is a browser's, through
    # stdin and stdout: nothing else may be printed there, nor asked.
    web = "web_driver" in os.environ.get("TEXTUAL_DRIVER", "")
    fullscreen = web or wants_fullscreen(args.plain, interactive, os.environ.get("TERM", ""))
    console = Console(highlight=False, force_terminal=interactive or None, stderr=web)

    async def body() -> int:
        check_endpoints(args.connect)
        if web and not args.nick:
            raise InvalidInput("no_nick", "in a browser, give --nick (or ZCHAT_NICK)")
        rooms = [valid_room(room) for room in args.room or [DEFAULT_ROOM]]
        try:
            curve = curve_keys(args.server_key)
        except ValueError as err:
            raise InvalidInput("bad_key", str(err)) from None
        return await _run(args, rooms, curve, console, interactive, fullscreen)

    # Failures before the chat starts are one line on stderr, with the exit
    # status every zchat program uses; SIGTERM and SIGHUP say goodbye.
    return run_program("zchat", body)


async def _ask(prompt: str, interactive: bool) -> str | None:
    if interactive:
        from prompt_toolkit import PromptSession

        try:
            return await PromptSession[str]().prompt_async(prompt)
        except (EOFError, KeyboardInterrupt):
            return None
    print(prompt, end="", flush=True)
    line = await read_line()
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
            await client.start(timeout=args.timeout)
        except ZchatError as err:
            if err.code not in NICK_ERRORS:
                raise  # one line on stderr, by run_program
            console.print(r.error(err.message))
            nick = None
            console.print(r.info("Pick another nick."))
            continue
        if curve is not None:
            console.print(
                r.info(
                    f"encrypted; broker key {fingerprint(curve.server_public)}, "
                    f"yours {fingerprint(curve.public)}"
                )
            )
        return client


async def _run(
    args: Any,
    rooms: Iterable[str],
    curve: Any,
    console: Console,
    interactive: bool,
    fullscreen: bool = False,
) -> int:
    client = await _connect(args, curve, console, interactive)
    if client is None:
        return 0  # no nick given: nothing was asked of the broker
    if fullscreen:
        from ._fullscreen import run_fullscreen

        return await run_fullscreen(client, list(rooms), curve)
    ui = ChatUI(client, console, wrap=interactive)
    ui.show(r.info(f"connected to {client.endpoint} as {client.nick}; /help lists the commands"))
    pump = asyncio.ensure_future(ui.pump())
    try:
        for room in rooms:
            try:
                await ui.join(room)
            except ZchatError as err:
                ui.show(r.error(f"cannot join #{room}: {err.message}"))
        if interactive:
            await _interactive(ui)
        else:
            await _plain(ui)
    finally:
        await client.close(ui.quit_reason)
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
    return 0


async def _plain(ui: ChatUI) -> None:
    while True:
        line = await read_line()
        if not line:
            return
        if not await ui.handle(line):
            return


def private_file(path: Path) -> Path:
    """``path``, made if needed, readable by its owner only: what a person
    typed holds private messages."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    return path


async def _interactive(ui: ChatUI) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    from ._tui_complete import ChatCompleter

    class History(FileHistory):
        def append_string(self, string: str) -> None:
            if not _commands.secret(string):  # a password is not kept, nor recalled
                super().append_string(string)

    session: PromptSession[str] = PromptSession(
        history=History(str(private_file(data_dir() / "input-history"))),
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
