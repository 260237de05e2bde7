"""Moderation over real sockets: a broker process, clients, a bot, the
terminal's commands, and a cluster of nodes sharing the rules."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from client import Client, Reconnected, RequestRefused
from client._tui_complete import ChatCompleter
from client.bots import antiflood
from messages import LeaveEvent, ModeEvent, MsgEvent, Notice

from .helpers import ROOT, Broker, run, wait_until
from .test_commands import Screen, chat, next_of

PASSWORD = "open sesame, please"


async def until(client: Client, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    while True:
        item = await client.next_item(timeout)
        if pred(item):
            return item


async def refused_in_time(
    ask: Callable[[], Awaitable[Any]], code: str, what: str, timeout: float = 10
) -> RequestRefused:
    """Ask until the broker refuses with ``code`` (a node hears of another's
    change a moment later), and return that refusal; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await ask()
        except RequestRefused as err:
            if err.code == code:
                return err
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def hello_on(endpoint: str, nick: str) -> Callable[[], Awaitable[None]]:
    async def ask() -> None:
        async with Client(endpoint, nick, rooms=[]):
            pass

    return ask


def test_owner_kicks_bans_mutes_and_a_restart_keeps_it(broker: Broker) -> None:
    async def body() -> None:
        async with (
            Client(broker.endpoint, "alice", rooms=["ops"]) as alice,
            Client(broker.endpoint, "bob", rooms=["ops"]) as bob,
            Client(broker.endpoint, "carol", rooms=["ops"]) as carol,
        ):
            assert (await carol.who("ops")).users[0].role == "owner"  # alice came first
            # A member cannot moderate.
            with pytest.raises(RequestRefused) as refused:
                await bob.kick("ops", "carol")
            assert refused.value.code == "forbidden"
            await alice.kick("ops", "bob", "calm down")
            left = await until(carol, lambda i: isinstance(i, LeaveEvent) and i.nick == "bob")
            assert (left.reason, left.by, left.text) == ("kick", "alice", "calm down")
            await until(bob, lambda i: isinstance(i, LeaveEvent) and i.nick == "bob")
            assert "ops" not in bob.rooms  # put out: not rejoined by a reconnect
            notice = await until(bob, lambda i: isinstance(i, Notice))
            assert "calm down" in notice.text
            await bob.join("ops")  # a kick is not a ban
            await alice.mute("ops", "bob", reason="quiet please")
            with pytest.raises(RequestRefused, match="muted"):
                await bob.say("ops", "but")
            await carol.say("ops", "a polite client goes on")
            await alice.ban("ops", nick="bob", duration_s=3600, reason="spam")
            await until(carol, lambda i: isinstance(i, ModeEvent) and i.mode == "ban")
            with pytest.raises(RequestRefused, match="banned"):
                await bob.join("ops")
            listed = await alice.bans("ops")
            assert [b.mask for b in listed.bans] == ["nick:bob"]
            assert [x.nick for x in listed.mutes] == ["bob"]
            assert listed.roles == {"alice": "owner"}

        broker.restart()
        async with Client(broker.endpoint, "bob", rooms=[]) as bob:
            with pytest.raises(RequestRefused, match="banned from #ops"):
                await bob.join("ops")

    run(body(), 60)


