"""End to end: real brokers in subprocesses, real sockets on loopback."""

from __future__ import annotations

from client import Client
from messages import JoinEvent, MsgEvent

from .helpers import Broker, run


async def _until(client: Client, pred, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    while True:
        item = await client.next_item(timeout)
        if pred(item):
            return item


def test_two_clients_chat(broker: Broker) -> None:
    async def body() -> None:
        async with Client(broker.endpoint, "alice") as alice, Client(broker.endpoint, "bob") as bob:
            ack = await alice.say("general", "hello bob")
            got = await _until(bob, lambda i: isinstance(i, MsgEvent))
            assert (got.from_, got.text, got.seq) == ("alice", "hello bob", ack.seq)
            seen = await _until(alice, lambda i: isinstance(i, MsgEvent))
            assert seen.seq == ack.seq
            joins = [e for e in (await alice.history("general"))[0] if isinstance(e, JoinEvent)]
            assert [j.nick for j in joins] == ["alice", "bob"]

    run(body())
