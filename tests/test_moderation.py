"""Moderation in the core, with a clock that moves only when told: the rights
table end to end (every role against every action against every target
role), bans that outlive sessions, nicks and restarts, expiry, and bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import messages as m
from broker import Core, Outbox, Store
from broker._config import Config

from .test_core import World

PASSWORD = "correct horse battery"
ROLES = ["member", "voice", "op", "owner", "server"]


def rank(role: str) -> int:
    return ROLES.index(role)


def world(**config: Any) -> World:
    w = World(**config)
    w.core.oper_password = PASSWORD
    return w


def join_as(
    w: World, ident: bytes, nick: str, addr: str = "127.0.0.1", key: str | None = None
) -> None:
    out = Outbox()
    w.core.handle(ident, m.Hello(nick=nick), w.now, out, addr=addr, peer_key=key)
    w._flush(out)
    out = Outbox()
    w.core.handle(ident, m.Join(room="r"), w.now, out, addr=addr, peer_key=key)
    replies = w._flush(out)
    assert isinstance(replies[0][1], m.Joined), replies


def ask_as(w: World, ident: bytes, req: Any, key: str) -> Any:
    out = Outbox()
    w.core.handle(ident, req, w.now, out, addr="127.0.0.1", peer_key=key)
    replies = [msg for to, msg in w._flush(out) if to == ident]
    assert len(replies) == 1, replies
    return replies[0]


def ok(reply: Any) -> bool:
    return isinstance(reply, m.Ack | m.BansReply)


def refusal(reply: Any) -> str:
    assert isinstance(reply, m.Error), reply
    return reply.code


class Room:
    """A room ``r`` made by ``own`` (its owner), with a server operator
    ``root`` beside, and people given each role by them."""

    def __init__(self) -> None:
        self.w = world()
        w = self.w
        join_as(w, b"own", "own")
        join_as(w, b"root", "root")
        assert ok(w.ask(b"root", m.Oper(password=PASSWORD)))
        self.n = 0

    def person(self, role: str) -> tuple[bytes, str]:
        """A new member of ``r`` with ``role`` (owner: ``own`` itself)."""
        if role == "owner":
            return b"own", "own"
        self.n += 1
        nick = f"{role}{self.n}"
        ident = nick.encode()
        join_as(self.w, ident, nick)
        if role in ("op", "voice"):
            assert ok(self.w.ask(b"own", (m.Op if role == "op" else m.Voice)(room="r", nick=nick)))
        elif role == "server":
            assert ok(self.w.ask(ident, m.Oper(password=PASSWORD)))
        return ident, nick


# What each action needs, written from the README's table: every action on
# a person needs an operator (op, owner or server) who ranks above that
# person; the others need an operator.
ON_PEOPLE = ["op", "deop", "voice", "devoice", "kick", "ban", "mute", "unmute"]
ON_ROOM = ["invite", "mode", "unban", "bans", "topic"]


def expected(actor: str, action: str, target: str | None) -> bool:
    if rank(actor) < rank("op"):
        return False
    return target is None or rank(target) < rank(actor)


def act(r: Room, ident: bytes, action: str, target: str) -> Any:
    w = r.w
    req: Any
    if action in ("op", "deop", "voice", "devoice"):
        cls = {"op": m.Op, "deop": m.Deop, "voice": m.Voice, "devoice": m.Devoice}[action]
        req = cls(room="r", nick=target)
    elif action == "kick":
        req = m.Kick(room="r", nick=target, reason="out")
    elif action == "ban":
        req = m.Ban(room="r", nick=target, reason="spam")
    elif action == "mute":
        req = m.Mute(room="r", nick=target)
    elif action == "unmute":
        req = m.Unmute(room="r", nick=target)
    elif action == "invite":
        req = m.Invite(room="r", nick="guest")
    elif action == "mode":
        req = m.Mode(room="r", moderated=True)
    elif action == "unban":
        req = m.Unban(room="r", mask="nick:ghost")
    elif action == "bans":
        req = m.Bans(room="r")
    else:
        req = m.Topic(room="r", topic="new topic")
    return w.ask(ident, req)


CASES = [
    (actor, action, target)
    for actor in ROLES
    for action in ON_PEOPLE
    for target in ROLES
    if not (actor == "owner" and target == "owner")  # a room has one owner
] + [(actor, action, None) for actor in ROLES for action in ON_ROOM]


@pytest.mark.parametrize(("actor", "action", "target"), CASES)
def test_rights_table(actor: str, action: str, target: str | None) -> None:
    r = Room()
    w = r.w
    a_ident, _ = r.person(actor)
    t_nick = "nobody"
    if target is not None:
        _, t_nick = r.person(target)
        if action == "unmute" and target != "server":
            assert ok(w.ask(b"root", m.Mute(room="r", nick=t_nick)))
    if action == "unban":
        assert ok(w.ask(b"root", m.Ban(room="r", mask="nick:ghost")))
    if action == "topic":
        assert ok(w.ask(b"root", m.Mode(room="r", topic_lock=True)))
    before = len(w.published)
    reply = act(r, a_ident, action, t_nick)
    if expected(actor, action, target):
        assert ok(reply), (actor, action, target, reply)
    else:
        assert refusal(reply) == "forbidden", (actor, action, target, reply)
        assert len(w.published) == before, "a refusal changed the room"


@pytest.mark.parametrize("actor", ROLES)
def test_server_actions_are_for_server_operators(actor: str) -> None:
    r = Room()
    w = r.w
    ident, _ = r.person(actor)
    _, victim = r.person("member")
    for req in (
        m.Wall(text="maintenance at noon"),
        m.Ban(room="*", mask="addr:192.0.2.0/24"),
        m.Kill(nick=victim, reason="bye"),
    ):
        reply = w.ask(ident, req)
        assert ok(reply) == (actor == "server"), (actor, req, reply)


def test_a_wrong_operator_password_gets_nothing() -> None:
    w = world()
    join_as(w, b"a", "alice")
    assert refusal(w.ask(b"a", m.Oper(password="guess guess"))) == "forbidden"
    assert refusal(w.ask(b"a", m.Wall(text="hi"))) == "forbidden"
    w2 = World()  # a broker with no password file: no one becomes an operator
    join_as(w2, b"a", "alice")
    assert refusal(w2.ask(b"a", m.Oper(password=PASSWORD))) == "forbidden"


def test_the_first_to_come_into_a_new_room_owns_it_and_no_one_after() -> None:
    w = world()
    join_as(w, b"a", "alice")
    joined = w.ask(b"a", m.Join(room="r"))
    assert joined.roles == {"alice": "owner"}
    join_as(w, b"b", "bob")
    assert w.ask(b"b", m.Bans(room="r")).code == "forbidden"
    # The owner leaves and the room empties: still hers when bob comes back.
    w.ask(b"a", m.Part(room="r"))
    w.ask(b"b", m.Part(room="r"))
    assert w.ask(b"b", m.Join(room="r")).roles == {"alice": "owner"}
    # A quiet session (a script) makes a room without owning it.
    out = Outbox()
    w.core.handle(b"q", m.Hello(nick="script", quiet=True), w.now, out, addr="127.0.0.1")
    w._flush(out)
    assert w.ask(b"q", m.Join(room="made-by-a-script")).roles is None


def test_kick_puts_out_with_who_and_why_and_they_may_come_back() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    sent = w.send(b"a", m.Kick(room="r", nick="bob", reason="calm down"))
    leave = w.published[-1]
    assert isinstance(leave, m.LeaveEvent)
    assert (leave.nick, leave.reason, leave.by, leave.text) == ("bob", "kick", "alice", "calm down")
    assert any(
        to == b"b" and isinstance(msg, m.Notice) and "calm down" in msg.text for to, msg in sent
    )
    assert w.ask(b"b", m.Say(room="r", text="still here?")).code == "not_in_room"
    assert w.ask(b"a", m.Kick(room="r", nick="bob")).code == "no_such_user"
    assert isinstance(w.ask(b"b", m.Join(room="r")), m.Joined)


def test_a_ban_holds_against_a_new_session_a_new_nick_and_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    w = World(store=Store(path))
    w.core.oper_password = PASSWORD
    join_as(w, b"a", "alice", addr="10.0.0.1")
    join_as(w, b"m", "mallory", addr="203.0.113.7", key="K" * 40)
    assert ok(w.ask(b"a", m.Ban(room="r", nick="mallory", match="addr", reason="spam")))
    assert ok(w.ask(b"a", m.Ban(room="r", nick="alice2", reason="later")))  # nick, absent
    bans = [e for e in w.published if isinstance(e, m.ModeEvent) and e.mode == "ban"]
    assert [(e.nick, e.target, e.text) for e in bans] == [
        ("alice", "addr:203.0.113.7", "spam"),
        ("alice", "nick:alice2", "later"),
    ]
    assert "mallory" not in [u.nick for u in w.ask(b"a", m.Who(room="r")).users]

    def comes_back(w: World, ident: bytes, nick: str, addr: str, key: str | None = None) -> Any:
        out = Outbox()
        w.core.handle(ident, m.Hello(nick=nick), w.now, out, addr=addr, peer_key=key)
        w._flush(out)
        out = Outbox()
        w.core.handle(ident, m.Join(room="r"), w.now, out, addr=addr, peer_key=key)
        return w._flush(out)[0][1]

    # the same session
    assert comes_back(w, b"m", "mallory", "203.0.113.7", "K" * 40).code == "forbidden"
    ask_as(w, b"m", m.Bye(), "K" * 40)
    assert comes_back(w, b"m2", "nice-person", "203.0.113.7").code == "forbidden"
    assert "banned from #r" in comes_back(w, b"m3", "alIce2", "198.51.100.1").message  # look-alike
    w.store.close()
    w2 = World(store=Store(path))  # a restart
    refused = comes_back(w2, b"m4", "another", "203.0.113.7")
    assert refused.code == "forbidden" and refused.message.endswith(": spam")
    assert isinstance(comes_back(w2, b"x", "bystander", "198.51.100.9"), m.Joined)


def test_bans_and_mutes_lapse_with_time() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    join_as(w, b"c", "carol")
    assert ok(w.ask(b"a", m.Mute(room="r", nick="bob", duration_s=60, reason="cool off")))
    refused = w.ask(b"b", m.Say(room="r", text="hey"))
    assert (
        refused.code == "forbidden" and "muted" in refused.message and "cool off" in refused.message
    )
    assert ok(w.ask(b"c", m.Say(room="r", text="a polite client goes on")))
    assert ok(w.ask(b"a", m.Ban(room="r", nick="carol", duration_s=120)))
    w.now += 61
    assert ok(w.ask(b"b", m.Say(room="r", text="back")))
    assert w.ask(b"c", m.Join(room="r")).code == "forbidden"
    w.now += 60
    assert isinstance(w.ask(b"c", m.Join(room="r")), m.Joined)
    listed = w.ask(b"a", m.Bans(room="r"))
    assert listed.bans == [] and listed.mutes == []


def test_mute_follows_a_nick_change_and_so_do_roles() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    join_as(w, b"c", "carol")
    assert ok(w.ask(b"a", m.Mute(room="r", nick="bob")))
    assert ok(w.ask(b"a", m.Op(room="r", nick="carol")))
    w.ask(b"b", m.Nick(nick="robert"))
    w.ask(b"c", m.Nick(nick="caroline"))
    assert w.ask(b"b", m.Say(room="r", text="evading")).code == "forbidden"
    assert ok(w.ask(b"c", m.Kick(room="r", nick="robert")))
    join_as(w, b"d", "carol")  # her old nick gives nothing
    assert w.ask(b"d", m.Bans(room="r")).code == "forbidden"


def test_invite_only_moderated_and_topic_lock() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    assert ok(w.ask(b"a", m.Mode(room="r", invite_only=True, moderated=True, topic_lock=True)))
    assert [e.mode for e in w.published[-3:]] == ["invite_only", "moderated", "topic_lock"]
    assert w.ask(b"b", m.Say(room="r", text="hi")).code == "forbidden"
    assert w.ask(b"b", m.Topic(room="r", topic="mine")).code == "forbidden"
    assert ok(w.ask(b"a", m.Voice(room="r", nick="bob")))
    assert ok(w.ask(b"b", m.Say(room="r", text="with a voice")))
    assert isinstance(w.ask(b"b", m.Part(room="r")), m.Parted)
    # bob was in the room as it turned invite-only: he is on its list.
    assert isinstance(w.ask(b"b", m.Join(room="r")), m.Joined)
    w.hello(b"d", "dave")
    assert w.ask(b"d", m.Join(room="r")).code == "forbidden"  # invite-only now
    sent = w.send(b"a", m.Invite(room="r", nick="dave"))
    assert any(to == b"d" and isinstance(x, m.Notice) for to, x in sent)
    joined = w.ask(b"d", m.Join(room="r"))
    assert joined.modes == ["invite_only", "moderated", "topic_lock"]
    assert joined.roles == {"alice": "owner", "bob": "voice"}
    assert ok(w.ask(b"a", m.Mode(room="r", moderated=False)))
    assert w.ask(b"a", m.Mode(room="r", moderated=False)).seq == w.published[-1].seq  # no change


def test_the_fast_path_of_says_checks_mutes() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    assert ok(w.ask(b"a", m.Mute(room="r", nick="bob")))
    out = Outbox()
    handle = w.core.batch(w.now, out)
    for i in range(5):
        handle(b"b", m.Say(room="r", text=f"flood {i}", id=f"f{i}"))
        handle(b"a", m.Say(room="r", text=f"polite {i}", id=f"p{i}"))
    replies = w._flush(out)
    assert [type(x).__name__ for to, x in replies if to == b"b"] == ["Error"] * 5
    assert [type(x).__name__ for to, x in replies if to == b"a"] == ["Ack"] * 5
    assert ok(w.ask(b"a", m.Unmute(room="r", nick="bob")))
    assert ok(w.ask(b"b", m.Say(room="r", text="free again")))


def test_a_room_holds_a_bounded_moderation() -> None:
    w = world(max_moderation=20, rate=0)
    join_as(w, b"a", "alice")
    join_as(w, b"p", "polite")
    for i in range(20):
        assert ok(w.ask(b"a", m.Ban(room="r", mask=f"addr:198.51.100.{i}")))
    assert w.ask(b"a", m.Ban(room="r", mask="addr:198.51.100.200")).code == "limit_reached"
    assert w.ask(b"a", m.Invite(room="r", nick="guest")).code == "limit_reached"
    assert ok(w.ask(b"a", m.Ban(room="r", mask="addr:198.51.100.3", reason="again")))  # a renewal
    assert ok(w.ask(b"p", m.Say(room="r", text="still chatting")))
    assert len(w.ask(b"a", m.Bans(room="r")).bans) == 20


def test_a_resent_moderation_request_is_answered_alike() -> None:
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    first = w.ask(b"a", m.Kick(room="r", nick="bob", id="k1"))
    events = len(w.published)
    assert w.ask(b"a", m.Kick(room="r", nick="bob", id="k1")) == first
    assert len(w.published) == events


def test_server_operators_ban_the_server_kill_and_release() -> None:
    w = world(curve_secret="unused")
    assert w.core.claims is not None
    R = "R" * 40
    w.core.operator_keys = frozenset({R})
    join_as(w, b"root", "root", key="R" * 40)  # an operator by key, no password
    join_as(w, b"m", "mallory", addr="203.0.113.7", key="M" * 40)
    assert ok(ask_as(w, b"root", m.Kill(nick="mallory", reason="enough"), R))
    leave = w.published[-1]
    assert (leave.reason, leave.by, leave.text) == ("kick", "root", "enough")
    assert w.core.nicks.get("mallory") is None
    assert ok(ask_as(w, b"root", m.Ban(room="*", mask="key:" + "M" * 40, reason="troll"), R))
    out = Outbox()
    w.core.handle(
        b"m2", m.Hello(nick="innocent"), w.now, out, addr="198.51.100.1", peer_key="M" * 40
    )
    refused = w._flush(out)[0][1]
    assert refused.code == "forbidden" and "server" in refused.message
    assert [b.mask for b in ask_as(w, b"root", m.Bans(room="*"), R).bans] == ["key:" + "M" * 40]
    # mallory's nick is still claimed by her key: released, another key may have it.
    assert w.core.claims.owner("mallory", w.now) == "M" * 40
    assert ok(ask_as(w, b"root", m.Release(nick="mallory"), R))
    assert w.core.claims.owner("mallory", w.now) is None
    assert ok(ask_as(w, b"root", m.Unban(room="*", mask="key:" + "M" * 40), R))


def test_roles_and_bans_outlive_the_core_in_a_store(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = Store(path)
    core = Core(Config(), store)
    out = Outbox()
    core.handle(b"a", m.Hello(nick="alice"), 0.0, out, addr="127.0.0.1")
    core.handle(b"a", m.Join(room="r"), 0.0, out, addr="127.0.0.1")
    core.handle(b"b", m.Hello(nick="bob"), 0.0, out, addr="127.0.0.2")
    core.handle(b"b", m.Join(room="r"), 0.0, out, addr="127.0.0.2")
    core.handle(b"a", m.Op(room="r", nick="bob"), 0.0, out, addr="127.0.0.1")
    core.handle(b"a", m.Mode(room="r", moderated=True), 0.0, out, addr="127.0.0.1")
    store.commit()
    store.close()
    w = World(store=Store(path))
    join_as(w, b"b", "bob")
    joined = w.ask(b"b", m.Join(room="r"))
    assert joined.roles == {"alice": "owner", "bob": "op"} and joined.modes == ["moderated"]
    assert ok(w.ask(b"b", m.Say(room="r", text="ops speak in a moderated room")))


def test_masks_are_written_one_way() -> None:
    assert m.check_mask("addr:203.0.113.7/32") == "addr:203.0.113.7"
    assert m.check_mask("addr:10.1.2.3/8") == "addr:10.0.0.0/8"
    assert m.check_mask("nick:Alice") == "nick:alice"
    for bad in ("addr:nowhere", "nick:9lives", "key:short", "host:x"):
        with pytest.raises(m.ProtocolError):
            m.check_mask(bad)
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"m", "mallory", addr="203.0.113.7")
    assert ok(w.ask(b"a", m.Ban(room="r", nick="mallory", match="addr")))
    assert ok(w.ask(b"a", m.Unban(room="r", mask="addr:203.0.113.7/32")))  # the same ban
    assert w.ask(b"a", m.Bans(room="r")).bans == []


def test_a_mute_holds_in_a_room_brought_back_from_the_store(tmp_path: Path) -> None:
    """The fast path of says skips rooms known to have mutes: a room read
    back from the store (nobody was in it) must be known as one."""
    path = str(tmp_path / "s.db")
    w = World(store=Store(path))
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    assert ok(w.ask(b"a", m.Mute(room="r", nick="bob")))
    w.store.close()
    w2 = World(store=Store(path))  # a restart: no room in memory
    join_as(w2, b"b", "bob")
    out = Outbox()
    w2.core.batch(w2.now, out)(b"b", m.Say(room="r", text="on the fast path", id="1"))
    assert isinstance(w2._flush(out)[0][1], m.Error)


def test_password_guesses_are_logged_a_line_in_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = world(rate=0)
    join_as(w, b"a", "guesser")
    with caplog.at_level("WARNING", logger="zchat.broker"):
        for i in range(50):
            assert refusal(w.ask(b"a", m.Oper(password=f"guess {i}"))) == "forbidden"
        w.now += 10
        assert refusal(w.ask(b"a", m.Oper(password="one more"))) == "forbidden"
    lines = [r.getMessage() for r in caplog.records if "operator password" in r.getMessage()]
    assert lines == [
        "1 wrong operator password, the last from guesser (127.0.0.1)",
        "50 wrong operator passwords, the last from guesser (127.0.0.1)",
    ]


# ------------------------------------------------- found in review


def test_no_operator_locks_out_the_owner_or_another_operator() -> None:
    w = world()
    join_as(w, b"o", "own", addr="10.0.0.1")
    join_as(w, b"p", "op1", addr="10.0.0.2")
    assert ok(w.ask(b"o", m.Op(room="r", nick="op1")))
    w.ask(b"o", m.Part(room="r"))
    assert ok(w.ask(b"p", m.Ban(room="r", mask="addr:10.0.0.1")))  # no one here it covers
    assert ok(w.ask(b"p", m.Ban(room="r", mask="nick:ovvn")))  # a look-alike of "own"
    assert ok(w.ask(b"p", m.Mode(room="r", invite_only=True)))
    assert isinstance(w.ask(b"o", m.Join(room="r")), m.Joined)  # the owner comes in
    assert ok(w.ask(b"o", m.Unban(room="r", mask="addr:10.0.0.1")))


def test_invitations_stand_for_those_present_and_lapsed_entries_free_room() -> None:
    w = world(max_moderation=4)
    join_as(w, b"a", "alice")
    join_as(w, b"c", "carol")
    # Those in the room as it turns invite-only are on its list: they come
    # back after a restart (a session that ends and joins again) like anyone
    # invited.
    assert ok(w.ask(b"a", m.Mode(room="r", invite_only=True)))
    assert w.ask(b"a", m.Bans(room="r")).invited == ["carol"]
    w.ask(b"c", m.Bye())
    join_as(w, b"c2", "carol")
    assert ok(w.ask(b"a", m.Invite(room="r", nick="bob")))
    join_as(w, b"b", "bob")
    w.ask(b"b", m.Part(room="r"))
    assert isinstance(w.ask(b"b", m.Join(room="r")), m.Joined)  # an invitation stands
    # A kick takes it back; so does uninvite.
    assert ok(w.ask(b"a", m.Kick(room="r", nick="bob")))
    assert w.ask(b"b", m.Join(room="r")).code == "forbidden"
    assert ok(w.ask(b"a", m.Uninvite(room="r", nick="carol")))
    assert w.published[-1].mode == "uninvite"
    # Lapsed bans and mutes take no room in the room's bound.
    assert ok(w.ask(b"a", m.Ban(room="r", mask="addr:192.0.2.1", duration_s=60)))
    for nick in ("d1", "d2", "d3"):
        w.ask(b"a", m.Invite(room="r", nick=nick))
    assert w.ask(b"a", m.Mute(room="r", nick="erin")).code == "limit_reached"
    w.now += 61
    assert ok(w.ask(b"a", m.Mute(room="r", nick="erin")))


def test_a_long_ban_list_is_cut_to_a_reply_newest_first() -> None:
    w = world(max_reply_bytes=16_384, rate=0)
    join_as(w, b"a", "alice")
    for i in range(100):
        assert ok(w.ask(b"a", m.Ban(room="r", mask=f"addr:198.51.100.{i}", reason="x" * 300)))
    out = Outbox()
    w.core.handle(b"a", m.Bans(room="r"), w.now, out, addr="127.0.0.1")
    frame = (out.free + out.replies)[0][1]
    reply = m.decode_reply(frame)
    assert len(frame) <= 16_384 and reply.more is True
    assert 10 < len(reply.bans) < 100 and reply.bans[-1].mask == "addr:198.51.100.99"


def test_a_banned_nick_is_not_taken_by_renaming() -> None:
    w = world()
    join_as(w, b"root", "root")
    assert ok(w.ask(b"root", m.Oper(password=PASSWORD)))
    join_as(w, b"a", "alice")
    assert ok(w.ask(b"root", m.Ban(room="*", mask="nick:spammer")))
    assert ok(w.ask(b"root", m.Ban(room="r", mask="nick:troll")))
    assert w.ask(b"a", m.Nick(nick="spammer")).code == "forbidden"
    assert w.ask(b"a", m.Nick(nick="tr0ll")).code == "forbidden"  # banned from r, where she is
    assert isinstance(w.ask(b"a", m.Nick(nick="alicia")), m.NickReply)


def test_small_things_the_review_found() -> None:
    w = world()
    join_as(w, b"a", "alice")
    # An owner's own deop changes nothing: a room keeps its owner.
    assert ok(w.ask(b"a", m.Deop(room="r", nick="alice")))
    assert w.ask(b"a", m.Bans(room="r")).roles == {"alice": "owner"}
    # An operator by password stays one when its session is taken back by token.
    welcome = w.hello(b"x", "root")
    assert ok(w.ask(b"x", m.Oper(password=PASSWORD)))
    w.ask(b"y", m.Hello(nick="root", token=welcome.token))
    assert ok(w.ask(b"y", m.Wall(text="still an operator", id="w1")))
    # A resent wall is answered, not sent again.
    sent = w.send(b"y", m.Wall(text="still an operator", id="w1"))
    assert [type(x).__name__ for _, x in sent] == ["Ack"]


def test_moderation_in_words(utc: None) -> None:
    from client import _render as r

    def ev(**kw: Any) -> m.ModeEvent:
        return m.ModeEvent(room="mod", seq=1, ts="2026-11-28T12:00:00.000Z", nick="bob", **kw)

    assert r.mode_words(ev(mode="deop", target="bob")) == "bob is no longer an operator in #mod"
    assert r.mode_words(ev(mode="invite", target="dave")) == "bob invited dave to #mod"
    assert (
        r.mode_words(ev(mode="ban", target="nick:dave", until="2026-11-28T12:15:41.547Z", text="x"))
        == "bob banned dave in #mod until 2026-11-28 12:15:41: x"
    )
    assert r.mode_words(ev(mode="ban", target="addr:10.0.0.0/8")) == (
        "bob banned the address 10.0.0.0/8 in #mod"
    )
    assert r.mode_words(ev(mode="moderated", on=False)) == "bob let everyone speak in #mod"
    # And the broker's refusals, in words, with a time in UTC.
    w = world()
    join_as(w, b"a", "alice")
    join_as(w, b"b", "bob")
    assert w.ask(b"b", m.Bans(room="r")).message == "only operators of #r may list its bans"
    w.ask(b"a", m.Op(room="r", nick="bob"))
    assert w.ask(b"b", m.Kick(room="r", nick="alice")).message == (
        "you may not kick alice in #r: they are its owner"
    )
    join_as(w, b"c", "carol")
    w.ask(b"a", m.Mute(room="r", nick="carol", duration_s=90))
    assert w.ask(b"c", m.Say(room="r", text="hi")).message == (
        "you are muted in #r until 2026-11-24 12:01:30 UTC"
    )


def test_a_session_taken_back_by_token_is_checked_against_server_bans() -> None:
    """A ban made by another node of a cluster reaches this one through the
    store: the banned cannot carry on here by taking their session back."""
    w = world()
    welcome = w.hello(b"m", "mallory")
    from broker._moderation import Entry, Rules, dump

    w.store.set_rules("*", dump(Rules(bans=[Entry(mask="nick:mallory", by="root", at=w.now)])))
    w.store.commit()
    w.core._rules.pop("*", None)  # as a node of a cluster reads it: afresh
    refused = w.ask(b"m2", m.Hello(nick="mallory", token=welcome.token))
    assert refused.code == "forbidden" and "banned from this server" in refused.message


def test_a_stored_moderation_that_does_not_read_is_not_overwritten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = world()
    w.store.set_rules("r", b'{"bans": [broken')
    w.store.commit()
    with caplog.at_level("ERROR", logger="zchat.broker"):
        join_as(w, b"a", "alice")  # the room works, with no moderation
        join_as(w, b"b", "bob")
        w.hello(b"root", "root")
        assert ok(w.ask(b"root", m.Oper(password=PASSWORD)))
        refused = w.ask(b"root", m.Ban(room="r", nick="bob"))
        assert refused.code == "unavailable" and "does not read" in refused.message
    assert w.store.rules("r") == b'{"bans": [broken'
    assert [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()] == [
        "the stored moderation of r does not read; changes refused"
    ]


def test_a_refused_operator_leaves_no_empty_room_in_memory() -> None:
    w = world()
    join_as(w, b"a", "alice")
    w.ask(b"a", m.Part(room="r"))  # nobody is in r now
    w.hello(b"root", "root")
    assert ok(w.ask(b"root", m.Oper(password=PASSWORD)))
    assert w.ask(b"root", m.Unban(room="r", mask="nick:nobody")).code == "bad_request"
    assert w.ask(b"root", m.Kick(room="r", nick="alice")).code == "no_such_user"
    assert "r" not in w.core.rooms
    assert ok(w.ask(b"root", m.Ban(room="r", nick="mallory")))  # from outside, allowed
    assert "r" not in w.core.rooms
    # Refused when it saves (a stored value that does not read): no room kept.
    w.store.set_rules("r", b"{broken")
    w.store.commit()
    assert w.ask(b"root", m.Ban(room="r", nick="eve")).code == "unavailable"
    assert "r" not in w.core.rooms


def test_with_curve_a_mute_holds_for_the_key_under_any_nick() -> None:
    w = world()
    join_as(w, b"a", "alice", key="A" * 40)
    join_as(w, b"b", "bob", key="B" * 40)
    assert ok(ask_as(w, b"a", m.Mute(room="r", nick="bob"), "A" * 40))
    ask_as(w, b"b", m.Part(room="r"), "B" * 40)
    ask_as(w, b"b", m.Nick(nick="robert"), "B" * 40)
    assert isinstance(ask_as(w, b"b", m.Join(room="r"), "B" * 40), m.Joined)
    refused = ask_as(w, b"b", m.Say(room="r", text="a new nick, the same key"), "B" * 40)
    assert refused.code == "forbidden" and "muted" in refused.message
    # Others are not muted by it.
    join_as(w, b"c", "carol", key="C" * 40)
    assert ok(ask_as(w, b"c", m.Say(room="r", text="not me"), "C" * 40))


def test_a_change_to_a_long_moderation_costs_in_proportion_to_its_size() -> None:
    """Each change rewrites the room's moderation whole: past 16 KiB of it,
    a token more per 16 KiB, so an owner cannot make the store rewrite
    hundreds of KiB twenty times a second."""
    from broker._moderation import Entry, Rules, dump

    w = World(rate=20.0, burst=40, address_rate=0)
    bans = [
        Entry(mask=f"addr:10.0.{i // 250}.{i % 250}", by="x", at=0, reason="r" * 300)
        for i in range(200)
    ]
    body = dump(Rules(owner="alice", bans=bans))
    assert 4 * 16 * 1024 <= len(body) < 5 * 16 * 1024  # 4 tokens more
    w.store.set_rules("r", body)
    w.store.commit()
    join_as(w, b"a", "alice")
    made = 0
    while ok(w.ask(b"a", m.Ban(room="r", mask=f"addr:192.0.2.{made}"))):
        made += 1
    assert 5 <= made <= 7  # 2 + 4 tokens a ban from a bucket of 40 (it was 20 bans)
    assert w.ask(b"a", m.Ban(room="r", mask="addr:192.0.2.250")).code == "rate_limited"