def test_moderated_invite_only_and_topic_lock(broker: Broker) -> None:
    async def body() -> None:
        async with (
            Client(broker.endpoint, "alice", rooms=["stage"]) as alice,
            Client(broker.endpoint, "bob", rooms=["stage"]) as bob,
            Client(broker.endpoint, "dave", rooms=[]) as dave,
            Client(broker.endpoint, "erin", rooms=["stage"]) as erin,
        ):
            await alice.mode("stage", moderated=True, topic_lock=True, invite_only=True)
            with pytest.raises(RequestRefused, match="moderated"):
                await bob.say("stage", "hello?")
            with pytest.raises(RequestRefused, match="locked"):
                await bob.topic("stage", "mine")
            await alice.voice("stage", "bob")
            await bob.say("stage", "with a voice")
            with pytest.raises(RequestRefused, match="invite-only"):
                await dave.join("stage")
            await alice.invite("stage", "dave")
            invited = await until(dave, lambda i: isinstance(i, Notice))
            assert "invites you to #stage" in invited.text
            joined = await dave.join("stage")
            assert joined.modes == ["invite_only", "moderated", "topic_lock"]
            assert joined.roles == {"alice": "owner", "bob": "voice"}
            await alice.op("stage", "dave")
            await dave.topic("stage", "operators set topics")  # an operator may
            # A restart: erin, a member from before the room turned
            # invite-only, comes back into it with everyone else.
            await asyncio.to_thread(broker.restart)
            await until(erin, lambda i: isinstance(i, Reconnected), 30)
            assert erin.rooms == ["stage"]

    run(body(), 60)


def test_server_operators_by_password(make_broker: Callable[..., Broker], tmp_path: Path) -> None:
    secret = tmp_path / "oper.txt"
    secret.write_text(PASSWORD + "\n")
    b = make_broker("--oper-password-file", str(secret), "--timeout-ms", "3000")

    async def body() -> None:
        async with (
            Client(b.endpoint, "root", rooms=[]) as root,
            Client(b.endpoint, "alice", rooms=["den"]) as alice,
            Client(b.endpoint, "mallory", rooms=["den"]) as mallory,
        ):
            assert f"server operators: the password in {secret} (/oper)" in b.log_text()
            with pytest.raises(RequestRefused, match="not the operator password"):
                await root.oper("guess")
            await root.oper(PASSWORD)
            await root.wall("maintenance at noon")
            for c in (alice, mallory):
                got = await until(c, lambda i: isinstance(i, Notice) and "noon" in i.text)
                assert got.text == "[root] maintenance at noon"
            # An operator acts in a room it is not in, above its owner.
            await root.deop("den", "alice")
            await root.kick("den", "mallory", "enough")
            await root.kill("mallory", "goodbye")
            await until(alice, lambda i: isinstance(i, LeaveEvent) and i.nick == "mallory")
            assert "mallory" not in [u.nick for u in (await alice.who()).users]
            # A ban of the whole server, typed in the terminal: refused at hello.
            screen = Screen(root)
            assert await screen.ui.handle("/ban * nick:mallory 1d troll") is True
            assert "error" not in screen.text().lower(), screen.text()
            with pytest.raises(RequestRefused, match="banned from this server"):
                async with Client(b.endpoint, "MaIlory", rooms=[]):  # a look-alike
                    pass
            listed = await root.bans("*")
            assert [(x.mask, x.by, x.reason) for x in listed.bans] == [
                ("nick:mallory", "root", "troll")
            ]
            assert await screen.ui.handle("/unban * nick:mallory") is True
            async with Client(b.endpoint, "mallory", rooms=[]):
                pass

        # The password file is read again on SIGHUP: the old one is no more.
        secret.write_text("a brand new password\n")
        b.signal(signal.SIGHUP)
        wait_until(lambda: "operators re-read" in b.log_text(), 10, "the SIGHUP")
        async with Client(b.endpoint, "root2", rooms=[]) as root:
            with pytest.raises(RequestRefused):
                await root.oper(PASSWORD)
            await root.oper("a brand new password")

    run(body(), 60)


