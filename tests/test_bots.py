"""The bot API (issue 13, points 3, 8 and 9): timers, on_start, spawned
tasks, persistent state, restarts that keep the nick, and the shipped bots.

Bots run in this process against real brokers, or as ``zchat bot`` in a
subprocess where signals matter. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import (
    Bot,
    BotState,
    Client,
    ConnectTimeout,
    InvalidInput,
    RequestRefused,
    ZchatError,
)
from client._bot_cli import load
from client.bot import Message, Presence, default_state_path
from client.bots import dice, remind
from messages import Code, JoinEvent, LeaveEvent, MsgEvent, PmPush

from .chaos import until
from .helpers import ROOT, Broker, run

ENV = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME="/nonexistent-zchat-test")


@pytest.fixture(autouse=True)
def _data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes a bot's state into the real home."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@contextlib.asynccontextmanager
async def serving(bot: Bot, endpoint: str, **kwargs: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``bot`` on ``endpoint`` until the block ends (then stop it and say
    bye), once it is in its rooms with its commands offered."""
    client = bot.make_client(endpoint, **kwargs)
    task = asyncio.ensure_future(bot.run(client))
    try:
        await until(lambda: bot.client is not None or task.done(), 30, "the bot to start")
        if task.done():
            task.result()  # the reason it did not start
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def said(
    client: Client, pred: Callable[[Any], bool], timeout: float = 10, seen: list[Any] | None = None
) -> Any:
    """The first item ``client`` gets that matches ``pred`` (all kept in ``seen``)."""
    deadline = time.monotonic() + timeout
    while True:
        item = await client.next_item(max(0.01, deadline - time.monotonic()))
        if seen is not None:
            seen.append(item)
        if pred(item):
            return item


def from_(nick: str) -> Callable[[Any], bool]:
    return lambda i: isinstance(i, MsgEvent) and i.from_ == nick


async def offered(human: Client, nick: str) -> None:
    """Wait until ``nick``'s commands are offered: the bot is ready."""
    while not [c for c in await human.commands() if c.nick == nick]:
        await asyncio.sleep(0.05)  # polling the broker; bounded by run's deadline


# ------------------------------------------------------------- the API


def test_registration_refuses_what_the_broker_would() -> None:
    bot = Bot("b")
    with pytest.raises(ValueError, match="a-z, 0-9"):
        bot.command("Bad Name")
    with pytest.raises(ValueError, match="at most 100"):
        bot.command("x", usage="u" * 101)
    with pytest.raises(ValueError, match="above 0"):
        bot.every(0)
    with pytest.raises(ValueError, match="prefix"):
        Bot("b", prefix="")
    assert bot.client is None and bot.errors == 0 and len(bot.state) == 0


def test_on_start_runs_once_connected_before_any_message(broker: Broker, tmp_path: Path) -> None:
    bot = Bot("starter", state_path=tmp_path / "s.json")
    order: list[str] = []
    release = asyncio.Event()

    @bot.on_start
    async def started(b: Bot) -> None:
        assert b is bot and bot.client is not None and bot.client.nick == "starter"
        assert "general" in bot.client.rooms
        order.append("start")
        await release.wait()  # a message arrives meanwhile
        order.append("started")

    @bot.on_message
    def heard(msg: Message) -> None:
        order.append(f"msg {msg.text}")

    async def body() -> None:
        async with Client(broker.endpoint, "human") as human:
            client = bot.make_client(broker.endpoint)
            assert bot.client is None
            task = asyncio.ensure_future(bot.run(client))
            await until(lambda: order == ["start"], 10, "on_start")
            await human.say("general", "early")
            # The bot's client has the message queued; on_start still runs.
            queued = lambda: any(isinstance(i, MsgEvent) for i in client._items)  # noqa: E731
            await until(queued, 10, "the message to reach the bot")
            assert order == ["start"]
            release.set()
            await until(lambda: len(order) == 3, 10, "the message to be handled")
            assert order == ["start", "started", "msg early"]
            assert bot.client is client
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert bot.client is None
            await client.close()

    run(body(), 30)


