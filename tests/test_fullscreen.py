"""The full-screen client (client/_fullscreen.py), driven by Textual's pilot
against real brokers; and snapshots of its screen, drawn from canned data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pexpect
import pytest
import zmq
from textual import events
from textual.pilot import Pilot

from client import Client, Disconnected, Reconnected
from client._client import CurveKeys
from client._fullscreen import ZchatApp
from client._keys import fingerprint
from client._tui import wants_fullscreen
from messages import CommandSpec, JoinEvent, MsgEvent, PmPush, TopicEvent, WhoReply, WhoUser

from .helpers import ROOT, Broker, run, wait_until

pytestmark = pytest.mark.usefixtures("utc")  # times as the snapshots show them


async def until(pilot: Pilot[Any], cond: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Let the app run until ``cond`` is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            app = pilot.app
            assert isinstance(app, ZchatApp)
            raise AssertionError(
                f"timed out waiting for {what}; rooms:\n{app.panels.get('rooms')}\n"
                f"log:\n{app.log_text()}"
            )
        await pilot.pause(0.02)


@asynccontextmanager
async def fullscreen(
    b: Broker, nick: str, *rooms: str, size: tuple[int, int] = (80, 24)
) -> AsyncIterator[tuple[ZchatApp, Pilot[Any]]]:
    client = Client(b.endpoint, nick, rooms=[])
    await client.start()
    app = ZchatApp(client, rooms)
    try:
        async with app.run_test(size=size) as pilot:
            await until(
                pilot, lambda: all(r in client.rooms for r in rooms), "the start rooms joined"
            )
            await until(pilot, lambda: app.ui._live.is_set(), "the backlog shown")
            yield app, pilot
    finally:
        await client.close()


@asynccontextmanager
async def other(b: Broker, nick: str, *rooms: str) -> AsyncIterator[Client]:
    c = Client(b.endpoint, nick, rooms=list(rooms))
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def rooms_text(app: ZchatApp) -> str:
    return app.panels["rooms"].plain


def test_the_default_on_a_terminal_and_the_line_client_elsewhere() -> None:
    assert wants_fullscreen(False, True, "xterm-256color")
    assert not wants_fullscreen(True, True, "xterm-256color")  # --plain
    assert not wants_fullscreen(False, False, "xterm-256color")  # a pipe
    assert not wants_fullscreen(False, True, "dumb")


def test_unread_counts_and_switching_with_alt_and_by_name(broker: Broker) -> None:
    async def body() -> None:
        async with fullscreen(broker, "alice", "dev", "general") as (app, pilot):
            assert app.ui.viewing == "general"  # the last room joined, as the line client
            assert "> 2 #general" in rooms_text(app).replace(">2", "> 2")
            await pilot.press("alt+1")
            assert app.ui.viewing == "dev" and app.ui.current == "dev"
            async with other(broker, "bob", "general") as bob:
                await bob.say("general", "hey alice, [bold red]not bold[/] \u202eevil")
                await bob.say("general", "and another")
                await bob.offer_commands([CommandSpec(name="roll", usage="!roll", help="dice")])
                await until(pilot, lambda: "#general 2" in rooms_text(app), "2 unread in #general")
                assert app.ui.views["general"].mention  # it named alice
                assert "not bold" not in app.log_text()  # it went to #general, not here
                await pilot.press("alt+2")
                assert app.ui.viewing == "general"
                assert "#general 2" not in rooms_text(app)
                text = " ".join(app.log_text().split())  # wrapped lines, joined
                # The markup is shown as typed; the bidi override as a marker.
                assert "<bob> hey alice, [bold red]not bold[/] <U+202E>evil" in text
                assert "bob" in app.panels["members"].plain
                # bob offers a command: a bot; the status line has the lag.
                await app._ask_who()
                assert "bob bot" in app.panels["members"].plain
                await until(
                    pilot,
                    lambda: (app.refresh_panels(), "lag " in app.panels["status"].plain)[1],
                    "the lag in the status line",
                )
                # Ctrl-P and Ctrl-N step through the list, round.
                await pilot.press("ctrl+n")
                assert app.ui.viewing == "dev"
                await pilot.press("ctrl+p")
                assert app.ui.viewing == "general"
                # What is typed goes to the room shown.
                await pilot.press("alt+1")
                await pilot.press(*"to dev", "enter")
                await until(pilot, lambda: "<alice> to dev" in app.log_text(), "our line in #dev")
                # Ctrl-K: part of a name, Enter; a name nobody has goes nowhere.
                await pilot.press("ctrl+k", *"ner", "enter")
                assert app.ui.viewing == "general"
                await pilot.press("ctrl+k", *"zz", "enter")
                assert app.ui.viewing == "general" and app.screen is app.screen_stack[0]
                await pilot.press("ctrl+k", "d", "escape")
                assert app.ui.viewing == "general" and app.screen is app.screen_stack[0]

    run(body())


def test_commands_history_and_completion(broker: Broker) -> None:
    async def body() -> None:
        async with (
            other(broker, "bobby", "general") as bobby,
            fullscreen(broker, "alice", "general") as (app, pilot),
        ):
            box = app.query_one("#input")
            # /search lists the room's matches from the broker, with who and when.
            await bobby.say("general", "the deploy is at noon")
            await bobby.say("general", "lunch first")
            await until(pilot, lambda: "lunch first" in app.log_text(), "bobby's lines")
            await pilot.press(*"/search DEPLOY", "enter")
            await until(
                pilot, lambda: app.log_text().count("the deploy is at noon") == 2, "a match"
            )
            await pilot.press(*"/jo", "tab")
            assert box.value == "/join "  # type: ignore[attr-defined]
            await pilot.press(*"lunch", "enter")
            await until(pilot, lambda: app.ui.viewing == "lunch", "/join switching to #lunch")
            assert "#lunch" in rooms_text(app)
            await pilot.press(*"/topic soup [i]today[/i]", "enter")
            await until(pilot, lambda: "soup" in app.panels["topic"].plain, "the topic")
            assert "#lunch: soup [i]today[/i]" in app.panels["topic"].plain
            await pilot.press("alt+1", *"bo", "tab")
            assert box.value == "bobby: "  # type: ignore[attr-defined]
            await pilot.press("home", "shift+end", "backspace")
            await pilot.press(*"/part #lunch bye", "enter")
            await until(pilot, lambda: "#lunch" not in rooms_text(app), "#lunch leaving the list")
            assert app.ui.viewing == "general"
            assert "-!- you left #lunch" in app.log_text()
            await pilot.press("up")
            assert box.value == "/part #lunch bye"  # type: ignore[attr-defined]
            await pilot.press("up", "up")
            assert box.value == "/join lunch"  # type: ignore[attr-defined]
            await pilot.press("home", "shift+end", "backspace", *"/nope", "enter")
            await until(pilot, lambda: "unknown command /nope" in app.log_text(), "a refusal")

    run(body())


def test_scrolling_past_the_top_loads_history_page_by_page(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker("--rate", "0")

    async def body() -> None:
        async with other(b, "bob", "general") as bob:
            for i in range(130):
                await bob.say("general", f"line {i:03d}")
            # /search fetches history back to its newest match and shows it.
            async with fullscreen(b, "alice", "general") as (app, pilot):
                log = app.query_one("#log")
                await pilot.press(*"/search 007", "enter")
                general = app.ui.views["general"]
                await until(
                    pilot,
                    lambda: (general.oldest or 10**9) <= 7 + 2 and "line 008" in app.log_text(),
                    "history back to the match",
                )
                await pilot.pause()
                assert log.scroll_y == min(app.line_of[7 + 2], log.max_scroll_y)  # type: ignore[attr-defined]
                assert app.log_text().count("line 007") == 2  # in place, and listed below
            async with fullscreen(b, "alice", "general") as (app, pilot):
                text = app.log_text()
                assert "line 129" in text and "line 119" not in text  # the backlog: 10
                # The mouse wheel past the top loads a page too.
                log = app.query_one("#log")
                log.scroll_home(animate=False)
                await pilot.pause()
                wheel = events.MouseScrollUp(log, 5, 5, 0, -1, 0, False, False, False)
                log.post_message(wheel)
                await until(pilot, lambda: "line 100" in app.log_text(), "a page by the wheel")
                pages = 0
                while "the beginning of #general" not in app.log_text():
                    await pilot.press("pageup")
                    pages += 1
                    assert pages < 200, "history never reached its beginning"
                text = app.log_text()
                assert pages > 3  # more than one page was loaded
                assert app.ui.views["general"].more is False
                shown = [int(w[5:8]) for w in text.split("<bob> ")[1:]]
                assert shown == list(range(130)), shown  # each once, in order
                assert text.index("--> bob joined #general") < text.index("line 000")
                # A new message does not pull a reader back down.
                top = log.scroll_y  # type: ignore[attr-defined]
                await bob.say("general", "line 130")
                await until(pilot, lambda: "line 130" in app.log_text(), "a new line")
                await pilot.pause()
                assert log.scroll_y == top  # type: ignore[attr-defined]
                # PageDown goes back down to the newest.
                for _ in range(100):
                    await pilot.press("pagedown")
                assert log.scroll_y == log.max_scroll_y  # type: ignore[attr-defined]

    run(body())


def test_a_private_message_opens_a_conversation(broker: Broker) -> None:
    async def body() -> None:
        async with (
            other(broker, "bob", "general") as bob,
            fullscreen(broker, "alice", "general") as (app, pilot),
        ):
            await bob.pm("alice", "psst [b]secret[/b]")
            await until(pilot, lambda: "@bob 1" in rooms_text(app), "a conversation with bob")
            assert "psst" not in app.log_text()  # not in #general
            await pilot.press("alt+2")
            assert app.ui.viewing == "@bob"
            assert "[pm from bob] psst [b]secret[/b]" in app.log_text()
            assert "conversation with bob" in app.panels["topic"].plain
            await pilot.press(*"hello back", "enter")
            got = await asyncio.wait_for(bob.next_item(), 10)
            while not isinstance(got, PmPush):
                got = await asyncio.wait_for(bob.next_item(), 10)
            assert (got.from_, got.text) == ("alice", "hello back")
            await until(pilot, lambda: "[pm to bob] hello back" in app.log_text(), "our pm")
            # A pm to BOB is the same conversation.
            await pilot.press(*"/pm BOB again", "enter")
            await until(pilot, lambda: "[pm to bob] again" in app.log_text(), "the same one")
            assert "@BOB" not in rooms_text(app)
            # /pm to someone new opens theirs.
            await pilot.press(*"/pm carol hi", "enter")
            await until(pilot, lambda: "@carol" in rooms_text(app), "a conversation with carol")

    run(body())


def test_a_broker_restart_is_one_line_and_missed_messages_are_counted(broker: Broker) -> None:
    async def body() -> None:
        async with fullscreen(broker, "alice", "general") as (app, pilot):
            await asyncio.to_thread(broker.kill)
            await until(pilot, lambda: "reconnecting" in app.panels["status"].plain, "reconnecting")
            await asyncio.to_thread(broker.start)
            await until(pilot, lambda: "reconnected" in app.log_text(), "the reconnected line", 30)
            await until(pilot, lambda: "connected" == app.ui.status, "connected again")
            assert app.log_text().count("reconnected") == 1
            # One line for the outage: "reconnecting" gave way to "reconnected".
            assert "reconnecting" not in app.log_text()
            assert "the broker is shutting down" not in app.log_text()  # it was killed
            assert "(the broker restarted)" in app.log_text()
            assert "alice  |  connected" in app.panels["status"].plain
            async with other(broker, "bob", "general") as bob:
                await bob.say("general", "after the restart")
                await until(pilot, lambda: "<bob> after the restart" in app.log_text(), "a line")
            # Missed messages fetched from history are counted, as the line
            # client does (the client's items, as in test_commands).
            app.ui.on_item(Disconnected(reason="no answer"))
            assert "reconnecting" in app.panels["status"].plain
            app.ui.on_item(Reconnected(recovered=4, restarted=False))
            await until(pilot, lambda: "recovered 4 missed" in app.log_text(), "the count")
            assert "-!- reconnected; recovered 4 missed messages" in app.log_text()

    run(body())


def test_the_screen_reflows_on_resize(broker: Broker) -> None:
    async def body() -> None:
        async with fullscreen(broker, "alice", "general", size=(80, 24)) as (app, pilot):
            async with other(broker, "bob", "general") as bob:
                await bob.say("general", " ".join(f"word{i}" for i in range(30)))
                await until(pilot, lambda: "word29" in app.log_text(), "the long line")
            narrow = app.log_text().count("\n")
            await pilot.resize_terminal(160, 48)
            await until(pilot, lambda: app.log_text().count("\n") < narrow, "fewer, wider lines")
            assert "word29" in app.log_text()
            await pilot.resize_terminal(80, 24)
            await until(pilot, lambda: app.log_text().count("\n") == narrow, "the same lines again")
            members = app.query_one("#members")
            assert members.display
            await pilot.resize_terminal(60, 20)  # narrower: the members give way
            await until(pilot, lambda: not members.display, "the members hidden")
            # The messages take the room: 60 - 16 of the room list, not 60 - 16 - 18.
            await until(pilot, lambda: app.log_width() >= 40, "the messages wider")

    run(body())


# ------------------------------------------------------------------ snapshots

TS = "2026-11-24T12:34:56.789Z"


class CannedClient:
    """What the app asks of a client, with fixed answers: a screen that is
    the same on every run."""

    def __init__(self) -> None:
        self.nick = "alice"
        self.endpoint = "tcp://127.0.0.1:5555"
        self.rooms = ["general", "dev", "ops"]
        self.closed = False
        self.connected = True
        self.lag_ms = 3

    async def items(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None

    async def who(self, room: str | None = None, **kw: Any) -> WhoReply:
        users = [
            WhoUser(nick="alice", idle_ms=0),
            WhoUser(nick="bob", idle_ms=125_000),
            WhoUser(nick="carol", idle_ms=7_500_000),
        ]
        return WhoReply(id="1", room=room, users=users)

    async def commands(self, room: str | None = None, **kw: Any) -> list[Any]:
        return []

    def last_seq(self, room: str) -> int | None:
        return None


def canned_app(curve: CurveKeys | None = None) -> ZchatApp:
    return ZchatApp(CannedClient(), curve=curve)  # type: ignore[arg-type]


def test_the_status_line_shows_the_broker_key_when_encrypted() -> None:
    server_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    keys = CurveKeys(server_public=server_public, public=public, secret=secret)

    async def body() -> None:
        for curve, shown in ((None, False), (keys, True)):
            app = canned_app(curve)
            async with app.run_test(size=(80, 24)) as pilot:
                await until(pilot, lambda: "status" in app.panels, "the status line")  # noqa: B023
                status = app.panels["status"].plain
                assert status.startswith(" alice  |  connected")
                assert (f"encrypted: broker {fingerprint(server_public)}" in status) is shown

    run(body())


async def fill(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ZchatApp)
    ui = app.ui
    ui.members = {"general": {"alice", "bob", "carol"}, "dev": {"alice"}, "ops": {"alice"}}
    for room in ("general", "dev", "ops"):
        ui.view(room)
    ui.views["general"].topic = "release day [b]noon[/b]"

    def msg(seq: int, who: str, text: str, room: str = "general", **kw: Any) -> MsgEvent:
        return MsgEvent(room=room, seq=seq, ts=TS, from_=who, text=text, **kw)

    ui.on_item(JoinEvent(room="general", seq=1, ts=TS, nick="carol"))
    ui.on_item(msg(2, "carol", "morning all"))
    ui.on_item(msg(3, "bob", "hey alice, release at noon? [bold red]not markup[/]"))
    ui.on_item(msg(4, "alice", "yes, after the tests"))
    ui.on_item(msg(5, "alice", "waves", action=True))
    ui.on_item(TopicEvent(room="general", seq=6, ts=TS, nick="bob", topic="release day"))
    ui.on_item(
        msg(7, "carol", "a long line that wraps under its first line, not under the time: " * 2)
    )
    ui.on_item(msg(3, "bob", "alice: dev is broken", room="dev"))
    ui.on_item(PmPush(from_="bob", to="alice", text="lunch later?", ts=TS))
    ui.viewing = "general"
    app.rebuild()
    await app._ask_who()
    app.query_one("#input").cursor_blink = False  # type: ignore[attr-defined]
    await pilot.pause()


Snap = Callable[..., bool]


def test_snapshot_80x24(snap_compare: Snap) -> None:
    assert snap_compare(canned_app(), terminal_size=(80, 24), run_before=fill)


def test_snapshot_160x48(snap_compare: Snap) -> None:
    assert snap_compare(canned_app(), terminal_size=(160, 48), run_before=fill)


# ------------------------------------------------------------------ make serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_serve_runs_it_in_a_browser_on_loopback(broker: Broker, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "client._serve", "--port", str(port)]
    cmd += ["--nick", "webby", "--connect", broker.endpoint]
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=tmp_path)
    try:

        def page() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                return True
            return False

        wait_until(page, 20, "the page to be served")

        async def body() -> None:
            async with other(broker, "bob", "general") as bob, aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{port}/ws?width=80&height=24"
                async with s.ws_connect(url) as ws:
                    screen = b""

                    async def read_until(what: bytes) -> None:
                        nonlocal screen
                        deadline = time.monotonic() + 20
                        while what not in screen:
                            left = deadline - time.monotonic()
                            assert left > 0, f"{what!r} never shown"
                            with contextlib.suppress(asyncio.TimeoutError):
                                m = await ws.receive(timeout=left)
                                assert m.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT)
                                data = m.data if isinstance(m.data, bytes) else m.data.encode()
                                screen += data

                    await read_until(b"webby")  # the status line, drawn in the page
                    await ws.send_json(["stdin", "from the browser\r"])
                    got = await asyncio.wait_for(bob.next_item(), 20)
                    while not (isinstance(got, MsgEvent) and got.from_ == "webby"):
                        got = await asyncio.wait_for(bob.next_item(), 20)
                    assert got.text == "from the browser"

        run(body())
        # Only on loopback.
        with pytest.raises(OSError), socket.create_connection((outside_address(), port), 2):
            pass
    finally:
        server.terminate()
        server.wait(10)


def outside_address() -> str:
    """An address of this machine that is not loopback (or one that is
    nobody's, where nothing listens either)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with contextlib.suppress(OSError):
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent
            return str(s.getsockname()[0])
    return "192.0.2.1"


# ------------------------------------------------------------- the real program


def test_zchat_on_a_terminal_is_full_screen_and_a_signal_says_goodbye(
    broker: Broker, tmp_path: Path, zctx: Any
) -> None:
    from .test_tui import Terminal, bob_in_general, next_event

    bob = bob_in_general(zctx, broker)
    t = Terminal(["--connect", broker.endpoint, "--nick", "alice"], tmp_path)
    try:
        t.wait_for(r"alice  \|  connected")  # the status line: full screen
        t.wait_for(r">1 #general")  # the room list
        t.wait_for(r"2 here")  # the members
        bob.request({"type": "say", "room": "general", "text": "hi [b]alice[/b]"})
        t.wait_for(r"<bob> hi \[b\]alice\[/b\]")
        t.type("hello from full screen\r")
        ev = next_event(bob, lambda e: e["type"] == "msg" and e["from"] == "alice")
        assert ev["text"] == "hello from full screen"
        t.child.kill(signal.SIGTERM)
        left = next_event(bob, lambda e: e["type"] == "leave" and e["nick"] == "alice")
        assert left["reason"] == "quit"
        t.child.expect(pexpect.EOF, timeout=20)
        t.child.close()
        assert t.child.exitstatus == 128 + signal.SIGTERM
    finally:
        t.close()
        bob.close()


def test_a_room_keeps_its_last_lines_and_fetches_older_ones_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import client._fullscreen as fs

    monkeypatch.setattr(fs, "KEEP", 5)
    ui = canned_app().ui
    for seq in range(1, 11):
        ui.show_event(MsgEvent(room="general", seq=seq, ts=TS, from_="bob", text=f"n{seq}"))
    view = ui.views["general"]
    assert [e.seq for e in view.items] == [6, 7, 8, 9, 10]
    assert view.oldest == 6 and view.more  # PageUp at the top asks for what is before 6


def test_a_kick_leaves_the_window_with_who_and_why_and_marks_operators(broker: Broker) -> None:
    async def body() -> None:
        async with other(broker, "owner", "ops") as owner:
            async with fullscreen(broker, "alice", "ops", size=(160, 48)) as (app, pilot):
                await owner.op("ops", "alice")
                await until(pilot, lambda: "@alice" in str(app.panels.get("members")), "@alice")
                assert "~owner" in str(app.panels.get("members"))
                await owner.deop("ops", "alice")  # (operators always come back in)
                await owner.kick("ops", "alice", "bye now")
                await until(pilot, lambda: "put out by owner: bye now" in app.log_text(), "kick")
                assert "/join ops to try to come back" in app.log_text()
                assert "ops" not in app.client.rooms
                # Its last room: what is said now is shown in that window.
                await owner.mode("ops", invite_only=True)
                await pilot.press(*"/join ops", "enter")
                await until(pilot, lambda: "ask one of its operators" in app.log_text(), "refusal")

    run(body())


def test_what_is_said_in_no_room_is_shown(broker: Broker) -> None:
    """A refused start room, /rooms and a wall reach the screen while the
    user is in no room (they waited, unseen, for a first room's window)."""

    async def body() -> None:
        async with other(broker, "owner", "vip") as owner:
            await owner.mode("vip", invite_only=True)
            client = Client(broker.endpoint, "dave", rooms=[])
            await client.start()
            app = ZchatApp(client, ["vip"])
            try:
                async with app.run_test(size=(160, 48)) as pilot:
                    await until(pilot, lambda: "invite-only" in app.log_text(), "the refusal")
                    await pilot.press(*"/rooms", "enter")
                    await until(pilot, lambda: "#vip" in app.log_text(), "the rooms table")
                    assert app.ui.viewing is None and not app.client.rooms
            finally:
                await client.close()

    run(body())


def test_a_password_typed_is_not_kept_in_the_input_history(broker: Broker, tmp_path: Path) -> None:
    from prompt_toolkit.history import FileHistory

    from client import _commands

    assert _commands.secret("/oper hunter22-hunter22") and _commands.secret("/OPER x")
    assert not _commands.secret("//oper is a word") and not _commands.secret("/op bob")
    path = tmp_path / "input-history"

    async def body() -> None:
        client = Client(broker.endpoint, "alice", rooms=["general"])
        await client.start()
        app = ZchatApp(client, ["general"], history=FileHistory(str(path)))
        try:
            async with app.run_test(size=(160, 48)) as pilot:
                await until(pilot, lambda: "general" in client.rooms, "the join")
                for line in ("hello", "/oper hunter22-hunter22"):
                    await pilot.press(*line, "enter")
                await until(pilot, lambda: "operator password" in app.log_text(), "the refusal")
                await pilot.press("up")
                assert app.query_one("#input").value == "hello"  # not the password
        finally:
            await client.close()

    run(body())
    assert "hello" in path.read_text() and "hunter22" not in path.read_text()
