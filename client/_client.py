"""The asyncio client: every event once, in order, across faults.

Theory of operation. A client holds a DEALER (requests and replies) and a
SUB (room events). It subscribes to a room before it joins it, so the only
events it can miss are those before its subscription took effect; the
``joined`` reply names the seq of its own join event, and anything after
that which PUB fails to deliver shows up as a hole in ``seq``.

Which events to deliver, which to hold back and which ranges to fetch from
``history`` is decided by a :class:`~client._sequencer.Sequencer`, which
does no I/O. The client feeds it every input (events from the SUB,
``joined`` replies, pongs, history pages, and a reconnect with the same or
another store) and does what it answers: it queues the events for
:meth:`Client.items` and makes the fetches, at most one per room at a time.

Every request carries an id unique to this client. Requests wait in
``_pending`` until their reply arrives. When the broker stops answering
(nothing for ``timeout_ms``), restarts (``epoch`` changes) or forgets the
session (``no_session``), the client recovers: a new DEALER (with the same
routing id, but under CURVE one ZeroMQ picks, since the broker hands no id
over to another key), ``hello`` with the same nick and token, a ``join`` of every
room (whose reply tells the sequencer what was missed meanwhile), and then
every pending request is sent again. The broker answers a resent ``say`` or
``pm`` with its first ``ack``, so nothing is published twice. The client's
own calls (``hello``, the rejoins, history for repair) wait and try again
when refused with ``rate_limited`` or ``unavailable``.

A client may be given several endpoints, the nodes of a cluster that share
rooms, sessions and history; it adds those a ``welcome`` names in
``server.nodes``. It starts on the first that answers. When its node stops
answering, it recovers on the next one (round-robin, one attempt each): the
same ``hello`` with the token, rejoins and resends. Another node's
``epoch`` differs, so ``server.store`` tells whether seq goes on (a shared
store) or starts again, as after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

import messages as _m
from messages import (
    DEFAULT_ROOM,
    HISTORY_MAX,
    NOTICE_TOPIC,
    TEXT_MAX,
    Ack,
    Bye,
    Code,
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
    Search,
    SearchReply,
    Topic,
    Welcome,
    Who,
    WhoReply,
    check_nick,
    check_room,
    clean_text,
    decode_event,
    decode_reply,
    encode,
    key_fingerprint,
    nick_key,
    normalize_room,
    room_topic,
)

from ._errors import (
    ClientClosed,
    ConnectRefused,
    ConnectTimeout,
    InvalidInput,
    RequestRefused,
    ZchatError,
)
from ._sequencer import Fetch, Sequencer, Step

log = logging.getLogger("zchat.client")

T = TypeVar("T")

BACKOFF_MAX_S = 2.0
NICK_RETRY_S = 1.0
BACKLOG_HIGH = 10_000
# Refusals that only say "not now": the client's own calls wait retry_ms
# and ask again, and never give a room up over them.
RETRY_CODES = frozenset({Code.RATE_LIMITED, Code.UNAVAILABLE})
# At most this many endpoints, given and learned from welcome.server.nodes.
MAX_ENDPOINTS = 64
_WILDCARD_HOSTS = ("*", "0.0.0.0", "::", "")
R = TypeVar("R")
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # (nothing listens there: TCP refused; libzmq retries by itself)
    | zmq.EVENT_CONNECT_RETRIED
)
_ENDPOINT_RE = re.compile(
    r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([0-9]{1,5})|(ipc|inproc)://\S+"
)


def valid_room(typed: str) -> str:
    """A room as a person typed it (``#dev``), as its name, or InvalidInput."""
    try:
        return check_room(normalize_room(typed))
    except ProtocolError as err:
        raise InvalidInput.of(err) from None


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` when it is one ZeroMQ can connect to, else InvalidInput
    naming the form (``tcp://HOST:PORT``)."""
    m = _ENDPOINT_RE.fullmatch(endpoint)
    if m is not None and (m.group(2) is None or 0 < int(m.group(2)) < 65536):
        return endpoint
    hint = f" (tcp://{endpoint}?)" if re.fullmatch(r"[^\s:/]+:[0-9]{1,5}", endpoint) else ""
    raise InvalidInput(
        "bad_endpoint",
        f"{endpoint!r} is not an endpoint: write tcp://HOST:PORT{hint}, or ipc://PATH",
    )


def split_endpoints(connect: str | Sequence[str]) -> list[str]:
    """The endpoints of ``connect``: one, a comma-separated string
    (``tcp://a:5555,tcp://b:5555``) or a list, stripped, each once, in
    order; not checked (see :func:`check_endpoints`)."""
    parts = connect.split(",") if isinstance(connect, str) else list(connect)
    return list(dict.fromkeys(p.strip() if isinstance(p, str) else p for p in parts))


def check_endpoints(connect: str | Sequence[str]) -> list[str]:
    """The endpoints of ``connect`` (see :func:`split_endpoints`) when each
    is one ZeroMQ can connect to, else InvalidInput naming the first bad one."""
    endpoints = split_endpoints(connect)
    if not endpoints:
        raise InvalidInput("bad_endpoint", "no endpoint given: write tcp://HOST:PORT")
    for i, endpoint in enumerate(endpoints, 1):
        if not isinstance(endpoint, str):
            raise InvalidInput("bad_endpoint", f"{endpoint!r} is not an endpoint (not text)")
        try:
            check_endpoint(endpoint)
        except InvalidInput as err:
            if len(endpoints) == 1:
                raise
            raise InvalidInput(
                err.code, f"endpoint {i} of {len(endpoints)}: {err.message}"
            ) from None
    if len(endpoints) > MAX_ENDPOINTS:
        raise InvalidInput("bad_endpoint", f"{len(endpoints)} endpoints: at most {MAX_ENDPOINTS}")
    return endpoints


def _host(endpoint: str) -> str:
    return endpoint.partition("://")[2].rpartition(":")[0]


def _expect(reply: Any, kind: type[R]) -> R:
    """``reply`` when it is a ``kind``: a broker that answers a request with
    something else breaks the contract (an error here, not an assert, which
    ``python -O`` would drop)."""
    if not isinstance(reply, kind):
        raise ZchatError("bad_reply", f"expected {kind.__name__}, the broker sent {reply!r}")
    return reply


def _own_event(client: Client, reply: Joined) -> bool:
    """Whether ``reply.seq`` numbers the client's own join: not for a quiet
    session (it makes none), nor when it was in the room already (a session
    taken over by token), where it is the room's last event: delivered
    before, by whoever had the session then."""
    return not client.quiet and not reply.already


def handshake_failure(event: int, value: int, *, curve: CurveKeys | None) -> str:
    """What a failed handshake (a socket monitor event) means, for people."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        mine = f" (fingerprint {key_fingerprint(curve.public)})" if curve is not None else ""
        return (
            f"the broker refused this client's key{mine}: it admits only the keys "
            "in its --allow-keys folder"
        )
    mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if curve is not None:
        if mismatch:
            return "the broker does not encrypt: leave --server-key out"
        return (
            "the encrypted handshake failed: is --server-key the broker's public key, "
            "and does the broker encrypt?"
        )
    if mismatch:
        return "the broker encrypts (CURVE): give its public key with --server-key"
    # Which side saw the mismatch first decides whether it is named: the
    # broker may just close the connection.
    return "the handshake failed: if the broker encrypts (CURVE), give its public key with --server-key"


# ---------------------------------------------------- connection state items


@dataclass(frozen=True)
class Disconnected:
    """The broker stopped answering; the client is reconnecting. ``endpoint``
    is the node it moves to, when it has several and leaves its own (None:
    it tries the same endpoint again)."""

    reason: str
    endpoint: str | None = None


@dataclass(frozen=True)
class Reconnected:
    """The client is back: ``recovered`` events were fetched from history.
    ``lost`` are rooms the broker would not let it back into (a limit
    reached meanwhile), each with why; the client is no longer in them.
    ``endpoint`` is where it is back when that is another node than the one
    it lost (None: the same endpoint)."""

    recovered: int
    restarted: bool
    lost: tuple[tuple[str, str], ...] = ()
    endpoint: str | None = None


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
class _Pending:
    msg: Any
    future: asyncio.Future[Any]
    sent: bool = False


class Client:
    """A zchat connection that reconnects and repairs by itself.

    Args:
        connect: the broker's ROUTER endpoint, e.g. ``tcp://127.0.0.1:5555``;
            or several, the nodes of a cluster, as a comma-separated string
            or a list: the client starts on the first that answers and
            moves to the next when its node stops answering.
        nick: the nick to ask for.
        rooms: rooms to join on start (``general`` when not given).
        token: a session token from an earlier ``welcome``, to take over.
        client_name: what ``hello`` says this program is.
        quiet: a session that only sends or only reads (a script, a tail):
            the broker publishes no join or leave for it, and ``who`` lists
            it apart.
        curve: CURVE keys, when the broker encrypts.
        rcvhwm: how many events the SUB socket may queue (0: unlimited).
        context: a ``zmq.asyncio.Context`` to use instead of the shared one.

    Use as ``async with Client(...) as c:``, or call :meth:`start` and
    :meth:`close`. Events, pushes and connection changes come from
    :meth:`items`.
    """

    def __init__(
        self,
        connect: str | Sequence[str],
        nick: str,
        *,
        rooms: Iterable[str] | None = None,
        token: str | None = None,
        client_name: str = "zchat-py/0.1",
        quiet: bool = False,
        curve: CurveKeys | None = None,
        rcvhwm: int = 100_000,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        # Checked by start(); welcome.server.nodes may add more.
        self.endpoints: list[str] = split_endpoints(connect)
        self._current = 0
        # The endpoint in use.
        self.endpoint: str = self.endpoints[0] if self.endpoints else ""
        self.nick = nick
        self.token = token
        self.client_name = client_name
        self.quiet = quiet
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
        self._rooms: dict[str, bool] = {}  # followed rooms: joined or not
        self._joined_at: dict[str, int] = {}  # room -> the seq of our last join
        self._seq: Sequencer[Any] = Sequencer()
        self._fetching: dict[str, asyncio.Task[Any]] = {}
        # A Reconnected owed once the rooms have what they missed:
        # (restarted, stats["repaired"] when it began, {room: joined seq},
        # the endpoint moved to or None).
        self._owed: tuple[bool, int, dict[str, int], str | None] | None = None
        self._lost: list[tuple[str, str]] = []  # rooms a rejoin was refused, until told
        self._want_rooms = [valid_room(r) for r in (rooms if rooms is not None else [DEFAULT_ROOM])]
        self._offer: list[CommandSpec] | None = None
        # Given again after a reconnect: a new session is no operator.
        self._oper_password: str | None = None
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
        self._monitor: zmq.asyncio.Socket | None = None
        self._watcher: asyncio.Future[Any] | None = None
        self._refused: asyncio.Future[ConnectRefused] | None = None
        self._unreachable = asyncio.Event()  # (one per DEALER: _new_dealer)
        # The round trip of the last heartbeat ping, in ms (None before one).
        self.lag_ms: int | None = None
        self._recovering: asyncio.Task[Any] | None = None
        self._last_rx = time.monotonic()
        self._sub_endpoint: str | None = None  # where the SUB is connected
        self._stats = {"delivered": 0, "repaired": 0, "skipped": 0, "reconnects": 0}

    # ---------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, timeout: float = 10.0, nick_wait: float = 0.0) -> Welcome:
        """Connect, say hello and join the start rooms.

        Args:
            timeout: how long to wait for the broker's answer, in seconds;
                with several endpoints, each gets its share of it in turn
                until one answers.
            nick_wait: while the broker says the nick is taken, ask again
                every second for up to this many seconds (added to
                ``timeout``): a program restarted at once finds its nick
                held until its previous session times out.

        Raises:
            InvalidInput: the nick or the endpoint is not valid.
            RequestRefused: the broker refused the nick (``nick_taken``,
                ``unauthorized``) or a room.
            ConnectRefused: the handshake failed (keys, encryption).
            ConnectTimeout: no answer within ``timeout`` seconds.
        """
        try:
            check_nick(self.nick)
        except ProtocolError as err:
            raise InvalidInput.of(err) from None
        self.endpoints = check_endpoints(self.endpoints)
        self._move_to(0)
        self._sub = self._socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        self._sub.subscribe(NOTICE_TOPIC)
        self._refused = asyncio.get_running_loop().create_future()
        self._new_dealer()
        self._spawn(self._heartbeat())
        hello: asyncio.Future[Any] = asyncio.ensure_future(self._hello_any(nick_wait, timeout))
        refused: asyncio.Future[Any] = self._refused
        try:
            done, _ = await asyncio.wait(
                [hello, refused],
                timeout=timeout + nick_wait,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if hello not in done:
                hello.cancel()
                if self._refused.done():
                    raise self._refused.result()
                raise ConnectTimeout(f"no answer from {self._named()} within {timeout:g} s")
            welcome: Welcome = hello.result()
        except BaseException:
            hello.cancel()
            await self.close(quiet=True)
            raise
        self._spawn(self._read_sub())
        self.connected = True
        try:
            for room in self._want_rooms:
                await self.join(room)
        except BaseException:
            # A start that fails leaves nothing running: the session goes
            # too (its caller has no client to close).
            await self.close()
            raise
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
                p.future.set_exception(ClientClosed("the client was closed"))
                # Whoever waited may be gone (a cancelled ping): don't log it.
                p.future.exception()
        self._unwatch()
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
        if kind == zmq.SUB:
            # No ZMTP heartbeats on the SUB: we stop reading it when our
            # reader is behind, and libzmq 4.3.5 aborts the whole process
            # (``!_io_error``, stream_engine_base.cpp:310) when a heartbeat
            # falls due on a connection lost while its input was stopped,
            # as when the broker dies under a lagging subscriber. TCP
            # keepalive finds a dead peer instead, in about 20 s.
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 5)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
        else:
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
        self._unwatch()
        if self._dealer is not None:
            self._dealer.close(linger=0)
        dealer = self._socket(zmq.DEALER)
        # A failed handshake is invisible to requests (they just get no
        # answer); the socket monitor tells which failure it was.
        self._monitor = dealer.get_monitor_socket(_HANDSHAKE_EVENTS)
        # Set when nothing listens at the endpoint: with others to try, the
        # client moves on rather than wait out its timeout there.
        self._unreachable = asyncio.Event()
        self._watcher = asyncio.ensure_future(
            self._watch_handshake(self._monitor, self._unreachable)
        )
        if self.curve is None:
            # The same routing id on every connection lets a broker with
            # ROUTER_HANDOVER keep the session through a reconnection. With
            # CURVE the broker hands no routing id over (no key may take
            # another's): ZeroMQ picks one, and hello with the token
            # takes the session back.
            dealer.setsockopt(zmq.ROUTING_ID, self.routing_id)
        # Queue nothing on a connection that is not up: what was not sent
        # stays pending here and is sent again after the hello.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, 10_000)
        dealer.connect(self.endpoint)
        self._dealer = dealer
        self._reader = asyncio.ensure_future(self._read_dealer(dealer))

    async def _watch_handshake(
        self, monitor: zmq.asyncio.Socket, unreachable: asyncio.Event
    ) -> None:
        reported = ""
        while True:
            ev = parse_monitor_message(await monitor.recv_multipart())
            if int(ev["event"]) == zmq.EVENT_CONNECT_RETRIED:
                unreachable.set()
                continue
            why = handshake_failure(int(ev["event"]), int(ev["value"]), curve=self.curve)
            if self._refused is not None and not self._refused.done() and self.welcome is None:
                self._refused.set_result(ConnectRefused(why))
            elif why != reported:
                log.warning("cannot connect to %s: %s", self.endpoint, why)
            reported = why

    def _unwatch(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._monitor is not None and self._dealer is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._dealer.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def _events_endpoint(self, advertised: str) -> str:
        transport, _, rest = advertised.partition("://")
        host, _, port = rest.rpartition(":")
        if host.strip("[]") in ("*", "0.0.0.0", "::", ""):
            our_host = _host(self.endpoint)
            return f"{transport}://{our_host}:{port}"
        return advertised

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
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
        fut: asyncio.Future[Any] = dealer.send(encode(msg), zmq.NOBLOCK)  # type: ignore[assignment]
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
                    await dealer.poll(100, zmq.POLLOUT)  # type: ignore[call-arg]
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
        sent again, with the same id, once the client is back. With
        ``retry_rate_limited``, a refusal that only says "not now"
        (``rate_limited``, or ``unavailable`` while the broker's store is
        full) is waited out (``retry_ms``) and the request asked again.

        Raises:
            RequestRefused: the broker answered with an ``error``.
            ClientClosed: the client was closed first.
        """
        if self.closed:
            raise ClientClosed()
        rid = self._rid()
        msg = msgspec.structs.replace(msg, id=rid)
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
                if reply.code in RETRY_CODES and retry_rate_limited:
                    await asyncio.sleep((reply.retry_ms or 100) / 1000)
                    continue
                raise RequestRefused(reply.code, reply.message, retry_ms=reply.retry_ms)
            return reply  # type: ignore[no-any-return]

    def _text(self, text: str) -> str:
        """``text`` as the broker will take it, or InvalidInput at once: past
        the broker's limit (from ``welcome``), empty, or with a control
        character, it would only be refused."""
        limit = self.welcome.limits.max_text if self.welcome is not None else TEXT_MAX
        try:
            return clean_text(text, limit)
        except ProtocolError as err:
            raise InvalidInput.of(err) from None

    async def say(self, room: str, text: str, *, action: bool = False) -> Ack:
        """Say ``text`` in ``room`` (an action, like ``/me``, when ``action``).

        Raises:
            InvalidInput: the text is empty, too long or not valid text.
            RequestRefused: the broker refused it (``not_in_room``, ...).
        """
        text = self._text(text)
        raw = await self.request(Say(room=normalize_room(room), text=text, action=action or None))
        reply = _expect(raw, Ack)
        return reply

    async def pm(self, nick: str, text: str) -> Ack:
        """Send a private message to ``nick``."""
        raw = await self.request(Pm(to=nick, text=self._text(text)))
        reply = _expect(raw, Ack)
        return reply

    async def join(self, room: str) -> Joined:
        """Join ``room``: subscribe first, then ask, so no event is missed."""
        name = valid_room(room)
        new = name not in self._rooms
        if new:
            self._rooms[name] = False
            self._seq.track(name)
            assert self._sub is not None
            self._sub.subscribe(room_topic(name))
        try:
            reply = _expect(await self.request(Join(room=name)), Joined)
        except ZchatError:
            # Refused: not a member, so neither subscribed nor waiting for
            # its events (they would pile up), nor rejoined at a reconnect.
            if new and self._rooms.get(name) is False:
                self._forget_room(name)
            raise
        if name in self._rooms:
            self._rooms[name] = True
            self._joined_at[name] = reply.seq
            self._apply(self._seq.joined(name, reply.seq, own_event=_own_event(self, reply)))
        return reply

    async def part(self, room: str, reason: str | None = None) -> Parted:
        name = normalize_room(room)
        reply = _expect(await self.request(Part(room=name, reason=reason)), Parted)
        self._forget_room(name)
        return reply

    def _forget_room(self, name: str) -> None:
        self._joined_at.pop(name, None)
        if self._rooms.pop(name, None) is not None and self._sub is not None:
            self._sub.unsubscribe(room_topic(name))
        self._seq.forget(name)
        fetching = self._fetching.pop(name, None)
        if fetching is not None:
            fetching.cancel()

    async def who(self, room: str | None = None, *, pages: int = 5) -> WhoReply:
        """Who is in ``room`` (everyone connected without): the broker's pages,
        up to ``pages`` of them, as one reply (``more`` when some were left)."""
        name = normalize_room(room) if room else None
        users: list[Any] = []
        after = None
        for _ in range(pages):
            reply = _expect(await self.request(Who(room=name, after=after)), WhoReply)
            users += reply.users
            if not reply.more or not reply.users:
                return WhoReply(id=reply.id, room=reply.room, users=users, more=False)
            after = reply.users[-1].nick.lower()
        return WhoReply(id=reply.id, room=reply.room, users=users, more=True)

    async def list_rooms(self, *, pages: int = 5) -> RoomsReply:
        """The rooms with people in them, up to ``pages`` of the broker's pages."""
        rooms: list[Any] = []
        after = None
        for _ in range(pages):
            reply = _expect(await self.request(Rooms(after=after)), RoomsReply)
            rooms += reply.rooms
            if not reply.more or not reply.rooms:
                return RoomsReply(id=reply.id, rooms=rooms, more=False)
            after = reply.rooms[-1].name
        return RoomsReply(id=reply.id, rooms=rooms, more=True)

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
    ) -> tuple[list[RoomEvent], bool]:
        """Events of ``room`` from the store, oldest first, and whether more exist."""
        raw = await self.request(
            History(room=normalize_room(room), after=after, before=before, limit=limit)
        )
        reply = _expect(raw, HistoryReply)
        return [decode_event(bytes(e)) for e in reply.events], reply.more  # type: ignore[misc]

    async def search(
        self, room: str, text: str, *, before: int | None = None, limit: int | None = None
    ) -> tuple[list[MsgEvent], int | None]:
        """A page of the ``msg`` events of ``room`` whose text has every word
        of ``text`` (each beginning a word, any case), oldest first; the
        first page has the newest. Also the ``before`` to ask with for older
        matches, None when there are none. A page may be short, even empty,
        with older matches to come: the broker looks at so many events a
        request."""
        raw = await self.request(
            Search(room=normalize_room(room), text=text, before=before, limit=limit)
        )
        reply = _expect(raw, SearchReply)
        events = [decode_event(bytes(e)) for e in reply.events]
        return [e for e in events if isinstance(e, MsgEvent)], reply.before if reply.more else None

    async def set_nick(self, nick: str) -> NickReply:
        reply = _expect(await self.request(Nick(nick=nick)), NickReply)
        self.nick = reply.new
        return reply

    async def topic(self, room: str, topic: str) -> Ack:
        raw = await self.request(Topic(room=normalize_room(room), topic=topic))
        reply = _expect(raw, Ack)
        return reply

    # -------------------------------------------------------- moderation

    async def _moderate(self, msg: Request) -> Ack:
        return _expect(await self.request(msg), Ack)

    async def op(self, room: str, nick: str) -> Ack:
        """Make ``nick`` an operator of ``room`` (operators and owners may)."""
        return await self._moderate(_m.Op(room=normalize_room(room), nick=nick))

    async def deop(self, room: str, nick: str) -> Ack:
        return await self._moderate(_m.Deop(room=normalize_room(room), nick=nick))

    async def voice(self, room: str, nick: str) -> Ack:
        """Let ``nick`` speak in ``room`` while it is moderated."""
        return await self._moderate(_m.Voice(room=normalize_room(room), nick=nick))

    async def devoice(self, room: str, nick: str) -> Ack:
        return await self._moderate(_m.Devoice(room=normalize_room(room), nick=nick))

    async def invite(self, room: str, nick: str) -> Ack:
        """Let ``nick`` join ``room`` while it is invite-only."""
        return await self._moderate(_m.Invite(room=normalize_room(room), nick=nick))

    async def uninvite(self, room: str, nick: str) -> Ack:
        """Take back ``nick``'s invitation to ``room``."""
        return await self._moderate(_m.Uninvite(room=normalize_room(room), nick=nick))

    async def kick(self, room: str, nick: str, reason: str | None = None) -> Ack:
        """Put ``nick`` out of ``room`` (they may come back)."""
        return await self._moderate(_m.Kick(room=normalize_room(room), nick=nick, reason=reason))

    async def ban(
        self,
        room: str,
        *,
        nick: str | None = None,
        mask: str | None = None,
        match: str | None = None,
        duration_s: int | None = None,
        reason: str | None = None,
    ) -> Ack:
        """Keep someone out of ``room`` (``"*"``: the server, for server
        operators): ``nick`` (with ``match`` ``"key"`` or ``"addr"``: that
        person's key or address), or a ``mask`` (``nick:NAME``,
        ``key:KEY``, ``addr:IP[/BITS]``); for ``duration_s`` seconds, or
        for good."""
        name = room if room == "*" else normalize_room(room)
        return await self._moderate(
            _m.Ban(
                room=name,
                nick=nick,
                mask=mask,
                match=match,
                duration_s=duration_s,
                reason=reason,
            )
        )

    async def unban(self, room: str, mask: str) -> Ack:
        name = room if room == "*" else normalize_room(room)
        return await self._moderate(_m.Unban(room=name, mask=mask))

    async def mute(
        self, room: str, nick: str, *, duration_s: int | None = None, reason: str | None = None
    ) -> Ack:
        """``nick`` reads ``room`` but may not say anything there."""
        return await self._moderate(
            _m.Mute(room=normalize_room(room), nick=nick, duration_s=duration_s, reason=reason)
        )

    async def unmute(self, room: str, nick: str) -> Ack:
        return await self._moderate(_m.Unmute(room=normalize_room(room), nick=nick))

    async def mode(
        self,
        room: str,
        *,
        invite_only: bool | None = None,
        moderated: bool | None = None,
        topic_lock: bool | None = None,
    ) -> Ack:
        """Turn the room's settings on (True) or off (False)."""
        return await self._moderate(
            _m.Mode(
                room=normalize_room(room),
                invite_only=invite_only,
                moderated=moderated,
                topic_lock=topic_lock,
            )
        )

    async def bans(self, room: str) -> _m.BansReply:
        """The room's roles, settings, bans, mutes and invitations
        (operators only; ``"*"``: the server's bans)."""
        name = room if room == "*" else normalize_room(room)
        return _expect(await self.request(_m.Bans(room=name)), _m.BansReply)

    async def oper(self, password: str) -> Ack:
        """Become a server operator with the broker's operator password (and
        again, by itself, after each reconnect)."""
        ack = await self._moderate(_m.Oper(password=password))
        self._oper_password = password
        return ack

    async def kill(self, nick: str, reason: str | None = None) -> Ack:
        """(server operators) End ``nick``'s session."""
        return await self._moderate(_m.Kill(nick=nick, reason=reason))

    async def wall(self, text: str) -> Ack:
        """(server operators) A notice to everyone connected."""
        return await self._moderate(_m.Wall(text=self._text(text)))

    async def release(self, nick: str) -> Ack:
        """(server operators) Forget which key ``nick`` belongs to."""
        return await self._moderate(_m.Release(nick=nick))

    async def offer_commands(self, commands: Iterable[CommandSpec]) -> int:
        """Announce the commands this client (a bot) answers; offered again
        by itself after a reconnect."""
        self._offer = list(commands)
        reply = _expect(await self.request(Offer(commands=self._offer)), Offered)
        return reply.count

    async def commands(self, room: str | None = None, *, pages: int = 5) -> list[CommandInfo]:
        """The commands offered by the members of ``room`` (everyone's
        without), up to ``pages`` of the broker's pages."""
        name = normalize_room(room) if room else None
        found: list[CommandInfo] = []
        after = None
        for _ in range(pages):
            reply = _expect(await self.request(Commands(room=name, after=after)), CommandsReply)
            found += reply.commands
            if not reply.more or not reply.commands:
                break
            last = reply.commands[-1]
            after = f"{last.name} {last.nick.lower()}"
        return found

    @property
    def backlog(self) -> int:
        """How many items wait to be taken from :meth:`items`."""
        return len(self._items)

    @property
    def rooms(self) -> list[str]:
        """The rooms this client is in, in join order."""
        return [name for name, joined in self._rooms.items() if joined]

    def last_seq(self, room: str) -> int | None:
        """The seq of the last event delivered from ``room``."""
        return self._seq.last(room)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: events ``delivered``, ``duplicates`` dropped, events
        ``repaired`` from history, events ``skipped`` because the broker no
        longer keeps them, and ``reconnects``."""
        return {**self._stats, "duplicates": self._seq.duplicates}

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
            raise ClientClosed()

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
            if isinstance(msg, Error) and msg.code == Code.NO_SESSION:
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
            self._apply(self._seq.event(ev))

    # ---------------------------------------------------------- sequencing

    def _apply(self, step: Step[Any]) -> None:
        """Do what the sequencer asked: deliver, report, fetch."""
        put_out: list[str] = []
        for ev in step.deliver:
            if isinstance(ev, NickEvent) and ev.old == self.nick:
                self.nick = ev.new
            elif (
                isinstance(ev, _m.LeaveEvent)
                and ev.reason == "kick"
                and nick_key(ev.nick) == nick_key(self.nick)
                and ev.seq > self._joined_at.get(ev.room, 0)
            ):
                # Not a member now: not rejoined by a reconnect. (A kick
                # from before our last join, repaired after a reconnect that
                # rejoined, is history.)
                put_out.append(ev.room)
            self._put(ev)
        for name in put_out:
            self._forget_room(name)
        self._stats["delivered"] += len(step.deliver)
        if step.repaired:
            self._stats["repaired"] += step.repaired
            self._put(Repaired(step.deliver[0].room, step.repaired))
        for gap in step.gaps:
            log.warning("#%s: events %d..%d are gone", gap.room, gap.first, gap.last)
            self._stats["skipped"] += gap.count
        for fetch in step.fetch:
            self._fetching[fetch.room] = self._spawn(self._fetch(fetch))
        if self._owed is not None:
            self._pay_reconnected()

    def _on_pong(self, pong: Pong) -> None:
        if self.epoch is not None and pong.epoch != self.epoch:
            self._start_recovery("the broker restarted")
            return
        self._apply(self._seq.pong(pong.seqs))

    async def _fetch(self, fetch: Fetch) -> None:
        """Make one fetch the sequencer asked for and hand it the page."""
        # A page is queued for the reader in one piece: while the reader is
        # behind, wait, so that the queue stays bounded.
        await self._drained.wait()
        reply = await self._ask(History(room=fetch.room, after=fetch.after, limit=HISTORY_MAX))
        if self._fetching.get(fetch.room) is asyncio.current_task():
            del self._fetching[fetch.room]
        if not isinstance(reply, HistoryReply):
            log.warning("history of #%s failed: %s", fetch.room, reply)
            self._apply(self._seq.abandon(fetch))
            return
        events = []
        for body in reply.events:
            try:
                ev = decode_event(bytes(body))
            except ProtocolError as err:
                log.warning("ignoring an event from history: %s", err)
                continue
            if not isinstance(ev, Notice):
                events.append(ev)
        self._apply(self._seq.page(fetch, events, more=reply.more, first=reply.first))

    def _stop_fetches(self) -> None:
        """Drop every fetch in flight: the connection they went on is gone,
        and :meth:`Sequencer.reconnected` forgets them."""
        for task in self._fetching.values():
            task.cancel()
        self._fetching.clear()

    def _pay_reconnected(self, *, now: bool = False) -> None:
        """Say Reconnected once every room has what it missed while the
        client was away (or ``now``, with what it has so far)."""
        assert self._owed is not None
        restarted, base, targets, moved = self._owed
        if now or all(self._seq.caught_up(room, seq) for room, seq in targets.items()):
            self._owed = None
            lost, self._lost = tuple(self._lost), []
            self._put(Reconnected(self._stats["repaired"] - base, restarted, lost, moved))

    # ----------------------------------------------------- liveness, recovery

    async def _heartbeat(self) -> None:
        last_ping = 0.0
        while True:
            await asyncio.sleep(min(self.heartbeat_s * 0.5, 1.0) if self.connected else 0.2)
            if not self.connected or self._recovering is not None:
                continue
            now = time.monotonic()
            if now - self._last_rx > self.timeout_s:
                self._start_recovery(f"no answer for {self.timeout_s:g} s", move=True)
                continue
            if now - last_ping >= self.heartbeat_s * 0.5:
                last_ping = now
                self._spawn(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, ZchatError):
            t0 = time.monotonic()
            await asyncio.wait_for(self._call(Ping()), self.timeout_s)
            self.lag_ms = int((time.monotonic() - t0) * 1000)

    def _start_recovery(self, reason: str, *, move: bool = False) -> None:
        """Reconnect; ``move``: the node stopped answering, so with several
        endpoints, start on the next one."""
        if self._recovering is not None or self.closed or not self.connected:
            return
        left = self.endpoint
        moving = move and len(self.endpoints) > 1
        if moving:
            self._move_to(self._current + 1)
            log.info("reconnecting to %s: %s", self.endpoint, reason)
        else:
            log.info("reconnecting: %s", reason)
        if self._owed is not None:
            self._pay_reconnected(now=True)  # the last recovery, cut short
        self._put(Disconnected(reason, self.endpoint if moving else None))
        self._stop_fetches()
        self._recovering = self._spawn(self._recover(left))

    async def _recover(self, left: str) -> None:
        """Reconnect, from the endpoint in use, then each of the others in
        turn; ``left`` is the one the client lost."""
        self._stats["reconnects"] += 1
        old_epoch = self.epoch
        repaired = self._stats["repaired"]
        backoff = 0.1
        try:
            while True:
                # Everything sent went on the old connection: send it again
                # (after the rejoin), in order. The broker answers a repeated
                # say or pm with its first ack.
                for p in self._pending.values():
                    p.sent = False
                try:
                    self._new_dealer()
                    joins = await asyncio.wait_for(
                        self._unless_unreachable(self._rejoin(), asyncio.TimeoutError),
                        max(self.timeout_s, 2.0),
                    )
                    break
                except (asyncio.TimeoutError, ZchatError, zmq.ZMQError) as err:
                    if len(self.endpoints) > 1:
                        log.info("no luck on %s (%s)", self.endpoint, err or "timeout")
                        self._move_to(self._current + 1)
                    else:
                        log.info("broker not back yet (%s); retrying", err or "timeout")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._recovering = None
        self._last_rx = time.monotonic()
        self._start_flusher()
        moved = self.endpoint if self.endpoint != left else None
        self._owed = (self.epoch != old_epoch, repaired, joins, moved)
        self._pay_reconnected()

    async def _rejoin(self) -> dict[str, int]:
        """Hello, tell the sequencer, join every room again; returns each
        room's joined seq."""
        before = self.welcome
        welcome = await self._hello()
        same_store: bool | None = True
        if before is not None and welcome.server.epoch != before.server.epoch:
            if welcome.server.store is None or before.server.store is None:
                same_store = None  # a broker that does not say: judge by seq
            else:
                same_store = welcome.server.store == before.server.store
        self._stop_fetches()
        self._apply(self._seq.reconnected(same_store=same_store))
        if self._oper_password is not None:
            # First: an operator may be let into rooms others are not.
            reply = await self._ask(_m.Oper(password=self._oper_password))
            if isinstance(reply, Error):
                log.warning("no longer a server operator: %s", reply.message)
                self._oper_password = None
        joins = {}
        for name in list(self._rooms):
            reply = await self._ask(Join(room=name))
            if isinstance(reply, Error):
                log.warning("could not rejoin #%s: %s", name, reply.message)
                self._forget_room(name)
                self._lost.append((name, reply.message))
                continue
            if name in self._rooms:  # not parted meanwhile
                self._rooms[name] = True
                joins[name] = reply.seq
                self._joined_at[name] = reply.seq
                self._apply(self._seq.joined(name, reply.seq, own_event=_own_event(self, reply)))
        if self._offer is not None:
            await self._ask(Offer(commands=self._offer))
        return joins

    async def _ask(self, msg: Any) -> Any:
        """:meth:`_call`, asked again after ``retry_ms`` while the broker
        says ``rate_limited`` or ``unavailable``."""
        while True:
            reply = await self._call(msg)
            if isinstance(reply, Error) and reply.code in RETRY_CODES:
                await asyncio.sleep((reply.retry_ms or 100) / 1000)
                continue
            return reply

    async def _unless_unreachable(
        self, coro: Coroutine[Any, Any, T], error: type[BaseException]
    ) -> T:
        """``coro``, unless nothing listens at the endpoint and there are
        others to try: then ``error``, at once."""
        task = asyncio.ensure_future(coro)
        if len(self.endpoints) < 2:
            return await task
        gone = asyncio.ensure_future(self._unreachable.wait())
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise error(f"nothing listens at {self.endpoint}")

    async def _hello_any(self, wait: float, timeout: float) -> Welcome:
        """:meth:`_hello_waiting` on each endpoint in turn, from the first,
        until one answers; each has its share of ``timeout``."""
        count = len(self.endpoints)
        for i in range(count):
            if i:
                log.info("no answer from %s; trying %s", self.endpoint, self.endpoints[i])
                self._move_to(i)
                self._new_dealer()
            try:
                return await self._unless_unreachable(
                    self._hello_waiting(wait, timeout / count), ConnectTimeout
                )
            except ConnectTimeout:
                if i + 1 < count:
                    continue
                if count == 1:
                    raise
                raise ConnectTimeout(
                    f"no answer from {self._named()} within {timeout:g} s"
                ) from None
        raise AssertionError("unreachable")  # count >= 1: check_endpoints

    async def _hello_waiting(self, wait: float, timeout: float) -> Welcome:
        """:meth:`_hello`, asked again every second for ``wait`` seconds
        while the nick is taken; each time answered within ``timeout``."""
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                # Bounded here too: a silent broker is not waited for as
                # long as a taken nick would be.
                return await asyncio.wait_for(self._hello(), timeout)
            except asyncio.TimeoutError:
                raise ConnectTimeout(
                    f"no answer from {self.endpoint} within {timeout:g} s"
                ) from None
            except RequestRefused as err:
                if err.code != Code.NICK_TAKEN or time.monotonic() + NICK_RETRY_S > deadline:
                    raise
                if not said:  # one line, not one a second
                    said = True
                    log.info(
                        "nick %s is taken; asking again every %g s for up to %g s",
                        self.nick,
                        NICK_RETRY_S,
                        wait,
                    )
            await asyncio.sleep(NICK_RETRY_S)

    async def _hello(self) -> Welcome:
        dealer = self._dealer
        assert dealer is not None
        # IMMEDIATE: nothing can be sent before the connection is up.
        while not await dealer.poll(1000, zmq.POLLOUT):  # type: ignore[call-arg]
            pass
        raw = await self._ask(
            Hello(
                nick=self.nick,
                token=self.token,
                client=self.client_name,
                quiet=True if self.quiet else None,
            )
        )
        if isinstance(raw, Error):
            raise RequestRefused(raw.code, raw.message, retry_ms=raw.retry_ms)
        reply = _expect(raw, Welcome)
        self.welcome = reply
        self.nick = reply.nick
        self.token = reply.token
        self.epoch = reply.server.epoch
        self.heartbeat_s = reply.heartbeat_ms / 1000
        self.timeout_s = reply.timeout_ms / 1000
        self._last_rx = time.monotonic()
        self._learn(reply.server.nodes)
        events = self._events_endpoint(reply.events)
        if self._sub is not None and events != self._sub_endpoint:
            # The first welcome, or another node (or a broker that now
            # publishes elsewhere): subscriptions go along.
            if self._sub_endpoint is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sub.disconnect(self._sub_endpoint)
            self._sub.connect(events)
            self._sub_endpoint = events
        return reply

    # ------------------------------------------------------------ endpoints

    def _named(self) -> str:
        """The endpoints, for an error message."""
        return ", ".join(self.endpoints) if self.endpoints else repr(self.endpoint)

    def _move_to(self, index: int) -> None:
        """Use ``endpoints[index]`` from the next :meth:`_new_dealer` on."""
        self._current = index % len(self.endpoints)
        self.endpoint = self.endpoints[self._current]

    def _learn(self, nodes: list[str] | None) -> None:
        """Add the cluster's nodes this client does not know to its
        endpoints (after those it has); ignore those that are not ones."""
        for node in nodes or ():
            if node in self.endpoints:
                continue
            if len(self.endpoints) >= MAX_ENDPOINTS:
                log.info("ignoring more nodes: this client keeps at most %d", MAX_ENDPOINTS)
                return
            try:
                check_endpoint(node)
            except InvalidInput:
                log.info("ignoring node %r: not an endpoint", node)
                continue
            if node.startswith("tcp://") and _host(node).strip("[]") in _WILDCARD_HOSTS:
                log.info("ignoring node %r: a wildcard host", node)
                continue
            self.endpoints.append(node)