def test_the_antiflood_bot_mutes_a_flooder_and_not_the_polite(broker: Broker) -> None:
    async def body() -> None:
        async with (
            Client(broker.endpoint, "alice", rooms=["general"]) as alice,
            Client(broker.endpoint, "flooder", rooms=["general"]) as flooder,
            Client(broker.endpoint, "polite", rooms=["general"]) as polite,
        ):
            bot_client = antiflood.bot.make_client(broker.endpoint)
            runner = asyncio.ensure_future(antiflood.bot.run(bot_client))
            try:
                await until(
                    alice, lambda i: getattr(i, "nick", None) == "antiflood", 10
                )  # its join
                # No operator yet: it says, once, what it needs.
                for i in range(antiflood.LINES + 1):
                    await flooder.say("general", f"early spam {i}")
                hint = await until(
                    alice, lambda i: isinstance(i, MsgEvent) and i.from_ == "antiflood"
                )
                assert "/op antiflood" in hint.text
                await alice.op("general", "antiflood")
                for i in range(antiflood.LINES + 1):
                    await flooder.say("general", f"spam {i}")
                muted = await until(alice, lambda i: isinstance(i, ModeEvent) and i.mode == "mute")
                assert (muted.nick, muted.target) == ("antiflood", "flooder")
                assert muted.until is not None and "flood" in (muted.text or "")
                with pytest.raises(RequestRefused, match="muted"):
                    await flooder.say("general", "more spam")
                for i in range(antiflood.LINES):  # at most LINES: never muted
                    await polite.say("general", f"line {i}")
                await polite.say("general", "still here")
                said = await until(
                    alice, lambda i: isinstance(i, MsgEvent) and i.text == "still here"
                )
                assert said.from_ == "polite"
            finally:
                await bot_client.close()
                runner.cancel()

    run(body(), 60)


def test_moderation_is_shared_by_the_nodes_of_a_cluster(
    nodes: Callable[..., list[Broker]], tmp_path: Path
) -> None:
    secret = tmp_path / "oper.txt"
    secret.write_text(PASSWORD + "\n")
    a, b = nodes(2, "--oper-password-file", str(secret))

    async def body() -> None:
        async with (
            Client(a.endpoint, "alice", rooms=["ops"]) as alice,
            Client(b.endpoint, "bob", rooms=["ops"]) as bob,
            Client(b.endpoint, "carol", rooms=["ops"]) as carol,
        ):
            # A mute set on node a holds on node b.
            await alice.mute("ops", "bob")
            await until(bob, lambda i: isinstance(i, ModeEvent) and i.mode == "mute")
            with pytest.raises(RequestRefused, match="muted"):
                await bob.say("ops", "from b")
            await carol.say("ops", "a polite client on b")
            # A kick from node a puts out a session of node b.
            await alice.kick("ops", "bob", "out")
            left = await until(carol, lambda i: isinstance(i, LeaveEvent) and i.nick == "bob")
            assert (left.by, left.text) == ("alice", "out")
            with pytest.raises(RequestRefused, match="not in"):
                await bob.say("ops", "still in?")
            # A ban from node a keeps them out of node b.
            await alice.ban("ops", nick="bob")
            await until(carol, lambda i: isinstance(i, ModeEvent) and i.mode == "ban")
            with pytest.raises(RequestRefused, match="banned"):
                await bob.join("ops")
            assert (await carol.who("ops")).users[0].role == "owner"
            # A quiet session (a script) on node b has no leave to see: node b
            # is told. Its says are refused there once it is.
            async with Client(b.endpoint, "script", rooms=["ops"], quiet=True) as script:
                await alice.kick("ops", "script", "no bots here")
                await refused_in_time(
                    lambda: script.say("ops", "still talking"),
                    "not_in_room",
                    "the script was never put out on node b",
                )
            # A server notice from node a reaches the clients of node b too.
            await alice.oper(PASSWORD)
            await alice.wall("the cluster restarts at noon")
            for c in (carol, alice):
                got = await until(c, lambda i: isinstance(i, Notice))
                assert got.text == "[alice] the cluster restarts at noon"
            # A server operator on node a outranks a room operator on node b.
            await alice.op("ops", "carol")
            async with Client(a.endpoint, "root", rooms=["ops"]) as root:
                await root.oper(PASSWORD)
                with pytest.raises(RequestRefused, match="a server operator"):
                    await carol.kick("ops", "root")
            # A ban of the server from node a ends carol's session on node b.
            await alice.ban("*", mask="nick:carol", reason="enough")
            left = await until(alice, lambda i: isinstance(i, LeaveEvent) and i.nick == "carol")
            assert (left.reason, left.by) == ("kick", "alice")
            # Node b forgets her session within a lease renewal (a second);
            # until then her nick is still in use there.
            refused = await refused_in_time(
                hello_on(b.endpoint, "carol"), "forbidden", "carol was never refused on node b"
            )
            assert "banned from this server" in refused.message

    run(body(), 60)


