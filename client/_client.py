"""The asyncio client: every event once, in order, across faults.

Theory of operation. A client holds a DEALER (requests and replies) and a
SUB (room events). It subscribes to a room before it joins it, so the only
events it can miss are those before its subscription took effect; the
``joined`` reply names the seq of its own join event, and anything after
that which PUB fails to deliver shows up as a hole in ``seq``.

Per room, the client remembers the last seq it delivered. An event with a
lower or equal seq is a duplicate and is dropped; the next seq is
delivered; a later one is held back while the hole before it is fetched
with ``history``. A ``pong`` whose ``seqs`` is ahead of what was delivered
also starts a repair, so a lost last event is found too.

Every request carries an id unique to this client. Requests wait in
``_pending`` until their reply arrives. When the broker stops answering
(nothing for ``timeout_ms``), restarts (``epoch`` changes) or forgets the
session (``no_session``), the client recovers: a new DEALER with the same
routing id, ``hello`` with the same nick and token, a ``join`` of every
room, repair of each room up to its ``joined.seq``, and then every pending
request is sent again. The broker answers a resent ``say`` or ``pm`` with
its first ``ack``, so nothing is published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

import msgspec
import zmq
import zmq.asyncio

from messages import (
    DEFAULT_ROOM,
    NOTICE_TOPIC,
    Ack,
    Bye,
    CommandInfo,
    Commands,
    CommandSpec,
    CommandsReply,
    Error,
    Hello,
    History,
    HistoryReply,
    Join,
    Joined,
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
    Reply,
    Request,
    RoomEvent,
    Rooms,
    RoomsReply,
    Say,
    Topic,
    Welcome,
    Who,
    WhoReply,
    check_nick,
    check_room,
    decode_event,
    decode_reply,
    encode,
    normalize_room,
    room_topic,
)

log = logging.getLogger("zchat.client")

T = TypeVar("T")

BACKOFF_MAX_S = 2.0
BACKLOG_HIGH = 10_000


class ZchatError(Exception):
    """The broker refused a request; ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str, *, retry_ms: int | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.retry_ms = retry_ms


class ConnectTimeout(ZchatError):
    """The broker did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


# ---------------------------------------------------- connection state items


@dataclass(frozen=True)
class Disconnected:
    """The broker stopped answering; the client is reconnecting."""

    reason: str


@dataclass(frozen=True)
class Reconnected:
    """The client is back: ``recovered`` events were fetched from history."""

    recovered: int
    restarted: bool


@dataclass(frozen=True)
class Repaired:
    """A hole in a room's ``seq`` was filled from history."""

    room: str
    count: int


Status = Union[Disconnected, Reconnected, Repaired]
Item = Union[MsgEvent, RoomEvent, PmPush, Notice, Disconnected, Reconnected, Repaired]


@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys for a client: the broker's public key and our own pair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes


@dataclass
class _Room:
    name: str
    last: int | None = None  # last seq delivered; None until joined
    held: dict[int, Any] = field(default_factory=dict)  # seq -> event, past a hole
    repairing: bool = False
    joined: bool = False


@dataclass
class _Pending:
    msg: Any
    future: asyncio.Future[Any]
    sent: bool = False


