"""The wire protocol, in memory: round trips, precise refusals, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import messages as m
from messages import Code, ProtocolError, decode_request

TS = "2026-11-24T12:00:00.123Z"

REQUESTS: list[Any] = [
    m.Hello(nick="alice", token="t0k", client="test/1", id="1"),
    m.Join(room="general"),
    m.Part(room="dev", reason="lunch"),
    m.Say(room="general", text="hi", action=True, id="x"),
    m.Pm(to="bob", text="psst"),
    m.Who(room=None),
    m.Who(room="dev"),
    m.Rooms(),
    m.History(room="general", after=3, before=9, limit=5),
    m.Nick(nick="alicia"),
    m.Topic(room="dev", topic="ship it"),
    m.Ping(id="p"),
    m.Bye(reason="gone"),
    m.Offer(commands=[m.CommandSpec(name="roll", usage="!roll NdM", help="dice")]),
    m.Commands(room="general"),
]

REPLIES: list[Any] = [
    m.Welcome(
        nick="alice",
        token="t",
        events="tcp://127.0.0.1:5556",
        heartbeat_ms=5000,
        timeout_ms=15000,
        server=m.ServerInfo(name="zchat", version="0.1.0", epoch="e1", store="s1"),
        limits=m.Limits(max_text=4000, max_msg_bytes=65536, rate_per_s=20.0, burst=40),
        id="1",
    ),
    m.Joined(room="general", topic="", members=["alice"], seq=1),
    m.Parted(room="general"),
    m.Ack(room="general", seq=2, ts=TS, id="x"),
    m.Ack(to="bob", ts=TS),
    m.WhoReply(room=None, users=[m.WhoUser(nick="alice", idle_ms=5)]),
    m.RoomsReply(rooms=[m.RoomInfo(name="general", topic="t", members=["alice"])]),
    m.NickReply(old="a", new="b"),
    m.Pong(epoch="e", ts=TS, seqs={"general": 3}),
    m.ByeReply(),
    m.Error(code="rate_limited", message="slow down", retry_ms=50, id="9"),
    m.Offered(count=1),
    m.CommandsReply(
        room=None, commands=[m.CommandInfo(nick="dice", name="roll", usage="", help="")]
    ),
    m.PmPush(from_="bob", to="alice", text="hi", ts=TS),
    m.Notice(text="bye"),
]

EVENTS: list[Any] = [
    m.MsgEvent(room="general", seq=1, ts=TS, from_="alice", text="hi", id="x"),
    m.MsgEvent(room="general", seq=2, ts=TS, from_="alice", text="waves", action=True),
    m.JoinEvent(room="general", seq=3, ts=TS, nick="bob"),
    m.LeaveEvent(room="general", seq=4, ts=TS, nick="bob", reason="timeout"),
    m.NickEvent(room="general", seq=5, ts=TS, old="a", new="b"),
    m.TopicEvent(room="general", seq=6, ts=TS, nick="a", topic="t"),
    m.Notice(text="server going down"),
]


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda x: type(x).__name__)
def test_requests_round_trip(msg: Any) -> None:
    assert decode_request(m.encode(msg)) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=lambda x: type(x).__name__)
def test_replies_round_trip(msg: Any) -> None:
    assert m.decode_reply(m.encode(msg)) == msg


@pytest.mark.parametrize("msg", EVENTS, ids=lambda x: type(x).__name__)
def test_events_round_trip(msg: Any) -> None:
    assert m.decode_event(m.encode(msg)) == msg


def test_the_buffered_encoder_makes_the_same_bytes() -> None:
    """Its buffer is reused: a short message after a long one (past the
    buffer's first size) must not carry any of the long one's tail."""
    enc = m.BufferedEncoder()
    long = m.MsgEvent(room="general", seq=7, ts=TS, from_="alice", text="x" * 9000)
    for msg in [*REQUESTS, *REPLIES, *EVENTS, long, *EVENTS, long, REPLIES[0]]:
        assert enc.encode(msg) == m.encode(msg)


def test_frames_look_like_the_contract() -> None:
    assert json.loads(m.encode(EVENTS[0])) == {
        "type": "msg",
        "room": "general",
        "seq": 1,
        "ts": TS,
        "from": "alice",
        "text": "hi",
        "id": "x",
    }
    # who.room is always there, even when null; optional fields are left out.
    assert json.loads(m.encode(m.WhoReply(room=None, users=[]))) == {
        "type": "who",
        "room": None,
        "users": [],
    }
    assert json.loads(m.encode(m.Ack(to="bob", ts=TS))) == {"type": "ack", "ts": TS, "to": "bob"}
    history = m.HistoryReply(room="general", events=[msgspec.Raw(m.encode(EVENTS[2]))], more=False)
    assert json.loads(m.encode(history))["events"] == [json.loads(m.encode(EVENTS[2]))]


def refused(frame: bytes, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(frame, **kw)
    return info.value


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (b"", Code.BAD_REQUEST, "JSON"),
        (b"nope", Code.BAD_REQUEST, "JSON"),
        (b"\xff\xfe{}", Code.BAD_REQUEST, ""),
        (b"[]", Code.BAD_REQUEST, "object"),
        (b"{}", Code.BAD_REQUEST, "type"),
        (b'{"type": null}', Code.BAD_REQUEST, "type"),
        (b'{"type": "shout"}', Code.UNKNOWN_TYPE, "shout"),
        (b'{"type": "say", "room": "general"}', Code.BAD_REQUEST, "text"),
        (b'{"type": "say", "room": 5, "text": "x"}', Code.BAD_REQUEST, "room"),
        (b'{"type": "join", "room": "General"}', Code.ROOM_INVALID, "General"),
        (b'{"type": "join", "room": ""}', Code.ROOM_INVALID, ""),
        (b'{"type": "join", "room": "' + b"a" * 33 + b'"}', Code.ROOM_INVALID, ""),
        (b'{"type": "hello", "nick": "1abc"}', Code.NICK_INVALID, "letter"),
        (b'{"type": "hello", "nick": "' + b"a" * 25 + b'"}', Code.NICK_INVALID, ""),
        (b'{"type": "hello", "nick": "al ice"}', Code.NICK_INVALID, ""),
        (b'{"type": "say", "room": "g", "text": " \\n\\t "}', Code.TEXT_INVALID, "empty"),
        (b'{"type": "say", "room": "g", "text": "a\\u0007"}', Code.TEXT_INVALID, "U+0007"),
        (b'{"type": "say", "room": "g", "text": "a\\u007f"}', Code.TEXT_INVALID, "U+007F"),
        (b'{"type": "say", "room": "g", "text": "a\\u009b"}', Code.TEXT_INVALID, "U+009B"),
        (b'{"type": "ping", "id": ""}', Code.BAD_REQUEST, "id"),
        (b'{"type": "ping", "id": "' + b"x" * 65 + b'"}', Code.BAD_REQUEST, "id"),
        (b'{"type": "ping", "id": "a\\u001b[2J"}', Code.BAD_REQUEST, "control"),
        (b'{"type": "ping", "id": "fake\\nline"}', Code.BAD_REQUEST, "control"),
        (b'{"type": "ping", "id": "a\\tb"}', Code.BAD_REQUEST, "control"),
        (b'{"type": "history", "room": "g", "limit": 0}', Code.BAD_REQUEST, "limit"),
        (b'{"type": "history", "room": "g", "after": -1}', Code.BAD_REQUEST, "after"),
        (
            b'{"type": "history", "room": "g", "after": 99999999999999999999999}',
            Code.BAD_REQUEST,
            "",
        ),
        (b'{"type": "offer", "commands": [{"name": "Nope"}]}', Code.BAD_REQUEST, "name"),
    ],
)
def test_refusals_are_precise(frame: bytes, code: Code, words: str) -> None:
    err = refused(frame)
    assert err.code is code
    assert words in err.message


def test_text_rules() -> None:
    assert (
        decode_request(b'{"type":"say","room":"g","text":"tab\\there\\nnext  \\n"}').text
        == "tab\there\nnext"
    )  # type: ignore[union-attr]
    assert (
        refused(b'{"type":"say","room":"g","text":"abcdef"}', max_text=5).code is Code.TEXT_INVALID
    )
    assert decode_request(b'{"type":"say","room":"g","text":"abcde"}', max_text=5).text == "abcde"  # type: ignore[union-attr]
    assert decode_request(b'{"type":"topic","room":"g","topic":""}').topic == ""  # type: ignore[union-attr]
    # A lone surrogate can travel in JSON but not in UTF-8: refused either way.
    assert refused(b'{"type":"say","room":"g","text":"\\ud800"}').code in (
        Code.TEXT_INVALID,
        Code.BAD_REQUEST,
    )


def test_the_request_id_comes_back_with_the_error() -> None:
    assert refused(b'{"type": "dance", "id": "r1"}').id == "r1"
    assert refused(b'{"type": "join", "room": "BAD", "id": "r2"}').id == "r2"
    assert refused(b'{"type": "join", "id": "r3"}').id == "r3"
    assert refused(b'{"type": "join", "id": 7}').id is None


def test_unknown_fields_are_ignored() -> None:
    req = decode_request(
        b'{"type":"say","room":"g","text":"x","from":"mallory","ts":"1999","extra":[1,{}]}'
    )
    assert req == m.Say(room="g", text="x")


def test_topics() -> None:
    assert m.room_topic("dev") == b"#dev\x00"
    assert m.topic_room(b"#dev\x00") == "dev" and m.topic_room(m.NOTICE_TOPIC) is None
    with pytest.raises(ProtocolError):
        m.topic_room(b"dev")
    # The trailing NUL keeps prefix matching exact: #dev does not match #devops.
    assert not m.room_topic("devops").startswith(m.room_topic("dev"))


def test_time_format() -> None:
    assert m.format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert m.format_ts(1795867200.5) == "2026-11-28T12:00:00.500Z"
    assert m.parse_ts("2026-11-24T12:00:00.123Z").timestamp() == pytest.approx(1795521600.123)


def test_names() -> None:
    assert m.is_nick("a") and m.is_nick("A.b-c_9") and not m.is_nick("_a") and not m.is_nick("")
    assert m.is_room("a-b_1") and not m.is_room("A") and not m.is_room("#a")
    assert m.normalize_room(" #dev ") == "dev"
    assert m.nick_key("Alice") == m.nick_key("aLICE")


@pytest.mark.parametrize("module", ["messages", "broker", "client"])
def test_public_names_are_exported(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(set(mod.__all__))
    for name in mod.__all__:
        assert hasattr(mod, name), name
    public = {
        n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, type(m))
    }
    assert public <= set(mod.__all__) | {"annotations"}


# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_refuse(frame: bytes) -> None:
    try:
        decode_request(frame)
    except ProtocolError as err:
        assert err.code in Code and err.message


@settings(max_examples=300)
@given(json_values, st.sampled_from([None, *m.REQUEST_TYPES]))
def test_any_json_decodes_or_refuses(value: Any, type_: str | None) -> None:
    if type_ is not None and isinstance(value, dict):
        value = {**value, "type": type_}
    try:
        req = decode_request(json.dumps(value).encode())
    except ProtocolError as err:
        assert err.code in Code
    else:
        assert decode_request(m.encode(req)) == req


def test_deep_nesting_is_refused_not_crashed() -> None:
    assert refused(b"[" * 100_000 + b"]" * 100_000).code is Code.BAD_REQUEST
    deep = b'{"type":"ping","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    try:
        decode_request(deep)
    except ProtocolError as err:
        assert err.code is Code.BAD_REQUEST


nicks = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,23}", fullmatch=True)
rooms = st.from_regex(r"[a-z0-9_\-]{1,32}", fullmatch=True)


@given(nicks, rooms, st.text(min_size=1, max_size=200))
def test_valid_requests_round_trip(nick: str, room: str, text: str) -> None:
    assert decode_request(m.encode(m.Hello(nick=nick))) == m.Hello(nick=nick)
    assert decode_request(m.encode(m.Join(room=room))) == m.Join(room=room)
    try:
        say = decode_request(m.encode(m.Say(room=room, text=text)))
    except ProtocolError as err:
        # Refused text is refused for a reason the rules name, never half-taken.
        assert err.code is Code.TEXT_INVALID
    else:
        assert isinstance(say, m.Say) and say.text == text.rstrip() and say.text
        assert not any(
            0x80 <= ord(c) <= 0x9F or (ord(c) < 0x20 and c not in "\t\n") or ord(c) == 0x7F
            for c in say.text
        )


def test_every_example_in_protocol_md_is_a_real_frame() -> None:
    import re
    from pathlib import Path

    doc = (Path(m.__file__).parent / "PROTOCOL.md").read_text()
    frames = re.findall(r"```json\n(.*?)\n```", doc, re.S)
    assert len(frames) >= 30
    for frame in frames:
        raw = frame.encode()
        decoders = (decode_request, m.decode_reply, m.decode_event)
        assert any(_decodes(d, raw) for d in decoders), frame


def _decodes(decoder: Any, raw: bytes) -> bool:
    try:
        decoder(raw)
    except ProtocolError:
        return False
    return True
