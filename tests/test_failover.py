"""Several endpoints: start on the first that answers, fail over to the next
node when the one in use stops answering, learn nodes from ``welcome``."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

import messages as m
from client import (
    Client,
    ConnectTimeout,
    Disconnected,
    InvalidInput,
    Reconnected,
)
from client._client import check_endpoints, split_endpoints
from messages import MsgEvent

from .helpers import Broker, FakeBroker, run
from .test_scripting import ENV, zchat

FAST = ("--timeout-ms", "3000", "--heartbeat-ms", "500")


def free_endpoint() -> str:
    """A loopback endpoint with nothing listening: a port the OS gave, closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


async def _until(client: Client, pred: Callable[[Any], bool], timeout: float = 20.0) -> Any:
    """The first item for which ``pred`` holds; the deadline is for them all."""
    deadline = time.monotonic() + timeout
    while True:
        item = await client.next_item(max(deadline - time.monotonic(), 0.001))
        if pred(item):
            return item


def _said(text: str) -> Callable[[Any], bool]:
    return lambda i: isinstance(i, MsgEvent) and i.text == text


# ------------------------------------------------------------ the endpoints


def test_endpoints_come_as_one_a_comma_separated_string_or_a_list() -> None:
    a, b = "tcp://127.0.0.1:5555", "tcp://[::1]:6000"
    assert split_endpoints(a) == [a]
    assert split_endpoints(f"{a}, {b}") == [a, b]
    assert split_endpoints([b, a, b]) == [b, a]  # each once, in order
    assert check_endpoints(f"{a},{b}") == [a, b]
    c = Client([a, b], "x")
    assert c.endpoints == [a, b] and c.endpoint == a
    single = Client(a, "x")
    assert single.endpoints == [a] and single.endpoint == a


