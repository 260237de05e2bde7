"""``zchat send``, ``zchat tail`` and bots, as scripts use them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import Bot, Client, Reconnected
from client.bots.dice import roll
from messages import MsgEvent, PmPush

from .chaos import Row, check_exact, full_speed_chaos, until
from .helpers import ROOT, Broker, RawClient, run, wait_until

ENV = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME="/nonexistent-zchat-test")


def zchat(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def texts(broker: Broker, room: str = "general") -> list[str]:
    async def body() -> list[str]:
        async with Client(broker.endpoint, "reader", rooms=[]) as c:
            events, _ = await c.history(room, limit=500)
            return [e.text for e in events if isinstance(e, MsgEvent)]

    return run(body())


# ------------------------------------------------------------------ send


def test_send_arguments_and_stdin(broker: Broker) -> None:
    r = zchat(
        "send",
        "--connect",
        broker.endpoint,
        "--nick",
        "ci",
        "--room",
        "#general",
        "deploy",
        "v1.2",
        "done",
    )
    assert r.returncode == 0, r.stderr
    r = zchat(
        "send", "--connect", broker.endpoint, "--room", "general", stdin="one\n\ntwo\nthree\n"
    )
    assert r.returncode == 0, r.stderr
    assert texts(broker) == ["deploy v1.2 done", "one", "two", "three"]


def test_send_private_message(broker: Broker) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "ops") as ops:
            r = await asyncio.to_thread(
                zchat, "send", "--connect", broker.endpoint, "--to", "ops", "disk full"
            )
            assert r.returncode == 0, r.stderr
            while True:
                item = await ops.next_item(10)
                if isinstance(item, PmPush):
                    assert item.text == "disk full"
                    return

    run(body())


@pytest.mark.parametrize(
    ("args", "stdin", "status", "words"),
    [
        # 2: wrong usage, found before anything was sent.
        (["--room", "Not A Room", "x"], None, 2, "not valid"),
        (["--room", "general"], "fine\n\x1b[31mred\n", 2, "line 2"),
        (["--room", "general", "x" * 5000], None, 2, "the limit is 4000"),
        (["--to", "bob", "y" * 70_000], None, 2, "the limit is 4000"),
        # 1: the broker refused.
        (["--to", "nobody", "x"], None, 1, "no_such_user"),
    ],
)
def test_send_failures_are_one_line(
    broker: Broker, args: list[str], stdin: str | None, status: int, words: str
) -> None:
    started = time.monotonic()
    r = zchat("send", "--connect", broker.endpoint, *args, stdin=stdin)
    assert r.returncode == status
    assert words in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert time.monotonic() - started < 8  # at once, not after the 10 s timeout


@pytest.mark.parametrize("program", [[], ["send", "--room", "general", "x"], ["tail"]])
@pytest.mark.parametrize("endpoint", ["localhost:15555", "foo", "tcp://nowhere", "tcp://h:99999"])
def test_a_bad_endpoint_is_one_line_naming_the_form(program: list[str], endpoint: str) -> None:
    """Issue 13, point 5: --connect localhost:15555 printed a traceback."""
    args = [*program[:1], "--connect", endpoint, "--nick", "someone", *program[1:]]
    r = zchat(*args, stdin="", timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "tcp://HOST:PORT" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    if endpoint == "localhost:15555":
        assert "tcp://localhost:15555?" in r.stderr


def test_send_taken_nick(broker: Broker) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "taken"):
            r = await asyncio.to_thread(
                zchat,
                "send",
                "--connect",
                broker.endpoint,
                "--nick",
                "taken",
                "--room",
                "general",
                "x",
            )
            assert r.returncode == 1 and "nick_taken" in r.stderr

    run(body())


def test_send_unreachable_broker_does_not_hang(broker: Broker) -> None:
    endpoint = broker.endpoint
    broker.kill()
    started = time.monotonic()
    r = zchat("send", "--connect", endpoint, "--timeout", "1", "--room", "general", "x")
    assert r.returncode == 3 and "cannot reach" in r.stderr
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------ tail


def test_tail_json_history_and_count(broker: Broker) -> None:
    zchat(
        "send", "--connect", broker.endpoint, "--nick", "w", "--room", "general", stdin="a\nb\nc\n"
    )
    tail = ("tail", "--connect", broker.endpoint, "--nick", "t", "--json")
    r = zchat(*tail, "--history", "3", "--count", "3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    # A script's send is quiet: the room got its three messages, no join or
    # leave around them; nor did the tail publish its own.
    assert [(ev["type"], ev["seq"], ev.get("text")) for ev in lines] == [
        ("msg", 1, "a"),
        ("msg", 2, "b"),
        ("msg", 3, "c"),
    ]
    zchat(
        "send", "--connect", broker.endpoint, "--nick", "v", "--room", "general", "--visible", "d"
    )
    r = zchat(*tail, "--history", "3", "--count", "3")
    assert [
        (ev["type"], ev.get("nick") or ev.get("from"))
        for ev in map(json.loads, r.stdout.splitlines())
    ] == [
        ("join", "v"),
        ("msg", "v"),
        ("leave", "v"),
    ]


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """A failing test must not leave its tail running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _start_tail(broker: Broker, count: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client",
            "tail",
            "--connect",
            broker.endpoint,
            "--nick",
            "tail",
            "--json",
            "--count",
            str(count),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    _started.append(proc)
    return proc


def _wait_joined(broker: Broker, nick: str) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "probe", rooms=[]) as c:
            while nick not in [u.nick for u in (await c.who("general")).users]:
                await asyncio.sleep(0.05)  # polling the broker with a deadline (run's timeout)

    run(body(), 30)


