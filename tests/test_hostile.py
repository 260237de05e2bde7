"""Hostile input over the wire: the broker answers everything, keeps its
invariants, and nobody else notices."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import Broker, RawClient, wait_until

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
)
TYPES = [
    "hello",
    "join",
    "part",
    "say",
    "pm",
    "who",
    "rooms",
    "history",
    "nick",
    "topic",
    "ping",
    "bye",
    "offer",
    "commands",
    "nope",
]
requests = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={
            "nick": st.sampled_from(["alice", "bob", "Alice", "x" * 30, "9", ""])
            | st.text(max_size=5),
            "room": st.sampled_from(["general", "dev", "Bad", ""]) | st.text(max_size=5),
            "text": st.text(max_size=50),
            "to": st.sampled_from(["alice", "bob", "carol"]),
            "topic": st.text(max_size=20),
            "after": st.integers(-5, 2**70),
            "before": st.integers(-5, 2**70),
            "limit": st.integers(-5, 2**70),
            "id": st.text(max_size=70) | st.integers(),
            "token": st.text(max_size=10),
            "junk": json_values,
        },
    ),
    json_values,
)
frames = st.one_of(
    requests.map(lambda r: [json.dumps(r).encode()]),
    st.lists(st.binary(max_size=50), min_size=1, max_size=4),
    st.just([b"\xff\xfe\x00"]),
    st.just([b"[" * 3000 + b"]" * 3000]),
)


def test_fuzzed_requests(make_broker: Callable[..., Broker], zctx: Any) -> None:
    b = make_broker("--rate", "0", store=":memory:")
    bystander = RawClient(zctx, b.endpoint, b.events)
    assert bystander.request({"type": "hello", "nick": "bystander"})["type"] == "welcome"
    bystander.subscribe(b"#general\x00")
    bystander.request({"type": "join", "room": "general"})
    fuzzers = [RawClient(zctx, b.endpoint) for _ in range(3)]

    @settings(max_examples=250, suppress_health_check=list(HealthCheck), deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2), frames), min_size=1, max_size=8))
    def check(script: list[tuple[int, list[bytes]]]) -> None:
        for who, parts in script:
            fuzzers[who].dealer.send_multipart(parts)
            # Every request gets an answer, and it is a message of the contract.
            reply = fuzzers[who].recv(10)
            assert isinstance(reply.get("type"), str)
            while fuzzers[who].dealer.poll(0):
                fuzzers[who].recv()
        # Invariants: nicks unique, membership as who tells, seq without holes.
        everyone = bystander.request({"type": "who"})["users"]
        nicks = [u["nick"].lower() for u in everyone]
        assert len(nicks) == len(set(nicks))
        here = {u["nick"] for u in bystander.request({"type": "who", "room": "general"})["users"]}
        assert "bystander" in here
        history = bystander.request({"type": "history", "room": "general", "limit": 500})
        seqs = [e["seq"] for e in history["events"]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        joins = {e["nick"] for e in history["events"] if e["type"] == "join"}
        assert here <= joins | {"bystander"} | {e.get("new") for e in history["events"]}

    check()
    # The bystander was never disturbed.
    assert (
        bystander.request({"type": "say", "room": "general", "text": "still fine"})["type"] == "ack"
    )
    for f in fuzzers:
        f.close()
    bystander.close()


def test_flood_is_rate_limited_without_hurting_others(
    make_broker: Callable[..., Broker], zctx: Any
) -> None:
    b = make_broker()
    flooder = RawClient(zctx, b.endpoint)
    calm = RawClient(zctx, b.endpoint)
    flooder.request({"type": "hello", "nick": "flooder"})
    calm.request({"type": "hello", "nick": "calm"})
    for c in (flooder, calm):
        c.request({"type": "join", "room": "general"})
    for i in range(2000):
        flooder.send({"type": "say", "room": "general", "text": f"spam {i}"})
    # The calm client is answered while the flood is being refused.
    assert (
        calm.request({"type": "say", "room": "general", "text": "hello"}, timeout=10)["type"]
        == "ack"
    )
    replies = [flooder.recv(10) for _ in range(2000)]
    limited = [r for r in replies if r["type"] == "error"]
    assert len(limited) >= 1900 and all(r["code"] == "rate_limited" for r in limited)
    flooder.close()
    calm.close()


def test_garbage_on_both_ports(raw: Callable[[], RawClient], broker: Broker) -> None:
    a = raw()
    a.request({"type": "hello", "nick": "alice"})
    a.subscribe(b"#general\x00")
    a.request({"type": "join", "room": "general"})
    open_socks = []
    for endpoint in (broker.endpoint, broker.events):
        host, port = endpoint.rsplit("/", 1)[1].rsplit(":", 1)
        for junk in (
            b"\x00" * 64,
            b"\xff" + b"\x00" * 8 + b"\x7f\x03",
            b"GET / HTTP/1.1\r\n\r\n",
            bytes(range(256)),
        ):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(junk)
            open_socks.append(s)  # truncated greetings left hanging open
    ack = a.request({"type": "say", "room": "general", "text": "unbothered"})
    assert ack["type"] == "ack"
    while True:
        _, ev = a.event()
        if ev.get("text") == "unbothered":
            break
    for s in open_socks:
        s.close()


def test_a_bug_in_the_core_costs_one_request_not_the_broker(tmp_path: Any) -> None:
    """The loop's safety net, in process: a handler that raises gets its
    request an ``error`` with the request's id, and the next request on the
    same connection is served as usual."""
    import os
    import signal
    import threading

    import zmq

    from broker import Config, Server
    from messages import Say

    server = Server(Config(bind="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", store=":memory:"))
    real = server.core.batch

    def buggy_batch(now: float, out: Any) -> Any:
        handle = real(now, out)

        def buggy(ident: bytes, req: Any, *args: Any) -> None:
            if isinstance(req, Say) and req.text == "boom":
                raise KeyError("a bug")
            handle(ident, req, *args)

        return buggy

    server.core.batch = buggy_batch  # type: ignore[method-assign]
    replies: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    def client() -> None:
        ctx = zmq.Context()
        try:
            c = RawClient(ctx, server.bind_endpoint)
            replies.append(c.request({"type": "hello", "nick": "alice"}))
            replies.append(c.request({"type": "join", "room": "general"}))
            replies.append(c.request({"type": "say", "room": "general", "text": "boom", "id": "b"}))
            replies.append(c.request({"type": "say", "room": "general", "text": "fine", "id": "f"}))
            c.close()
        except BaseException as err:  # reported by the test, not lost in the thread
            failure.append(err)
        finally:
            ctx.term()
            if not stopped.is_set():  # the loop runs until a signal
                os.kill(os.getpid(), signal.SIGTERM)

    stopped = threading.Event()
    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        assert server.run() == 0
    finally:
        stopped.set()
    t.join(10)
    assert not failure, failure
    assert [r["type"] for r in replies] == ["welcome", "joined", "error", "ack"]
    assert replies[2]["id"] == "b" and "internal error" in replies[2]["message"]
    assert replies[3]["id"] == "f" and replies[3]["seq"] == 2


def test_request_ids_beyond_the_dedup_limit_are_forgotten_and_logged(
    make_broker: Callable[..., Broker], zctx: Any
) -> None:
    """Unique ids are a way to make the broker remember things; it keeps at
    most --dedup-max of them and says so when it forgets one early."""
    b = make_broker("--dedup-max", "2", store=":memory:")
    c = RawClient(zctx, b.endpoint)
    c.request({"type": "hello", "nick": "flood"})
    c.request({"type": "join", "room": "general"})
    seqs = [
        c.request({"type": "say", "room": "general", "text": "x", "id": str(i)})["seq"]
        for i in range(5)
    ]
    wait_until(lambda: "request ids forgotten" in b.log_text(), what="the dedup warning")
    # The newest are still answered from memory; the oldest is published again.
    assert c.request({"type": "say", "room": "general", "text": "x", "id": "4"})["seq"] == seqs[4]
    assert c.request({"type": "say", "room": "general", "text": "x", "id": "0"})["seq"] > seqs[4]
    c.close()
