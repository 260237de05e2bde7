"""``zchat`` on a terminal: the full-screen client, on Textual.

The screen has the rooms on the left (unread counts, mentions of your nick
highlighted, the current one marked), the current room's messages in the
middle under its topic, its members on the right with their idle times, a
status line and the input line. Private messages open a conversation of
their own in the room list.

What happens is the line client's: :class:`FullscreenUI` is a
:class:`~client._tui.ChatUI` whose ``show`` and ``show_event`` put lines
into the room they belong to instead of printing them, so every command of
``_commands.py``, the reconnect lines and the safe rendering of
``_render.py`` are the same here. Tab completion is the line client's
completer, and input history its file.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar

import msgspec
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from rich.console import Console, RenderableType
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, RichLog, Static

from messages import HISTORY_MAX, Joined, ModeEvent, MsgEvent, PmPush, TopicEvent

from . import _commands
from . import _render as r
from ._client import Client, CurveKeys, Disconnected, Reconnected
from ._errors import ZchatError
from ._keys import fingerprint
from ._tui import ChatUI, data_dir, private_file
from ._tui_complete import ChatCompleter

KEEP = 2000  # lines kept per room; older ones are fetched again when scrolled to
PAGE = 50  # events fetched from history per page scrolled past the top
WHO_EVERY_S = 30.0  # how often the members' idle times are asked again
NARROW = 72  # below this many columns, the members' list is not shown
PM = "@"  # the key of a conversation: "@" + the other's nick
JUMP_PAGES = 40  # pages of history /search may fetch to show a match


def _alt_digit_keys(n: int) -> list[str]:
    """The keys Alt-``n`` arrives as: ``alt+n`` from a terminal that reports
    modifiers, and, from one that sends ESC and the digit, the character
    Textual makes of that (as macOS's Option key would: Alt-1 is ``¡``)."""
    keys = [f"alt+{n}"]
    with contextlib.suppress(Exception):
        from textual._ansi_sequences import ANSI_SEQUENCES_KEYS
        from textual.keys import _character_to_key

        char = ANSI_SEQUENCES_KEYS.get(f"\x1b{n}")
        if isinstance(char, str) and len(char) == 1:
            keys.append(_character_to_key(char))
    return keys


ALT_DIGITS = [_alt_digit_keys(n) for n in range(1, 10)]
# Alt-digits that reach the input line as characters: they switch rooms, not type.
ALT_CHARACTER_KEYS = frozenset(k for keys in ALT_DIGITS for k in keys[1:])


@dataclass
class View:
    """One entry of the room list: a room, or a conversation ("@nick")."""

    key: str
    items: list[Any] = field(default_factory=list)  # events, pushes and renderables
    unread: int = 0
    mention: bool = False
    topic: str = ""
    oldest: int | None = None  # the smallest seq shown
    more: bool = True  # whether history may hold older events
    last_day: date | None = None

    @property
    def is_pm(self) -> bool:
        return self.key.startswith(PM)

    @property
    def label(self) -> str:
        return self.key if self.is_pm else f"#{self.key}"


class FullscreenUI(ChatUI):
    """The line client's state and commands, shown in views."""

    def show_found(self, ev: Any) -> None:
        # Drawn, not kept as an event: a match listed below is not where the
        # room's history is (its seq would stop the fetching of older pages).
        self.show(r.event_grid(ev, me=self.client.nick, current=self.viewing))

    async def on_found(self, room: str, seq: int) -> None:
        if room == self.viewing:
            self.jumped = await self.app.jump_to(seq)

    def __init__(self, client: Client, app: ZchatApp) -> None:
        super().__init__(client, Console(file=io.StringIO(), width=80), wrap=True)
        self.app = app
        self.jumped = False  # /search scrolled the room to a match
        self.views: dict[str, View] = {}
        self.viewing: str | None = None
        self.orphans: list[Any] = []  # shown before any view exists
        self.route: str | None = None  # where ``show`` goes while a command runs
        # room -> nick -> (idle ms, time.monotonic() when known)
        self.idle: dict[str, dict[str, tuple[int, float]]] = {}
        self.bots: dict[str, set[str]] = {}  # by room: who offers commands there
        self.roles: dict[str, dict[str, str]] = {}  # by room: who has a role there
        self._away: tuple[View, Any] | None = None  # the "reconnecting" line shown

    # ------------------------------------------------------------ views

    def view(self, key: str) -> View:
        found = self.views.get(key)
        if found is None:
            found = self.views[key] = View(key)
            if self.orphans:
                found.items.extend(self.orphans)
                self.orphans.clear()
            if self.viewing is None:
                self.viewing = key
        return found

    def add(self, key: str | None, item: Any) -> None:
        if key is None:
            # In no room yet (or any more): shown all the same, and kept for
            # the first room's window.
            self.orphans.append(item)
            del self.orphans[:-KEEP]
            if self.viewing is None:
                self.app.write_line(View(""), item)
            return
        view = self.view(key)
        ts = getattr(item, "ts", None)
        if ts is not None:
            day = r.local_time(ts).date()
            if view.last_day is not None and day != view.last_day:
                self._append(view, r.date_line(day))
            view.last_day = day
        self._append(view, item)
        seq = getattr(item, "seq", None)
        if isinstance(seq, int) and getattr(item, "room", None) == key:
            view.oldest = seq if view.oldest is None else min(view.oldest, seq)
        if key != self.viewing and isinstance(item, MsgEvent | PmPush):
            me = self.client.nick
            if item.from_ != me:
                view.unread += 1
                if isinstance(item, PmPush) or r.mentions(item.text, me):
                    view.mention = True

    def _append(self, view: View, item: Any) -> None:
        view.items.append(item)
        if len(view.items) > KEEP:
            # The oldest go; scrolling back past the top fetches them again.
            del view.items[: len(view.items) - KEEP]
            seqs = [getattr(i, "seq", None) for i in view.items]
            view.oldest = min((q for q in seqs if isinstance(q, int)), default=None)
            view.more = True
        if view.key == self.viewing:
            self.app.write_line(view, item)

    def show(self, renderable: Any) -> None:
        key = self.viewing
        if key is not None and not key.startswith(PM) and key not in self.client.rooms:
            # The room shown was left: said where we are now, or, in no room
            # (put out of the last), in the window still shown.
            key = self.current or key
        self.add(self.route or key or self.current, renderable)

    def pm_key(self, nick: str) -> str:
        """The conversation with ``nick``: the one open already, whatever
        the case its nick was written in."""
        key = PM + nick
        return next((k for k in self.views if k.lower() == key.lower()), key)

    def show_event(self, ev: Any) -> None:
        if isinstance(ev, PmPush):
            me = self.client.nick.lower()
            other = ev.to if ev.from_.lower() == me else ev.from_
            self.add(self.pm_key(other), ev)
            return
        room = getattr(ev, "room", None)
        self.add(room if room in self.views or room in self.client.rooms else self.viewing, ev)

    def on_joined(self, joined: Joined) -> None:
        view = self.view(joined.room)
        view.topic = joined.topic
        self.roles[joined.room] = dict(joined.roles or {})  # marked before the first who
        self.viewing = joined.room
        self.app.rebuild()

    def on_item(self, item: Any) -> None:
        if isinstance(item, Reconnected) and self._away is not None:
            # One line for the whole outage: "reconnected" replaces "reconnecting".
            where, line = self._away
            with contextlib.suppress(ValueError):
                where.items.remove(line)
            self._away = None
            self.app.rebuild()
        super().on_item(item)
        if isinstance(item, Disconnected) and self._away is None:
            shown = self.views.get(self.viewing or "")
            if shown is not None and shown.items:
                self._away = (shown, shown.items[-1])
        if isinstance(item, TopicEvent) and item.room in self.views:
            self.views[item.room].topic = item.topic
        elif isinstance(item, MsgEvent):
            self.idle.setdefault(item.room, {})[item.from_] = (0, time.monotonic())
        if isinstance(item, MsgEvent | PmPush) and item.from_ != self.client.nick:
            if isinstance(item, PmPush) or r.mentions(item.text, self.client.nick):
                self.app.bell()
        if isinstance(item, Disconnected | Reconnected):
            self.forget_parted()
        if isinstance(item, ModeEvent) and item.room == self.viewing:
            self.app.run_worker(self.app._ask_who(), group="who")  # roles changed
        self.app.refresh_panels()

    def put_out(self, room: str) -> None:
        # The room's window stays, with the line that says who put us out
        # and why, until the next reconnect or a switch away drops it.
        super().put_out(room)
        self.add(room, r.info(f"you are out of #{room}; /join {room} to try to come back"))
        self.app.rebuild()

    def forget_parted(self) -> None:
        """Rooms left (or lost) leave the room list."""
        for key in list(self.views):
            if not key.startswith(PM) and key not in self.client.rooms:
                del self.views[key]
        if self.viewing not in self.views:
            self.viewing = self.current if self.current in self.views else None
            if self.viewing is None and self.views:
                self.viewing = next(iter(self.views))

    # ------------------------------------------------------------ input

    async def handle(self, line: str) -> bool:
        view = self.views.get(self.viewing or "")
        plain = line.strip() and (not line.startswith("/") or line.startswith("//"))
        if view is not None and view.is_pm and plain:
            # In a conversation, what is typed is a private message.
            text = line[1:] if line.startswith("//") else line
            line = f"/pm {view.key[len(PM) :]} {text}"
        name, _, rest = line[1:].partition(" ")
        command = _commands.find(name) if line.startswith("/") else None
        self.route = None
        if command is not None and command.name == "pm" and rest.split(maxsplit=1)[1:]:
            self.route = self.pm_key(rest.split()[0])
        before = self.current
        try:
            going = await super().handle(line)
        finally:
            self.route = None
        if command is not None and command.name == "part":
            self.forget_parted()
        elif self.current != before and self.current is not None:
            self.viewing = self.current
        # (Where /search took the reader, it stays.)
        self.app.rebuild(scroll_end=not self.jumped)
        self.jumped = False
        return going


class ChatLog(RichLog):
    """The messages of the view shown: written again, at the new width,
    when its size changes."""

    def on_resize(self, event: events.Resize) -> None:
        app = self.app
        if isinstance(app, ZchatApp):
            app.call_after_refresh(app.rebuild)

    async def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        app = self.app
        if self.scroll_y <= 0 and isinstance(app, ZchatApp):
            await app.load_older()  # the wheel past the top, as PageUp


class ChatInput(Input):
    """The input line: Up and Down recall what was typed, Tab completes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "older", "previous line", show=False, priority=True),
        Binding("down", "newer", "next line", show=False, priority=True),
        Binding("tab", "complete", "complete", show=False, priority=True),
    ]

    def __init__(self, ui_app: ZchatApp, history: FileHistory | None) -> None:
        super().__init__(placeholder="type a message, or /help", id="input", select_on_focus=False)
        self.ui_app = ui_app
        self.file = history
        self.past: list[str] = (
            list(reversed(list(history.load_history_strings()))) if history else []
        )
        self.at = len(self.past)
        self._cycle: tuple[str, int, list[str], int] | None = None

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return key not in ALT_CHARACTER_KEYS and super().check_consume_key(key, character)

    def remember(self, line: str) -> None:
        if _commands.secret(line):
            self.at = len(self.past)
            return  # a password is not kept, nor recalled
        if line and (not self.past or self.past[-1] != line):
            self.past.append(line)
            if self.file is not None:
                self.file.store_string(line)
        self.at = len(self.past)

    def action_older(self) -> None:
        if self.at > 0:
            self.at -= 1
            self._set(self.past[self.at])

    def action_newer(self) -> None:
        if self.at < len(self.past):
            self.at += 1
            self._set(self.past[self.at] if self.at < len(self.past) else "")

    def _set(self, text: str) -> None:
        self.value = text
        self.cursor_position = len(text)

    def action_complete(self) -> None:
        """The next completion of the word before the cursor (Tab again:
        the one after)."""
        cycle = self._cycle
        if cycle is not None and self.value == cycle[2][cycle[3]] + cycle[0]:
            before, after, options, index = cycle[1], cycle[0], cycle[2], cycle[3]
            index = (index + 1) % len(options)
        else:
            text = self.value[: self.cursor_position]
            after = self.value[self.cursor_position :]
            found = list(
                ChatCompleter(self.ui_app.ui).get_completions(
                    Document(text, len(text)), CompleteEvent(completion_requested=True)
                )
            )
            if not found:
                self._cycle = None
                self.ui_app.bell()
                return
            options = [text[: len(text) + c.start_position] + c.text for c in found]
            if len(options) == 1 and not options[0].endswith(" "):
                options[0] += " "  # the only one: on to what follows it
            before, index = len(text), 0
        self._cycle = (after, before, options, index)
        self.value = options[index] + after
        self.cursor_position = len(options[index])


class Switcher(ModalScreen["str | None"]):
    """Ctrl-K: type part of a room's (or a conversation's) name, Enter goes
    to the first that has it, Escape goes nowhere."""

    CSS = """
    Switcher { align: center middle; }
    #box { width: 40; height: auto; border: round $accent; background: $panel; }
    #filter { border: none; height: 1; padding: 0; }
    #matches { height: auto; max-height: 9; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "close", show=False),
    ]

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Input(placeholder="go to...", id="filter")
            yield Static(id="matches")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).focus()
        self._list("")

    def matches(self, typed: str) -> list[str]:
        wanted = typed.strip().lower().lstrip("#")
        return [n for n in self.names if wanted in _shown(n).lower().lstrip("#")]

    def _list(self, typed: str) -> None:
        found = [_shown(n) for n in self.matches(typed)][:9]
        self.query_one("#matches", Static).update(
            Text("\n".join(found)) if found else Text("nothing by that name", style="dim")
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        self._list(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()  # (not the chat's input line)
        found = self.matches(event.value)
        self.dismiss(found[0] if found else None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def _shown(key: str) -> str:
    """How a view's key is named in the room list: ``#room`` or ``@nick``."""
    return key if key.startswith(PM) else "#" + key


class ZchatApp(App[None]):
    """The full-screen client of one started :class:`Client`."""

    TITLE = "zchat"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #body { height: 1fr; }
    #rooms { width: 16; background: $panel; padding: 0 1 0 0; }
    #center { width: 1fr; }
    #topic { height: 1; background: $boost; }
    #log { height: 1fr; scrollbar-size-vertical: 1; }
    #members { width: 18; background: $panel; padding: 0 0 0 1; }
    #status { height: 1; background: $primary-darken-2; color: $text; }
    #input { height: 1; border: none; padding: 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(",".join(keys), f"goto({n})", show=False, priority=True)
            for n, keys in enumerate(ALT_DIGITS)
        ),
        Binding("ctrl+k", "switcher", "go to a room by name", show=False, priority=True),
        Binding("ctrl+n", "step(1)", "next room", show=False, priority=True),
        Binding("ctrl+p", "step(-1)", "previous room", show=False, priority=True),
        Binding("pageup", "page(-1)", "scroll up", show=False, priority=True),
        Binding("pagedown", "page(1)", "scroll down", show=False, priority=True),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("ctrl+d", "quit", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        client: Client,
        rooms: Iterable[str] = (),
        *,
        curve: CurveKeys | None = None,
        history: FileHistory | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.ui = FullscreenUI(client, self)
        self.start_rooms = list(rooms)
        self.curve = curve
        self.history_file = history
        self.loading = False
        self._built = False
        self.panels: dict[str, Text] = {}  # what the side panels show, by id
        # The first line of each event shown, by seq (for /search's jump).
        self.line_of: dict[int, int] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield Static(id="rooms")
            with Vertical(id="center"):
                yield Static(id="topic")
                yield ChatLog(id="log", wrap=True, markup=False, highlight=False, min_width=20)
            yield Static(id="members")
        yield Static(id="status")
        yield ChatInput(self, self.history_file)

    async def on_mount(self) -> None:
        self._built = True
        self.query_one(ChatInput).focus()
        self.ui.show(
            r.info(
                f"connected to {self.client.endpoint} as {self.client.nick}; /help lists the commands"
            )
        )
        self.refresh_panels()
        self.set_interval(5.0, self.refresh_panels)
        self.set_interval(WHO_EVERY_S, self._ask_who)
        self.run_worker(self._start(), group="start")

    def on_resize(self, event: events.Resize) -> None:
        # Narrower than the 80 columns it is made for, the members give way.
        self.query_one("#members").display = event.size.width >= NARROW

    async def _start(self) -> None:
        for room in self.start_rooms:
            try:
                await self.ui.join(room)
            except ZchatError as err:
                self.ui.show(r.error(f"cannot join #{room}: {err.message}"))
        self.rebuild()
        await self._ask_who()
        await self.ui.pump()

    async def _ask_who(self) -> None:
        room = self.ui.viewing
        if room is None or room.startswith(PM) or room not in self.client.rooms:
            return
        with contextlib.suppress(ZchatError):
            reply = await self.client.who(room)
            now = time.monotonic()
            self.ui.idle[room] = {u.nick: (u.idle_ms, now) for u in reply.users}
            self.ui.roles[room] = {u.nick: u.role for u in reply.users if u.role}
            # Bots are those who offer commands in the room.
            self.ui.bots[room] = {c.nick for c in await self.client.commands(room)}
            self.refresh_panels()

    # ------------------------------------------------------------ input

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value
        box = self.query_one(ChatInput)
        box.value = ""
        box.remember(line)
        if not await self.ui.handle(line):
            self.exit()

    # ------------------------------------------------------------ keys

    def action_goto(self, index: int) -> None:
        keys = list(self.ui.views)
        if 0 <= index < len(keys):
            self.switch(keys[index])

    def action_step(self, step: int) -> None:
        keys = list(self.ui.views)
        if keys:
            at = keys.index(self.ui.viewing) if self.ui.viewing in keys else 0
            self.switch(keys[(at + step) % len(keys)])

    def action_switcher(self) -> None:
        if isinstance(self.screen, Switcher):
            return

        def chosen(key: str | None) -> None:
            if key is not None and key in self.ui.views:
                self.switch(key)

        self.push_screen(Switcher(list(self.ui.views)), chosen)

    def switch(self, key: str) -> None:
        view = self.ui.views[key]
        self.ui.viewing = key
        view.unread, view.mention = 0, False
        if not view.is_pm:
            self.ui.current = key  # where what is typed goes, as /join would
        self.rebuild()
        self.run_worker(self._ask_who(), group="who")

    async def action_page(self, direction: int) -> None:
        log = self.query_one(ChatLog)
        if direction > 0:
            log.scroll_page_down(animate=False)
            return
        if log.scroll_y > 0:
            log.scroll_page_up(animate=False)
            return
        await self.load_older()

    async def jump_to(self, seq: int) -> bool:
        """Scroll the room shown to its event ``seq``, fetching older history
        until it is there (JUMP_PAGES pages at most); whether it is."""
        view = self.ui.views.get(self.ui.viewing or "")
        if view is None or view.is_pm:
            return False
        for _ in range(JUMP_PAGES):
            if view.oldest is not None and view.oldest <= seq:
                break
            if not await self.load_older():
                break
        self.rebuild(scroll_end=False)
        line = self.line_of.get(seq)
        if line is None:
            return False
        # After the next refresh: the log knows its new height only then.
        self.call_after_refresh(self.query_one(ChatLog).scroll_to, y=line, animate=False)
        return True

    async def load_older(self) -> int:
        """Put the page of history before the oldest event shown above it;
        how many events that was."""
        key = self.ui.viewing
        view = self.ui.views.get(key or "")
        if view is None or view.is_pm or not view.more or self.loading:
            return 0
        before = (
            view.oldest if view.oldest is not None else (self.client.last_seq(view.key) or 0) + 1
        )
        if before <= 1:
            view.more = False
            return 0
        self.loading = True
        try:
            events, more = await self.client.history(
                view.key, before=before, limit=min(PAGE, HISTORY_MAX)
            )
        except ZchatError as err:
            self.ui.show(r.error(f"no history: {err.message}"))
            return 0
        finally:
            self.loading = False
        older: list[Any] = [e for e in events if e.seq < before]
        view.more = more and bool(older)
        if not view.more:
            older.insert(0, r.info(f"the beginning of #{view.key}"))
        if older:
            seqs = [e.seq for e in older if isinstance(getattr(e, "seq", None), int)]
            if seqs:
                view.oldest = min(seqs)
            view.items[:0] = older
            log = self.query_one(ChatLog)
            lines = len(log.lines)
            self.rebuild(scroll_end=False)
            log.scroll_to(y=max(0, len(log.lines) - lines - 1), animate=False)
        return len(older)

    # ------------------------------------------------------------ drawing

    def render_item(self, view: View, item: Any) -> RenderableType:
        if not isinstance(item, msgspec.Struct):
            return item  # type: ignore[no-any-return]  # a line of our own: Text, a table
        current = None if view.is_pm else view.key
        return r.event_grid(item, me=self.client.nick, current=current, width=self.log_width())

    def log_width(self) -> int:
        return max(20, self.query_one(ChatLog).scrollable_content_region.width)

    def write_line(self, view: View, item: Any) -> None:
        if not self._built:
            return
        log = self.query_one(ChatLog)
        # Someone reading further up is left there; at the end, it follows.
        following = log.scroll_y >= log.max_scroll_y
        log.write(self.render_item(view, item), width=self.log_width(), scroll_end=following)
        self.refresh_panels()

    def rebuild(self, *, scroll_end: bool = True) -> None:
        """Write the shown view again, whole (a switch, a resize)."""
        if not self._built:
            return
        log = self.query_one(ChatLog)
        log.clear()
        self.line_of.clear()
        view = self.ui.views.get(self.ui.viewing or "")
        if view is None and self.ui.viewing is None:
            for item in self.ui.orphans:  # what was said while in no room
                log.write(
                    self.render_item(View(""), item), width=self.log_width(), scroll_end=False
                )
        if view is not None:
            view.unread, view.mention = 0, False
            for item in view.items:
                seq = getattr(item, "seq", None)
                if isinstance(seq, int):
                    # The first: /search shows its matches again below.
                    self.line_of.setdefault(seq, len(log.lines))
                log.write(self.render_item(view, item), width=self.log_width(), scroll_end=False)
        if scroll_end:
            log.scroll_end(animate=False)
        self.refresh_panels()

    def refresh_panels(self) -> None:
        if not self._built:
            return
        ui = self.ui
        view = ui.views.get(ui.viewing or "")
        rooms = Text(no_wrap=True, overflow="ellipsis")
        for n, item in enumerate(ui.views.values(), 1):
            here = item.key == ui.viewing
            style = "bold reverse" if here else r.MENTION if item.mention else ""
            number = f"{n}" if n < 10 else " "
            line = Text.assemble(
                (">" if here else " ", "bold"), (f"{number} ", r.DIM), (r.safe(item.label), style)
            )
            if item.unread:
                line.append(f" {item.unread}", style="bold yellow" if not item.mention else r.ERROR)
            rooms.append_text(line)
            rooms.append("\n")
        self._panel("rooms", rooms)
        if view is None:
            topic = Text("")
        elif view.is_pm:
            topic = Text(f" private conversation with {r.safe(view.key[len(PM) :])}", style=r.DIM)
        else:
            topic = Text.assemble(
                (f" #{view.key}: ", "bold"), Text(r.safe(view.topic) or "(no topic)")
            )
        self._panel("topic", topic)
        self._panel("members", self._members(view))
        self._panel("status", self._status())

    def _panel(self, name: str, text: Text) -> None:
        self.panels[name] = text
        self.query_one(f"#{name}", Static).update(text)

    def log_text(self) -> str:
        """The message pane's lines, as plain text."""
        return "\n".join(line.text.rstrip() for line in self.query_one(ChatLog).lines)

    def _members(self, view: View | None) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        if view is None or view.is_pm:
            return out
        nicks = sorted(self.ui.members.get(view.key, set()), key=str.lower)
        out.append(f"{len(nicks)} here\n", style="bold")
        known = self.ui.idle.get(view.key, {})
        now = time.monotonic()
        bots = self.ui.bots.get(view.key, set())
        roles = self.ui.roles.get(view.key, {})
        for nick in nicks:
            out.append(r.ROLE_MARK.get(roles.get(nick, ""), ""), style="bold")
            out.append(r.safe(nick), style=r.nick_color(nick))
            if nick in bots:
                out.append(" bot", style=r.DIM)
            if nick in known:
                ms, at = known[nick]
                out.append(f" {r.idle(ms + int((now - at) * 1000))}", style=r.DIM)
            out.append("\n")
        return out

    def _status(self) -> Text:
        ui = self.ui
        parts = [ui.client.nick, ui.status]
        if ui.client.lag_ms is not None and ui.client.connected:
            parts.append(f"lag {ui.client.lag_ms} ms")
        if self.curve is not None:
            parts.append(f"encrypted: broker {fingerprint(self.curve.server_public)}")
        if ui.sending:
            parts.append(f"{ui.sending} sending")
        return Text(" " + "  |  ".join(parts), no_wrap=True, overflow="ellipsis")


async def run_fullscreen(client: Client, rooms: list[str], curve: CurveKeys | None) -> int:
    """Run the full-screen client on a started client until /quit, Ctrl-D
    or Ctrl-C; then say goodbye to the broker."""
    history = FileHistory(str(private_file(data_dir() / "input-history")))
    app = ZchatApp(client, rooms, curve=curve, history=history)
    try:
        await app.run_async()
    finally:
        await client.close(app.ui.quit_reason)
    return 0