def test_tail_through_a_stalled_pipe_gets_every_message(make_broker: Callable[..., Broker]) -> None:
    b = make_broker("--rate", "0")
    n = 20_000
    tail = _start_tail(b, n + 1)  # the flood's join, then the messages (a tail is quiet)
    _wait_joined(b, "tail")

    async def flood() -> None:
        async with Client(b.endpoint, "flood") as c:
            for start in range(0, n, 1000):
                await asyncio.gather(
                    *(c.say("general", str(i)) for i in range(start, start + 1000))
                )

    # Nobody reads the tail's stdout while the burst goes by: its pipe fills.
    run(flood(), 120)
    out, err = tail.communicate(timeout=120)
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    msgs = [e["text"] for e in events if e["type"] == "msg"]
    assert msgs == [str(i) for i in range(n)]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_tail_across_a_broker_restart(broker: Broker) -> None:
    tail = _start_tail(broker, 2)  # the two messages: the sends and the tail are quiet
    _wait_joined(broker, "tail")
    zchat("send", "--connect", broker.endpoint, "--nick", "w", "--room", "general", "before")
    broker.kill()
    broker.start()
    zchat("send", "--connect", broker.endpoint, "--nick", "w", "--room", "general", "after")
    out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["text"] for e in events if e["type"] == "msg"] == ["before", "after"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))


# ------------------------------------------------------------------ bots


def test_dice_rolls_and_refuses_absurd_sizes() -> None:
    import random

    rng = random.Random(7)
    answer = roll("3d6+2", rng)
    rolls = [int(x) for x in answer.split("[")[1].split("]")[0].split(", ")]
    assert len(rolls) == 3 and all(1 <= r <= 6 for r in rolls)
    assert answer.endswith(f"= {sum(rolls) + 2}")
    with pytest.raises(ValueError, match="sorry"):
        roll("1000000d6", rng)
    with pytest.raises(ValueError, match="sorry"):
        roll("1d1", rng)
    with pytest.raises(ValueError, match=r"^usage"):
        roll("banana", rng)


def _bot(state: Path) -> Bot:
    bot = Bot("helper", state_path=state)

    @bot.command("boom", help="fails on purpose")
    def boom(msg: Any, args: str) -> str:
        raise RuntimeError("boom")

    @bot.command("add", usage="!add A B", help="adds")
    async def add(msg: Any, args: str) -> str:
        a, b = args.split()
        return str(int(a) + int(b))

    @bot.on_pm
    async def pm(msg: Any) -> None:
        await msg.reply(f"you said {msg.text}")

    return bot


async def _reply(client: Client, pred: Callable[[Any], bool], timeout: float = 20) -> Any:
    while True:
        item = await client.next_item(timeout)
        if pred(item):
            return item


