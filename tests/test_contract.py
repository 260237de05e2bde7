"""The wire contract, spoken as raw JSON by a client written by others.

Each test talks to a real broker with nothing but a DEALER, a SUB and a
JSON parser, as the contract promises any client in any language can.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from .helpers import Broker, RawClient, wait_until

TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

Make = Callable[[], RawClient]


def hello(c: RawClient, nick: str, **extra: Any) -> dict[str, Any]:
    reply = c.request({"type": "hello", "nick": nick, "id": "h", **extra})
    assert reply["type"] == "welcome", reply
    return reply


def join(c: RawClient, room: str = "general") -> dict[str, Any]:
    c.subscribe(b"#" + room.encode() + b"\x00")
    reply = c.request({"type": "join", "room": room, "id": "j"})
    assert reply["type"] == "joined", reply
    return reply


def event_of(c: RawClient, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Events until one matches: PUB may still deliver older ones first."""
    while True:
        _, ev = c.event(5)
        if pred(ev):
            return ev


def test_welcome_carries_every_field(raw: Make, broker: Broker) -> None:
    c = raw()
    w = hello(c, "alice", client="test/1")
    assert w["id"] == "h" and w["nick"] == "alice"
    assert isinstance(w["token"], str) and len(w["token"]) >= 16
    assert set(w["server"]) >= {"name", "version", "epoch"}
    assert w["events"] == broker.events
    assert w["heartbeat_ms"] == 500 and w["timeout_ms"] == 3000
    assert w["limits"] == {
        "max_text": 4000,
        "max_msg_bytes": 65536,
        "rate_per_s": 20.0,
        "burst": 40,
    }


