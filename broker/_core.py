"""The broker's state machine, with no sockets and no clock.

Theory of operation. The ZeroMQ shell receives a batch of frames, decodes
each into a request and calls :meth:`Core.handle` with the sender's routing
id and the time it read once for the batch. The core changes its state and
writes what must go out into an :class:`Outbox`: replies and pushes for
DEALERs, and room events. Each event is numbered (``seq``, per room, from
the store's last number on), encoded once, and added to the store's batch.
The shell then commits the store and only then publishes the events and
sends the replies, so nothing is seen before it is durable.

A session belongs to a routing id; its nick is unique, compared case-
insensitively. Sessions are kept in order of last activity, so expiring the
silent ones (:meth:`Core.expire`) looks only at the oldest.

Repeated ``say`` and ``pm`` requests (same nick, same ``id``, within ten
minutes) are answered with the first ``ack`` and change nothing (see
``_recent.py``). The map of recent ids is rebuilt from the store when the
broker starts, so a client resending after a crash never duplicates a
message.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from messages import (
    HISTORY_MAX,
    Ack,
    BufferedEncoder,
    Bye,
    ByeReply,
    Code,
    CommandInfo,
    Commands,
    CommandsReply,
    Error,
    Hello,
    History,
    HistoryReply,
    Join,
    Joined,
    JoinEvent,
    LeaveEvent,
    Limits,
    MsgEvent,
    Nick,
    NickEvent,
    NickReply,
    Notice,
    Offer,
    Offered,
    Part,
    Parted,
    Ping,
    Pm,
    PmPush,
    Pong,
    ProtocolError,
    Request,
    RoomInfo,
    Rooms,
    RoomsReply,
    Say,
    ServerInfo,
    Topic,
    TopicEvent,
    Welcome,
    Who,
    WhoReply,
    WhoUser,
    decode_event,
    decode_reply,
    encode,
    format_ts,
    nick_key,
    parse_ts,
    room_topic,
)

from ._recent import DEDUP_S, Recent, dedup_key
from ._store import Store

VERSION = "0.1.0"
HELD_MAX = 1000  # private messages kept for a session that cannot be reached


class BatchHandler(Protocol):
    """Handles one request of a batch (see :meth:`Core.batch`)."""

    def __call__(self, ident: bytes, req: Request, peer_key: str | None = None) -> None: ...


@dataclass(frozen=True)
class Config:
    """What the broker promises its clients; every field has a flag."""

    events: str = "tcp://127.0.0.1:5556"
    name: str = "zchat"
    heartbeat_ms: int = 5_000
    timeout_ms: int = 15_000
    rate: float = 20.0
    burst: int = 40
    max_text: int = 4_000
    max_msg_bytes: int = 65_536
    curve: bool = False
    dedup_max: int = 2_000_000
    retain_s: float = 0.0  # history kept this long; 0 keeps it all


class Session:
    __slots__ = (
        "dedup",
        "held",
        "ident",
        "key",
        "last_active",
        "last_seen",
        "nick",
        "offer",
        "peer_key",
        "refilled",
        "rooms",
        "token",
        "tokens",
    )

    def __init__(self, ident: bytes, nick: str, now: float, burst: int, peer_key: str | None):
        self.ident = ident
        self.rename(nick)
        self.token = secrets.token_urlsafe(18)
        self.rooms: dict[str, None] = {}  # an ordered set: join order
        self.last_seen = now
        self.last_active = now
        self.tokens = float(burst)
        self.refilled = now
        self.peer_key = peer_key
        self.offer: list[Any] = []
        # Private messages the ROUTER could not deliver (the connection was
        # gone or full), sent again when the session is next heard from.
        self.held: list[bytes] = []

    def rename(self, nick: str) -> None:
        self.nick = nick
        self.key = nick_key(nick)
        # A request id appended to this is the request's key in Core.recent.
        self.dedup = dedup_key(self.key, "")


class Room:
    __slots__ = ("members", "name", "pub_topic", "seq", "topic")

    def __init__(self, name: str, seq: int = 0, topic: str = "") -> None:
        self.name = name
        self.pub_topic = room_topic(name)
        self.seq = seq
        self.topic = topic
        self.members: dict[Session, None] = {}


@dataclass
class Outbox:
    """What one batch produced: sent by the shell after the store commits.

    Everything in it is encoded already: ``replies`` are ``(routing id,
    frame)`` for the ROUTER, ``events`` are ``(topic, frame)`` for the PUB.
    ``pushes`` are private messages for the ROUTER: one the ROUTER cannot
    deliver goes back to the core (:meth:`Core.hold`) rather than away.
    """

    replies: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)
    pushes: list[tuple[bytes, bytes]] = field(default_factory=list)

    def reply(self, ident: bytes, msg: msgspec.Struct) -> None:
        self.replies.append((ident, encode(msg)))

    def clear(self) -> None:
        self.replies.clear()
        self.events.clear()
        self.notices.clear()
        self.pushes.clear()


class Core:
    """Sessions, rooms, sequence numbers, rate limits, dedup and timeouts.

    Args:
        config: limits and timings, as announced in ``welcome``.
        store: the history store; the core adds events to it, the shell
            commits.
        epoch: this run's identity, new at every start.
    """

    def __init__(self, config: Config, store: Store, *, epoch: str | None = None) -> None:
        self.config = config
        self.store = store
        self.epoch = epoch or secrets.token_hex(6)
        self.sessions: OrderedDict[bytes, Session] = OrderedDict()
        self.nicks: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {
            name: Room(name, st.last_seq, st.topic) for name, st in store.rooms().items()
        }
        self.recent = Recent(config.dedup_max)
        self.nick_owners: dict[str, str] = store.nick_keys() if config.curve else {}
        self._next_gc = 0.0  # when to next drop expired pm ids from the store
        self._limited = config.rate > 0
        self._encode = BufferedEncoder().encode  # the broker's loop is one thread
        self._welcome_tail = dict(
            server=ServerInfo(
                name=config.name, version=VERSION, epoch=self.epoch, store=store.store_id
            ),
            events=config.events,
            heartbeat_ms=config.heartbeat_ms,
            timeout_ms=config.timeout_ms,
            limits=Limits(
                max_text=config.max_text,
                max_msg_bytes=config.max_msg_bytes,
                rate_per_s=config.rate,
                burst=config.burst,
            ),
        )

    # --------------------------------------------------------- start-up

    def load_recent(self, now: float) -> int:
        """Rebuild the dedup map from the store; returns how many ids."""
        since = now - DEDUP_S
        found: list[tuple[float, str, bytes]] = []
        for body in self.store.recent_events(since):
            ev = decode_event(body)
            if isinstance(ev, MsgEvent) and ev.id is not None:
                ack = Ack(id=ev.id, room=ev.room, seq=ev.seq, ts=ev.ts)
                found.append((_epoch_of(ev.ts), dedup_key(nick_key(ev.from_), ev.id), encode(ack)))
        for sender, req_id, frame in self.store.recent_pm_acks(since):
            reply = decode_reply(frame)
            assert isinstance(reply, Ack)
            found.append((_epoch_of(reply.ts), dedup_key(sender, req_id), frame))
        found.sort(key=lambda f: f[0])
        for at, key, frame in found:
            if at >= since and key not in self.recent:
                self.recent.add(key, frame, at)
        return len(self.recent)

    # --------------------------------------------------------- requests

    def handle(
        self,
        ident: bytes,
        req: Request,
        now: float,
        out: Outbox,
        *,
        peer_key: str | None = None,
    ) -> None:
        """Handle one decoded request from ``ident``, received at ``now``.

        ``peer_key`` is the CURVE public key the connection authenticated
        with, taken by the shell from the frame, never from the message.
        A batch of one: the shell uses :meth:`batch` for many.
        """
        self.batch(now, out)(ident, req, peer_key)

    def batch(self, now: float, out: Outbox) -> BatchHandler:
        """The handler of one batch of requests read at ``now``:
        ``handle(ident, req, peer_key=None)`` does what :meth:`handle` does,
        into ``out``.

        A busy broker's batches are mostly ``say``, and the handler takes
        them on a path of its own, with what a say needs (the maps, the
        store, the outbox, the batch's timestamp) bound once per batch
        instead of looked up per request: the broker's loop went from 5.64
        to 5.34 us a say. Everything else goes the general way.
        """
        sessions, rooms, acks = self.sessions, self.rooms, self.recent.acks
        encode = self._encode
        remember, store = self.recent.add, self.store.add
        events, replies = out.events.append, out.replies.append
        spend = self._spend if self._limited else None
        ts = format_ts(now)
        general = self._handle

        def handle(ident: bytes, req: Request, peer_key: str | None = None) -> None:
            s = sessions.get(ident)
            if type(req) is not Say or s is None or peer_key != s.peer_key:
                general(ident, req, now, out, peer_key)
                return
            s.last_seen = s.last_active = now
            sessions.move_to_end(ident)
            if s.held:
                self._release(s, out)
            rid = req.id
            if rid is not None:
                key = s.dedup + rid
                first = acks.get(key)
                if first is not None:  # a resend: the first ack, whatever the bucket says
                    replies((ident, first))
                    return
            name = req.room
            try:
                if spend is not None:
                    spend(s, now)
                if name not in s.rooms:
                    raise ProtocolError(Code.NOT_IN_ROOM, f"you are not in #{name}; join it first")
            except ProtocolError as err:
                replies((ident, encode(_error(err, rid))))
                return
            room = rooms[name]
            room.seq = seq = room.seq + 1
            body = encode(
                MsgEvent(
                    room=name,
                    seq=seq,
                    ts=ts,
                    from_=s.nick,
                    text=req.text,
                    action=True if req.action else None,
                    id=rid,
                )
            )
            store(name, seq, body, now)
            events((room.pub_topic, body))
            ack = encode(Ack(id=rid, room=name, seq=seq, ts=ts))
            if rid is not None:
                remember(key, ack, now)
            replies((ident, ack))

        return handle

    def _handle(
        self, ident: bytes, req: Request, now: float, out: Outbox, peer_key: str | None
    ) -> None:
        session = self.sessions.get(ident)
        if session is None:
            self._sessionless(ident, req, now, out, peer_key)
            return
        if peer_key != session.peer_key:
            # With CURVE, a session answers only to the key that made it: a
            # connection that took its routing id over with another key
            # (ROUTER_HANDOVER) gets nothing of it.
            out.reply(
                ident,
                _error(
                    ProtocolError(Code.UNAUTHORIZED, "this session belongs to another key"),
                    req.id,
                ),
            )
            return
        session.last_seen = now
        self.sessions.move_to_end(ident)
        if session.held:
            self._release(session, out)
        kind = type(req)
        try:
            if kind is not Ping:
                session.last_active = now
                if req.rate_limited and self._limited:
                    rid = req.id
                    # A resend is answered from memory, whatever the bucket says.
                    if rid is None or session.dedup + rid not in self.recent:
                        self._spend(session, now)
            _HANDLERS[kind](self, session, req, now, out)
        except ProtocolError as err:
            out.reply(ident, _error(err, req.id))

    def _sessionless(
        self, ident: bytes, req: Request, now: float, out: Outbox, peer_key: str | None
    ) -> None:
        try:
            if isinstance(req, Hello):
                self._hello(ident, req, now, out, peer_key)
            elif isinstance(req, Ping):
                out.reply(ident, Pong(id=req.id, epoch=self.epoch, ts=format_ts(now), seqs={}))
            else:
                raise ProtocolError(
                    Code.NO_SESSION, "say hello first: this connection has no session"
                )
        except ProtocolError as err:
            out.reply(ident, _error(err, req.id))

    def _spend(self, s: Session, now: float) -> None:
        rate, burst = self.config.rate, self.config.burst
        s.tokens = min(float(burst), s.tokens + (now - s.refilled) * rate)
        s.refilled = now
        if s.tokens < 1.0:
            retry_ms = max(1, math.ceil((1.0 - s.tokens) / rate * 1000))
            raise ProtocolError(
                Code.RATE_LIMITED,
                f"slow down: at most {rate:g} per second (burst {burst})",
                retry_ms=retry_ms,
            )
        s.tokens -= 1.0

    def _hello(
        self, ident: bytes, req: Hello, now: float, out: Outbox, peer_key: str | None
    ) -> None:
        key = nick_key(req.nick)
        if self.config.curve:
            owner = self.nick_owners.get(key)
            if owner is not None and owner != peer_key:
                raise ProtocolError(Code.UNAUTHORIZED, f"nick {req.nick!r} belongs to another key")
        holder = self.nicks.get(key)
        if holder is not None:
            if req.token is None or not hmac.compare_digest(
                req.token.encode(), holder.token.encode()
            ):
                raise ProtocolError(Code.NICK_TAKEN, f"nick {req.nick!r} is in use")
            # The owner of the token is back on a new connection: hand the
            # session over, rooms and all, with no leave or join.
            del self.sessions[holder.ident]
            old, holder.ident = holder.ident, ident
            holder.last_seen = holder.last_active = now
            self.sessions[ident] = holder
            session = holder
            # Private messages of this batch still addressed to the old
            # connection follow the session to the new one.
            if any(to == old for to, _ in out.pushes):
                out.pushes[:] = [(ident if to == old else to, p) for to, p in out.pushes]
            if holder.held:
                self._release(holder, out)
        else:
            session = Session(ident, req.nick, now, self.config.burst, peer_key)
            self.sessions[ident] = session
            self.nicks[key] = session
            if self.config.curve and peer_key is not None and key not in self.nick_owners:
                self.nick_owners[key] = peer_key
                self.store.set_nick_key(key, peer_key)
        out.reply(ident, self._welcome(session, req.id))

    def hold(self, ident: bytes, push: bytes) -> str | None:
        """Keep a private message the ROUTER could not deliver to ``ident``,
        for when its session is next heard from. Returns the nick it is held
        for, or None if no session has that routing id any more (the
        message is then lost with it)."""
        s = self.sessions.get(ident)
        if s is None:
            return None
        s.held.append(push)
        if len(s.held) > HELD_MAX:
            del s.held[0]  # a session away this long keeps the newest
        return s.nick

    def _release(self, s: Session, out: Outbox) -> None:
        out.pushes.extend((s.ident, push) for push in s.held)
        s.held.clear()

    def _welcome(self, s: Session, rid: str | None) -> Welcome:
        return Welcome(id=rid, nick=s.nick, token=s.token, **self._welcome_tail)

    def _again(self, s: Session, req: Hello, now: float, out: Outbox) -> None:
        if nick_key(req.nick) != s.key:
            raise ProtocolError(
                Code.BAD_REQUEST,
                f"this connection is already {s.nick!r}; use a nick request to change it",
            )
        out.reply(s.ident, self._welcome(s, req.id))

    def _event(self, room: Room, ev: msgspec.Struct, now: float, out: Outbox) -> None:
        """Store and publish ``ev``, numbered ``room.seq``: encoded once, the
        same bytes for both."""
        body = encode(ev)
        self.store.add(room.name, room.seq, body, now)
        out.events.append((room.pub_topic, body))

    def _next(self, room: Room) -> int:
        room.seq += 1
        return room.seq

    def _join(self, s: Session, req: Join, now: float, out: Outbox) -> None:
        room = self.rooms.get(req.room)
        if room is None:
            room = self.rooms[req.room] = Room(req.room)
        if req.room in s.rooms:
            seq = room.seq
        else:
            s.rooms[req.room] = None
            room.members[s] = None
            seq = self._next(room)
            self._event(
                room, JoinEvent(room=room.name, seq=seq, ts=format_ts(now), nick=s.nick), now, out
            )
        out.reply(
            s.ident,
            Joined(
                id=req.id,
                room=room.name,
                topic=room.topic,
                members=[m.nick for m in room.members],
                seq=seq,
            ),
        )

    def _leave(self, s: Session, room_name: str, reason: str, now: float, out: Outbox) -> None:
        room = self.rooms[room_name]
        del s.rooms[room_name]
        del room.members[s]
        seq = self._next(room)
        self._event(
            room,
            LeaveEvent(room=room.name, seq=seq, ts=format_ts(now), nick=s.nick, reason=reason),
            now,
            out,
        )

    def _part(self, s: Session, req: Part, now: float, out: Outbox) -> None:
        self._member(s, req.room)
        self._leave(s, req.room, "part", now, out)
        out.reply(s.ident, Parted(id=req.id, room=req.room))

    def _member(self, s: Session, room: str) -> Room:
        if room not in s.rooms:
            raise ProtocolError(Code.NOT_IN_ROOM, f"you are not in #{room}; join it first")
        return self.rooms[room]

    def _repeat(self, s: Session, rid: str | None, out: Outbox) -> bool:
        if rid is None:
            return False
        first = self.recent.acks.get(s.dedup + rid)
        if first is None:
            return False
        out.replies.append((s.ident, first))
        return True

    def _pm(self, s: Session, req: Pm, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        target = self.nicks.get(nick_key(req.to))
        if target is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"no user {req.to!r} is online")
        ts = format_ts(now)
        push = encode(PmPush(from_=s.nick, to=target.nick, text=req.text, ts=ts))
        out.pushes.append((target.ident, push))
        ack = encode(Ack(id=req.id, to=target.nick, ts=ts))
        if req.id is not None:
            self.recent.add(s.dedup + req.id, ack, now)
            self.store.add_pm_id(s.key, req.id, now, ack)
        out.replies.append((s.ident, ack))

    def _who(self, s: Session, req: Who, now: float, out: Outbox) -> None:
        if req.room is None:
            members: Any = self.nicks.values()
        else:
            room = self.rooms.get(req.room)
            members = room.members if room is not None else ()
        users = [WhoUser(nick=m.nick, idle_ms=int((now - m.last_active) * 1000)) for m in members]
        out.reply(s.ident, WhoReply(id=req.id, room=req.room, users=users))

    def _rooms(self, s: Session, req: Rooms, now: float, out: Outbox) -> None:
        rooms = [
            RoomInfo(name=r.name, topic=r.topic, members=[m.nick for m in r.members])
            for r in sorted(self.rooms.values(), key=lambda r: r.name)
            if r.members
        ]
        out.reply(s.ident, RoomsReply(id=req.id, rooms=rooms))

    def _history(self, s: Session, req: History, now: float, out: Outbox) -> None:
        limit = min(req.effective_limit, HISTORY_MAX)
        bodies, more = self.store.history(req.room, after=req.after, before=req.before, limit=limit)
        out.reply(
            s.ident,
            HistoryReply(
                id=req.id,
                room=req.room,
                events=[msgspec.Raw(b) for b in bodies],
                more=more,
                first=self.store.first_seq(req.room),
            ),
        )

    def _nick(self, s: Session, req: Nick, now: float, out: Outbox) -> None:
        new_key = nick_key(req.nick)
        holder = self.nicks.get(new_key)
        if holder is not None and holder is not s:
            raise ProtocolError(Code.NICK_TAKEN, f"nick {req.nick!r} is in use")
        if self.config.curve:
            owner = self.nick_owners.get(new_key)
            if owner is not None and owner != s.peer_key:
                raise ProtocolError(Code.UNAUTHORIZED, f"nick {req.nick!r} belongs to another key")
        old = s.nick
        if req.nick != old:
            del self.nicks[s.key]
            s.rename(req.nick)
            self.nicks[new_key] = s
            if self.config.curve and s.peer_key is not None and new_key not in self.nick_owners:
                self.nick_owners[new_key] = s.peer_key
                self.store.set_nick_key(new_key, s.peer_key)
            ts = format_ts(now)
            for name in s.rooms:
                room = self.rooms[name]
                self._event(
                    room,
                    NickEvent(room=name, seq=self._next(room), ts=ts, old=old, new=req.nick),
                    now,
                    out,
                )
        out.reply(s.ident, NickReply(id=req.id, old=old, new=req.nick))

    def _topic(self, s: Session, req: Topic, now: float, out: Outbox) -> None:
        room = self._member(s, req.room)
        room.topic = req.topic
        self.store.set_topic(room.name, req.topic)
        seq = self._next(room)
        ts = format_ts(now)
        self._event(
            room, TopicEvent(room=room.name, seq=seq, ts=ts, nick=s.nick, topic=req.topic), now, out
        )
        out.reply(s.ident, Ack(id=req.id, room=room.name, seq=seq, ts=ts))

    def _ping(self, s: Session, req: Ping, now: float, out: Outbox) -> None:
        seqs = {name: self.rooms[name].seq for name in s.rooms}
        out.reply(s.ident, Pong(id=req.id, epoch=self.epoch, ts=format_ts(now), seqs=seqs))

    def _offer(self, s: Session, req: Offer, now: float, out: Outbox) -> None:
        names = [c.name for c in req.commands]
        if len(set(names)) != len(names):
            raise ProtocolError(Code.BAD_REQUEST, "each command may be offered once")
        s.offer = list(req.commands)
        out.reply(s.ident, Offered(id=req.id, count=len(s.offer)))

    def _commands(self, s: Session, req: Commands, now: float, out: Outbox) -> None:
        if req.room is None:
            members: Any = self.nicks.values()
        else:
            room = self.rooms.get(req.room)
            members = room.members if room is not None else ()
        found = [
            CommandInfo(nick=m.nick, name=c.name, usage=c.usage, help=c.help)
            for m in members
            for c in m.offer
        ]
        found.sort(key=lambda c: (c.name, nick_key(c.nick)))
        out.reply(s.ident, CommandsReply(id=req.id, room=req.room, commands=found))

    def _bye(self, s: Session, req: Bye, now: float, out: Outbox) -> None:
        out.reply(s.ident, ByeReply(id=req.id))
        self._end(s, "quit", now, out)

    def _end(self, s: Session, reason: str, now: float, out: Outbox) -> None:
        for name in list(s.rooms):
            self._leave(s, name, reason, now, out)
        del self.sessions[s.ident]
        del self.nicks[s.key]

    # ------------------------------------------------------------- time

    def expire(self, now: float, out: Outbox) -> int:
        """End the sessions silent for ``timeout_ms``; returns how many."""
        deadline = now - self.config.timeout_ms / 1000
        n = 0
        while self.sessions:
            s = next(iter(self.sessions.values()))
            if s.last_seen > deadline:
                break
            out.reply(s.ident, Notice(text="you were disconnected for inactivity"))
            self._end(s, "timeout", now, out)
            n += 1
        self.recent.expire(now)
        if now >= self._next_gc:
            self._next_gc = now + 60.0
            self.store.forget_pm_ids(now - DEDUP_S)
            if self.config.retain_s > 0 and self.store.trim(now - self.config.retain_s) > 0:
                # More may be due: come back in a second, a slice at a time,
                # rather than stall the loop on a big backlog.
                self._next_gc = now + 1.0
        return n

    def notice(self, text: str, out: Outbox) -> None:
        """A server-wide notice, published on the ``*`` topic."""
        out.notices.append(encode(Notice(text=text)))

    def next_expiry(self) -> float | None:
        """When the oldest session will time out, if nothing is heard."""
        if not self.sessions:
            return None
        return next(iter(self.sessions.values())).last_seen + self.config.timeout_ms / 1000


def _error(err: ProtocolError, rid: str | None) -> Error:
    return Error(
        id=err.id if err.id is not None else rid,
        code=err.code.value,
        message=err.message,
        retry_ms=err.retry_ms,
    )


def error_reply(err: ProtocolError, rid: str | None = None) -> Error:
    """The ``error`` reply for a request the core did not handle."""
    return _error(err, rid)


def _epoch_of(ts: str) -> float:
    return parse_ts(ts).timestamp()


_HANDLERS: dict[type, Any] = {
    Hello: Core._again,
    Join: Core._join,
    Part: Core._part,
    Pm: Core._pm,
    Who: Core._who,
    Rooms: Core._rooms,
    History: Core._history,
    Nick: Core._nick,
    Topic: Core._topic,
    Ping: Core._ping,
    Bye: Core._bye,
    Offer: Core._offer,
    Commands: Core._commands,
}