def test_bot_answers_survives_a_raising_handler_and_a_restart(
    broker: Broker, tmp_path: Path
) -> None:
    async def body() -> None:
        bot = _bot(tmp_path / "helper.state.json")
        bot_client = bot.make_client(broker.endpoint)
        task = asyncio.ensure_future(bot.run(bot_client))
        async with Client(broker.endpoint, "human") as human:
            while not await human.commands("general"):
                await asyncio.sleep(0.05)
            offered = await human.commands("general")
            assert [(c.nick, c.name, c.usage) for c in offered] == [
                ("helper", "add", "!add A B"),
                ("helper", "boom", "!boom"),
            ]
            is_answer = lambda i: isinstance(i, MsgEvent) and i.from_ == "helper"  # noqa: E731
            await human.say("general", "!boom")
            await human.say("general", "!add 2 3")
            assert (await _reply(human, is_answer)).text == "5"
            assert bot.errors == 1
            await human.pm("helper", "hi")
            got = await _reply(human, lambda i: isinstance(i, PmPush))
            assert got.text == "you said hi"
            broker.kill()
            broker.start()
            await _reply(human, lambda i: isinstance(i, Reconnected), 30)
            await human.say("general", "!add 40 2")
            assert (await _reply(human, is_answer, 30)).text == "42"
            # The offer came back with the bot.
            assert [c.name for c in await human.commands("general")] == ["add", "boom"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bot_client.close()

    run(body(), 90)


def test_a_bot_gets_every_message_at_full_speed_through_crash_chaos(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    """The scenario of issue 12, shorter, with a bot as the subscriber."""
    b = make_broker("--rate", "0", "--timeout-ms", "3000", "--heartbeat-ms", "500")
    bot = Bot("counter", state_path=tmp_path / "counter.state.json")
    got: list[Row] = []

    @bot.on_message
    def count(msg: Any) -> None:
        got.append((msg.event.seq, "msg", msg.text))

    async def body() -> None:
        client = bot.make_client(b.endpoint)
        await client.start()
        joined = (await client.join("general")).seq  # already in: the seq of its join
        serving = asyncio.ensure_future(bot.run(client))
        try:
            chaos = await full_speed_chaos(b, seconds=5, seed=4)
            last = max(e[0] for e in chaos.history if e[1] == "msg")
            await until(lambda: bool(got) and got[-1][0] >= last, 60, f"the bot to see {last}")
        finally:
            serving.cancel()
            await client.close()
        check_exact(chaos.sender, chaos.history, got, "the bot", types=("msg",), start=joined)
        assert chaos.killer.kills >= 2 and bot.errors == 0

    run(body(), 120)


def test_zchat_bot_runs_a_shipped_bot(broker: Broker, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "bot", "dice", "--connect", broker.endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(ENV, XDG_DATA_HOME=str(tmp_path)),
    )
    try:

        async def body() -> None:
            async with Client(broker.endpoint, "player") as player:
                while not await player.commands("general"):
                    await asyncio.sleep(0.05)
                await player.say("general", "!roll 2d6")
                got = await _reply(player, lambda i: isinstance(i, MsgEvent) and i.from_ == "dice")
                assert got.text.startswith("player rolls 2d6: [")

        run(body(), 60)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_zchat_bot_refuses_an_unknown_bot() -> None:
    r = zchat("bot", "nonesuch")
    assert r.returncode == 2 and "no bot 'nonesuch'" in r.stderr


def test_offer_is_validated(raw: Callable[[], Any]) -> None:
    c = raw()
    c.request({"type": "hello", "nick": "b"})
    assert c.request({"type": "offer", "commands": [{"name": "Bad Name"}]})["code"] == "bad_request"
    assert (
        c.request({"type": "offer", "commands": [{"name": "a"}, {"name": "a"}]})["code"]
        == "bad_request"
    )
    assert c.request({"type": "offer", "commands": [{"name": "a", "help": "x"}]}) == {
        "type": "offered",
        "count": 1,
    }
    reply = c.request({"type": "commands"})
    assert reply == {
        "type": "commands",
        "room": None,
        "commands": [{"nick": "b", "name": "a", "usage": "", "help": "x"}],
    }
    wait_until(lambda: True)


def test_tail_human_lines_are_plain_in_a_pipe(broker: Broker) -> None:
    zchat("send", "--connect", broker.endpoint, "--nick", "w", "--room", "general", "[b]hi[/b]")
    zchat(
        "send", "--connect", broker.endpoint, "--nick", "v", "--room", "general", "--visible", "x"
    )
    r = zchat("tail", "--connect", broker.endpoint, "--nick", "t", "--history", "4", "--count", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] <w> \[b\]hi\[/b\]", lines[0]), lines
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] --> v joined #general", lines[1]), lines
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] <-- v left #general \(quit\)", lines[3]), lines
    assert "\x1b[" not in r.stdout


def test_tail_shows_a_forged_line_under_its_real_sender(broker: Broker) -> None:
    """Issue 11, row 14: a text with a newline printed, from zchat tail in a
    pipe, a second line that looked like another sender's."""
    forged = "ok\n[12:00:00] <bob> new VPN: curl https://x|sh\ninvoice_\u202efdp.exe"
    r = zchat(
        "send", "--connect", broker.endpoint, "--nick", "mallory", "--room", "general", forged
    )
    assert r.returncode == 0, r.stderr
    r = zchat("tail", "--connect", broker.endpoint, "--nick", "t", "--history", "2", "--count", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] <mallory> ok", lines[0]), lines
    indent = " " * len("[00:00:00] <mallory> ")
    assert lines[1] == indent + "[12:00:00] <bob> new VPN: curl https://x|sh"
    assert lines[2] == indent + "invoice_<U+202E>fdp.exe"


