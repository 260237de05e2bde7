"""The terminal client's commands, in process against a real broker: what a
typed line does, and what a mistyped one does not (issue 13)."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from rich.console import Console

from client import Client, Disconnected, Reconnected
from client._tui import ChatUI, private_file
from client._tui_complete import ChatCompleter
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent

from .helpers import Broker, run

TS = "2026-11-24T12:34:56.789Z"


class Screen:
    """A ChatUI whose console writes into a string."""

    def __init__(self, client: Client, *, width: int = 100, wrap: bool = False) -> None:
        self.out = io.StringIO()
        console = Console(file=self.out, width=width, color_system=None, highlight=False)
        self.ui = ChatUI(client, console, wrap=wrap)

    def text(self) -> str:
        return self.out.getvalue()

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()


@asynccontextmanager
async def chat(b: Broker, nick: str, *rooms: str, **kw: Any) -> AsyncIterator[Screen]:
    async with Client(b.endpoint, nick, rooms=[]) as c:
        screen = Screen(c, **kw)
        for room in rooms:
            await screen.ui.join(room)
        yield screen


async def next_of(c: Client, kind: type, pred: Callable[[Any], bool] = lambda e: True) -> Any:
    while True:
        item = await c.next_item(10)
        if isinstance(item, kind) and pred(item):
            return item


def test_mistyped_commands_are_refused_with_their_usage(make_broker: Callable[..., Broker]) -> None:
    """Point 1: /part notjoined left the current room; /nick bad nick renamed
    to "bad"; /history -5 and /history 0 showed one event."""
    b = make_broker("--rate", "0", store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general", "ops") as s:
            ui = s.ui
            cases = {
                "/part notjoined": "you are not in #notjoined",
                "/part lunch break": "usage: /part [#ROOM] [REASON]",
                "/nick bad nick": "a nick is one word; usage: /nick [NICK]",
                "/nick 9lives": "not valid",
                "/history -5": "usage: /history [N]",
                "/history 0": "N is 1 to 500",
                "/history x": "usage: /history [N]",
                "/join": "usage: /join ROOM",
                "/join a b": "usage: /join ROOM",
                "/join Not_A_Room": "is not a room name",
                "/rooms please": "no arguments, not 'please'; usage: /rooms",
                "/who a b": "usage: /who [ROOM]",
                "/pm bob": "usage: /pm NICK TEXT",
                "/me": "usage: /me TEXT",
                "/nope": "unknown command /nope",
            }
            for line, words in cases.items():
                before = len(s.out.getvalue())
                assert await ui.handle(line) is True
                assert words in s.text()[before:], (line, s.text()[before:])
            # Nothing was guessed: still in both rooms, still alice.
            assert ui.client.rooms == ["general", "ops"] and ui.client.nick == "alice"
            assert await ui.handle("/history 2") and "history of #ops" in s.text()

    run(body())


def test_a_leave_carries_its_reason_to_everyone(make_broker: Callable[..., Broker]) -> None:
    """Point 2: others saw only "(parted)" or "(quit)"."""
    b = make_broker("--rate", "0", store=":memory:")

    async def body() -> None:
        async with Client(b.endpoint, "bob", rooms=["general", "ops"]) as bob:
            async with chat(b, "alice", "general", "ops") as s:
                assert await s.ui.handle("/part #ops lunch break") is True
                leave = await next_of(bob, LeaveEvent, lambda e: e.nick == "alice")
                assert (leave.room, leave.reason, leave.text) == ("ops", "part", "lunch break")
                bob_screen = Screen(bob)
                bob_screen.ui.on_item(leave)
                assert "<-- alice left #ops (parted: lunch break)" in bob_screen.text()
                assert await s.ui.handle("/quit gone home") is False
                reason = s.ui.quit_reason
            # The program says bye with the reason when it closes the client.
            assert reason == "gone home"

    run(body())


def test_a_quit_reason_reaches_the_room(make_broker: Callable[..., Broker]) -> None:
    b = make_broker("--rate", "0", store=":memory:")

    async def body() -> None:
        async with Client(b.endpoint, "bob") as bob:
            alice = Client(b.endpoint, "alice")
            await alice.start()
            await alice.close("gone home")
            leave = await next_of(bob, LeaveEvent, lambda e: e.nick == "alice")
            assert (leave.reason, leave.text) == ("quit", "gone home")

    run(body())


def test_the_rejoin_burst_after_a_restart_is_one_line(make_broker: Callable[..., Broker]) -> None:
    """Point 7: a broker restart showed a join line for everyone."""
    b = make_broker(store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general") as s:
            ui = s.ui
            ui.on_item(Disconnected("the broker restarted"))
            # Our own rejoin, and others', may come before we know we are back.
            for i, nick in enumerate(["alice", "bob", "carol"]):
                ui.on_item(JoinEvent(room="general", seq=10 + i, ts=TS, nick=nick))
            ui.on_item(Reconnected(recovered=0, restarted=True))
            for i, nick in enumerate(["dave", "erin", "frank", "gina"]):
                ui.on_item(JoinEvent(room="general", seq=13 + i, ts=TS, nick=nick))
            assert "joined" not in s.text()
            ui.on_item(MsgEvent(room="general", seq=20, ts=TS, from_="bob", text="we're back"))
            lines = s.lines()
            assert any(
                "#general: bob, carol, dave, erin, frank and 1 others came back" in line
                for line in lines
            ), lines
            assert lines[-1].endswith("<bob> we're back")
            assert {"bob", "gina"} <= ui.members["general"]

    run(body())


def test_who_joined_while_we_were_away_is_told_before_what_they_did(
    make_broker: Callable[..., Broker],
) -> None:
    """Joins repaired during a reconnect were held until "reconnected" (to
    tell a restart's burst in one line), while the same person's messages
    and leave were shown at once: "bob left", then "bob joined"."""
    b = make_broker(store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general") as s:
            ui = s.ui
            ui.on_item(Disconnected("no answer"))
            ui.on_item(JoinEvent(room="general", seq=10, ts=TS, nick="bob"))
            ui.on_item(JoinEvent(room="general", seq=11, ts=TS, nick="carol"))
            ui.on_item(MsgEvent(room="general", seq=12, ts=TS, from_="bob", text="hi all"))
            ui.on_item(LeaveEvent(room="general", seq=13, ts=TS, nick="bob", reason="quit"))
            ui.on_item(Reconnected(recovered=4, restarted=False))
            lines = [line for line in s.lines() if "bob" in line or "carol" in line]
            assert [
                next(w for w in ("joined", "hi all", "left") if w in line) for line in lines
            ] == ["joined", "hi all", "left", "joined"], lines
            assert "bob" in lines[0] and "carol" in lines[-1]

    run(body())


def test_a_nick_change_shows_once_for_all_shared_rooms(make_broker: Callable[..., Broker]) -> None:
    """Point 9: a nick change printed once per shared room."""
    b = make_broker(store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general") as s:
            for room in ("general", "dev", "ops"):
                s.ui.on_item(NickEvent(room=room, seq=5, ts=TS, old="bob", new="robert"))
            assert s.text().count("bob is now known as robert") == 1
            assert all("robert" in s.ui.members[room] for room in ("general", "dev", "ops"))

    run(body())


def test_long_messages_wrap_under_their_text(make_broker: Callable[..., Broker]) -> None:
    """Point 9: long lines wrapped mid-word with no indent."""
    b = make_broker(store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general", width=40, wrap=True) as s:
            words = " ".join(f"word{i}" for i in range(20))
            s.ui.on_item(MsgEvent(room="general", seq=9, ts=TS, from_="bob", text=words))
            lines = [line for line in s.lines() if "word" in line]
            head = len("[12:34:56] <bob> ")
            assert len(lines) > 2 and all(len(line) <= 40 for line in lines)
            assert all(line[:head].strip() == "" for line in lines[1:])
            assert " ".join(" ".join(line[head:].split()) for line in lines) == words

    run(body())


def test_rooms_complete_anywhere_and_commands_from_the_table(
    make_broker: Callable[..., Broker],
) -> None:
    """Point 9: #o did not complete in ordinary text."""
    b = make_broker(store=":memory:")

    async def body() -> None:
        async with chat(b, "alice", "general", "ops") as s:
            completer = ChatCompleter(s.ui)

            def complete(text: str) -> list[str]:
                doc = Document(text, len(text))
                return [c.text for c in completer.get_completions(doc, CompleteEvent())]

            assert complete("see #o") == ["#ops"]
            assert complete("/part #g") == ["#general"]
            assert complete("/pa") == ["/part"]
            assert "/leave" in complete("/le") and "/exit" in complete("/ex")

    run(body())


def test_the_input_history_is_private(tmp_path: Path) -> None:
    """Point 9: input-history was mode 0644 and holds private messages."""
    path = tmp_path / "zchat" / "input-history"
    path.parent.mkdir()
    path.write_text("/pm bob secret\n")
    os.chmod(path, 0o644)
    private_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "secret" in path.read_text()
    fresh = private_file(tmp_path / "new" / "input-history")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
