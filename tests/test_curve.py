"""CURVE: encryption on both sockets, allow-lists, nick ownership."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker._cli import libzmq_problem
from broker._keys import keygen
from client import Client, ZchatError
from client._keys import curve_keys, fingerprint, own_key_pair, server_public_key
from messages import MsgEvent

from .helpers import ROOT, Broker, RawClient, run, wait_until


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keygen(tmp_path / "server")
    return tmp_path


def curve_broker(make_broker: Callable[..., Broker], keys: Path, *extra: str) -> Broker:
    return make_broker("--curve-secret", str(keys / "server" / "broker.key_secret"), *extra)


def client_keys(keys: Path, who: str) -> Any:
    return curve_keys(str(keys / "server" / "broker.key"), key_dir=keys / who)


def test_keygen_writes_certificates_with_a_private_secret(keys: Path) -> None:
    secret = keys / "server" / "broker.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, sec = zmq.auth.load_certificate(str(secret))
    assert len(public) == 40 and sec is not None and len(sec) == 40
    assert zmq.auth.load_certificate(str(keys / "server" / "broker.key"))[0] == public
    with pytest.raises(FileExistsError):
        keygen(keys / "server")
    r = subprocess.run(
        [sys.executable, "-m", "broker", "keygen", str(keys / "cli"), "--name", "x"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=30,
    )
    assert r.returncode == 0 and (keys / "cli" / "x.key_secret").exists()


def test_server_key_as_z85_or_file_and_own_pair(keys: Path) -> None:
    from_file = server_public_key(str(keys / "server" / "broker.key"))
    assert server_public_key(from_file.decode()) == from_file
    with pytest.raises(ValueError):
        server_public_key("not a key")
    pair = own_key_pair(keys / "me")
    assert own_key_pair(keys / "me") == pair  # created once, then kept
    assert stat.S_IMODE((keys / "me" / "client.key_secret").stat().st_mode) == 0o600
    assert len(fingerprint(from_file)) == 39


def test_curve_clients_chat(make_broker: Callable[..., Broker], keys: Path) -> None:
    b = curve_broker(make_broker, keys)
    assert "CURVE on" in b.log_text()

    async def body() -> None:
        async with (
            Client(b.endpoint, "alice", curve=client_keys(keys, "a")) as alice,
            Client(b.endpoint, "bob", curve=client_keys(keys, "b")) as bob,
        ):
            await alice.say("general", "encrypted hello")
            while True:
                item = await bob.next_item(10)
                if isinstance(item, MsgEvent) and item.text == "encrypted hello":
                    break
            # Once bob's subscriber is through the CURVE handshake, events
            # come over the event socket, not from history.
            repaired = bob.stats["repaired"]
            await alice.say("general", "second")
            while True:
                item = await bob.next_item(10)
                if isinstance(item, MsgEvent) and item.text == "second":
                    break
            assert bob.stats["repaired"] == repaired
            await bob.pm("alice", "secret")

    run(body())


def test_plain_clients_get_nothing(
    make_broker: Callable[..., Broker], keys: Path, zctx: Any
) -> None:
    b = curve_broker(make_broker, keys)
    plain = RawClient(zctx, b.endpoint)
    plain.send({"type": "ping"})
    assert not plain.dealer.poll(1000)
    spy = zctx.socket(zmq.SUB)
    spy.linger = 0
    spy.subscribe(b"")
    spy.connect(b.events)

    async def chat() -> None:
        async with Client(b.endpoint, "alice", curve=client_keys(keys, "a")) as alice:
            for i in range(5):
                await alice.say("general", f"m{i}")

    run(chat())
    assert not spy.poll(500)
    spy.close()
    plain.close()


def test_allow_list_and_sighup(make_broker: Callable[..., Broker], keys: Path) -> None:
    allowed = keys / "allowed"
    allowed.mkdir()
    alice_keys, mallory_keys = client_keys(keys, "a"), client_keys(keys, "m")
    shutil.copy(keys / "a" / "client.key", allowed / "alice.key")
    b = curve_broker(make_broker, keys, "--allow-keys", str(allowed))

    async def try_connect(curve: Any) -> bool:
        # Each key its own nick: with CURVE a nick belongs to its first key.
        c = Client(b.endpoint, "alice" if curve is alice_keys else "mallory", curve=curve)
        try:
            await c.start(timeout=2)
        except ZchatError:
            return False
        await c.close()
        return True

    assert run(try_connect(alice_keys))
    assert not run(try_connect(mallory_keys))
    shutil.copy(keys / "m" / "client.key", allowed / "mallory.key")
    b.signal(signal.SIGHUP)
    wait_until(lambda: "allow-list re-read, 2 keys" in b.log_text(), 10, "the reload")
    assert run(try_connect(mallory_keys))


def test_nick_belongs_to_its_first_key_across_restarts(
    make_broker: Callable[..., Broker], keys: Path
) -> None:
    b = curve_broker(make_broker, keys)
    alice_keys, mallory_keys = client_keys(keys, "a"), client_keys(keys, "m")

    async def hello(nick: str, curve: Any) -> str:
        c = Client(b.endpoint, nick, curve=curve)
        try:
            await c.start(timeout=5)
        except ZchatError as err:
            return err.code
        await c.close()
        return "ok"

    assert run(hello("alice", alice_keys)) == "ok"
    assert run(hello("ALICE", mallory_keys)) == "unauthorized"
    b.restart()
    assert run(hello("alice", mallory_keys)) == "unauthorized"
    assert run(hello("alice", alice_keys)) == "ok"
    assert run(hello("mallory", mallory_keys)) == "ok"

    async def rename() -> str:
        async with Client(b.endpoint, "mallory", curve=mallory_keys) as m:
            try:
                await m.set_nick("alice")
            except ZchatError as err:
                return err.code
        return "ok"

    assert run(rename()) == "unauthorized"


def test_old_libzmq_is_refused() -> None:
    assert "too old" in (libzmq_problem((4, 3, 4)) or "")
    assert libzmq_problem((4, 3, 5)) is None and libzmq_problem((5, 0, 0)) is None


def test_warns_beyond_loopback_without_curve(
    make_broker: Callable[..., Broker], keys: Path
) -> None:
    b = make_broker(start=False)
    b.bind = "tcp://0.0.0.0:0"
    b.start()
    assert "NOT encrypted" in b.log_text()
    quiet = make_broker()
    assert "NOT encrypted" not in quiet.log_text()


def test_send_with_server_key(make_broker: Callable[..., Broker], keys: Path) -> None:
    b = curve_broker(make_broker, keys)
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(keys / "cfg"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "send",
            "--connect",
            b.endpoint,
            "--server-key",
            str(keys / "server" / "broker.key"),
            "--room",
            "general",
            "over curve",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr

    async def check() -> list[str]:
        async with Client(b.endpoint, "reader", curve=client_keys(keys, "r")) as c:
            events, _ = await c.history("general")
            return [e.text for e in events if isinstance(e, MsgEvent)]

    assert run(check()) == ["over curve"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "send",
            "--connect",
            b.endpoint,
            "--timeout",
            "2",
            "--room",
            "general",
            "plain",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 3


def test_a_session_answers_only_to_the_key_that_made_it(
    make_broker: Callable[..., Broker], keys: Path, zctx: Any
) -> None:
    """A connection that takes a session's routing id over (ROUTER_HANDOVER)
    with another key gets an error, not the session."""
    b = curve_broker(make_broker, keys)

    def dealer(who: str) -> Any:
        k = client_keys(keys, who)
        d = zctx.socket(zmq.DEALER)
        d.linger = 0
        d.curve_serverkey, d.curve_publickey, d.curve_secretkey = (
            k.server_public,
            k.public,
            k.secret,
        )
        d.setsockopt(zmq.ROUTING_ID, b"zc-shared-id")
        d.connect(b.endpoint)
        return d

    def request(d: Any, msg: bytes) -> dict[str, Any]:
        d.send(msg)
        assert d.poll(5000), "no reply"
        return dict(json.loads(d.recv()))

    alice = dealer("a")
    assert request(alice, b'{"type":"hello","nick":"alice"}')["type"] == "welcome"
    assert request(alice, b'{"type":"join","room":"general"}')["type"] == "joined"
    alice.close()

    def first(who: str, msg: bytes) -> tuple[Any, dict[str, Any]]:
        # Until the broker has seen alice's connection go, it turns a new
        # one with her routing id away (no handover with CURVE), and what
        # was sent on it goes too: connect again until one is taken.
        deadline = time.monotonic() + 15
        while True:
            d = dealer(who)
            d.send(msg)
            if d.poll(1000):
                return d, dict(json.loads(d.recv()))
            d.close()
            assert time.monotonic() < deadline, "no reply"

    mallory, reply = first("m", b'{"type":"say","room":"general","text":"as alice?","id":"x"}')
    assert reply["code"] == "unauthorized" and reply["id"] == "x"
    assert request(mallory, b'{"type":"part","room":"general"}')["code"] == "unauthorized"
    mallory.close()
    # The rightful key, same routing id: the session is still there.
    back, reply = first("a", b'{"type":"say","room":"general","text":"me","id":"y"}')
    assert reply["type"] == "ack"
    back.close()


def _curve_dealer(zctx: Any, b: Broker, keys: Path, who: str, routing_id: bytes = b"") -> Any:
    k = client_keys(keys, who)
    d = zctx.socket(zmq.DEALER)
    d.linger = 0
    d.curve_serverkey, d.curve_publickey, d.curve_secretkey = k.server_public, k.public, k.secret
    if routing_id:
        d.setsockopt(zmq.ROUTING_ID, routing_id)
    d.connect(b.endpoint)
    return d


def _ask(d: Any, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    d.send(json.dumps(msg).encode())
    assert d.poll(int(timeout * 1000)), f"no reply to {msg}"
    return dict(json.loads(d.recv()))


def test_a_routing_id_never_passes_to_another_key(
    make_broker: Callable[..., Broker], keys: Path, zctx: Any
) -> None:
    """Issue 11, row 12: another allowed key announcing a session's routing
    id got that session's private messages and cut its owner off. With
    CURVE the broker hands no routing id over: the newcomer is ignored."""
    b = curve_broker(make_broker, keys)
    alice = _curve_dealer(zctx, b, keys, "a", b"zc-victim")
    assert _ask(alice, {"type": "hello", "nick": "alice"})["type"] == "welcome"
    bob = _curve_dealer(zctx, b, keys, "b")
    assert _ask(bob, {"type": "hello", "nick": "bob"})["type"] == "welcome"
    mallory = _curve_dealer(zctx, b, keys, "m", b"zc-victim")
    mallory.send(b'{"type":"ping","id":"m"}')
    assert _ask(bob, {"type": "pm", "to": "alice", "text": "for alice only"})["type"] == "ack"
    assert alice.poll(5000)
    assert json.loads(alice.recv())["text"] == "for alice only"
    assert not mallory.poll(1000), "the other key's connection got something"
    assert _ask(alice, {"type": "ping", "id": "still"})["id"] == "still"
    for d in (alice, bob, mallory):
        d.close()


def test_nick_claims_are_bounded_lapse_and_can_be_released(
    make_broker: Callable[..., Broker], keys: Path, zctx: Any
) -> None:
    """Row 13: with CURVE and no allow-list, one throwaway key claimed 5,000
    nicks in 0.1 s, forever. Claims are bounded per key, lapse unused, and
    an operator releases one with 'zchat-broker nick release'."""
    b = curve_broker(make_broker, keys, "--nicks-per-key", "3", "--nick-claim-days", "0.00003")
    squatter = _curve_dealer(zctx, b, keys, "t")
    for i in range(6):
        assert _ask(squatter, {"type": "hello", "nick": f"name{i}"})["type"] == "welcome"
        assert _ask(squatter, {"type": "bye"})["type"] == "bye"
    alice = _curve_dealer(zctx, b, keys, "a")
    # The key's first three are claimed; the rest never were.
    assert _ask(alice, {"type": "hello", "nick": "name1"})["code"] == "unauthorized"
    assert _ask(alice, {"type": "hello", "nick": "NAME2"})["code"] == "unauthorized"
    assert _ask(alice, {"type": "hello", "nick": "name4"})["type"] == "welcome"
    assert _ask(alice, {"type": "bye"})["type"] == "bye"
    listed = subprocess.run(
        [sys.executable, "-m", "broker", "nick", "list", "--store", b.store],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout
    assert [line.split("\t")[0] for line in listed.splitlines()] == [
        "name0",
        "name1",
        "name2",
        "name4",
    ]
    # Released by the operator while the broker runs: free at once.
    r = subprocess.run(
        [sys.executable, "-m", "broker", "nick", "release", "name1", "--store", b.store],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0 and "released name1" in r.stdout
    assert _ask(alice, {"type": "hello", "nick": "name1"})["type"] == "welcome"
    assert _ask(alice, {"type": "bye"})["type"] == "bye"
    # name0 lapses once unused for --nick-claim-days (2.6 s here).
    wait_until(
        lambda: _ask(alice, {"type": "hello", "nick": "name0"})["type"] == "welcome",
        15,
        "the claim to lapse",
    )
    for d in (squatter, alice):
        d.close()


def test_a_curve_client_comes_back_after_a_restart(
    make_broker: Callable[..., Broker], keys: Path
) -> None:
    """With CURVE the broker hands no routing id over, so the client lets
    ZeroMQ choose one and takes its session back by token."""
    b = curve_broker(make_broker, keys, "--timeout-ms", "3000", "--heartbeat-ms", "500")

    async def body() -> None:
        async with Client(b.endpoint, "alice", curve=client_keys(keys, "a")) as alice:
            assert alice._dealer is not None and alice._dealer.getsockopt(zmq.ROUTING_ID) == b""
            await alice.say("general", "before")
            b.restart()
            ack = await asyncio.wait_for(alice.say("general", "after"), 30)
            assert ack.seq is not None
            events, _ = await alice.history("general")
            texts = [e.text for e in events if isinstance(e, MsgEvent)]
            assert texts == ["before", "after"]

    run(body(), 60)


def test_each_handshake_failure_says_what_it_is(
    make_broker: Callable[..., Broker], keys: Path
) -> None:
    """Issue 13, point 4: a wrong server key, no key, or a key missing from
    the allow-list all read "cannot reach the broker", and the broker said
    nothing of the refused key. Each is told apart now, and fingerprints
    read the same on both sides."""
    from broker._keys import keygen
    from client import ConnectRefused
    from messages import key_fingerprint

    allowed = keys / "allowed"
    allowed.mkdir()
    b = curve_broker(make_broker, keys, "--allow-keys", str(allowed))
    plain = make_broker(store=":memory:")
    keygen(keys / "other")
    wrong = curve_keys(str(keys / "other" / "broker.key"), key_dir=keys / "m")
    mallory = client_keys(keys, "m")

    async def refusal(endpoint: str, curve: Any) -> str:
        c = Client(endpoint, "someone", curve=curve)
        try:
            await c.start(timeout=5)
        except ConnectRefused as err:
            return err.message
        await c.close()
        return "connected"

    not_allowed = run(refusal(b.endpoint, mallory))
    assert "refused this client's key" in not_allowed and "--allow-keys" in not_allowed
    mine = key_fingerprint(mallory.public)
    assert mine in not_allowed
    wait_until(lambda: f"fingerprint {mine}" in b.log_text(), what="the refused key in the log")
    assert "refused a client key" in b.log_text()
    assert "--server-key the broker's public key" in run(refusal(b.endpoint, wrong))
    assert "give its public key with --server-key" in run(refusal(b.endpoint, None))
    assert "encrypt" in run(refusal(plain.endpoint, mallory))
    # The broker's own fingerprint, as keygen and the client show it.
    server = (keys / "server" / "broker.key").read_bytes()
    public = zmq.auth.load_certificate(str(keys / "server" / "broker.key"))[0]
    assert f"(fingerprint {key_fingerprint(public)})" in b.log_text() and server
    out = subprocess.run(
        [sys.executable, "-m", "broker", "keygen", str(keys / "third")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout
    third = zmq.auth.load_certificate(str(keys / "third" / "broker.key"))[0]
    assert f"fingerprint {key_fingerprint(third)}" in out