def test_the_terminal_commands_moderate_and_refuse_mistypes(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker("--rate", "0", store=":memory:")

    async def body() -> None:
        async with Client(b.endpoint, "bob", rooms=[]) as bob:
            async with chat(b, "alice", "ops") as s:
                await bob.join("ops")
                ui = s.ui
                mistyped = {
                    "/kick": "usage: /kick NICK [REASON]",
                    "/op a b": "usage: /op NICK",
                    "/mode moderated": "settings are +/- invite_only, moderated, topic_lock",
                    "/mode": "#ops is open to all, with no settings on; /mode +SETTING",
                    "/ban -key": "usage: /ban",
                    "/ban -addr addr:10.0.0.1": "-key and -addr go with a nick",
                    "/mute 9lives": "not valid",
                    "/bans a b": "usage: /bans",
                    "/mute bob 5x too loud": "'5x' is not a duration: 90s, 10m, 2h, 7d, 1w",
                    "/ban bob 10mins": "'10mins' is not a duration",
                }
                for line, words in mistyped.items():
                    before = len(s.text())
                    assert await ui.handle(line) is True
                    assert words in s.text()[before:], (line, s.text()[before:])
                roles = {u.nick: u.role for u in (await bob.who("ops")).users}
                assert roles == {"alice": "owner", "bob": None}  # nothing was guessed
                for line in ("/op bob", "/mode +moderated +topic_lock", "/mute bob 10m too loud"):
                    assert await ui.handle(line) is True
                muted = await next_of(bob, ModeEvent, lambda e: e.mode == "mute")
                while True:  # what alice's screen is shown, as its loop would
                    item = await ui.client.next_item(10)
                    ui.on_item(item)
                    if isinstance(item, ModeEvent) and item.mode == "mute":
                        break
                before = len(s.text())
                assert await ui.handle("/mode") is True  # from the events shown
                assert "#ops is moderated (voices speak), topic-locked" in s.text()[before:]
                assert (muted.target, muted.text) == ("bob", "too loud") and muted.until
                before = len(s.text())
                assert await ui.handle("/bans") is True
                table = s.text()[before:]
                assert "owner" in table and "moderated" in table and "too loud" in table
                assert await ui.handle("/ban bob 2h spam") is True
                left = await next_of(bob, LeaveEvent, lambda e: e.nick == "bob")
                assert (left.reason, left.by, left.text) == ("kick", "alice", "spam")
                screen = Screen(bob)
                screen.ui.on_item(left)
                assert "<-- bob left #ops (put out by alice: spam)" in screen.text()
                completer = ChatCompleter(ui)
                doc = Document("/mode +mo", 9)
                assert [c.text for c in completer.get_completions(doc, CompleteEvent())] == [
                    "+moderated"
                ]

    run(body())


def test_zchat_bot_antiflood_as_a_server_operator(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    """``zchat bot antiflood --oper-password-file``: an operator of every
    room, it needs no /op in a room it was just asked into."""
    secret = tmp_path / "oper.txt"
    secret.write_text(PASSWORD + "\n")
    b = make_broker("--oper-password-file", str(secret), "--timeout-ms", "3000")
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        XDG_DATA_HOME=str(tmp_path),
        XDG_CONFIG_HOME="/nonexistent-zchat-test",
        ZCHAT_FLOOD_LINES="3",
    )
    cmd = [sys.executable, "-m", "client", "bot", "antiflood", "--connect", b.endpoint]
    cmd += ["--room", "busy", "--oper-password-file", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:

        async def body() -> None:
            async with (
                Client(b.endpoint, "alice", rooms=["busy"]) as alice,
                Client(b.endpoint, "flooder", rooms=["busy"]) as flooder,
            ):
                while "antiflood" not in [u.nick for u in (await alice.who("busy")).users]:
                    await asyncio.sleep(0.05)
                for i in range(4):
                    await flooder.say("busy", f"spam {i}")
                muted = await until(alice, lambda i: isinstance(i, ModeEvent), 20)
                assert (muted.nick, muted.mode, muted.target) == ("antiflood", "mute", "flooder")
                assert "more than 3 lines" in (muted.text or "")

        run(body(), 60)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert b"Traceback" not in out, out.decode()


def test_an_address_ban_puts_out_members_on_every_node(
    nodes: Callable[..., list[Broker]],
) -> None:
    a, b = nodes(2)

    async def body() -> None:
        async with (
            Client(a.endpoint, "alice", rooms=["den"]) as alice,
            Client(b.endpoint, "xavier", rooms=["den"]) as xavier,
        ):
            await alice.ban("den", nick="xavier", match="addr", reason="same place")
            left = await until(alice, lambda i: isinstance(i, LeaveEvent) and i.nick == "xavier")
            assert (left.reason, left.by, left.text) == ("kick", "alice", "same place")
            listed = await alice.bans("den")
            assert [x.mask for x in listed.bans] == ["addr:127.0.0.1"]  # his, from node b
            await refused_in_time(
                lambda: xavier.say("den", "still here?"),
                "not_in_room",
                "xavier was never put out on node b",
            )
            with pytest.raises(RequestRefused, match="banned"):
                await xavier.join("den")

    run(body(), 60)


def test_a_kick_from_before_the_last_join_does_not_put_the_client_out(broker: Broker) -> None:
    """After a reconnect that rejoined, history repairs events from before
    the rejoin, a kick of this client among them: that kick is history."""
    from client._sequencer import Step

    async def body() -> None:
        async with Client(broker.endpoint, "alice", rooms=["den"]) as alice:
            joined_at = alice._joined_at["den"]
            old = LeaveEvent(
                room="den",
                seq=joined_at - 1,
                ts="2026-11-28T12:00:00.000Z",
                nick="alice",
                reason="kick",
                by="bob",
            )
            alice._apply(Step(deliver=[old]))
            assert alice.rooms == ["den"]
            new = LeaveEvent(
                room="den",
                seq=joined_at + 5,
                ts="2026-11-28T12:00:00.000Z",
                nick="alice",
                reason="kick",
                by="bob",
            )
            alice._apply(Step(deliver=[new]))
            assert alice.rooms == []

    run(body())


def test_a_server_ban_by_address_ends_sessions_on_every_node(
    nodes: Callable[..., list[Broker]], tmp_path: Path
) -> None:
    secret = tmp_path / "oper.txt"
    secret.write_text(PASSWORD + "\n")
    a, b = nodes(2, "--oper-password-file", str(secret))

    async def body() -> None:
        async with (
            Client(a.endpoint, "root", rooms=["hall"]) as root,
            Client(b.endpoint, "yves", rooms=["hall"]),
        ):
            await root.oper(PASSWORD)
            await root.ban("*", mask="addr:127.0.0.0/8", reason="the whole block")
            left = await until(root, lambda i: isinstance(i, LeaveEvent) and i.nick == "yves")
            assert (left.reason, left.by, left.text) == ("kick", "root", "the whole block")
            refused = await refused_in_time(
                hello_on(b.endpoint, "yves2"), "forbidden", "yves2 was never refused on node b"
            )
            assert "banned from this server" in refused.message
            await root.unban("*", "addr:127.0.0.0/8")

    run(body(), 60)