def test_every_ticks_while_running_and_later_fires_once(broker: Broker, tmp_path: Path) -> None:
    bot = Bot("timer", state_path=tmp_path / "t.json")
    ticks: list[float] = []
    fired: list[Any] = []

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    started: list[float] = []

    @bot.on_start
    def start(b: Bot) -> None:
        started.append(loop_time())
        b.later(0.1, fired.append, "function")

        async def coro_fn(x: str) -> None:
            fired.append(x)

        b.later(0.1, coro_fn, "coroutine function")
        b.later(0.1, coro_fn("coroutine"))
        b.later(0.3, fired.append, "called off").cancel()

    @bot.every(0.2)
    async def tick(b: Bot) -> None:
        ticks.append(loop_time())

    async def body() -> None:
        async with serving(bot, broker.endpoint):
            await until(lambda: len(ticks) >= 4, 10, "four ticks")
            await asyncio.sleep(0.4)  # let "called off" pass its time
        stopped = len(ticks)
        await asyncio.sleep(0.5)  # no tick after the bot stopped
        assert len(ticks) == stopped
        # Never early, never bunched: the n-th call comes n intervals after
        # the start or later (a loaded machine only makes it skip ticks).
        assert all(t - started[0] >= 0.2 * (n + 1) - 0.01 for n, t in enumerate(ticks)), ticks
        assert all(b > a for a, b in itertools.pairwise(ticks))
        assert sorted(fired) == ["coroutine", "coroutine function", "function"]
        assert bot.errors == 0

    run(body(), 30)


def test_failures_in_tasks_timers_and_later_are_logged_and_counted(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zchat.bot")
    bot = Bot("worker", state_path=tmp_path / "w.json")
    ticks = 0

    async def lookup(msg: Message) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("lookup broke")

    @bot.command("slow", help="answers later")
    def slow(msg: Message, args: str) -> str:
        bot.spawn(lookup(msg))
        return "working on it"

    @bot.every(0.1)
    def flaky(b: Bot) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 1:
            raise ValueError("tick broke")

    @bot.on_start
    def start(b: Bot) -> None:
        b.later(0.05, lambda: 1 / 0)

    async def body() -> None:
        async with Client(broker.endpoint, "human") as human, serving(bot, broker.endpoint):
            await offered(human, "worker")
            await human.say("general", "!slow")
            assert (await said(human, from_("worker"))).text == "working on it"
            await until(lambda: bot.errors >= 3 and ticks >= 3, 10, "three failures")
            # The timer went on after it failed once; the bot still answers.
            await human.say("general", "!help")
            assert "!slow: answers later" in (await said(human, from_("worker"))).text
        assert bot.errors == 3

    run(body(), 30)
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_info[1] if r.exc_info else ''}" for r in caplog.records
    )
    assert re.search(r"task \S*lookup failed.*lookup broke", logged), logged
    assert re.search(r"handler \S*flaky failed.*tick broke", logged), logged
    assert re.search(r"task later\(0.05\) \S*lambda> failed.*division by zero", logged), logged


def test_presence_tells_a_join_from_a_leave(broker: Broker, tmp_path: Path) -> None:
    bot = Bot("door", state_path=tmp_path / "d.json")
    seen: list[tuple[str, bool, str]] = []

    @bot.on_join
    @bot.on_leave
    def note(p: Presence) -> str | None:
        seen.append((p.nick, p.joined, getattr(p.event, "text", None) or ""))
        return f"welcome, {p.nick}" if p.joined else None

    async def body() -> None:
        async with Client(broker.endpoint, "human") as human, serving(bot, broker.endpoint):
            async with Client(broker.endpoint, "guest") as guest:
                assert (await said(human, from_("door"))).text == "welcome, guest"
                await guest.part("general", "lunch break")
            await until(lambda: len(seen) == 2, 10, "the leave")
        assert seen == [("guest", True, ""), ("guest", False, "lunch break")]

    run(body(), 30)