class Client:
    """A zchat connection that reconnects and repairs by itself.

    Args:
        connect: the broker's ROUTER endpoint, e.g. ``tcp://127.0.0.1:5555``.
        nick: the nick to ask for.
        rooms: rooms to join on start (``general`` when not given).
        token: a session token from an earlier ``welcome``, to take over.
        client_name: what ``hello`` says this program is.
        curve: CURVE keys, when the broker encrypts.
        rcvhwm: how many events the SUB socket may queue (0: unlimited).
        context: a ``zmq.asyncio.Context`` to use instead of the shared one.

    Use as ``async with Client(...) as c:``, or call :meth:`start` and
    :meth:`close`. Events, pushes and connection changes come from
    :meth:`items`.
    """

    def __init__(
        self,
        connect: str,
        nick: str,
        *,
        rooms: Iterable[str] | None = None,
        token: str | None = None,
        client_name: str = "zchat-py/0.1",
        curve: CurveKeys | None = None,
        rcvhwm: int = 100_000,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoint = connect
        self.nick = nick
        self.token = token
        self.client_name = client_name
        self.curve = curve
        self.rcvhwm = rcvhwm
        self.ctx = context or zmq.asyncio.Context.instance()
        self.welcome: Welcome | None = None
        self.epoch: str | None = None
        self.heartbeat_s = 5.0
        self.timeout_s = 15.0
        self.connected = False
        self.closed = False
        self.routing_id = b"zc-" + secrets.token_hex(8).encode()
        self._id_prefix = secrets.token_hex(4) + "-"
        self._next_id = 0
        self._rooms: dict[str, _Room] = {}
        self._want_rooms = [
            check_room(normalize_room(r)) for r in (rooms if rooms is not None else [DEFAULT_ROOM])
        ]
        self._offer: list[CommandSpec] | None = None
        self._pending: dict[str, _Pending] = {}
        self._items: deque[Item] = deque()
        self._item_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._dealer: zmq.asyncio.Socket | None = None
        self._backlog = False
        self._flusher: asyncio.Task[Any] | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[Any] | None = None
        self._recovering: asyncio.Task[Any] | None = None
        self._last_rx = time.monotonic()
        self._sub_connected = False
        self._store_changed = False
        self.stats = {"delivered": 0, "duplicates": 0, "repaired": 0, "reconnects": 0}

    # ---------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, timeout: float = 10.0) -> Welcome:
        """Connect, say hello and join the start rooms.

        Raises:
            ZchatError: the broker refused the nick (``nick_taken``,
                ``nick_invalid``, ``unauthorized``) or a room.
            ConnectTimeout: no answer within ``timeout`` seconds.
        """
        check_nick(self.nick)
        self._sub = self._socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        self._sub.subscribe(NOTICE_TOPIC)
        self._new_dealer()
        self._spawn(self._heartbeat())
        try:
            welcome = await asyncio.wait_for(self._hello(), timeout)
        except asyncio.TimeoutError:
            await self.close(quiet=True)
            raise ConnectTimeout(f"no answer from {self.endpoint} within {timeout:g} s") from None
        except BaseException:
            await self.close(quiet=True)
            raise
        self._spawn(self._read_sub())
        self.connected = True
        for room in self._want_rooms:
            await self.join(room)
        return welcome

    async def close(self, reason: str | None = None, *, quiet: bool = False) -> None:
        """Say ``bye`` (unless ``quiet``) and close the sockets."""
        if self.closed:
            return
        if not quiet and self.connected and self._dealer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call(Bye(reason=reason)), 2.0)
        self.closed = True
        self.connected = False
        current = asyncio.current_task()
        for task in [*self._tasks, self._reader, self._recovering]:
            if task is not None and task is not current:
                task.cancel()
        for task in [*self._tasks, self._reader, self._recovering]:
            if task is not None and task is not current:
                with contextlib.suppress(BaseException):
                    await task
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(ZchatError("closed", "the client was closed"))
                # Whoever waited may be gone (a cancelled ping): don't log it.
                p.future.exception()
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._item_ready.set()

    # ------------------------------------------------------------- sockets

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        if self.curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        return sock

    def _new_dealer(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._dealer is not None:
            self._dealer.close(linger=0)
        dealer = self._socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, self.routing_id)
        # Queue nothing on a connection that is not up: what was not sent
        # stays pending here and is sent again after the hello.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, 10_000)
        dealer.connect(self.endpoint)
        self._dealer = dealer
        self._reader = asyncio.ensure_future(self._read_dealer(dealer))

    def _events_endpoint(self, advertised: str) -> str:
        transport, _, rest = advertised.partition("://")
        host, _, port = rest.rpartition(":")
        if host.strip("[]") in ("*", "0.0.0.0", "::", ""):
            our_host = self.endpoint.partition("://")[2].rpartition(":")[0]
            return f"{transport}://{our_host}:{port}"
        return advertised

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("client task failed", exc_info=task.exception())

    # ------------------------------------------------------------ requests

    def _rid(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}{self._next_id}"

    def _send(self, msg: Any) -> bool:
        """Send now or not at all. A non-blocking send on an asyncio socket
        settles its future at once; reading it here also keeps a refused
        send from being logged as a forgotten exception."""
        dealer = self._dealer
        if dealer is None:
            return False
        fut = dealer.send(encode(msg), zmq.NOBLOCK)
        if not fut.done():
            return True
        err = fut.exception()
        if err is None:
            return True
        if isinstance(err, zmq.Again):
            return False
        raise err

    def _start_flusher(self) -> None:
        """Send what could not be sent (a full queue), in order, as soon as
        the socket takes it; later requests queue behind it meanwhile."""
        self._backlog = True
        if self._flusher is None or self._flusher.done():
            self._flusher = self._spawn(self._flush_unsent())

    async def _flush_unsent(self) -> None:
        while not self.closed:
            if self.connected and self._recovering is None:
                for p in list(self._pending.values()):
                    if p.sent or p.future.done():
                        continue
                    if not self._send(p.msg):
                        break
                    p.sent = True
                else:
                    self._backlog = False
                    return
            dealer = self._dealer
            try:
                if dealer is not None:
                    # Bounded, so a socket replaced by a reconnect is noticed.
                    await dealer.poll(100, zmq.POLLOUT)
                else:
                    await asyncio.sleep(0.1)
            except zmq.ZMQError:
                await asyncio.sleep(0.01)

    async def _call(self, msg: Any) -> Any:
        """Send now, outside the user's requests: hello, rejoin, repair, ping.

        What cannot be sent now waits in ``_pending`` like any request and is
        sent again once the client has recovered.
        """
        msg = msgspec.structs.replace(msg, id=self._rid())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending[msg.id] = _Pending(msg, fut)
        try:
            pending.sent = self._send(msg)
            if not pending.sent:
                self._start_flusher()
            return await fut
        finally:
            self._pending.pop(msg.id, None)

    async def request(self, msg: Request, *, retry_rate_limited: bool = True) -> Reply:
        """Send a request and wait for its reply, across reconnects.

        The request is kept until answered: if the connection is lost it is
        sent again, with the same id, once the client is back.

        Raises:
            ZchatError: the broker answered with an ``error``.
        """
        if self.closed:
            raise ZchatError("closed", "the client is closed")
        rid = self._rid()
        msg = msgspec.structs.replace(msg, id=rid)  # type: ignore[type-var]
        loop = asyncio.get_running_loop()
        while True:
            fut: asyncio.Future[Any] = loop.create_future()
            pending = self._pending[rid] = _Pending(msg, fut)
            if self.connected and self._recovering is None:
                if not self._backlog:
                    pending.sent = self._send(msg)
                if not pending.sent:
                    self._start_flusher()
            try:
                reply = await fut
            finally:
                self._pending.pop(rid, None)
            if isinstance(reply, Error):
                if reply.code == "rate_limited" and retry_rate_limited:
                    await asyncio.sleep((reply.retry_ms or 100) / 1000)
                    continue
                raise ZchatError(reply.code, reply.message, retry_ms=reply.retry_ms)
            return reply  # type: ignore[no-any-return]

    async def say(self, room: str, text: str, *, action: bool = False) -> Ack:
        """Say ``text`` in ``room`` (an action, like ``/me``, when ``action``)."""
        reply = await self.request(Say(room=normalize_room(room), text=text, action=action or None))
        assert isinstance(reply, Ack)
        return reply

    async def pm(self, nick: str, text: str) -> Ack:
        """Send a private message to ``nick``."""
        reply = await self.request(Pm(to=nick, text=text))
        assert isinstance(reply, Ack)
        return reply

    async def join(self, room: str) -> Joined:
        """Join ``room``: subscribe first, then ask, so no event is missed."""
        name = check_room(normalize_room(room))
        st = self._rooms.get(name)
        if st is None:
            st = self._rooms[name] = _Room(name)
            assert self._sub is not None
            self._sub.subscribe(room_topic(name))
        reply = await self.request(Join(room=name))
        assert isinstance(reply, Joined)
        self._on_joined(st, reply, restarted=False)
        return reply

    async def part(self, room: str, reason: str | None = None) -> Parted:
        name = normalize_room(room)
        reply = await self.request(Part(room=name, reason=reason))
        assert isinstance(reply, Parted)
        if self._rooms.pop(name, None) is not None and self._sub is not None:
            self._sub.unsubscribe(room_topic(name))
        return reply

    async def who(self, room: str | None = None) -> WhoReply:
        reply = await self.request(Who(room=normalize_room(room) if room else None))
        assert isinstance(reply, WhoReply)
        return reply

    async def list_rooms(self) -> RoomsReply:
        reply = await self.request(Rooms())
        assert isinstance(reply, RoomsReply)
        return reply

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
    ) -> tuple[list[RoomEvent], bool]:
        """Events of ``room`` from the store, oldest first, and whether more exist."""
        reply = await self.request(
            History(room=normalize_room(room), after=after, before=before, limit=limit)
        )
        assert isinstance(reply, HistoryReply)
        return [decode_event(bytes(e)) for e in reply.events], reply.more  # type: ignore[misc]

    async def set_nick(self, nick: str) -> NickReply:
        reply = await self.request(Nick(nick=nick))
        assert isinstance(reply, NickReply)
        self.nick = reply.new
        return reply

    async def topic(self, room: str, topic: str) -> Ack:
        reply = await self.request(Topic(room=normalize_room(room), topic=topic))
        assert isinstance(reply, Ack)
        return reply

    async def offer_commands(self, commands: Iterable[CommandSpec]) -> int:
        """Announce the commands this client (a bot) answers; offered again
        by itself after a reconnect."""
        self._offer = list(commands)
        reply = await self.request(Offer(commands=self._offer))
        assert isinstance(reply, Offered)
        return reply.count

    async def commands(self, room: str | None = None) -> list[CommandInfo]:
        """The commands offered by the members of ``room`` (everyone's without)."""
        reply = await self.request(Commands(room=normalize_room(room) if room else None))
        assert isinstance(reply, CommandsReply)
        return reply.commands

    @property
    def backlog(self) -> int:
        """How many items wait to be taken from :meth:`items`."""
        return len(self._items)

    @property
    def rooms(self) -> list[str]:
        """The rooms this client is in, in join order."""
        return [r.name for r in self._rooms.values() if r.joined]

    def last_seq(self, room: str) -> int | None:
        """The seq of the last event delivered from ``room``."""
        st = self._rooms.get(room)
        return None if st is None else st.last

    # --------------------------------------------------------------- items

    async def items(self) -> AsyncIterator[Item]:
        """Events (in seq order, each once), pushes and connection changes."""
        while True:
            while self._items:
                item = self._items.popleft()
                if len(self._items) < BACKLOG_HIGH // 2:
                    self._drained.set()
                yield item
            if self.closed:
                return
            self._item_ready.clear()
            await self._item_ready.wait()

    async def next_item(self, timeout: float | None = None) -> Item:
        """The next item, waiting at most ``timeout`` seconds."""

        async def first() -> Item:
            async for item in self.items():
                return item
            raise ZchatError("closed", "the client is closed")

        return await asyncio.wait_for(first(), timeout)

    def _put(self, item: Item) -> None:
        self._items.append(item)
        self._item_ready.set()
        if len(self._items) >= BACKLOG_HIGH:
            self._drained.clear()

    # ------------------------------------------------------------- readers

    async def _read_dealer(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            frame = await dealer.recv()
            self._last_rx = time.monotonic()
            try:
                msg = decode_reply(frame)
            except ProtocolError as err:
                log.warning("ignoring a frame from the broker: %s", err)
                continue
            if isinstance(msg, PmPush | Notice):
                self._put(msg)
                continue
            rid = getattr(msg, "id", None)
            if isinstance(msg, Error) and msg.code == "no_session":
                self._start_recovery("the broker does not know this session")
                p = self._pending.get(rid) if rid else None
                if p is not None and p.msg.__class__ is not Hello:
                    p.sent = False  # resent once the session is back
                    continue
            if isinstance(msg, Pong):
                self._on_pong(msg)
            p = self._pending.get(rid) if rid else None
            if p is not None and not p.future.done():
                p.future.set_result(msg)

    async def _read_sub(self) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            if not self._drained.is_set():
                # Our reader is behind: stop reading, let PUB drop, and
                # repair from history once there is room again.
                await self._drained.wait()
            topic, body = await sub.recv_multipart()
            try:
                ev = decode_event(body)
            except ProtocolError as err:
                log.warning("ignoring an event: %s", err)
                continue
            if isinstance(ev, Notice):
                if topic == NOTICE_TOPIC:
                    self._put(ev)
                continue
            self._on_event(ev)

    # -------------------------------------------------------------- events

    def _on_event(self, ev: Any) -> None:
        st = self._rooms.get(ev.room)
        if st is None:
            return
        if st.last is None:
            st.held[ev.seq] = ev  # before our joined reply: keep it for then
            return
        if ev.seq <= st.last:
            self.stats["duplicates"] += 1
            return
        if ev.seq == st.last + 1:
            self._deliver(st, ev)
            self._release(st)
            return
        st.held[ev.seq] = ev
        self._repair_soon(st, ev.seq - 1)

    def _deliver(self, st: _Room, ev: Any) -> None:
        st.last = ev.seq
        self.stats["delivered"] += 1
        if isinstance(ev, NickEvent) and ev.old == self.nick:
            self.nick = ev.new
        self._put(ev)

    def _release(self, st: _Room) -> None:
        assert st.last is not None
        while st.held:
            nxt = st.held.pop(st.last + 1, None)
            if nxt is None:
                for seq in [s for s in st.held if s <= st.last]:
                    del st.held[seq]
                    self.stats["duplicates"] += 1
                return
            self._deliver(st, nxt)

    def _on_joined(
        self, st: _Room, joined: Joined, *, restarted: bool, repair: bool = True
    ) -> None:
        if st.last is None:
            st.last = joined.seq - 1 if joined.seq > 0 else 0
        elif restarted and joined.seq <= st.last and self._store_changed:
            # The broker came back without its history (a ':memory:' store):
            # its numbering starts again, and so must ours.
            log.warning("#%s restarted its numbering at %d", st.name, joined.seq)
            st.last = joined.seq - 1
            st.held.clear()
        st.joined = True
        self._release(st)
        if repair and joined.seq > st.last:
            self._repair_soon(st, joined.seq, delay=0.2)

    def _on_pong(self, pong: Pong) -> None:
        if self.epoch is not None and pong.epoch != self.epoch:
            self._start_recovery("the broker restarted")
            return
        for name, seq in pong.seqs.items():
            st = self._rooms.get(name)
            if st is not None and st.last is not None and seq > st.last:
                self._repair_soon(st, seq, delay=0.2)

    def _repair_soon(self, st: _Room, upto: int, *, delay: float = 0.0) -> None:
        if st.repairing or self.closed:
            return
        st.repairing = True
        self._spawn(self._repair(st, upto, delay))

    async def _repair(self, st: _Room, upto: int, delay: float) -> int:
        """Fetch what is missing from ``st`` up to seq ``upto``; returns how many."""
        fetched = 0
        try:
            if delay:
                # PUB may simply be a little behind the reply that told us.
                await asyncio.sleep(delay)
            while st.last is not None and st.last < upto and self._rooms.get(st.name) is st:
                reply = await self._fetch(st.name, st.last)
                got = 0
                for body in reply.events:
                    ev = decode_event(bytes(body))  # type: ignore[call-overload]
                    if isinstance(ev, Notice) or st.last is None or ev.seq <= st.last:
                        continue
                    if ev.seq != st.last + 1:
                        if got:
                            break
                        # History starts past the hole: the broker no longer
                        # keeps it (--retain-days). Skip it rather than stall.
                        log.warning("#%s: events %d..%d are gone", st.name, st.last + 1, ev.seq - 1)
                        st.last = ev.seq - 1
                    self._deliver(st, ev)
                    got += 1
                self._release(st)
                fetched += got
                if got == 0:
                    if st.held:
                        # Not retained any more: skip the hole rather than stall.
                        first = min(st.held)
                        log.warning("#%s: events %d..%d are gone", st.name, st.last + 1, first - 1)
                        st.last = first - 1
                        self._release(st)
                        continue
                    break
                upto = max(upto, max(st.held) - 1 if st.held else upto)
        finally:
            st.repairing = False
        if fetched:
            self.stats["repaired"] += fetched
            self._put(Repaired(st.name, fetched))
        if st.held and st.last is not None and not self.closed:
            self._repair_soon(st, min(st.held) - 1)
        return fetched

    async def _fetch(self, room: str, after: int) -> HistoryReply:
        while True:
            reply = await self._call(History(room=room, after=after, limit=500))
            if isinstance(reply, HistoryReply):
                return reply
            if isinstance(reply, Error) and reply.code == "rate_limited":
                await asyncio.sleep((reply.retry_ms or 100) / 1000)
                continue
            raise ZchatError(getattr(reply, "code", "bad_reply"), f"history failed: {reply}")

    # ----------------------------------------------------- liveness, recovery

    async def _heartbeat(self) -> None:
        last_ping = 0.0
        while True:
            await asyncio.sleep(min(self.heartbeat_s * 0.5, 1.0) if self.connected else 0.2)
            if not self.connected or self._recovering is not None:
                continue
            now = time.monotonic()
            if now - self._last_rx > self.timeout_s:
                self._start_recovery(f"no answer for {self.timeout_s:g} s")
                continue
            if now - last_ping >= self.heartbeat_s * 0.5:
                last_ping = now
                self._spawn(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, ZchatError):
            await asyncio.wait_for(self._call(Ping()), self.timeout_s)

    def _start_recovery(self, reason: str) -> None:
        if self._recovering is not None or self.closed or not self.connected:
            return
        log.info("reconnecting: %s", reason)
        self._put(Disconnected(reason))
        self._recovering = self._spawn(self._recover())

    async def _recover(self) -> None:
        self.stats["reconnects"] += 1
        old_epoch = self.epoch
        backoff = 0.1
        try:
            while True:
                self._new_dealer()
                try:
                    joins = await asyncio.wait_for(self._rejoin(), max(self.timeout_s, 2.0))
                    break
                except (asyncio.TimeoutError, ZchatError, zmq.ZMQError) as err:
                    log.info("broker not back yet (%s); retrying", err or "timeout")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._recovering = None
        self._last_rx = time.monotonic()
        restarted = self.epoch != old_epoch
        # Whatever was sent before and not answered goes again, in order:
        # the broker answers a repeated say or pm with its first ack.
        for p in self._pending.values():
            p.sent = False
        self._start_flusher()
        recovered = 0
        for st, joined in joins:
            before = st.last
            self._on_joined(st, joined, restarted=restarted, repair=False)
            if st.last is not None and joined.seq > st.last:
                st.repairing = True
                recovered += await self._repair(st, joined.seq, 0.0)
            elif before is not None and st.last is not None:
                recovered += max(0, st.last - before)
        self._put(Reconnected(recovered=recovered, restarted=restarted))

    async def _rejoin(self) -> list[tuple[_Room, Joined]]:
        await self._hello()
        joins = []
        for st in list(self._rooms.values()):
            reply = await self._call(Join(room=st.name))
            if isinstance(reply, Error):
                log.warning("could not rejoin #%s: %s", st.name, reply.message)
                continue
            joins.append((st, reply))
        if self._offer is not None:
            await self._call(Offer(commands=self._offer))
        return joins

    async def _hello(self) -> Welcome:
        dealer = self._dealer
        assert dealer is not None
        # IMMEDIATE: nothing can be sent before the connection is up.
        while not await dealer.poll(1000, zmq.POLLOUT):
            pass
        reply = await self._call(Hello(nick=self.nick, token=self.token, client=self.client_name))
        if isinstance(reply, Error):
            raise ZchatError(reply.code, reply.message)
        assert isinstance(reply, Welcome)
        old_store = self.welcome.server.store if self.welcome is not None else None
        # Without a store id (another broker), a numbering that went back
        # is taken as a lost store.
        self._store_changed = old_store is None or reply.server.store != old_store
        self.welcome = reply
        self.nick = reply.nick
        self.token = reply.token
        self.epoch = reply.server.epoch
        self.heartbeat_s = reply.heartbeat_ms / 1000
        self.timeout_s = reply.timeout_ms / 1000
        self._last_rx = time.monotonic()
        if self._sub is not None and not self._sub_connected:
            self._sub.connect(self._events_endpoint(reply.events))
            self._sub_connected = True
        return reply