@pytest.mark.parametrize(
    ("connect", "bad"),
    [
        ("tcp://127.0.0.1:5555,localhost:5556", "'localhost:5556'"),
        (["tcp://127.0.0.1:5555", "tcp://h:99999"], "'tcp://h:99999'"),
        ("tcp://127.0.0.1:5555,,tcp://127.0.0.1:5556", "''"),
        ("foo,tcp://127.0.0.1:5555", "'foo'"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(connect: str | list[str], bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_endpoints(connect)
    assert err.value.code == "bad_endpoint"
    assert bad in err.value.message and "tcp://HOST:PORT" in err.value.message
    assert "endpoint " in err.value.message and " of " in err.value.message

    async def body() -> None:
        with pytest.raises(InvalidInput) as again:
            await Client(connect, "someone").start(timeout=1)
        assert again.value.message == err.value.message

    run(body(), 10)


def test_no_endpoint_at_all_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no endpoint"):
        check_endpoints([])


# ----------------------------------------------------------------- starting


def test_start_goes_on_to_the_second_when_the_first_does_not_answer(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker(*FAST)
    dead = free_endpoint()

    async def body() -> None:
        started = time.monotonic()
        async with Client([dead, b.endpoint], "alice") as alice:
            assert alice.endpoint == b.endpoint
            assert alice.endpoints == [dead, b.endpoint]
            ack = await alice.say("general", "made it")
            got = await _until(alice, _said("made it"))
            assert got.seq == ack.seq
        # Within start()'s timeout (10 s): the first had half of it.
        assert time.monotonic() - started < 9

    run(body(), 30)


def test_start_with_no_endpoint_answering_names_them_all_within_its_timeout() -> None:
    dead = [free_endpoint(), free_endpoint()]

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as err:
            await Client(dead, "alice").start(timeout=2)
        assert time.monotonic() - started < 4
        assert dead[0] in err.value.message and dead[1] in err.value.message

    run(body(), 20)


# ---------------------------------------------------------------- failover


def test_a_client_moves_to_the_next_broker_when_its_own_is_killed(
    make_broker: Callable[..., Broker],
) -> None:
    """Independent brokers (separate stores): on B, the session is a new one,
    seq starts again, and the client must not wait for the numbers it knew."""
    a = make_broker(*FAST)
    b = make_broker(*FAST)

    async def body() -> None:
        async with (
            Client([a.endpoint, b.endpoint], "alice") as alice,
            Client(b.endpoint, "bob") as bob,
        ):
            assert alice.endpoint == a.endpoint
            for i in range(5):  # seq on A goes past what B will number
                await alice.say("general", f"on A {i}")
            await _until(alice, _said("on A 4"))
            token_a = alice.token
            a.kill()
            # Sent while A is dead: kept, and resent on B.
            pending = asyncio.ensure_future(alice.say("general", "in between"))
            gone = await _until(alice, lambda i: isinstance(i, Disconnected), 20)
            assert gone.endpoint == b.endpoint
            back = await _until(alice, lambda i: isinstance(i, Reconnected), 30)
            assert back.endpoint == b.endpoint and back.restarted
            assert alice.endpoint == b.endpoint
            assert alice.token != token_a  # B knew nothing of A's session
            assert alice.welcome is not None and alice.welcome.server.store != a.store
            assert alice.rooms == ["general"]
            during = await asyncio.wait_for(pending, 20)
            got = await _until(alice, _said("in between"))
            assert got.seq == during.seq
            # Its SUB is on B's PUB now: it hears bob, who never was on A.
            hi = await bob.say("general", "hi from B")
            heard = await _until(alice, _said("hi from B"))
            assert heard.seq == hi.seq
            assert any(_said("in between")(e) for e in (await bob.history("general"))[0])

    run(body(), 90)


class _Node(FakeBroker):
    """A stand-in broker: answers hello with a welcome that lists ``nodes``,
    joins and pings, until told to go silent."""

    def __init__(self, ctx: zmq.asyncio.Context, nodes: list[str]) -> None:
        super().__init__(ctx)
        self.nodes = nodes
        self.hellos = 0

    def answer(self, req: Any) -> Any:
        if isinstance(req, m.Hello):
            self.hellos += 1
            server = m.ServerInfo(
                name="node", version="0", epoch="n1", store="shared", nodes=self.nodes
            )
            return self.welcome(req, server, timeout_ms=1000)
        if isinstance(req, m.Join):
            return m.Joined(id=req.id, room=req.room, topic="", members=["alice"], seq=1)
        if isinstance(req, m.Ping):
            return m.Pong(id=req.id, epoch="n1", ts=m.format_ts(0), seqs={"general": 1})
        if isinstance(req, m.Bye):
            return m.ByeReply(id=req.id)
        return m.Error(id=req.id, code="bad_request", message="not here")


def test_nodes_named_by_welcome_join_the_rotation_and_the_client_fails_over_to_them(
    make_broker: Callable[..., Broker],
) -> None:
    """Given one endpoint, a fake node whose welcome names a real broker
    (and entries to ignore): when the fake goes silent, the client moves to
    the broker it only learned of."""
    b = make_broker(*FAST)

    async def body() -> None:
        node = _Node(zmq.asyncio.Context.instance(), [])
        node.nodes = [node.endpoint, "not an endpoint", "tcp://*:5555", b.endpoint, b.endpoint]
        serving = asyncio.ensure_future(node.serve())
        try:
            async with Client(node.endpoint, "alice") as alice:
                assert alice.endpoints == [node.endpoint, b.endpoint]
                assert alice.endpoint == node.endpoint and node.hellos == 1
                serving.cancel()  # the node stops answering
                gone = await _until(alice, lambda i: isinstance(i, Disconnected), 20)
                assert gone.endpoint == b.endpoint
                back = await _until(alice, lambda i: isinstance(i, Reconnected), 30)
                assert back.endpoint == b.endpoint and alice.endpoint == b.endpoint
                assert alice.welcome is not None and alice.welcome.server.store != "shared"
                ack = await alice.say("general", "on the learned node")
                got = await _until(alice, _said("on the learned node"))
                assert got.seq == ack.seq
        finally:
            serving.cancel()
            node.close()

    run(body(), 60)


def test_the_terminal_client_says_where_it_moves_in_one_line(
    make_broker: Callable[..., Broker],
) -> None:
    from .test_commands import Screen

    a = make_broker(*FAST)
    b = make_broker(*FAST)

    async def body() -> None:
        async with Client([a.endpoint, b.endpoint], "alice") as alice:
            screen = Screen(alice)
            a.kill()
            while True:
                item = await alice.next_item(30)
                screen.ui.on_item(item)
                if isinstance(item, Reconnected):
                    break
            lines = screen.lines()
            moving = [line for line in lines if "reconnecting" in line]
            assert len(moving) == 1 and f"reconnecting to {b.endpoint}..." in moving[0], lines
            assert sum(f"reconnected to {b.endpoint}" in line for line in lines) == 1, lines
            assert "restarted" not in screen.text()

    run(body(), 60)


# ---------------------------------------------------------------- programs


def test_send_takes_a_list_and_uses_the_node_that_answers(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker(*FAST)
    connect = f"{free_endpoint()},{b.endpoint}"
    r = zchat("send", "--connect", connect, "--nick", "w", "--room", "general", "via the list")
    assert r.returncode == 0, r.stderr

    async def body() -> list[str]:
        async with Client(b.endpoint, "reader", rooms=[]) as c:
            events, _ = await c.history("general")
            return [e.text for e in events if isinstance(e, MsgEvent)]

    assert run(body()) == ["via the list"]


def test_zchat_connect_from_the_environment_takes_a_list(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker(*FAST)
    env = dict(ENV, ZCHAT_CONNECT=f"{free_endpoint()}, {b.endpoint}")
    r = subprocess.run(
        [sys.executable, "-m", "client", "send", "--nick", "w", "--room", "general", "env"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("program", [[], ["send", "--room", "general", "x"], ["tail"], ["bot"]])
def test_a_bad_entry_in_the_list_is_one_line_naming_it(program: list[str]) -> None:
    extra = ["dice"] if program == ["bot"] else []
    args = [*program[:1], *extra, "--connect", "tcp://127.0.0.1:1,nowhere:80"]
    r = zchat(*args, "--nick", "someone", *program[1:], stdin="", timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "'nowhere:80'" in r.stderr and "endpoint 2 of 2" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("program", [[], ["send"], ["tail"], ["bot"]])
def test_help_says_connect_takes_a_list(program: list[str]) -> None:
    r = zchat(*program, "--help")
    assert r.returncode == 0
    assert "separated by commas" in " ".join(r.stdout.split()), r.stdout
