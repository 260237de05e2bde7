"""The broker's state machine, with no sockets and no clock.

Theory of operation. The ZeroMQ shell receives a batch of frames, decodes
each into a request and calls the handler of :meth:`Core.batch` with the
sender's routing id and the time it read once for the batch. The core
changes its state and writes what must go out into an :class:`Outbox`:
replies and pushes for DEALERs, and room events. Each event is numbered
(``seq``, per room, from the store's last number on), encoded once, and
added to the store's batch. The shell then commits the store and only then
publishes the events and sends the replies, so nothing is seen before it is
durable. When the store cannot take writes (its disk is full), the shell
sets :attr:`Core.read_only` and every request that would write is refused
with ``unavailable`` before it changes anything.

A session belongs to a routing id; its nick is unique, compared case-
insensitively and by look (:func:`messages.nick_skeleton`). Sessions are kept
in order of last activity, so expiring the silent ones (:meth:`Core.expire`)
looks only at the oldest.

Everything a client can make the broker hold is bounded (see ``_config.py``):
requests that make events or work cost a token from the session's bucket and
from the bucket its client address shares with its other sessions; a new
session starts with what the last one from its address left, so quitting
and coming back refills nothing; an address has a bucket for new sessions
and a number of sessions; a session has a number of rooms, the broker a
number of rooms with people in them (an empty room is forgotten from memory;
its history and topic stay in the store), private messages held for absent
recipients are bounded in bytes, and long replies come in pages.

Repeated ``say`` and ``pm`` requests (same nick, same ``id``, within ten
minutes) are answered with the first ``ack`` and change nothing (see
``_recent.py``). The map of recent ids is rebuilt from the store when the
broker starts, so a client resending after a crash never duplicates a
message.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import msgspec

from messages import (
    HISTORY_MAX,
    MODE_FLAGS,
    SERVER_ROOM,
    Ack,
    Ban,
    BanInfo,
    Bans,
    BansReply,
    BufferedEncoder,
    Bye,
    ByeReply,
    Code,
    CommandInfo,
    Commands,
    CommandsReply,
    Deop,
    Devoice,
    Error,
    Hello,
    History,
    HistoryReply,
    Invite,
    Join,
    Joined,
    JoinEvent,
    Kick,
    Kill,
    LeaveEvent,
    Limits,
    Mode,
    ModeEvent,
    MsgEvent,
    Mute,
    MuteInfo,
    Nick,
    NickEvent,
    NickReply,
    Notice,
    Offer,
    Offered,
    Op,
    Oper,
    Part,
    Parted,
    Ping,
    Pm,
    PmPush,
    Pong,
    ProtocolError,
    Release,
    Request,
    RoomInfo,
    Rooms,
    RoomsReply,
    Say,
    Search,
    SearchReply,
    ServerInfo,
    Topic,
    TopicEvent,
    Unban,
    Uninvite,
    Unmute,
    Voice,
    Wall,
    Welcome,
    Who,
    WhoReply,
    WhoUser,
    check_mask,
    decode_event,
    decode_reply,
    encode,
    format_ts,
    nick_key,
    nick_skeleton,
    parse_ts,
    room_topic,
)

from ._backend import Backend, Directory, SessionRecord, StoreError
from ._claims import Claims
from ._config import KIB, MIB, Config
from ._moderation import Entry, Identity, Rules, listed, may
from ._moderation import dump as dump_rules
from ._moderation import load as load_rules
from ._recent import DEDUP_S, ENTRY_MAX_BYTES, Recent, dedup_key

log = logging.getLogger("zchat.broker")
VERSION = "0.1.0"
# Room members listed in a ``rooms`` reply, per room; ``member_count`` has all.
ROOMS_MEMBERS_MAX = 50
# Room of a reply's page left for its envelope (type, id, room, more...).
ENVELOPE_BYTES = 512
# A moderation change costs a token more for each so many bytes of the
# room's moderation, which it rewrites whole.
RULES_TOKEN_BYTES = 16 * 1024
# How soon to ask again when another node changed a room's moderation first.
RULES_RETRY_MS = 20
# Wrong operator passwords are logged at most once in this many seconds.
OPER_LOG_EVERY_S = 10.0
# How soon a writer refused for a full store should try again.
UNAVAILABLE_RETRY_MS = 1_000
T = TypeVar("T")


class BatchHandler(Protocol):
    """Handles one request of a batch (see :meth:`Core.batch`)."""

    def __call__(
        self, ident: bytes, req: Request, peer_key: str | None = None, addr: str | None = None
    ) -> None: ...


class Address:
    """What the sessions of one client address share: a token bucket for
    what they do, one for opening sessions, and a count of sessions. The
    level a session's own bucket had when it ended is carried over to the
    next session from the address, so a new session refills nothing."""

    __slots__ = (
        "carry",
        "carry_at",
        "hello_at",
        "hellos",
        "name",
        "refilled",
        "sessions",
        "tokens",
    )

    def __init__(self, name: str, now: float, burst: int, hello_burst: int) -> None:
        self.name = name
        self.sessions = 0
        self.tokens = float(burst)
        self.refilled = now
        self.hellos = float(hello_burst)
        self.hello_at = now
        self.carry: float | None = None  # tokens the last ended session had left
        self.carry_at = now


class Session:
    __slots__ = (
        "addr",
        "dedup",
        "held",
        "held_bytes",
        "ident",
        "key",
        "last_active",
        "last_seen",
        "nick",
        "offer",
        "oper",
        "peer_key",
        "quiet",
        "refilled",
        "rooms",
        "skeleton",
        "token",
        "tokens",
    )

    def __init__(
        self,
        ident: bytes,
        nick: str,
        now: float,
        tokens: float,
        peer_key: str | None,
        addr: Address,
        quiet: bool = False,
    ) -> None:
        self.ident = ident
        # A script or a reader: its presence (join, leave, nick) is not published.
        self.quiet = quiet
        self.rename(nick)
        self.token = secrets.token_urlsafe(18)
        self.rooms: dict[str, None] = {}  # an ordered set: join order
        self.last_seen = now
        self.last_active = now
        self.tokens = tokens
        self.refilled = now
        self.peer_key = peer_key
        self.addr = addr
        self.offer: list[Any] = []
        # Private messages the ROUTER could not deliver (the connection was
        # gone or full), sent again when the session is next heard from.
        self.held: list[bytes] = []
        self.held_bytes = 0
        # A server operator: by its key (--operators) or the password (oper).
        self.oper = False

    def identity(self) -> Identity:
        return Identity(self.nick, self.peer_key, self.addr.name)

    def rename(self, nick: str) -> None:
        self.nick = nick
        self.key = nick_key(nick)
        self.skeleton = nick_skeleton(nick)
        # A request id appended to this is the request's key in Core.recent.
        self.dedup = dedup_key(self.key, "")


class Room:
    __slots__ = ("members", "name", "pub_topic", "published", "seq", "topic")

    def __init__(self, name: str, seq: int = 0, topic: str = "") -> None:
        self.name = name
        self.pub_topic = room_topic(name)
        self.seq = seq
        # In a cluster: the last seq this node republished (see _cluster.py).
        self.published = seq
        self.topic = topic
        self.members: dict[Session, None] = {}


@dataclass
class Outbox:
    """What one batch produced: sent by the shell after the store commits.

    Everything in it is encoded already: ``replies`` are ``(routing id,
    frame)`` for the ROUTER, ``events`` are ``(topic, frame)`` for the PUB.
    ``pushes`` are private messages for the ROUTER: one the ROUTER cannot
    deliver goes back to the core (:meth:`Core.hold`) rather than away.
    ``bulk`` counts, per routing id, the bytes of replies other than acks
    (small: the ROUTER's high-water mark, in replies, bounds those): the
    shell holds them, and the pushes it delivers, against the peer's send
    queue.
    ``free`` are replies that do not depend on the batch's writes (pongs,
    errors, lists of who is where): when the store cannot commit the batch,
    they go out all the same, and the rest waits.
    """

    replies: list[tuple[bytes, bytes]] = field(default_factory=list)
    free: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)
    pushes: list[tuple[bytes, bytes]] = field(default_factory=list)
    bulk: dict[bytes, int] = field(default_factory=dict)

    def reply(self, ident: bytes, msg: msgspec.Struct) -> None:
        frame = encode(msg)
        (self.free if type(msg) in _FREE else self.replies).append((ident, frame))
        self.bulk[ident] = self.bulk.get(ident, 0) + len(frame)

    def clear(self) -> None:
        self.free.clear()
        self.replies.clear()
        self.events.clear()
        self.notices.clear()
        self.pushes.clear()
        self.bulk.clear()

    def __bool__(self) -> bool:
        return bool(self.replies or self.free or self.events or self.notices or self.pushes)


class Core:
    """Sessions, rooms, sequence numbers, limits, dedup and timeouts.

    Args:
        config: limits and timings, as announced in ``welcome``.
        store: the history store; the core adds events to it, the shell
            commits.
        epoch: this run's identity, new at every start.
    """

    def __init__(
        self,
        config: Config,
        store: Backend,
        *,
        epoch: str | None = None,
        directory: Directory | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # In a cluster, who is where on the other nodes; None on a single broker.
        self.directory = directory
        self.epoch = epoch or secrets.token_hex(6)
        self.sessions: OrderedDict[bytes, Session] = OrderedDict()
        self.nicks: dict[str, Session] = {}
        self.skeletons: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}  # the rooms with people in them
        self.addresses: dict[str, Address] = {}
        self._idle_addresses: set[str] = set()
        self._next_forget = 0.0
        self.recent = Recent(min(config.dedup_max, config.dedup_mb * MIB // ENTRY_MAX_BYTES))
        self.claims: Claims | None = None
        if config.curve:
            self.claims = Claims(
                store,
                per_key=config.nicks_per_key,
                lapse_days=config.nick_claim_days,
                bounded=config.allow_keys is None,
                max_claims=config.max_claims,
                shared=directory is not None,
            )
        self.read_only = False  # set by the shell while the store takes no writes
        # Says take the batch's own path (see batch); off, they go the way
        # of every request (the tests compare the two).
        self.fast_say = True
        # Sessions taken over since the shell last looked: old routing id ->
        # new, for the private messages it holds back (cleared by it).
        self.moved: dict[bytes, bytes] = {}
        self.held_total = 0
        # Server operators: their keys and password, set by the shell from
        # --operators and --oper-password-file (and again on SIGHUP).
        self.operator_keys: frozenset[str] = frozenset()
        self.oper_password: str | None = None
        self._oper_failures = 0  # wrong passwords not yet logged
        self._oper_logged = -math.inf
        # The moderation of the rooms in memory, and of the server ("*"),
        # as in the store; rooms where a say must be checked against it.
        self._rules: dict[str, Rules] = {}
        # The stored value each was read from (a cluster's nodes change a
        # room's moderation only if it is still that: see _save_rules).
        self._rules_read: dict[str, bytes | None] = {}
        self._unreadable: set[str] = set()  # (bounded: one per room stored)
        self._guarded: set[str] = set()
        self._held_max = config.held_pm_kb * KIB
        self._held_total_max = config.held_pm_mb * MIB
        self._page = max(1024, config.max_reply_bytes - ENVELOPE_BYTES)
        self._limited = config.limited
        self._encode = BufferedEncoder().encode  # the broker's loop is one thread
        # What every welcome says; each gets its own id, nick and token.
        self._welcome_tail = Welcome(
            nick="",
            token="",
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
            if isinstance(reply, Ack):
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
        addr: str | None = None,
    ) -> None:
        """Handle one decoded request from ``ident``, received at ``now``.

        ``peer_key`` is the CURVE public key the connection authenticated
        with, and ``addr`` the client's network address, both taken by the
        shell from the frame, never from the message. A batch of one: the
        shell uses :meth:`batch` for many.
        """
        self.batch(now, out)(ident, req, peer_key, addr)

    def batch(self, now: float, out: Outbox) -> BatchHandler:
        """The handler of one batch of requests read at ``now``:
        ``handle(ident, req, peer_key=None, addr=None)`` does what
        :meth:`handle` does, into ``out``.

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
        limited = self._limited
        c = self.config
        rate, burst, arate, aburst = c.rate, float(c.burst), c.address_rate, float(c.address_burst)
        ts = format_ts(now)
        general = self._handle
        read_only = self.read_only or not self.fast_say
        # Rooms with mutes or moderated: their says are checked the general way.
        guarded = self._guarded

        def handle(
            ident: bytes, req: Request, peer_key: str | None = None, addr: str | None = None
        ) -> None:
            s = sessions.get(ident)
            if (
                type(req) is not Say
                or s is None
                or peer_key != s.peer_key
                or read_only
                or req.room in guarded
            ):
                general(ident, req, now, out, peer_key, addr)
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
                if limited:
                    # _spend, written out: the two buckets of every say.
                    tokens = s.tokens + (now - s.refilled) * rate
                    if tokens > burst:
                        tokens = burst
                    a = s.addr
                    atokens = a.tokens + (now - a.refilled) * arate
                    if atokens > aburst:
                        atokens = aburst
                    if tokens < 1.0 or (arate and atokens < 1.0):
                        self._spend(s, now)  # raises, saying which bucket is empty
                    s.tokens, s.refilled = tokens - 1.0, now
                    a.tokens, a.refilled = atokens - 1.0, now
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
        self,
        ident: bytes,
        req: Request,
        now: float,
        out: Outbox,
        peer_key: str | None,
        addr: str | None,
    ) -> None:
        session = self.sessions.get(ident)
        if session is None:
            self._sessionless(ident, req, now, out, peer_key, addr)
            return
        if peer_key != session.peer_key:
            # With CURVE, a session answers only to the key that made it: a
            # connection that took its routing id over with another key
            # gets nothing of it.
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
                # store.failed: a write failed earlier in this batch, so the
                # store's answers (a forgotten room's last seq) miss what the
                # batch made; go on from them and seqs would be reused.
                if (self.read_only or self.store.failed) and kind in _WRITES:
                    raise ProtocolError(
                        Code.UNAVAILABLE,
                        "the broker's store is full: nothing can be written until it has "
                        "room again (reading works)",
                        retry_ms=UNAVAILABLE_RETRY_MS,
                    )
                cost = _COST[kind]
                if cost and self._limited:
                    rid = req.id
                    # A resend is answered from memory, whatever the bucket says.
                    if rid is None or session.dedup + rid not in self.recent:
                        self._spend(session, now, cost)
            _HANDLERS[kind](self, session, req, now, out)
        except ProtocolError as err:
            out.reply(ident, _error(err, req.id))
            # A refusal leaves no room in memory that nobody here is in (a
            # server operator's, refused after the room was read).
            room = self.rooms.get(getattr(req, "room", None) or "")
            if room is not None and not room.members:
                self._unload(room.name)

    def _sessionless(
        self,
        ident: bytes,
        req: Request,
        now: float,
        out: Outbox,
        peer_key: str | None,
        addr: str | None,
    ) -> None:
        try:
            if isinstance(req, Hello):
                self._hello(ident, req, now, out, peer_key, addr or "")
            elif isinstance(req, Ping):
                out.reply(ident, Pong(id=req.id, epoch=self.epoch, ts=format_ts(now), seqs={}))
            else:
                raise ProtocolError(
                    Code.NO_SESSION, "say hello first: this connection has no session"
                )
        except ProtocolError as err:
            out.reply(ident, _error(err, req.id))

    # ------------------------------------------------------------ limits

    def _spend(self, s: Session, now: float, n: int = 1) -> None:
        """Take ``n`` tokens from the session's bucket and its address's."""
        c = self.config
        rate, burst = c.rate, c.burst
        tokens = min(float(burst), s.tokens + (now - s.refilled) * rate)
        a = s.addr
        arate = c.address_rate
        atokens = min(float(c.address_burst), a.tokens + (now - a.refilled) * arate)
        if tokens < n:
            retry_ms = max(1, math.ceil((n - tokens) / rate * 1000))
            raise ProtocolError(
                Code.RATE_LIMITED,
                f"slow down: at most {rate:g} per second (burst {burst})",
                retry_ms=retry_ms,
            )
        if arate > 0 and atokens < n:
            retry_ms = max(1, math.ceil((n - atokens) / arate * 1000))
            raise ProtocolError(
                Code.RATE_LIMITED,
                f"slow down: at most {arate:g} per second from your address, all its "
                f"sessions together (burst {c.address_burst})",
                retry_ms=retry_ms,
            )
        s.tokens, s.refilled = tokens - n, now
        a.tokens, a.refilled = atokens - n, now

    def _address(self, name: str, now: float) -> Address:
        a = self.addresses.get(name)
        if a is None:
            c = self.config
            a = self.addresses[name] = Address(name, now, c.address_burst, c.hello_burst)
            self._idle_addresses.add(name)
        return a

    def _admit(self, a: Address, now: float) -> float:
        """Let a new session in from ``a``, or say why not; returns the
        tokens its bucket starts with."""
        c = self.config
        if len(self.sessions) >= c.max_sessions:
            raise ProtocolError(
                Code.LIMIT_REACHED,
                f"the broker has {len(self.sessions)} sessions, its most; try again later",
            )
        if a.sessions >= c.sessions_per_address:
            raise ProtocolError(
                Code.LIMIT_REACHED,
                f"{a.sessions} sessions from your address already; the most is "
                f"{c.sessions_per_address}",
            )
        if not self._limited:
            return float(c.burst)
        if c.hello_rate > 0:
            hellos = min(float(c.hello_burst), a.hellos + (now - a.hello_at) * c.hello_rate)
            if hellos < 1.0:
                raise ProtocolError(
                    Code.RATE_LIMITED,
                    f"too many new sessions from your address: at most {c.hello_rate:g} "
                    f"per second (burst {c.hello_burst})",
                    retry_ms=max(1, math.ceil((1.0 - hellos) / c.hello_rate * 1000)),
                )
            a.hellos, a.hello_at = hellos - 1.0, now
        if a.carry is None:
            return float(c.burst)
        return min(float(c.burst), a.carry + (now - a.carry_at) * c.rate)

    def _check_nick_free(
        self, s: Session | None, nick: str, peer_key: str | None, now: float
    ) -> None:
        key = nick_key(nick)
        holder = self.nicks.get(key)
        if holder is not None and holder is not s:
            raise ProtocolError(Code.NICK_TAKEN, f"nick {nick!r} is in use")
        alike = self.skeletons.get(nick_skeleton(nick))
        if alike is not None and alike is not s and alike is not holder:
            raise ProtocolError(
                Code.NICK_TAKEN, f"nick {nick!r} is too much like {alike.nick!r}, who is here"
            )
        if self.claims is not None and not self.claims.check(key, peer_key, now):
            raise ProtocolError(Code.UNAUTHORIZED, f"nick {nick!r} belongs to another key")

    # ------------------------------------------------------------ sessions

    def _hello(
        self,
        ident: bytes,
        req: Hello,
        now: float,
        out: Outbox,
        peer_key: str | None,
        addr: str,
    ) -> None:
        key = nick_key(req.nick)
        holder = self.nicks.get(key)
        if holder is not None:
            # In memory only (check reads the store, for a release): the nick
            # is in use, so a release would change nothing, and this hello
            # costs no token.
            if self.claims is not None and self.claims.owner(key, now) not in (None, peer_key):
                raise ProtocolError(Code.UNAUTHORIZED, f"nick {req.nick!r} belongs to another key")
            if req.token is None or not hmac.compare_digest(
                req.token.encode(), holder.token.encode()
            ):
                raise ProtocolError(Code.NICK_TAKEN, f"nick {req.nick!r} is in use")
            if holder.peer_key != peer_key:
                raise ProtocolError(Code.UNAUTHORIZED, "this session belongs to another key")
            banned = self._server_rules().banned(Identity(req.nick, peer_key, addr), now)
            if banned is not None and not holder.oper:
                # (A ban made on another node of a cluster: this one's
                # session is taken back by its token, not let go on.)
                raise ProtocolError(
                    Code.FORBIDDEN, "you are banned from this server" + _why(banned)
                )
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
            # And so must those that wait on the store (the server's).
            self.moved[old] = ident
            if holder.held:
                self._release(holder, out)
            if self.claims is not None:
                self.claims.use(key, peer_key, now)  # a session kept for months keeps its claim
        else:
            # Admitted first: refusing a nick may read the store (a claim
            # released meanwhile), so each try costs a hello.
            a = self._address(addr, now)
            tokens = self._admit(a, now)
            self._check_nick_free(None, req.nick, peer_key, now)
            banned = self._server_rules().banned(Identity(req.nick, peer_key, a.name), now)
            if banned is not None:
                raise ProtocolError(
                    Code.FORBIDDEN, "you are banned from this server" + _why(banned)
                )
            session = Session(ident, req.nick, now, tokens, peer_key, a, bool(req.quiet))
            rooms: list[str] = []
            d = self.directory
            if d is not None and not d.create(
                key, req.nick, session.token, peer_key, session.quiet, now, a.name
            ):
                # In use on another node: the owner of its token moves here.
                taken = None if req.token is None else d.take(key, req.token, peer_key, now, a.name)
                if taken is None:
                    raise ProtocolError(Code.NICK_TAKEN, f"nick {req.nick!r} is in use")
                session = Session(ident, taken.nick, now, tokens, peer_key, a, taken.quiet)
                session.token = req.token or session.token
                rooms = taken.rooms
                # What was sent to it while its node was gone.
                out.pushes.extend((ident, f) for f in d.take_held(key))
            a.sessions += 1
            self._idle_addresses.discard(a.name)
            self.sessions[ident] = session
            self.nicks[key] = session
            self.skeletons[session.skeleton] = session
            if self.claims is not None:
                self.claims.use(key, peer_key, now)
            for name in rooms:
                try:
                    room = self._room(name)
                except ProtocolError:
                    continue  # this node is full of rooms: the client will see it lost one
                session.rooms[name] = None
                room.members[session] = None
        # (A session taken back by its token stays an operator by password.)
        session.oper = session.oper or (peer_key is not None and peer_key in self.operator_keys)
        if session.oper and self.directory is not None:
            self.directory.set_oper(session.key)
        out.reply(ident, self._welcome(session, req.id))

    def hold(self, ident: bytes, push: bytes) -> str | None:
        """Keep a private message the ROUTER could not deliver to ``ident``,
        for when its session is next heard from. Returns the nick it is held
        for, or None if no session has that routing id any more (the
        message is then lost with it).

        The bounds are checked before a ``pm`` is accepted (:meth:`_pm`), so
        what was acknowledged is always held; a batch may go past them by
        what it carried."""
        s = self.sessions.get(ident)
        if s is None:
            return None
        s.held.append(push)
        s.held_bytes += len(push)
        self.held_total += len(push)
        return s.nick

    def _release(self, s: Session, out: Outbox) -> None:
        out.pushes.extend((s.ident, push) for push in s.held)
        s.held.clear()
        self.held_total -= s.held_bytes
        s.held_bytes = 0

    def _welcome(self, s: Session, rid: str | None) -> Welcome:
        w = msgspec.structs.replace(self._welcome_tail, id=rid, nick=s.nick, token=s.token)
        if self.directory is not None and self.directory.nodes:
            w = msgspec.structs.replace(
                w, server=msgspec.structs.replace(w.server, nodes=list(self.directory.nodes))
            )
        return w

    def _again(self, s: Session, req: Hello, now: float, out: Outbox) -> None:
        if nick_key(req.nick) != s.key:
            raise ProtocolError(
                Code.BAD_REQUEST,
                f"this connection is already {s.nick!r}; use a nick request to change it",
            )
        out.reply(s.ident, self._welcome(s, req.id))

    # --------------------------------------------------------------- rooms

    def _event(self, room: Room, ev: msgspec.Struct, now: float, out: Outbox) -> None:
        """Store and publish ``ev``, numbered ``room.seq``: encoded once, the
        same bytes for both."""
        body = encode(ev)
        self.store.add(room.name, room.seq, body, now)
        out.events.append((room.pub_topic, body))

    def _next(self, room: Room) -> int:
        room.seq += 1
        return room.seq

    def _room(self, name: str) -> Room:
        """The room, brought back from the store if nobody is in it."""
        room = self.rooms.get(name)
        if room is not None:
            return room
        if len(self.rooms) >= self.config.max_rooms:
            raise ProtocolError(
                Code.LIMIT_REACHED,
                f"the broker has {len(self.rooms)} rooms with people in them, its most; "
                "join one of them",
            )
        state = self.store.room_state(name)
        room = Room(name) if state is None else Room(name, state.last_seq, state.topic)
        self.rooms[name] = room
        # Read with the room, whatever brings it in (a join, a session taken
        # over from another node): a say takes the fast path only in rooms
        # known to have no mute and no moderation.
        self._rules_of(name)
        return room

    def _join(self, s: Session, req: Join, now: float, out: Outbox) -> None:
        already = req.room in s.rooms
        # In a cluster, asked first: a store that fails here changes nothing
        # (the join, refused as unavailable, is made again in full).
        elsewhere = None if self.directory is None else self.directory.members(req.room)
        if already:
            room = self.rooms[req.room]
            seq = room.seq
        else:
            limit = self.config.rooms_per_session
            if len(s.rooms) >= limit:
                raise ProtocolError(
                    Code.LIMIT_REACHED,
                    f"you are in {len(s.rooms)} rooms, the most one session may be in",
                )
            self._may_enter(s, req.room, now)
            room = self._room(req.room)
            rules = self._rules_of(room.name)
            if (
                room.seq == 0
                and rules.owner is None
                and not rules.roles
                and not s.quiet
                and room.name not in self._unreadable
            ):
                rules.owner = s.key  # the first to come into a new room
                self._save_rules(room.name, rules, now)
            s.rooms[req.room] = None
            room.members[s] = None
            if self.directory is not None:
                self.directory.joined(room.name, s.key, s.nick, s.quiet)
            if s.quiet:
                seq = room.seq  # no event: the last one is where it comes in
            else:
                seq = self._next(room)
                self._event(
                    room,
                    JoinEvent(room=room.name, seq=seq, ts=format_ts(now), nick=s.nick),
                    now,
                    out,
                )
        if elsewhere is None:
            present = [m.nick for m in room.members if not m.quiet]
        else:
            present = [nick for nick, quiet in elsewhere if not quiet]
            if not s.quiet and s.nick not in present:
                present.append(s.nick)  # (its own entry is written with the batch)
        members = _fit(present, self._page - len(room.topic.encode()) * 2)
        out.reply(
            s.ident,
            Joined(
                id=req.id,
                room=room.name,
                topic=room.topic,
                members=members,
                seq=seq,
                member_count=len(present) if len(members) < len(present) else None,
                already=True if already else None,
                modes=self._rules_of(room.name).modes or None,
                roles=self._roles_shown(room.name),
            ),
        )

    def _leave(
        self,
        s: Session,
        room_name: str,
        reason: str,
        now: float,
        out: Outbox,
        text: str | None = None,
        by: str | None = None,
    ) -> None:
        room = self.rooms[room_name]
        del s.rooms[room_name]
        del room.members[s]
        if self.directory is not None:
            self.directory.left(room_name, s.key)
        if not s.quiet:
            self._event(
                room,
                LeaveEvent(
                    room=room.name,
                    seq=self._next(room),
                    ts=format_ts(now),
                    nick=s.nick,
                    reason=reason,
                    text=text,
                    by=by,
                ),
                now,
                out,
            )
        if not room.members:
            # Its numbering and topic are in the store, for when someone comes back.
            self._unload(room_name)

    def _part(self, s: Session, req: Part, now: float, out: Outbox) -> None:
        self._member(s, req.room)
        self._leave(s, req.room, "part", now, out, req.reason)
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

    def _say(self, s: Session, req: Say, now: float, out: Outbox) -> None:
        # The way a say goes when the batch's own path (see batch) passes
        # it on; the two must answer alike.
        if self._repeat(s, req.id, out):
            return
        room = self._member(s, req.room)
        if room.name in self._guarded:
            self._may_speak(s, room.name, now)
        seq = self._next(room)
        ts = format_ts(now)
        self._event(
            room,
            MsgEvent(
                room=room.name,
                seq=seq,
                ts=ts,
                from_=s.nick,
                text=req.text,
                action=True if req.action else None,
                id=req.id,
            ),
            now,
            out,
        )
        ack = encode(Ack(id=req.id, room=room.name, seq=seq, ts=ts))
        if req.id is not None:
            self.recent.add(s.dedup + req.id, ack, now)
        out.replies.append((s.ident, ack))

    def _pm(self, s: Session, req: Pm, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        if self.directory is not None and req.id is not None:
            # Sent first to a node that died before answering, perhaps.
            first = self.store.pm_ack(s.key, req.id)
            if first is not None:
                self.recent.add(s.dedup + req.id, first, now)
                out.replies.append((s.ident, first))
                return
        target = self.nicks.get(nick_key(req.to))
        if target is None and self.directory is not None:
            self._pm_elsewhere(s, req, now, out)
            return
        if target is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"no user {req.to!r} is online")
        ts = format_ts(now)
        push = encode(PmPush(from_=s.nick, to=target.nick, text=req.text, ts=ts))
        if target.held and (
            target.held_bytes + len(push) > self._held_max
            or self.held_total + len(push) > self._held_total_max
        ):
            # The recipient is away and what waits for it is at its bound:
            # refuse now, before acknowledging, rather than lose it later.
            raise ProtocolError(
                Code.UNAVAILABLE,
                f"{target.nick} is not reading and {target.held_bytes // KIB} KiB of private "
                "messages already wait for them",
                retry_ms=5_000,
            )
        out.pushes.append((target.ident, push))
        ack = encode(Ack(id=req.id, to=target.nick, ts=ts))
        if req.id is not None:
            self.recent.add(s.dedup + req.id, ack, now)
            self.store.add_pm_id(s.key, req.id, now, ack)
        out.replies.append((s.ident, ack))

    def _pm_elsewhere(self, s: Session, req: Pm, now: float, out: Outbox) -> None:
        """A private message to a session on another node of the cluster."""
        assert self.directory is not None
        key = nick_key(req.to)
        rec = self.directory.find(key)
        if rec is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"no user {req.to!r} is online")
        ts = format_ts(now)
        push = encode(PmPush(from_=s.nick, to=rec.nick, text=req.text, ts=ts))
        waiting = self.directory.held(key)
        if waiting and waiting + len(push) > self._held_max:
            raise ProtocolError(
                Code.UNAVAILABLE,
                f"{rec.nick} is not reading and {waiting // KIB} KiB of private "
                "messages already wait for them",
                retry_ms=5_000,
            )
        self.directory.deliver(rec.node, key, push)
        ack = encode(Ack(id=req.id, to=rec.nick, ts=ts))
        if req.id is not None:
            self.recent.add(s.dedup + req.id, ack, now)
            self.store.add_pm_id(s.key, req.id, now, ack)
        out.replies.append((s.ident, ack))

    def _who(self, s: Session, req: Who, now: float, out: Outbox) -> None:
        if self.directory is not None:
            roles: dict[str, str] | None = None if req.room is None else self._roles_shown(req.room)
            found = sorted(self.directory.who(req.room, now), key=lambda u: nick_key(u[0]))
            users, more = _page(
                found,
                lambda u: nick_key(u[0]),
                req.after,
                lambda u: WhoUser(
                    nick=u[0],
                    idle_ms=u[1],
                    quiet=u[2],
                    role=None if roles is None else roles.get(nick_key(u[0])),
                ),
                self._page,
            )
            out.reply(s.ident, WhoReply(id=req.id, room=req.room, users=users, more=more))
            return
        roles = None
        if req.room is None:
            members: Iterable[Session] = self.nicks.values()
        else:
            room = self.rooms.get(req.room)
            members = room.members if room is not None else ()
            roles = self._roles_shown(req.room) if room is not None else None
        users, more = _page(
            sorted(members, key=lambda m: m.key),
            lambda m: m.key,
            req.after,
            lambda m: WhoUser(
                nick=m.nick,
                idle_ms=int((now - m.last_active) * 1000),
                quiet=m.quiet,
                role=None if roles is None else roles.get(m.key),
            ),
            self._page,
        )
        out.reply(s.ident, WhoReply(id=req.id, room=req.room, users=users, more=more))

    def _rooms(self, s: Session, req: Rooms, now: float, out: Outbox) -> None:
        def info(r: Room) -> RoomInfo:
            names = [m.nick for m in r.members if not m.quiet]
            shown = names[:ROOMS_MEMBERS_MAX]
            return RoomInfo(
                name=r.name,
                topic=r.topic,
                members=shown,
                member_count=len(names) if len(shown) < len(names) else None,
            )

        if self.directory is not None:

            def listed(r: tuple[str, str, list[tuple[str, bool]]]) -> RoomInfo:
                names = [nick for nick, quiet in r[2] if not quiet]
                shown = names[:ROOMS_MEMBERS_MAX]
                return RoomInfo(
                    name=r[0],
                    topic=r[1],
                    members=shown,
                    member_count=len(names) if len(shown) < len(names) else None,
                )

            found, more = _page(
                self.directory.rooms(), lambda r: r[0], req.after, listed, self._page
            )
            out.reply(s.ident, RoomsReply(id=req.id, rooms=found, more=more))
            return
        rooms, more = _page(
            sorted(self.rooms.values(), key=lambda r: r.name),
            lambda r: r.name,
            req.after,
            info,
            self._page,
        )
        out.reply(s.ident, RoomsReply(id=req.id, rooms=rooms, more=more))

    def _history(self, s: Session, req: History, now: float, out: Outbox) -> None:
        limit = min(req.effective_limit, HISTORY_MAX)
        page = self.store.page(
            req.room, after=req.after, before=req.before, limit=limit, max_bytes=self._page
        )
        out.reply(
            s.ident,
            HistoryReply(
                id=req.id,
                room=req.room,
                events=[msgspec.Raw(b) for b in page.events],
                more=page.more,
                first=page.first,
            ),
        )

    def _search(self, s: Session, req: Search, now: float, out: Outbox) -> None:
        # Like history, any room's, in or out of it.
        page = self.store.search(
            req.room,
            req.text,
            before=req.before,
            limit=req.effective_limit,
            max_bytes=self._page,
        )
        out.reply(
            s.ident,
            SearchReply(
                id=req.id,
                room=req.room,
                events=[msgspec.Raw(b) for b in page.events],
                more=page.more,
                before=page.before if page.more else None,
            ),
        )

    def _nick(self, s: Session, req: Nick, now: float, out: Outbox) -> None:
        new_key = nick_key(req.nick)
        self._check_nick_free(s, req.nick, s.peer_key, now)
        self._may_be_called(s, req.nick, now)
        old = s.nick
        if req.nick != old:
            if self._limited:
                # One event per room: the change costs a token per room, up
                # to a full bucket.
                rooms = 0 if s.quiet else len(s.rooms)
                self._spend(s, now, max(1, min(rooms, self.config.burst)))
            if self.directory is not None and not self.directory.rename(
                s.key, new_key, req.nick, list(s.rooms), s.quiet
            ):
                raise ProtocolError(Code.NICK_TAKEN, f"nick {req.nick!r} is in use")
            del self.nicks[s.key]
            if self.skeletons.get(s.skeleton) is s:
                del self.skeletons[s.skeleton]
            s.rename(req.nick)
            self.nicks[new_key] = s
            self.skeletons[s.skeleton] = s
            if self.claims is not None:
                self.claims.use(new_key, s.peer_key, now)
            ts = format_ts(now)
            for name in () if s.quiet else s.rooms:
                room = self.rooms[name]
                self._event(
                    room,
                    NickEvent(room=name, seq=self._next(room), ts=ts, old=old, new=req.nick),
                    now,
                    out,
                )
            # After the events: the change is made, and a store that fails
            # here (in a cluster) must not keep the rooms from hearing of it.
            for name in s.rooms:
                self._rename_in_rules(name, nick_key(old), new_key, now)
        out.reply(s.ident, NickReply(id=req.id, old=old, new=req.nick))

    def _topic(self, s: Session, req: Topic, now: float, out: Outbox) -> None:
        room = self._member(s, req.room)
        rules = self._rules_of(room.name)
        if "topic_lock" in rules.modes and not may(self._role(s, rules), "topic"):
            raise ProtocolError(
                Code.FORBIDDEN, f"the topic of #{room.name} is locked: only its operators set it"
            )
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
            members: Iterable[Session] = self.nicks.values()
        else:
            room = self.rooms.get(req.room)
            members = room.members if room is not None else ()
        offered = sorted(
            ((c, m) for m in members for c in m.offer), key=lambda cm: (cm[0].name, cm[1].key)
        )
        found, more = _page(
            offered,
            lambda cm: f"{cm[0].name} {cm[1].key}",
            req.after,
            lambda cm: CommandInfo(
                nick=cm[1].nick, name=cm[0].name, usage=cm[0].usage, help=cm[0].help
            ),
            self._page,
        )
        out.reply(s.ident, CommandsReply(id=req.id, room=req.room, commands=found, more=more))

    def _bye(self, s: Session, req: Bye, now: float, out: Outbox) -> None:
        out.reply(s.ident, ByeReply(id=req.id))
        self._end(s, "quit", now, out, req.reason)

    def _end(
        self,
        s: Session,
        reason: str,
        now: float,
        out: Outbox,
        text: str | None = None,
        by: str | None = None,
    ) -> None:
        for name in list(s.rooms):
            self._leave(s, name, reason, now, out, text, by)
        if self.directory is not None:
            self.directory.ended(s.key)
        self._forget(s, now)

    def _forget(self, s: Session, now: float) -> None:
        del self.sessions[s.ident]
        del self.nicks[s.key]
        if self.skeletons.get(s.skeleton) is s:
            del self.skeletons[s.skeleton]
        self.held_total -= s.held_bytes
        a = s.addr
        a.sessions -= 1
        # What the session left in its bucket is what the next one from its
        # address starts with: quitting and coming back refills nothing.
        c = self.config
        left = min(float(c.burst), s.tokens + (now - s.refilled) * c.rate)
        if a.carry is None or left < a.carry + (now - a.carry_at) * c.rate:
            a.carry, a.carry_at = left, now
        if a.sessions == 0:
            self._idle_addresses.add(a.name)

    # ---------------------------------------------------------- moderation

    def _rules_of(self, name: str) -> Rules:
        """The moderation of ``name`` (a room, or ``*``), kept in memory
        while the room is: one of a room nobody is in is read, not kept."""
        rules = self._rules.get(name)
        if rules is None:
            body = self.store.rules(name)
            loaded = load_rules(body)
            if loaded is None:
                # Not overwritten by a change (a refusal says so), so that
                # whoever repairs it loses no ban; meanwhile the room has none.
                if name not in self._unreadable:
                    log.error("the stored moderation of %s does not read; changes refused", name)
                    self._unreadable.add(name)
                loaded = Rules()
            else:
                self._unreadable.discard(name)
            rules = loaded
            if name in self.rooms or name == SERVER_ROOM:
                self._rules[name] = rules
                self._rules_read[name] = body
                self._guard(name, rules)
        return rules

    def _server_rules(self) -> Rules:
        if self.directory is not None:
            # Other nodes ban too: asked each time (a hello is rate-limited).
            self._rules.pop(SERVER_ROOM, None)
        return self._rules_of(SERVER_ROOM)

    def _guard(self, name: str, rules: Rules) -> None:
        if rules.mutes or "moderated" in rules.modes:
            self._guarded.add(name)
        else:
            self._guarded.discard(name)

    def _save_rules(self, name: str, rules: Rules, now: float) -> None:
        """Keep the room's changed moderation. In a cluster, only if no other
        node changed it since it was read here (at once, not with the
        batch): otherwise ``unavailable`` (clients ask again, and the change
        is made to what the other node left)."""
        if name in self._unreadable:
            self.rules_changed(name)
            raise ProtocolError(
                Code.UNAVAILABLE,
                f"the stored moderation of {name} does not read: the broker's operator must "
                "repair or delete it",
                retry_ms=60_000,
            )
        rules.prune(now)
        body = dump_rules(rules)
        if self.directory is None or name not in self._rules:
            self.store.set_rules(name, body)
            if name in self._rules:
                self._rules_read[name] = body  # (its size prices the next change)
        else:
            try:
                swapped = self.store.swap_rules(name, self._rules_read.get(name), body)
            except StoreError as err:
                self.rules_changed(name)
                raise ProtocolError(
                    Code.UNAVAILABLE, f"the store failed: {err}", retry_ms=UNAVAILABLE_RETRY_MS
                ) from None
            if not swapped:
                self.rules_changed(name)  # (the change made here is dropped with it)
                raise ProtocolError(
                    Code.UNAVAILABLE,
                    f"the moderation of #{name} changed meanwhile on another node; ask again",
                    retry_ms=RULES_RETRY_MS,
                )
            self._rules_read[name] = body
        if name in self._rules:
            self._guard(name, rules)

    def _rename_in_rules(self, name: str, old: str, new: str, now: float) -> None:
        """Roles and mutes follow a nick change (made already: it is not
        refused for a race with another node, which is tried again)."""
        for _ in range(3):
            if self.directory is not None:
                self.rules_changed(name)  # (as in _moderated_room)
            rules = self._rules_of(name)
            if not rules.rename(old, new):
                return
            try:
                self._save_rules(name, rules, now)
                return
            except ProtocolError:
                continue
        log.warning(
            "#%s: the moderation did not follow %s to %s (the store was busy)", name, old, new
        )

    def _unload(self, name: str) -> None:
        """Forget a room nobody here is in (its state stays in the store)."""
        del self.rooms[name]
        self._rules.pop(name, None)
        self._rules_read.pop(name, None)
        self._guarded.discard(name)

    def rules_changed(self, name: str) -> None:
        """Another node changed the room's moderation: read it again."""
        if self._rules.pop(name, None) is not None:
            self._rules_read.pop(name, None)
            self._guarded.discard(name)
            self._rules_of(name)

    def _role(self, s: Session, rules: Rules) -> str:
        return "server" if s.oper else rules.role(s.key)

    def _roles_shown(self, name: str) -> dict[str, str] | None:
        rules = self._rules_of(name)
        return listed(rules.roles, rules.owner) or None

    def _may_enter(self, s: Session, name: str, now: float) -> None:
        rules = self._rules_of(name)
        role = self._role(s, rules)
        if may(role, "invite"):
            # Its operators (and owner) always come in: no operator can lock
            # out another, or the owner, by a ban of their key or address.
            return
        banned = rules.banned(s.identity(), now)
        if banned is not None:
            raise ProtocolError(Code.FORBIDDEN, f"you are banned from #{name}" + _why(banned))
        if "invite_only" in rules.modes and s.key not in rules.invited:
            raise ProtocolError(
                Code.FORBIDDEN, f"#{name} is invite-only: ask one of its operators to invite you"
            )

    def _may_be_called(self, s: Session, nick: str, now: float) -> None:
        """A nick banned from the server, or from a room the session is in
        (that it may not enter under it), is refused, not taken."""
        if s.oper:
            return
        who = Identity(nick, s.peer_key, s.addr.name)
        banned = self._server_rules().banned(who, now)
        if banned is not None:
            raise ProtocolError(Code.FORBIDDEN, f"{nick} is banned from this server" + _why(banned))
        for name in s.rooms:
            rules = self._rules_of(name)
            if not may(self._role(s, rules), "invite"):
                banned = rules.banned(who, now)
                if banned is not None:
                    raise ProtocolError(
                        Code.FORBIDDEN, f"{nick} is banned from #{name}" + _why(banned)
                    )

    def _may_speak(self, s: Session, name: str, now: float) -> None:
        rules = self._rules_of(name)
        muted = rules.muted(s.key, now, s.peer_key)
        if muted is not None and not s.oper:
            raise ProtocolError(Code.FORBIDDEN, f"you are muted in #{name}" + _why(muted))
        if "moderated" in rules.modes and not may(self._role(s, rules), "speak"):
            raise ProtocolError(
                Code.FORBIDDEN, f"#{name} is moderated: only people with a voice speak"
            )

    def _moderated_room(
        self, s: Session, name: str, action: str, now: float
    ) -> tuple[Room, Rules, str]:
        """The room an operator acts in, its rules, and the actor's role; a
        server operator needs not be in it."""
        if name not in s.rooms and not s.oper:
            raise ProtocolError(Code.NOT_IN_ROOM, f"you are not in #{name}; join it first")
        room = self._room(name)
        if self.directory is not None:
            # Changed from what the store holds now, not from what this node
            # read last: another node may have changed it since.
            self.rules_changed(name)
        rules = self._rules_of(name)
        role = self._role(s, rules)
        if not may(role, action):
            self._done_with(room)
            raise ProtocolError(
                Code.FORBIDDEN, f"only operators of #{name} may {_ACTION_WORDS.get(action, action)}"
            )
        stored = len(self._rules_read.get(name) or b"")
        if self._limited and stored >= RULES_TOKEN_BYTES:
            # Each change rewrites the whole of it (a list of 500 bans with
            # reasons is 200 KiB): a token more per RULES_TOKEN_BYTES, so an
            # owner's writes to the store stay in proportion to what it says.
            try:
                self._spend(s, now, stored // RULES_TOKEN_BYTES)
            except ProtocolError:
                self._done_with(room)
                raise
        return room, rules, role

    def _done_with(self, room: Room) -> None:
        if not room.members and room.name in self.rooms:
            self._unload(room.name)

    def _target_role(self, key: str, rules: Rules) -> str:
        t = self.nicks.get(key)
        if t is not None:
            return "server" if t.oper else rules.role(key)
        if self.directory is not None:
            rec = self.directory.find(key)  # a server operator on another node
            if rec is not None and rec.oper:
                return "server"
        return rules.role(key)

    def _check_target(
        self, s: Session, role: str, action: str, nick: str, rules: Rules, name: str
    ) -> str:
        key = nick_key(nick)
        target = self._target_role(key, rules)
        if not may(role, action, target, itself=key == s.key):
            raise ProtocolError(
                Code.FORBIDDEN,
                f"you may not {action} {nick} in #{name}: they are {_ROLE_WORDS[target]}",
            )
        return key

    def _mode_event(
        self,
        s: Session,
        rid: str | None,
        room: Room,
        mode: str,
        now: float,
        out: Outbox,
        *,
        target: str | None = None,
        on: bool | None = None,
        until: float | None = None,
        text: str | None = None,
        answer: bool = True,
    ) -> Ack:
        """Publish (and store) a moderation change made by ``s``; answer its
        request (``rid``) with the event's seq unless told not to."""
        seq = self._next(room)
        ts = format_ts(now)
        self._event(
            room,
            ModeEvent(
                room=room.name,
                seq=seq,
                ts=ts,
                nick=s.nick,
                mode=mode,
                target=target,
                on=on,
                until=None if until is None else format_ts(until),
                text=text,
            ),
            now,
            out,
        )
        ack = Ack(id=rid, room=room.name, seq=seq, ts=ts)
        if answer:
            self._acked(s, rid, ack, now, out)
        return ack

    def _acked(self, s: Session, rid: str | None, ack: Ack, now: float, out: Outbox) -> None:
        """Answer a moderation request, and answer its resends alike."""
        frame = encode(ack)
        if rid is not None:
            self.recent.add(s.dedup + rid, frame, now)
        out.replies.append((s.ident, frame))

    def _unchanged(self, s: Session, rid: str | None, room: Room, now: float, out: Outbox) -> None:
        self._done_with(room)
        self._acked(s, rid, Ack(id=rid, room=room.name, seq=room.seq, ts=format_ts(now)), now, out)

    def _room_space(self, rules: Rules, name: str, now: float) -> None:
        rules.prune(now)  # what has lapsed takes no room
        if rules.size() >= self.config.max_moderation:
            raise ProtocolError(
                Code.LIMIT_REACHED,
                f"#{name} holds {rules.size()} roles, bans, mutes and invitations, its most; "
                "remove some first",
            )

    def _set_role(self, s: Session, req: Any, now: float, out: Outbox, action: str) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, role = self._moderated_room(s, req.room, action, now)
        try:
            key = self._check_target(s, role, action, req.nick, rules, room.name)
        except ProtocolError:
            self._done_with(room)
            raise
        was = rules.role(key)
        if action in ("op", "voice"):
            want = action
            if was == "owner" or was == "op" or was == want:
                self._unchanged(s, req.id, room, now, out)  # as much or more already
                return
            if key not in rules.roles:
                self._room_space(rules, room.name, now)
        else:
            undo = "op" if action == "deop" else "voice"
            if was == "owner" and action == "deop":
                if not s.oper:
                    # An owner's own deop would leave the room with none.
                    self._unchanged(s, req.id, room, now, out)
                    return
                rules.owner = None
            elif was != undo:
                self._unchanged(s, req.id, room, now, out)
                return
            want = None
        if was == "owner" or want is None:
            rules.roles.pop(key, None)
        else:
            rules.roles[key] = want
        self._save_rules(room.name, rules, now)
        self._mode_event(s, req.id, room, action, now, out, target=req.nick)
        self._done_with(room)

    def _op(self, s: Session, req: Op, now: float, out: Outbox) -> None:
        self._set_role(s, req, now, out, "op")

    def _deop(self, s: Session, req: Deop, now: float, out: Outbox) -> None:
        self._set_role(s, req, now, out, "deop")

    def _voice(self, s: Session, req: Voice, now: float, out: Outbox) -> None:
        self._set_role(s, req, now, out, "voice")

    def _devoice(self, s: Session, req: Devoice, now: float, out: Outbox) -> None:
        self._set_role(s, req, now, out, "devoice")

    def _invite(self, s: Session, req: Invite, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, _ = self._moderated_room(s, req.room, "invite", now)
        key = nick_key(req.nick)
        if key in rules.invited:
            self._unchanged(s, req.id, room, now, out)
            return
        try:
            self._room_space(rules, room.name, now)
        except ProtocolError:
            self._done_with(room)
            raise
        rules.invited.append(key)
        self._save_rules(room.name, rules, now)
        self._mode_event(s, req.id, room, "invite", now, out, target=req.nick)
        self._tell(key, f"{s.nick} invites you to #{room.name}", out)
        self._done_with(room)

    def _invite_present(self, room: Room, rules: Rules, now: float) -> None:
        """Who is in a room as it turns invite-only is on its list: they
        come back into it after a broker restart or a move to another node
        as anyone invited does (as many as the room's bound holds)."""
        if self.directory is not None:
            present = [nick_key(nick) for nick, quiet in self.directory.members(room.name)]
        else:
            present = [m.key for m in room.members]
        rules.prune(now)
        for key in present:
            if key not in rules.invited and rules.role(key) == "member":
                if rules.size() >= self.config.max_moderation:
                    log.warning("#%s turned invite-only with more members than it lists", room.name)
                    return
                rules.invited.append(key)

    def _uninvite(self, s: Session, req: Uninvite, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, _ = self._moderated_room(s, req.room, "invite", now)
        key = nick_key(req.nick)
        if key not in rules.invited:
            self._unchanged(s, req.id, room, now, out)
            return
        rules.invited.remove(key)
        self._save_rules(room.name, rules, now)
        self._mode_event(s, req.id, room, "uninvite", now, out, target=req.nick)
        self._done_with(room)

    def _tell(self, key: str, text: str, out: Outbox) -> None:
        """A notice to the session ``key``, if it is on this node."""
        t = self.nicks.get(key)
        if t is not None:
            out.pushes.append((t.ident, encode(Notice(text=text))))

    def _kick(self, s: Session, req: Kick, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, role = self._moderated_room(s, req.room, "kick", now)
        try:
            key = self._check_target(s, role, "kick", req.nick, rules, room.name)
            if not self._is_in(room, key):
                raise ProtocolError(Code.NO_SUCH_USER, f"{req.nick} is not in #{room.name}")
            if key in rules.invited:
                # Put out of an invite-only room: not back by itself. (Saved
                # first: a save refused in a cluster must leave nothing done.)
                rules.invited.remove(key)
                self._save_rules(room.name, rules, now)
        except ProtocolError:
            self._done_with(room)
            raise
        self._put_out(room, key, s.nick, req.reason, now, out)
        self._tell(key, f"{s.nick} put you out of #{room.name}" + _because(req.reason), out)
        self._acked(
            s, req.id, Ack(id=req.id, room=room.name, seq=room.seq, ts=format_ts(now)), now, out
        )
        self._done_with(room)

    def _is_in(self, room: Room, key: str) -> bool:
        t = self.nicks.get(key)
        if t is not None:
            return room.name in t.rooms
        if self.directory is None:
            return False
        rec = self.directory.find(key)
        return rec is not None and room.name in rec.rooms and rec.node != self.directory.node

    def _put_out(
        self, room: Room, key: str, by: str, reason: str | None, now: float, out: Outbox
    ) -> bool:
        """A ``kick`` leave for ``key`` in ``room``; False when not in it.
        One on another node of a cluster leaves there when it sees it."""
        t = self.nicks.get(key)
        if t is not None and room.name in t.rooms:
            self._leave(t, room.name, "kick", now, out, reason, by)
            return True
        if self.directory is None:
            return False
        rec = self.directory.find(key)
        if rec is None or room.name not in rec.rooms or rec.node == self.directory.node:
            return False
        self.directory.left(room.name, key)
        self.directory.put_out(rec.node, room.name, key)  # (a quiet one has no leave)
        if not rec.quiet:
            self._event(
                room,
                LeaveEvent(
                    room=room.name,
                    seq=self._next(room),
                    ts=format_ts(now),
                    nick=rec.nick,
                    reason="kick",
                    text=reason,
                    by=by,
                ),
                now,
                out,
            )
        return True

    def _ban_mask(self, s: Session, req: Ban) -> str:
        if req.mask is not None:
            return req.mask
        assert req.nick is not None
        key = nick_key(req.nick)
        match = req.match or "nick"
        if match == "nick":
            return f"nick:{key}"
        t = self.nicks.get(key)
        if match == "key":
            peer_key = t.peer_key if t is not None else None
            if peer_key is None and t is None and self.directory is not None:
                rec = self.directory.find(key)
                peer_key = None if rec is None else rec.peer_key or None
            if peer_key is None:
                raise ProtocolError(
                    Code.NO_SUCH_USER,
                    f"{req.nick} is not online with a key (keys come with CURVE)",
                )
            return f"key:{peer_key}"
        addr = t.addr.name if t is not None else None
        if addr is None and self.directory is not None:
            rec = self.directory.find(key)  # on another node: its record has it
            addr = None if rec is None else rec.addr or None
        if addr is None:
            raise ProtocolError(
                Code.NO_SUCH_USER,
                f"{req.nick} is not online: ban their nick, or an address by mask",
            )
        return check_mask(f"addr:{addr}")

    def _ban(self, s: Session, req: Ban, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        mask = self._ban_mask(s, req)
        until = None if req.duration_s is None else now + req.duration_s
        entry = Entry(mask=mask, by=s.nick, at=now, until=until, reason=req.reason)
        if req.room == SERVER_ROOM:
            self._ban_server(s, req, entry, now, out)
            return
        room, rules, role = self._moderated_room(s, req.room, "ban", now)
        try:
            # Whoever the mask covers here must rank below the one banning.
            # (Never the one banning: they would always come back in.)
            covered = [m for m in room.members if m is not s and m.identity().matches(mask)]
            kind, _, value = mask.partition(":")
            remote = self._covered_elsewhere(room, mask)
            keys = {m.key for m in covered} | set(remote)
            if kind == "nick":
                keys.add(nick_key(value))
            for key in keys:
                target = self._target_role(key, rules)
                if not may(role, "ban", target, itself=key == s.key):
                    raise ProtocolError(
                        Code.FORBIDDEN,
                        f"you may not ban {mask} from #{room.name}: it covers "
                        f"{_ROLE_WORDS[target]}",
                    )
            if not any(b.mask == mask for b in rules.bans):
                self._room_space(rules, room.name, now)
        except ProtocolError:
            self._done_with(room)
            raise
        rules.bans = [b for b in rules.bans if b.mask != mask] + [entry]
        self._save_rules(room.name, rules, now)
        self._mode_event(
            s, req.id, room, "ban", now, out, target=mask, until=until, text=req.reason
        )
        for m in covered:
            self._leave(m, room.name, "kick", now, out, req.reason, s.nick)
            self._tell(m.key, f"{s.nick} banned you from #{room.name}" + _why(entry), out)
        for key in remote:
            self._put_out(room, key, s.nick, req.reason, now, out)
        self._done_with(room)

    def _covered_elsewhere(self, room: Room, mask: str) -> list[str]:
        """Keys of the members of ``room`` on other nodes of a cluster that
        ``mask`` covers (their records say their key and address)."""
        if self.directory is None:
            return []
        here = {m.key for m in room.members}
        there = [nick_key(n) for n, _ in self.directory.members(room.name)]
        there = [k for k in there if k not in here]  # (the one banning is here)
        found = []
        for key, rec in zip(there, self.directory.records(there), strict=True):
            if rec is not None and rec.node != self.directory.node:
                if Identity(rec.nick, rec.peer_key or None, rec.addr).matches(mask):
                    found.append(key)
        return found

    def _ban_server(self, s: Session, req: Ban, entry: Entry, now: float, out: Outbox) -> None:
        if not s.oper:
            raise ProtocolError(Code.FORBIDDEN, "only server operators ban from the server")
        rules = self._server_rules()
        if not any(b.mask == entry.mask for b in rules.bans):
            self._room_space(rules, "*", now)
        rules.bans = [b for b in rules.bans if b.mask != entry.mask] + [entry]
        self._save_rules(SERVER_ROOM, rules, now)
        for t in [t for t in self.sessions.values() if t.identity().matches(entry.mask)]:
            if t is not s:
                banned = f"{s.nick} banned you from this server" + _why(entry)
                self._kill_session(t, s.nick, req.reason, now, out, notice=banned)
        if self.directory is not None:
            # The sessions of other nodes it covers: ended as a kill is (see
            # _kill). A rare operator's act, worth a look at every session.
            for key, rec in self.directory.sessions():
                if rec.node == self.directory.node or key == s.key:
                    continue
                if Identity(rec.nick, rec.peer_key or None, rec.addr).matches(entry.mask):
                    self._leave_everywhere(key, rec, "kick", now, out, req.reason, s.nick)
                    self.directory.ended(key, rec.node)
        self._acked(s, req.id, Ack(id=req.id, ts=format_ts(now)), now, out)

    def _unban(self, s: Session, req: Unban, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        if req.room == SERVER_ROOM:
            if not s.oper:
                raise ProtocolError(Code.FORBIDDEN, "only server operators unban from the server")
            rules = self._server_rules()
            if not any(b.mask == req.mask for b in rules.bans):
                raise ProtocolError(Code.BAD_REQUEST, f"{req.mask} is not banned from the server")
            rules.bans = [b for b in rules.bans if b.mask != req.mask]
            self._save_rules(SERVER_ROOM, rules, now)
            self._acked(s, req.id, Ack(id=req.id, ts=format_ts(now)), now, out)
            return
        room, rules, _ = self._moderated_room(s, req.room, "unban", now)
        if not any(b.mask == req.mask and b.live(now) for b in rules.bans):
            self._done_with(room)
            raise ProtocolError(Code.BAD_REQUEST, f"{req.mask} is not banned from #{room.name}")
        rules.bans = [b for b in rules.bans if b.mask != req.mask]
        self._save_rules(room.name, rules, now)
        self._mode_event(s, req.id, room, "unban", now, out, target=req.mask)
        self._done_with(room)

    def _mute(self, s: Session, req: Mute, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, role = self._moderated_room(s, req.room, "mute", now)
        try:
            key = self._check_target(s, role, "mute", req.nick, rules, room.name)
            mask = f"nick:{key}"
            if not any(m.mask == mask for m in rules.mutes):
                self._room_space(rules, room.name, now)
        except ProtocolError:
            self._done_with(room)
            raise
        until = None if req.duration_s is None else now + req.duration_s
        entry = Entry(
            mask=mask,
            by=s.nick,
            at=now,
            until=until,
            reason=req.reason,
            key=self._peer_key_of(key),
        )
        rules.mutes = [m for m in rules.mutes if m.mask != mask] + [entry]
        self._save_rules(room.name, rules, now)
        self._mode_event(
            s, req.id, room, "mute", now, out, target=req.nick, until=until, text=req.reason
        )
        self._done_with(room)

    def _peer_key_of(self, key: str) -> str | None:
        """The CURVE key of the session ``key``, on this node or another."""
        t = self.nicks.get(key)
        if t is not None:
            return t.peer_key
        if self.directory is not None:
            rec = self.directory.find(key)
            return rec.peer_key or None if rec is not None else None
        return None

    def _unmute(self, s: Session, req: Unmute, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, role = self._moderated_room(s, req.room, "unmute", now)
        try:
            key = self._check_target(s, role, "unmute", req.nick, rules, room.name)
            if rules.muted(key, now) is None:
                raise ProtocolError(Code.BAD_REQUEST, f"{req.nick} is not muted in #{room.name}")
        except ProtocolError:
            self._done_with(room)
            raise
        rules.mutes = [m for m in rules.mutes if m.mask != f"nick:{key}"]
        self._save_rules(room.name, rules, now)
        self._mode_event(s, req.id, room, "unmute", now, out, target=req.nick)
        self._done_with(room)

    def _mode(self, s: Session, req: Mode, now: float, out: Outbox) -> None:
        if self._repeat(s, req.id, out):
            return
        room, rules, _ = self._moderated_room(s, req.room, "mode", now)
        changes = [
            (flag, on)
            for flag, on in (
                ("invite_only", req.invite_only),
                ("moderated", req.moderated),
                ("topic_lock", req.topic_lock),
            )
            if on is not None and (flag in rules.modes) != on
        ]
        if not changes:
            self._unchanged(s, req.id, room, now, out)
            return
        for flag, on in changes:
            rules.modes = [
                f for f in MODE_FLAGS if (f == flag and on) or (f != flag and f in rules.modes)
            ]
            if flag == "invite_only" and on:
                self._invite_present(room, rules, now)
        self._save_rules(room.name, rules, now)
        # An event each; the request is answered with the last one's seq.
        acks = [
            self._mode_event(s, req.id, room, flag, now, out, on=on, answer=False)
            for flag, on in changes
        ]
        self._acked(s, req.id, acks[-1], now, out)
        self._done_with(room)

    def _bans(self, s: Session, req: Bans, now: float, out: Outbox) -> None:
        if req.room == SERVER_ROOM:
            if not s.oper:
                raise ProtocolError(Code.FORBIDDEN, "only server operators list server bans")
            rules = self._server_rules()
        else:
            room, rules, _ = self._moderated_room(s, req.room, "bans", now)
            self._done_with(room)

        def ts(at: float | None) -> str | None:
            return None if at is None else format_ts(at)

        bans = [
            BanInfo(mask=b.mask, by=b.by, ts=format_ts(b.at), until=ts(b.until), reason=b.reason)
            for b in rules.bans
            if b.live(now)
        ]
        mutes = [
            MuteInfo(
                nick=m.mask[5:], by=m.by, ts=format_ts(m.at), until=ts(m.until), reason=m.reason
            )
            for m in rules.mutes
            if m.live(now)
        ]
        reply = BansReply(
            id=req.id,
            room=req.room,
            bans=[],
            mutes=[],
            roles=listed(rules.roles, rules.owner),
            modes=list(rules.modes),
            invited=list(rules.invited),
        )
        # Within a reply's bound: the newest bans and mutes, and ``more``
        # when older ones were left out (reasons make entries up to 500 bytes).
        budget = self._page - len(encode(reply))
        kept_bans, budget = _newest(bans, budget)
        kept_mutes, budget = _newest(mutes, budget)
        more = len(kept_bans) < len(bans) or len(kept_mutes) < len(mutes)
        out.reply(
            s.ident,
            msgspec.structs.replace(
                reply, bans=kept_bans, mutes=kept_mutes, more=True if more else None
            ),
        )

    def _oper(self, s: Session, req: Oper, now: float, out: Outbox) -> None:
        password = self.oper_password
        if password is None or not hmac.compare_digest(req.password.encode(), password.encode()):
            self._oper_failures += 1
            if now >= self._oper_logged + OPER_LOG_EVERY_S:
                # One line in so many seconds: guesses must not flood the log.
                log.warning(
                    "%d wrong operator password%s, the last from %s (%s)",
                    self._oper_failures,
                    "" if self._oper_failures == 1 else "s",
                    s.nick,
                    s.addr.name,
                )
                self._oper_failures, self._oper_logged = 0, now
            raise ProtocolError(Code.FORBIDDEN, "that is not the operator password")
        s.oper = True
        if self.directory is not None:
            self.directory.set_oper(s.key)
        log.info("%s (%s) is a server operator", s.nick, s.addr.name)
        out.reply(s.ident, Ack(id=req.id, ts=format_ts(now)))

    def _server_only(self, s: Session, what: str) -> None:
        if not s.oper:
            raise ProtocolError(Code.FORBIDDEN, f"only server operators {what}")

    def _kill(self, s: Session, req: Kill, now: float, out: Outbox) -> None:
        self._server_only(s, "kill sessions")
        if self._repeat(s, req.id, out):
            return
        key = nick_key(req.nick)
        t = self.nicks.get(key)
        if t is not None:
            self._kill_session(t, s.nick, req.reason, now, out)
        elif self.directory is not None and (rec := self.directory.find(key)) is not None:
            # On another node: its leaves are published here, and that node
            # forgets the session when it finds its record gone.
            self._leave_everywhere(key, rec, "kick", now, out, req.reason, s.nick)
            self.directory.ended(key, rec.node)
        else:
            raise ProtocolError(Code.NO_SUCH_USER, f"no user {req.nick!r} is online")
        log.info("%s killed %s%s", s.nick, req.nick, _because(req.reason))
        self._acked(s, req.id, Ack(id=req.id, to=req.nick, ts=format_ts(now)), now, out)

    def _kill_session(
        self,
        t: Session,
        by: str,
        reason: str | None,
        now: float,
        out: Outbox,
        *,
        notice: str | None = None,
    ) -> None:
        out.reply(t.ident, Notice(text=notice or f"{by} ended your session" + _because(reason)))
        self._end(t, "kick", now, out, reason, by)

    def _wall(self, s: Session, req: Wall, now: float, out: Outbox) -> None:
        self._server_only(s, "send server notices")
        if self._repeat(s, req.id, out):
            return
        if self.directory is not None:
            self.directory.wall(encode(Notice(text=f"[{s.nick}] {req.text}")))
        else:
            self.notice(f"[{s.nick}] {req.text}", out)
        self._acked(s, req.id, Ack(id=req.id, ts=format_ts(now)), now, out)

    def _release_nick(self, s: Session, req: Release, now: float, out: Outbox) -> None:
        self._server_only(s, "release nicks")
        if self.claims is None:
            raise ProtocolError(Code.BAD_REQUEST, "nicks belong to keys only with CURVE on")
        key = nick_key(req.nick)
        claimed = self.claims.by_skeleton.get(nick_skeleton(key))
        if claimed is None:
            raise ProtocolError(Code.BAD_REQUEST, f"{req.nick} belongs to no key")
        self.claims.release(claimed)
        out.reply(s.ident, Ack(id=req.id, to=req.nick, ts=format_ts(now)))

    # ------------------------------------------------------------ cluster

    def reaped(self, key: str, rec: SessionRecord, now: float, out: Outbox) -> None:
        """A session of a node that died timed out: one ``timeout`` leave in
        each of its rooms, published by this node for it."""
        self._leave_everywhere(key, rec, "timeout", now, out)

    def _leave_everywhere(
        self,
        key: str,
        rec: SessionRecord,
        reason: str,
        now: float,
        out: Outbox,
        text: str | None = None,
        by: str | None = None,
    ) -> None:
        """Leaves of a session of another node, published by this one."""
        assert self.directory is not None
        for name in rec.rooms:
            loaded = name in self.rooms
            try:
                room = self._room(name)
            except ProtocolError:
                continue
            self.directory.left(name, key)
            if not rec.quiet:
                self._event(
                    room,
                    LeaveEvent(
                        room=name,
                        seq=self._next(room),
                        ts=format_ts(now),
                        nick=rec.nick,
                        reason=reason,
                        text=text,
                        by=by,
                    ),
                    now,
                    out,
                )
            if not loaded and not room.members:
                self._unload(name)

    def relayed(self, name: str, body: bytes) -> None:
        """An event of ``name`` published by a node of the cluster (this one
        or another): a moderation change is read again; a session of this
        node put out of the room by another node leaves it here too."""
        if body.startswith((b'{"type":"mode"', b'{"type":"nick"')) or body.startswith(
            b'{"type":"join","room":"%s","seq":1,' % name.encode()
        ):
            # A moderation change, a rename (roles and mutes follow nicks)
            # or a room's first join (its owner): read the room's again.
            self.rules_changed(name)
        elif body.startswith(b'{"type":"leave"') and b'"reason":"kick"' in body:
            ev = decode_event(body)
            if isinstance(ev, LeaveEvent):
                self.put_out_here(name, nick_key(ev.nick))

    def put_out_here(self, name: str, key: str) -> None:
        """The session ``key`` of this node was put out of ``name`` by
        another node (which published its leave): out of it here too."""
        s = self.nicks.get(key)
        room = self.rooms.get(name)
        if s is not None and room is not None and name in s.rooms:
            del s.rooms[name]
            del room.members[s]
            if not room.members:
                self._unload(name)

    def moved_away(self, key: str, now: float) -> None:
        """The session ``key`` went on with its token on another node: forget
        it here, with no leave (its rooms go on there)."""
        s = self.nicks.get(key)
        if s is None:
            return
        for name in list(s.rooms):
            room = self.rooms[name]
            del room.members[s]
            if not room.members:
                self._unload(name)
        s.rooms.clear()
        self._forget(s, now)

    # ------------------------------------------------------------- time

    def expire(self, now: float, out: Outbox) -> int:
        """End the sessions silent for ``timeout_ms``; returns how many.

        While the store takes no writes (:attr:`read_only`), sessions wait:
        ending one publishes events."""
        n = 0
        if not self.read_only:
            deadline = now - self.config.timeout_ms / 1000
            while self.sessions:
                s = next(iter(self.sessions.values()))
                if s.last_seen > deadline:
                    break
                out.reply(s.ident, Notice(text="you were disconnected for inactivity"))
                self._end(s, "timeout", now, out)
                n += 1
        self.recent.expire(now)
        self._forget_addresses(now)
        return n

    def _forget_addresses(self, now: float) -> None:
        """Drop what is known of addresses with no session once their buckets
        would be full again anyway (looked at once a second: expire runs at
        every turn of the loop)."""
        if not self._idle_addresses or now < self._next_forget:
            return
        self._next_forget = now + 1.0
        c = self.config
        refill_s = max(
            c.burst / c.rate if c.rate else 0.0,
            c.address_burst / c.address_rate if c.address_rate else 0.0,
            c.hello_burst / c.hello_rate if c.hello_rate else 0.0,
        )
        for name in [
            n
            for n in self._idle_addresses
            if now - max(self.addresses[n].refilled, self.addresses[n].hello_at) >= refill_s
            and now - self.addresses[n].carry_at >= refill_s
        ]:
            self._idle_addresses.discard(name)
            del self.addresses[name]

    def notice(self, text: str, out: Outbox) -> None:
        """A server-wide notice, published on the ``*`` topic."""
        out.notices.append(encode(Notice(text=text)))

    def next_expiry(self) -> float | None:
        """When the oldest session will time out, if nothing is heard."""
        if not self.sessions or self.read_only:
            # Read-only, an overdue session stays (see expire): its time
            # would be always past, and the loop would spin on it.
            return None
        return next(iter(self.sessions.values())).last_seen + self.config.timeout_ms / 1000


def _page(
    items: list[T],
    key: Callable[[T], str],
    after: str | None,
    make: Callable[[T], msgspec.Struct],
    budget: int,
) -> tuple[list[Any], bool]:
    """The items past ``after`` (by ``key``, in the order given), made into
    reply entries, as many as ``budget`` bytes hold (at least one), and
    whether more follow."""
    found: list[Any] = []
    used = 0
    for item in items:
        if after is not None and key(item) <= after:
            continue
        entry = make(item)
        size = len(encode(entry)) + 1
        if found and used + size > budget:
            return found, True
        found.append(entry)
        used += size
    return found, False


def _fit(names: list[str], budget: int) -> list[str]:
    """As many of ``names`` as a reply of ``budget`` bytes holds."""
    used = 0
    for i, name in enumerate(names):
        used += len(name) + 3
        if used > budget:
            return names[:i]
    return names


S = TypeVar("S", bound=msgspec.Struct)


def _newest(entries: list[S], budget: int) -> tuple[list[S], int]:
    """The newest of ``entries`` (oldest first) that ``budget`` bytes
    hold, oldest first, and the budget left."""
    kept: list[S] = []
    for entry in reversed(entries):
        size = len(encode(entry)) + 1
        if size > budget:
            break
        kept.append(entry)
        budget -= size
    kept.reverse()
    return kept, budget


def _because(reason: str | None) -> str:
    return f": {reason}" if reason else ""


def _why(entry: Entry) -> str:
    """Until when and why, for the message of a refusal."""
    until = ""
    if entry.until is not None:
        at = datetime.fromtimestamp(entry.until, timezone.utc)
        until = f" until {at:%Y-%m-%d %H:%M:%S} UTC"
    return until + _because(entry.reason)


# How refusals name actions and roles.
_ACTION_WORDS = {
    "op": "make operators",
    "deop": "unmake operators",
    "voice": "give voices",
    "devoice": "take voices back",
    "kick": "put people out",
    "ban": "ban",
    "unban": "lift bans",
    "mute": "mute",
    "unmute": "unmute",
    "invite": "invite",
    "mode": "change its settings",
    "bans": "list its bans",
}
_ROLE_WORDS = {
    "member": "a member",
    "voice": "a voice",
    "op": "an operator",
    "owner": "its owner",
    "server": "a server operator",
}


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
    Say: Core._say,
    Join: Core._join,
    Part: Core._part,
    Pm: Core._pm,
    Who: Core._who,
    Rooms: Core._rooms,
    History: Core._history,
    Search: Core._search,
    Nick: Core._nick,
    Topic: Core._topic,
    Ping: Core._ping,
    Bye: Core._bye,
    Offer: Core._offer,
    Commands: Core._commands,
    Op: Core._op,
    Deop: Core._deop,
    Voice: Core._voice,
    Devoice: Core._devoice,
    Invite: Core._invite,
    Uninvite: Core._uninvite,
    Kick: Core._kick,
    Ban: Core._ban,
    Unban: Core._unban,
    Mute: Core._mute,
    Unmute: Core._unmute,
    Mode: Core._mode,
    Bans: Core._bans,
    Oper: Core._oper,
    Kill: Core._kill,
    Wall: Core._wall,
    Release: Core._release_nick,
}
# Tokens each request costs before it is handled. A nick change is charged
# by its handler, by the number of rooms it is announced in. Every join
# costs one, a refused one or one into a room the session is in too: each
# answers with the member list, which is work.
_COST: dict[type, int] = {
    Hello: 0,
    Ping: 0,
    Bye: 0,
    Join: 1,
    Nick: 0,
    Part: 1,
    Say: 1,
    Pm: 1,
    Topic: 1,
    Offer: 1,
    History: 1,
    # A search may look through thousands of events (up to SEARCH_BUDGET_S
    # of the loop): five tokens, so an address's searches take at most a
    # tenth of the loop at the default --address-rate.
    Search: 5,
    Who: 1,
    Rooms: 1,
    Commands: 1,
    # Each moderation change rewrites the room's moderation (up to
    # --max-moderation entries) in the store.
    Op: 2,
    Deop: 2,
    Voice: 2,
    Devoice: 2,
    Invite: 2,
    Uninvite: 2,
    Kick: 2,
    Ban: 2,
    Unban: 2,
    Mute: 2,
    Unmute: 2,
    Mode: 2,
    Bans: 1,
    # A password guess: as dear as a search.
    Oper: 5,
    Kill: 1,
    Wall: 1,
    Release: 1,
}
# Replies that tell nothing the batch's writes could take back.
_FREE = frozenset(
    {Pong, WhoReply, RoomsReply, CommandsReply, BansReply, Offered, Welcome, Error, Notice}
)
# What writes to the store, and is refused while it cannot take writes.
_WRITES = frozenset(
    {Join, Part, Say, Pm, Nick, Topic, Bye, Op, Deop, Voice, Devoice, Invite, Kick, Ban}
    | {Unban, Mute, Unmute, Mode, Kill, Uninvite}
)