def test_join_say_and_the_event_on_the_room_topic(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    ja = join(a)
    assert ja["members"] == ["alice"] and ja["topic"] == ""
    jb = join(b)
    assert jb["seq"] == ja["seq"] + 1 and jb["members"] == ["alice", "bob"]
    # A repeated join answers the room's last seq and publishes nothing.
    again = a.request({"type": "join", "room": "general", "id": "j2"})
    assert again["seq"] == jb["seq"] and again["id"] == "j2"
    ack = a.request(
        {
            "type": "say",
            "room": "general",
            "text": "hi  ",
            "id": "s1",
            "from": "mallory",
            "ts": "1999-01-01T00:00:00.000Z",
        }
    )
    assert ack["type"] == "ack" and ack["id"] == "s1" and ack["room"] == "general"
    assert ack["seq"] == jb["seq"] + 1 and TS_RE.fullmatch(ack["ts"])
    topic, ev = b.event()
    while ev["type"] != "msg":
        topic, ev = b.event()
    assert topic == b"#general\x00"
    assert ev == {
        "type": "msg",
        "room": "general",
        "seq": ack["seq"],
        "ts": ack["ts"],
        "from": "alice",
        "text": "hi",
        "id": "s1",
    }


def test_action_part_and_leave(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    join(a)
    join(b)
    a.request({"type": "say", "room": "general", "text": "waves", "action": True})
    ev = event_of(b, lambda e: e["type"] == "msg")
    assert ev["action"] is True
    parted = a.request({"type": "part", "room": "general", "reason": "lunch", "id": "p"})
    assert parted == {"type": "parted", "id": "p", "room": "general"}
    ev = event_of(b, lambda e: e["type"] == "leave")
    assert (ev["nick"], ev["reason"]) == ("alice", "part")
    err = a.request({"type": "say", "room": "general", "text": "x", "id": "s"})
    assert (err["type"], err["code"], err["id"]) == ("error", "not_in_room", "s")


def test_pm_is_pushed_and_never_published(raw: Make) -> None:
    a, b, spy = raw(), raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    hello(spy, "spy")
    spy.subscribe(b"")
    join(a)
    ack = a.request({"type": "pm", "to": "BOB", "text": "secret", "id": "pm1"})
    assert (ack["type"], ack["to"], ack["id"]) == ("ack", "bob", "pm1") and "seq" not in ack
    push = b.recv()
    assert push == {"type": "pm", "from": "alice", "to": "bob", "text": "secret", "ts": ack["ts"]}
    a.request({"type": "say", "room": "general", "text": "marker"})
    seen = []
    while True:
        _, ev = spy.event()
        seen.append(ev)
        if ev.get("text") == "marker":
            break
    assert all("secret" not in json.dumps(ev) for ev in seen)
    err = a.request({"type": "pm", "to": "nobody", "text": "x", "id": "pm2"})
    assert (err["code"], err["id"]) == ("no_such_user", "pm2")


def test_who_and_rooms(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    join(a, "dev")
    join(b, "general")
    everyone = a.request({"type": "who", "id": "w"})
    assert everyone["room"] is None and everyone["id"] == "w"
    assert sorted(u["nick"] for u in everyone["users"]) == ["alice", "bob"]
    assert all(isinstance(u["idle_ms"], int) and u["idle_ms"] >= 0 for u in everyone["users"])
    dev = a.request({"type": "who", "room": "dev"})
    assert dev["room"] == "dev" and [u["nick"] for u in dev["users"]] == ["alice"]
    topic = a.request({"type": "topic", "room": "dev", "topic": "ship it", "id": "t"})
    assert topic["type"] == "ack" and topic["room"] == "dev" and topic["id"] == "t"
    rooms = b.request({"type": "rooms"})
    assert rooms["rooms"] == [
        {"name": "dev", "topic": "ship it", "members": ["alice"]},
        {"name": "general", "topic": "", "members": ["bob"]},
    ]
    assert join(b, "dev")["topic"] == "ship it"


def test_history_paging(raw: Make) -> None:
    a = raw()
    hello(a, "alice")
    join(a)
    for i in range(12):
        a.request({"type": "say", "room": "general", "text": f"m{i}"})
    # seq 1 is the join, 2..13 the messages.
    h = a.request({"type": "history", "room": "general", "limit": 5, "id": "h1"})
    assert h["id"] == "h1" and h["more"] is True
    assert [e["seq"] for e in h["events"]] == [9, 10, 11, 12, 13]
    h = a.request({"type": "history", "room": "general", "before": 9, "limit": 5})
    assert [e["seq"] for e in h["events"]] == [4, 5, 6, 7, 8] and h["more"] is True
    h = a.request({"type": "history", "room": "general", "after": 10})
    assert [e["seq"] for e in h["events"]] == [11, 12, 13] and h["more"] is False
    h = a.request({"type": "history", "room": "general", "after": 2, "before": 6})
    assert [e["seq"] for e in h["events"]] == [3, 4, 5]
    h = a.request({"type": "history", "room": "general"})
    assert len(h["events"]) == 13 and h["more"] is False
    assert h["events"][0] == {
        "type": "join",
        "room": "general",
        "seq": 1,
        "ts": h["events"][0]["ts"],
        "nick": "alice",
    }
    h = a.request({"type": "history", "room": "empty"})
    assert h["events"] == [] and h["more"] is False


def test_history_limit_is_capped_at_500(make_broker: Callable[..., Broker], zctx: Any) -> None:
    b = make_broker("--rate", "0")
    c = RawClient(zctx, b.endpoint, b.events)
    hello(c, "alice")
    join(c)
    for i in range(600):
        c.send({"type": "say", "room": "general", "text": str(i)})
    for _ in range(600):
        c.recv()
    h = c.request({"type": "history", "room": "general", "limit": 100000})
    assert len(h["events"]) == 500 and h["more"] is True
    c.close()


def test_nick_change_is_published_in_each_room(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    join(a, "general")
    join(a, "dev")
    join(b, "general")
    b.subscribe(b"#dev\x00")
    taken = a.request({"type": "nick", "nick": "BOB", "id": "n0"})
    assert (taken["code"], taken["id"]) == ("nick_taken", "n0")
    reply = a.request({"type": "nick", "nick": "alicia", "id": "n"})
    assert reply == {"type": "nick", "id": "n", "old": "alice", "new": "alicia"}
    rooms = set()
    while len(rooms) < 2:
        ev = event_of(b, lambda e: e["type"] == "nick")
        assert (ev["old"], ev["new"]) == ("alice", "alicia")
        rooms.add(ev["room"])
    assert rooms == {"general", "dev"}
    who = b.request({"type": "who", "room": "general"})
    assert sorted(u["nick"] for u in who["users"]) == ["alicia", "bob"]


def test_ping_with_and_without_session(raw: Make) -> None:
    a = raw()
    pong = a.request({"type": "ping", "id": "p"})
    assert pong["type"] == "pong" and pong["seqs"] == {} and pong["id"] == "p"
    assert TS_RE.fullmatch(pong["ts"])
    hello(a, "alice")
    j = join(a)
    pong2 = a.request({"type": "ping"})
    assert pong2["seqs"] == {"general": j["seq"]} and pong2["epoch"] == pong["epoch"]


def test_bye_leaves_every_room(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    join(a)
    join(b)
    assert a.request({"type": "bye", "reason": "gone", "id": "b"}) == {"type": "bye", "id": "b"}
    ev = event_of(b, lambda e: e["type"] == "leave")
    assert (ev["nick"], ev["reason"]) == ("alice", "quit")
    assert a.request({"type": "who"})["code"] == "no_session"
    # The nick is free again.
    hello(raw(), "alice")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"no": "type"}', "bad_request"),
        (b'{"type": 42}', "bad_request"),
        (b"\xff\xfe", "bad_request"),
        (b'{"type": "dance", "id": "x"}', "unknown_type"),
        (b'{"type": "join", "id": "x"}', "bad_request"),
        (b'{"type": "join", "room": "Bad Room", "id": "x"}', "room_invalid"),
        (b'{"type": "say", "room": "general", "text": "\\u001b[2J", "id": "x"}', "text_invalid"),
        (b'{"type": "say", "room": "general", "text": "   ", "id": "x"}', "text_invalid"),
        (b'{"type": "say", "room": "general", "text": "\\u0085", "id": "x"}', "text_invalid"),
        (b'{"type": "nick", "nick": "9lives", "id": "x"}', "nick_invalid"),
    ],
)
def test_bad_requests_get_a_clear_error(raw: Make, frame: bytes, code: str) -> None:
    c = raw()
    hello(c, "alice")
    join(c)
    err = c.request(frame)
    assert err["type"] == "error" and err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    if b'"id": "x"' in frame:
        assert err["id"] == "x"
    # The session goes on as if nothing happened.
    assert c.request({"type": "say", "room": "general", "text": "still here"})["type"] == "ack"


def test_errors_before_and_around_hello(raw: Make) -> None:
    a, b = raw(), raw()
    err = a.request({"type": "say", "room": "general", "text": "hi", "id": "1"})
    assert (err["code"], err["id"]) == ("no_session", "1")
    assert a.request({"type": "hello", "nick": "-x"})["code"] == "nick_invalid"
    w = hello(a, "alice")
    assert b.request({"type": "hello", "nick": "ALICE"})["code"] == "nick_taken"
    assert hello(a, "alice")["token"] == w["token"]
    assert a.request({"type": "hello", "nick": "other"})["code"] == "bad_request"
    assert (
        a.request({"type": "say", "room": "general", "text": "x" * 4001})["code"] == "text_invalid"
    )


def test_multipart_request_is_refused(raw: Make) -> None:
    c = raw()
    c.dealer.send_multipart([b'{"type": "ping"}', b'{"type": "ping"}'])
    err = c.recv()
    assert (err["type"], err["code"]) == ("error", "bad_request")


def test_token_takes_over_a_session(raw: Make) -> None:
    a, a2 = raw(), raw()
    w = hello(a, "alice")
    join(a)
    assert a2.request({"type": "hello", "nick": "alice", "token": "wrong"})["code"] == "nick_taken"
    w2 = hello(a2, "alice", token=w["token"])
    assert w2["token"] == w["token"]
    # The session, rooms and all, now answers on the new connection.
    assert a2.request({"type": "ping"})["seqs"] == {"general": 1}


def test_repeated_say_id_is_answered_with_the_first_ack(raw: Make) -> None:
    a, b = raw(), raw()
    hello(a, "alice")
    hello(b, "bob")
    join(a)
    join(b)
    first = a.request({"type": "say", "room": "general", "text": "once", "id": "dup"})
    again = a.request({"type": "say", "room": "general", "text": "once", "id": "dup"})
    assert again == first
    a.request({"type": "say", "room": "general", "text": "after", "id": "next"})
    msgs = []
    while len(msgs) < 2:
        msgs.append(event_of(b, lambda e: e["type"] == "msg")["text"])
    assert msgs == ["once", "after"]


def test_rate_limit(make_broker: Callable[..., Broker], zctx: Any) -> None:
    b = make_broker("--rate", "1", "--burst", "4")
    c = RawClient(zctx, b.endpoint, b.events)
    other = RawClient(zctx, b.endpoint, b.events)
    hello(c, "alice")
    hello(other, "bob")
    join(c)  # a join that makes an event costs a token too
    join(other)
    replies = [
        c.request({"type": "say", "room": "general", "text": str(i), "id": str(i)})
        for i in range(5)
    ]
    assert [r["type"] for r in replies] == ["ack", "ack", "ack", "error", "error"]
    assert replies[3]["code"] == "rate_limited" and 0 < replies[3]["retry_ms"] <= 1000
    # Someone else is not affected.
    assert other.request({"type": "say", "room": "general", "text": "me"})["type"] == "ack"
    h = other.request({"type": "history", "room": "general"})
    assert [e.get("text") for e in h["events"] if e["type"] == "msg"] == ["0", "1", "2", "me"]
    c.close()
    other.close()


def test_oversized_frame_disconnects_only_that_peer(
    make_broker: Callable[..., Broker], zctx: Any
) -> None:
    b = make_broker("--max-msg-bytes", "1000")
    good = RawClient(zctx, b.endpoint, b.events)
    bad = RawClient(zctx, b.endpoint, b.events)
    hello(good, "alice")
    join(good)
    bad.send({"type": "say", "room": "general", "text": "x" * 5000})
    with pytest.raises(AssertionError):
        bad.recv(0.5)
    assert good.request({"type": "say", "room": "general", "text": "fine"})["type"] == "ack"
    good.close()
    bad.close()


def test_advertise_is_sent_in_welcome(make_broker: Callable[..., Broker], zctx: Any) -> None:
    b = make_broker("--advertise", "tcp://chat.example:7777")
    c = RawClient(zctx, b.endpoint)
    assert hello(c, "alice")["events"] == "tcp://chat.example:7777"
    c.close()


def test_sigterm_publishes_a_notice_and_exits_0(broker: Broker, zctx: Any) -> None:
    c = RawClient(zctx, broker.endpoint, broker.events)
    c.subscribe(b"*\x00")
    hello(c, "alice")
    join(c)
    # The SUB is connected once it sees the join event.
    c.event()
    broker.signal(signal.SIGTERM)
    topic, ev = c.event()
    assert topic == b"*\x00" and ev["type"] == "notice" and ev["text"]
    assert broker.proc is not None and broker.proc.wait(10) == 0
    c.close()


def test_session_timeout_publishes_a_timeout_leave(broker: Broker, zctx: Any) -> None:
    quiet = RawClient(zctx, broker.endpoint, broker.events)
    watcher = RawClient(zctx, broker.endpoint, broker.events)
    hello(quiet, "sleepy")
    hello(watcher, "watcher")
    join(quiet)
    join(watcher)
    ev = None

    def leave_seen() -> bool:
        nonlocal ev
        watcher.request({"type": "ping"})  # the watcher stays alive
        while watcher.sub.poll(0):
            e = json.loads(watcher.sub.recv_multipart()[1])
            if e["type"] == "leave":
                ev = e
        return ev is not None

    wait_until(leave_seen, 15, "a timeout leave")
    assert ev is not None and (ev["nick"], ev["reason"]) == ("sleepy", "timeout")
    assert quiet.recv()["type"] == "notice"
    assert quiet.request({"type": "ping", "id": "p"})["seqs"] == {}
    quiet.close()
    watcher.close()


def test_zmq_garbage_does_not_hurt(raw: Make, broker: Broker) -> None:
    import socket

    a = raw()
    hello(a, "alice")
    join(a)
    host, port = broker.endpoint.rsplit("/", 1)[1].rsplit(":", 1)
    for junk in (
        b"\xff" * 10,
        b"GET / HTTP/1.0\r\n\r\n",
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03",
    ):
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(junk)
    assert a.request({"type": "say", "room": "general", "text": "ok"})["type"] == "ack"
    assert zmq.zmq_version_info() >= (4, 3, 5)


def test_retention_is_announced_and_reaches_the_core(
    make_broker: Callable[..., Broker],
) -> None:
    b = make_broker("--retain-days", "0.5")
    wait_until(lambda: "history kept 0.5 days" in b.log_text(), what="the retention line")
    from broker import Config, Server

    server = Server(Config(bind="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", retain_days=0.5))
    try:
        assert server.core.config.retain_s == 43_200
    finally:
        server.close()