# ------------------------------------------------------------- state


def test_state_is_json_saved_after_each_change_and_loaded_by_the_next_run(
    broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "counter.state.json"

    def make() -> Bot:
        bot = Bot("counter", state_path=path)

        @bot.command("count")
        def count(msg: Message, args: str) -> str:
            bot.state["n"] = bot.state.get("n", 0) + 1
            bot.state.setdefault("who", []).append(msg.nick)  # a change inside a value
            return str(bot.state["n"])

        return bot

    with pytest.raises(TypeError, match="JSON"):
        make().state["x"] = {1, 2}

    async def session(expect: str) -> None:
        bot = make()
        async with Client(broker.endpoint, "human") as human, serving(bot, broker.endpoint):
            await offered(human, "counter")
            await human.say("general", "!count")
            assert (await said(human, from_("counter"))).text == expect
            # Saved once the handler returned, not only at the end.
            saved = json.loads(path.read_text())["data"]
            assert saved == {"n": int(expect), "who": ["human"] * int(expect)}

    run(session("1"), 30)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    run(session("2"), 30)


def test_state_is_locked_and_a_broken_file_is_left_alone(broker: Broker, tmp_path: Path) -> None:
    path = tmp_path / "one.state.json"

    async def body() -> None:
        first = Bot("one", state_path=path)
        async with serving(first, broker.endpoint):
            second = Bot("one", state_path=path)
            with pytest.raises(ZchatError, match="another run of this bot") as err:
                await second.run(second.make_client(broker.endpoint))
            assert err.value.code == "state_locked"

    run(body(), 30)
    path.write_text("{not json")
    bot = Bot("one", state_path=path)
    with pytest.raises(InvalidInput, match="not a bot's state file"):
        run(bot.run(bot.make_client(broker.endpoint)), 30)
    assert path.read_text() == "{not json"


def test_where_state_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_state_path("Remind") == tmp_path / "xdg/zchat/bots/remind.state.json"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    assert default_state_path("r") == Path.home() / ".local/share/zchat/bots/r.state.json"
    file = tmp_path / "greeter.py"
    file.write_text("from client import Bot\nbot = Bot('greeter')\n")
    assert load(str(file)).state_path == tmp_path / "greeter.state.json"
    assert load("dice").state_path is None  # the default, by nick
    assert BotState().save() is False  # not opened by a run: no file to write


# ------------------------------------------------- restarts (point 3)


def _bot_with_ping(nick: str, path: Path, **kwargs: Any) -> Bot:
    bot = Bot(nick, state_path=path, **kwargs)

    @bot.command("ping")
    def ping(msg: Message, args: str) -> str:
        return "pong"

    return bot


def test_a_restart_takes_its_session_back_with_the_saved_token(
    make_broker: Callable[..., Broker], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zchat.client")
    b = make_broker("--timeout-ms", "15000")
    path = tmp_path / "pinger.state.json"

    async def body() -> None:
        async with Client(b.endpoint, "human") as human:
            seen: list[Any] = []
            first = _bot_with_ping("pinger", path)
            client = first.make_client(b.endpoint)
            task = asyncio.ensure_future(first.run(client))
            await said(human, lambda i: isinstance(i, JoinEvent) and i.nick == "pinger")
            await offered(human, "pinger")  # its token saved, which comes after the join
            token = client.token
            assert json.loads(path.read_text())["session"] == {"nick": "pinger", "token": token}
            # A crash: no bye, so the broker keeps the session for 15 s.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close(quiet=True)
            started = time.monotonic()
            second = _bot_with_ping("pinger", path)
            async with serving(second, b.endpoint):
                assert time.monotonic() - started < 5  # not the 15 s of the session timeout
                assert second.client is not None and second.client.token == token
                await offered(human, "pinger")
                await human.say("general", "!ping")
                await said(human, from_("pinger"), seen=seen)
            # Taken over: nobody saw the bot leave or join again meanwhile.
            assert not [i for i in seen if isinstance(i, JoinEvent | LeaveEvent)], seen

    run(body(), 30)
    assert "is taken" not in caplog.text


def test_a_nick_held_by_someone_else_is_waited_for(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zchat.client")

    async def body() -> None:
        squatter = Client(broker.endpoint, "pinger")
        await squatter.start()
        bot = _bot_with_ping("pinger", tmp_path / "p.json", nick_wait=15)
        client = bot.make_client(broker.endpoint)
        task = asyncio.ensure_future(bot.run(client))
        try:
            await until(lambda: "is taken" in caplog.text, 10, "the bot to say it waits")
            assert bot.client is None and not task.done()
            await squatter.close()  # bye: the nick is free at once
            await until(lambda: bot.client is not None, 10, "the bot to get its nick")
            assert client.nick == "pinger"
            assert caplog.text.count("is taken") == 1  # one line, not one a second
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()

    run(body(), 30)


def test_a_nick_held_past_nick_wait_is_refused(broker: Broker, tmp_path: Path) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "pinger"):
            bot = _bot_with_ping("pinger", tmp_path / "p.json", nick_wait=1.5)
            started = time.monotonic()
            with pytest.raises(RequestRefused) as err:
                await bot.run(bot.make_client(broker.endpoint))
            assert err.value.code == Code.NICK_TAKEN
            assert 0.9 <= time.monotonic() - started < 8  # a second's wait, then no more
            assert bot.client is None

    run(body(), 30)


def test_run_gives_up_on_a_silent_broker_after_its_timeout(broker: Broker, tmp_path: Path) -> None:
    endpoint = broker.endpoint
    broker.kill()
    bot = Bot("lonely", state_path=tmp_path / "l.json")

    async def body() -> None:
        client = bot.make_client(endpoint)
        started = time.monotonic()
        with pytest.raises(ConnectTimeout):
            await bot.run(client, timeout=0.5)
        assert time.monotonic() - started < 5 and bot.client is None

    run(body(), 30)


_procs: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """A failing test must not leave its bot running."""
    yield
    while _procs:
        proc = _procs.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def zchat_bot(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "client", "bot", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            # The person's nick in the environment is not the bot's.
            env=dict(ENV, XDG_DATA_HOME=os.environ["XDG_DATA_HOME"], ZCHAT_NICK="human"),
        )
    _procs.append(proc)
    return proc


PING_BOT = """\
from client import Bot

bot = Bot("pinger")


@bot.command("ping")
def ping(msg, args):
    return "pong"
"""


def test_zchat_bot_says_bye_on_sigterm_and_a_restart_gets_its_nick(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    b = make_broker("--timeout-ms", "15000")
    file = tmp_path / "pinger.py"
    file.write_text(PING_BOT)
    log = tmp_path / "bot.log"

    def is_join(item: Any) -> bool:
        return isinstance(item, JoinEvent) and item.nick == "pinger"

    def is_leave(item: Any) -> bool:
        return isinstance(item, LeaveEvent) and item.nick == "pinger"

    async def body() -> None:
        async with Client(b.endpoint, "human") as human:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                proc = zchat_bot(str(file), "--connect", b.endpoint, log=log)
                await said(human, is_join, 20)
                proc.send_signal(sig)
                stopped = time.monotonic()
                leave = await said(human, is_leave, 10)
                # At once, as a quit: not a timeout 15 s later.
                assert leave.reason == "quit" and time.monotonic() - stopped < 5
                assert await asyncio.to_thread(proc.wait, 10) == 128 + sig
            # Killed: no bye. The next run takes the session over with the
            # token it saved, at once, and nobody sees it leave.
            proc = zchat_bot(str(file), "--connect", b.endpoint, log=log)
            await said(human, is_join, 20)
            await offered(human, "pinger")  # so it had saved its token
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            killed = time.monotonic()
            proc = zchat_bot(str(file), "--connect", b.endpoint, log=log)
            seen: list[Any] = []
            while True:
                await human.say("general", "!ping")
                with contextlib.suppress(asyncio.TimeoutError):
                    await said(human, from_("pinger"), 1, seen)
                    break
            assert time.monotonic() - killed < 10
            assert not [i for i in seen if is_leave(i) or is_join(i)], seen
            proc.terminate()
            await said(human, is_leave, 10)

    run(body(), 90)
    text = log.read_text()
    assert "is taken" not in text and "Traceback" not in text, text
    assert stat.S_IMODE((tmp_path / "pinger.state.json").stat().st_mode) == 0o600


# ------------------------------------------------------- shipped bots


def test_remind_keeps_its_reminders_across_a_restart(broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "remind.json"
    log = tmp_path / "remind.log"
    args = ("remind", "--connect", broker.endpoint, "--state", str(state))
    is_join = lambda i: isinstance(i, JoinEvent) and i.nick == "remind"  # noqa: E731

    async def body() -> None:
        async with Client(broker.endpoint, "human") as human:
            proc = zchat_bot(*args, log=log)
            await said(human, is_join, 20)
            await offered(human, "remind")
            await human.say("general", "!remind 3s stretch")
            ack = await said(human, from_("remind"))
            assert ack.text == "human: in 3s, I will say: stretch (reminder 1)"
            proc.terminate()
            assert await asyncio.to_thread(proc.wait, 10) == 143
            kept = json.loads(state.read_text())["data"]["reminders"]
            assert [(r["nick"], r["room"], r["text"]) for r in kept.values()] == [
                ("human", "general", "stretch")
            ]
            proc = zchat_bot(*args, log=log)
            rejoined = await said(human, is_join, 20)
            got = await said(human, from_("remind"), 20)
            assert got.text == "human: stretch" and got.seq > rejoined.seq
            await until(
                lambda: json.loads(state.read_text())["data"]["reminders"] == {},
                10,
                "the said reminder to be dropped from the state",
            )

    run(body(), 60)


def test_remind_lists_and_forgets(broker: Broker, tmp_path: Path) -> None:
    bot = load(str(ROOT / "client/bots/remind.py"))  # a fresh copy of the module
    bot.state_path = tmp_path / "r.json"

    async def body() -> None:
        async with Client(broker.endpoint, "human") as human, serving(bot, broker.endpoint):
            await offered(human, "remind")

            async def ask(text: str) -> str:
                await human.pm("remind", text)
                got = await said(human, lambda i: isinstance(i, PmPush) and i.from_ == "remind")
                return str(got.text)

            assert await ask("!remind 1h30m tea") == (
                "human: in 1h30m, I will say: tea (reminder 1)"
            )
            assert "is not a duration" in await ask("!remind soon tea")
            assert "1 second to 30 days" in await ask("!remind 31d tea")
            assert (await ask("!REMINDERS")).startswith("human: 1: in 1h")
            assert await ask("!forget 1") == "human: forgotten"
            assert await ask("!reminders") == "human: no reminders waiting"
            assert await ask("!remind 1s private") == (
                "human: in 1s, I will say: private (reminder 2)"  # a new id, never reused
            )
            got = await said(human, lambda i: isinstance(i, PmPush))
            assert got.text == "human: private"
            # Twenty long ones listed would pass the broker's limit on a
            # message (and the answer was never sent): as many as fit.
            for i in range(20):
                assert "I will say" in await ask(f"!remind {i + 1}h " + "x" * 400)
            listed = await ask("!reminders")
            assert listed.startswith("human: 3: in ") and len(listed) <= 3_000
            shown = listed.count("x" * 400)
            assert 0 < shown < 20 and listed.endswith(f"; and {20 - shown} more")

    run(body(), 60)
    assert remind.parse_duration("1d") == 86400 and remind.describe(5400) == "1h30m"


def test_dice_refusals_are_addressed_not_rolled() -> None:
    """Issue 13, point 9: "alicia rolls sorry, I roll between 1 and 100 dice"."""
    import random

    rng = random.Random(3)
    assert dice.answer("alicia", "1000d6", rng) == (
        "alicia: sorry, I roll between 1 and 100 dice at a time"
    )
    assert dice.answer("alicia", "2x", rng).startswith("alicia: usage: !roll")
    assert re.fullmatch(r"alicia rolls 2d6: \[\d, \d\] \+ 1 = \d+", dice.answer("alicia", "2D6+1"))
    assert re.fullmatch(r"alicia rolls 1d6: \[\d\] = \d", dice.answer("alicia", "", rng))


def test_lastlog_names_the_file_not_the_servers_folders(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, point 9: ``!lastlog`` printed the path on the bot's machine."""
    logs = tmp_path / "secret-folder"
    monkeypatch.setenv("ZCHAT_LOG_DIR", str(logs))
    bot = load(str(ROOT / "client/bots/logger.py"))
    bot.state_path = tmp_path / "logger.json"

    async def body() -> tuple[str, str]:
        async with Client(broker.endpoint, "human") as human, serving(bot, broker.endpoint):
            await offered(human, "logger")
            await human.say("general", "one")
            await human.say("general", "!lastlog")
            in_room = (await said(human, from_("logger"))).text
            await human.pm("logger", "!lastlog")
            private = (await said(human, lambda i: isinstance(i, PmPush))).text
            return in_room, private

    in_room, private = run(body(), 30)
    lines = (logs / "general.log").read_bytes().count(b"\n")
    assert lines >= 3  # the human's join, "one", "!lastlog" (and the bot's own lines)
    match = re.fullmatch(r"#general is logged to general\.log, (\d+) lines so far", in_room)
    assert match is not None, in_room
    assert 3 <= int(match.group(1)) <= lines
    assert str(tmp_path) not in in_room and "secret-folder" not in in_room
    assert private == "ask in a room: I log the rooms I am in, #general"


# ------------------------------------------------------------ the README


def readme_files() -> dict[str, str]:
    """The files of the README's "Bots" section: each ```python block that
    opens with ``# NAME.py:``."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Bots\n") :]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {m.group(1): b for b in blocks if (m := re.match(r"# (\w+\.py):", b))}


def test_the_readmes_bots_work_as_written(broker: Broker, tmp_path: Path) -> None:
    files = readme_files()
    assert sorted(files) == ["greeter.py", "hello.py", "remind.py", "test_greeter.py"]
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    assert [c.name for c in load(str(tmp_path / "hello.py")).commands] == ["hello"]
    reminder = load(str(tmp_path / "remind.py"))
    greeter = load(str(tmp_path / "greeter.py"))

    async def body() -> None:
        async with (
            Client(broker.endpoint, "human") as human,
            serving(reminder, broker.endpoint),
            serving(greeter, broker.endpoint),
        ):
            await offered(human, "remind")
            await human.say("general", "!remind 1s tea")
            assert (await said(human, from_("remind"))).text == "human: ok, in 1s"
            assert (await said(human, from_("remind"))).text == "human: tea"
            seen: list[Any] = []
            for _ in range(2):  # greeted once, not at each join
                async with Client(broker.endpoint, "guest"):
                    is_guest = lambda i: isinstance(i, JoinEvent) and i.nick == "guest"  # noqa: E731
                    await said(human, is_guest, seen=seen)
                    await until(lambda: bool(greeter.state["greeted"]), 10, "the greeting")
            await human.say("general", "!help")  # the greeter's answer comes after any greeting
            await said(human, lambda i: from_("greeter")(i) and "!greeting" in i.text, seen=seen)
            greetings = [i.text for i in seen if from_("greeter")(i) and "!greeting" not in i.text]
            assert greetings == ["welcome to #general, guest! !help lists what bots do"]
            assert greeter.state["greeted"] == ["guest"]
        assert reminder.errors == 0 and greeter.errors == 0

    run(body(), 30)
    # The README's test of the greeter, as written, against this broker.
    test = tmp_path / "test_greeter.py"
    test.write_text(files["test_greeter.py"].replace("tcp://127.0.0.1:5599", broker.endpoint))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(ENV, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}"),
    )
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