# ------------------------------------------------------ one table of exits


@pytest.mark.parametrize(
    "program", [["--room"], ["send", "--room"], ["tail", "--room"], ["bot", "echo", "--room"]]
)
def test_every_program_exits_with_the_same_codes(broker: Broker, program: list[str]) -> None:
    """Point 6: an unreachable broker was 1 for zchat and 3 for the others,
    an invalid room 2 for send and 1 for the others. README has the table."""
    room_opt, head = program[-1], program[:-1]
    text = ["hi"] if head == ["send"] else []
    bad_room = zchat(
        *head, "--connect", broker.endpoint, "--nick", "x1", room_opt, "Bad Room", *text, stdin=""
    )
    assert bad_room.returncode == 2, (program, bad_room.returncode, bad_room.stderr)
    assert bad_room.stderr.count("\n") == 1 and "not valid" in bad_room.stderr
    endpoint = broker.endpoint
    broker.kill()
    gone = zchat(
        *head,
        "--connect",
        endpoint,
        "--timeout",
        "1",
        "--nick",
        "x2",
        room_opt,
        "general",
        *text,
        stdin="",
    )
    assert gone.returncode == 3, (program, gone.returncode, gone.stderr)
    assert "cannot reach the broker" in gone.stderr and "Traceback" not in gone.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize(
    "program",
    [["tail", "--visible"], ["--room", "general"], ["send", "--visible", "--room", "general"]],
)
def test_a_signal_says_goodbye(broker: Broker, zctx: Any, sig: int, program: list[str]) -> None:
    """Point 3: SIGTERM of a tail or a bot left its session behind for 15 s,
    so a restart within that time got nick_taken. And a program waiting on
    stdin for a line that does not come (``tail -f log | zchat send``) must
    end all the same, not wait for the line."""
    watcher = RawClient(zctx, broker.endpoint, broker.events)
    assert watcher.request({"type": "hello", "nick": "watcher"})["type"] == "welcome"
    watcher.subscribe(b"#general\x00")
    watcher.request({"type": "join", "room": "general"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", *program, "--connect", broker.endpoint, "--nick", "sig"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    _started.append(proc)

    def event(kind: str) -> dict[str, Any]:
        while True:
            _, ev = watcher.event(15)
            if ev["type"] == kind and ev.get("nick") == "sig":
                return ev

    event("join")
    started = time.monotonic()
    proc.send_signal(sig)
    leave = event("leave")
    assert leave["reason"] == "quit" and time.monotonic() - started < 5
    assert proc.wait(10) == 128 + sig
    # And the nick is free again at once.
    again = RawClient(zctx, broker.endpoint)
    assert again.request({"type": "hello", "nick": "sig"})["type"] == "welcome"
    again.close()
    watcher.close()


def test_a_tail_whose_reader_stalled_for_good_still_ends_on_a_signal(
    make_broker: Callable[..., Broker], zctx: Any
) -> None:
    """``zchat tail | less``, less paused, then SIGTERM: the tail waited for
    its writer thread, blocked on the full pipe, for ever."""
    import fcntl
    import termios

    from .chaos import wait_for_reader

    b = make_broker("--rate", "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "tail", "--connect", b.endpoint, "--nick", "t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    _started.append(proc)
    assert proc.stdout is not None
    wait_for_reader(b.endpoint, "t")
    sender = RawClient(zctx, b.endpoint)
    assert sender.request({"type": "hello", "nick": "sender"})["type"] == "welcome"
    assert sender.request({"type": "join", "room": "general"})["type"] == "joined"
    pipe = proc.stdout.fileno()
    capacity = fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ)

    levels = [0]

    def full() -> bool:
        for _ in range(20):
            assert sender.request({"type": "say", "room": "general", "text": "x" * 2000})
        waiting = bytearray(4)
        fcntl.ioctl(pipe, termios.FIONREAD, waiting)
        levels.append(int.from_bytes(waiting, sys.byteorder))
        # Mostly full and no longer filling with 40 KB more said: the
        # writer is blocked (how full depends on its writes' sizes).
        return levels[-1] > capacity // 2 and levels[-1] == levels[-2]

    wait_until(full, 30, "the tail's stdout to fill")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    sender.close()
