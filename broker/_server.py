"""The ZeroMQ shell around the core: one thread, one loop, two sockets.

Each turn of the loop reads every request already waiting on the ROUTER
(up to a batch limit in count and in time), hands each to the core, commits
the store once, and only then publishes the batch's events and sends its
replies. A request that does not decode is answered with an ``error`` and
changes nothing; a request whose handling fails costs that request, never
the broker.

Socket options are set on purpose (see ``shared/zeromq-notes.md``):

* ROUTER: ``ROUTER_MANDATORY`` so a reply to a vanished peer raises instead
  of vanishing, and every send is non-blocking so one slow client cannot
  stall the loop; ``ROUTER_HANDOVER`` so a client that reconnects with its
  routing id takes over the old pipe, except with CURVE, where a routing id
  must not pass to a connection of another key (clients then let ZeroMQ
  choose routing ids and resume sessions by token); ``MAXMSGSIZE`` set
  before bind; ``LINGER`` 0 while serving, so what a disconnected peer left
  queued is freed at once (it is set again before closing).
* both: TCP keepalive, so a half-open TCP connection is closed (not ZMTP
  heartbeats: see ``_setup_sockets``); a handshake deadline, so a bare TCP
  connection does not hold a descriptor.
* the event socket is an XPUB with manual subscriptions: each subscription
  is checked (a room topic or ``*``, a bounded number per subscriber) before
  it is applied, so junk costs libzmq nothing; a subscriber that still
  falls behind loses events at ``--pub-hwm`` and repairs them from history.

Connections themselves are watched by :class:`~._conns.Connections`.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

import zmq

from messages import NOTICE_TOPIC, Code, Hello, ProtocolError, Say, decode_request, key_fingerprint

from ._backend import Backend
from ._cluster import Cluster, apply_results
from ._config import Config, address_key
from ._conns import Connections
from ._core import VERSION, BatchHandler, Core, Outbox, error_reply
from ._keys import Guard, load_secret, secure
from ._moderation import read_operators
from ._redis import REDIS_ERRORS, RedisBackend
from ._store import Store, StoreError, StoreFull

log = logging.getLogger("zchat.broker")

BATCH = 4096
# A batch also ends after this long, so that a flood of costly requests
# (large frames that fail to decode) cannot hold everyone else's answers.
BATCH_S = 0.02
# Plain ints: pyzmq's flag enums cost an Enum call per send on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_MORE_NOBLOCK = _NOBLOCK | _SNDMORE
_POLLIN = int(zmq.POLLIN)
_SUBSCRIBE = int(zmq.SUBSCRIBE)
_UNSUBSCRIBE = int(zmq.UNSUBSCRIBE)
# pyzmq's Socket.send is a Python layer (draft-socket routing ids and
# groups) over the backend's send, and costs 0.3 us more a call than it:
# the four sends of a say were a quarter of the broker's profile. The hot
# loop calls the backend's send, with bytes and plain flags only.
_send = zmq.backend.Socket.send
LINGER_MS = 500
ROUTER_SNDHWM = 20_000  # replies per peer; past it the peer is a slow consumer
ROUTER_RCVHWM = 1_000  # requests per peer waiting to be read
HANDSHAKE_MS = 10_000
HOUSEKEEPING_S = 60.0
STORE_RETRY_S = 1.0
STORE_RETRY_MS = 1_000
WAKE_MS = 20


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return address_key(str(frame.get("Peer-Address")))
    except zmq.ZMQError:
        return ""  # ipc and inproc have none


class Server:
    """Opens the store, binds the sockets and runs the loop until a signal.

    Raises:
        StoreError: the store cannot be used (one line says why).
        zmq.ZMQError: an endpoint cannot be bound.
        ValueError: a CURVE key or the allow-list is unusable.
    """

    def __init__(self, config: Config) -> None:
        self.cluster: Cluster | None = None
        self.store: Backend
        if config.cluster is not None:
            self.store = RedisBackend(
                config.cluster,
                node=secrets.token_hex(4),
                maxlen=config.cluster_max_events,
                wait_replicas=config.redis_wait,
            )
        else:
            self.store = Store(config.store, fsync=config.fsync, max_mb=config.store_max_mb)
        try:
            self._open_sockets(config)
        except BaseException:
            self.store.close()
            raise
        self.config = config.replace(events=config.advertise or self.pub_endpoint)
        if isinstance(self.store, RedisBackend):
            try:
                self.cluster = Cluster(
                    self.store,
                    node=self.store.node,
                    endpoint=config.node_endpoint or self.bind_endpoint,
                    timeout_s=config.timeout_ms / 1000,
                )
            except BaseException:
                self._close_sockets()
                self.store.close()
                raise
        self.core = Core(self.config, self.store, directory=self.cluster)
        self.core.operator_keys, self.core.oper_password = read_operators(
            config.operators, config.oper_password_file
        )
        self.recovered = self.core.load_recent(time.time())
        self.stopping = False
        self._forgotten_reported = 0
        self._next_forgotten_report = 0.0
        self._signals: list[int] = []
        self._waiting = Outbox()  # a batch whose commit failed, until it succeeds
        # A batch sent to Redis, its answers not yet read (see _flush).
        self._inflight: Outbox | None = None
        self._next_store_retry = 0.0
        self._next_store_log = 0.0
        self._store_failed_at = 0.0
        self._next_housekeeping = 0.0

    def _open_sockets(self, config: Config) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.XPUB)
        self.guard: Guard | None = None
        try:
            if config.curve_secret is not None:
                public, secret = load_secret(config.curve_secret)
                self.guard = Guard(self.ctx, config.allow_keys)
                secure(self.router, public, secret)
                secure(self.pub, public, secret)
                self.public_key = public.decode()
            self.conns = Connections(config, self.router, self.pub, self._session_active)
            self._setup_sockets(config)
        except BaseException:
            self._close_sockets()
            raise

    def _setup_sockets(self, o: Config) -> None:
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            # TCP keepalive, not ZMTP heartbeats, closes half-open
            # connections: libzmq 4.3.5 aborts the process (!_io_error,
            # stream_engine_base.cpp) when a heartbeat falls due on a
            # connection that died while its input was stopped, and a client
            # stops its input at will by filling its queue of requests. A
            # dead peer with data waiting for it is also caught by the
            # connection scan, and a session has its own timeout.
            idle = max(1, o.heartbeat_ms // 1000)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, idle)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 0 if o.curve else 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, o.max_msg_bytes)
        self.router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        self.router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        self.pub.setsockopt(zmq.SNDHWM, o.pub_hwm)
        self.pub.setsockopt(zmq.XPUB_MANUAL, 1)
        # Subscribers send only subscriptions: a small limit stops a peer
        # from pushing large frames at the event socket. Not smaller: a
        # CURVE handshake's INITIATE command is about 300 bytes.
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1024)
        self.pub.setsockopt(zmq.RCVHWM, 1000)
        self.router.bind(o.bind)
        self.pub.bind(o.publish)
        self.bind_endpoint = self.router.get_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.get_string(zmq.LAST_ENDPOINT)

    def _session_active(self, ident: bytes, since: float) -> bool:
        s = self.core.sessions.get(ident)
        return s is not None and s.last_seen >= since

    # ----------------------------------------------------------- the loop

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM; returns the exit status."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        old_handlers = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        # Past a file-size limit a write fails (and the store says it is
        # full) instead of the process being killed.
        old_handlers[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        poller.register(wake_r.fileno(), zmq.POLLIN)
        for mon in self.conns.sockets:
            poller.register(mon, zmq.POLLIN)
        cluster = self.cluster
        cluster_fd = -1
        publish = self._publish
        self._announce()
        # What exists now (modules, config, the loaded store state) lives as
        # long as the broker: the collector need not scan it again. A busy
        # batch keeps thousands of small containers alive until it is sent,
        # which at the default threshold (700) starts a collection every
        # few hundred messages; the broker's own data has no cycles.
        old_gc = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        out = Outbox()
        router, core, conns = self.router, self.core, self.conns
        try:
            while not self.stopping:
                expiry = core.next_expiry()
                now = time.time()
                wait = 1000 if expiry is None else min(1000, max(0, int((expiry - now) * 1000) + 1))
                if core.read_only:
                    wait = min(wait, int(STORE_RETRY_S * 1000))
                if self._inflight is not None:
                    wait = 0  # (its answers are waited for in _flush, after what came meanwhile)
                if conns.enabled:
                    # Wake often enough to notice the process growing fast
                    # (a message of millions of frames) and stop it midway.
                    wait = min(wait, WAKE_MS)
                if cluster is not None and cluster.fileno() != cluster_fd:
                    # (A new connection after the old one was lost.)
                    if cluster_fd >= 0:
                        poller.unregister(cluster_fd)
                    cluster_fd = cluster.fileno()
                    if cluster_fd >= 0:
                        poller.register(cluster_fd, zmq.POLLIN)
                ready = dict(poller.poll(wait))
                now = time.time()
                mono = time.monotonic()
                conns.events(mono)
                self._subscriptions()
                if cluster is not None:
                    cluster.pump(core, out, publish)
                if router in ready:
                    self._read(core.batch(now, out), out)
                if wake_r.fileno() in ready:
                    self._drain_wakeups(wake_r)
                core.expire(now, out)
                if cluster is not None and not core.read_only:
                    cluster.tick(now, core, out, publish)
                    if cluster.store_lost:
                        self._start_over(out)
                        core = self.core
                if core.recent.forgotten_early != self._forgotten_reported:
                    self._report_forgotten(now)
                if out or self._inflight is not None:
                    out = self._flush(out)
                if core.read_only and mono >= self._next_store_retry:
                    self._retry_store(mono)
                if conns.due(mono):
                    conns.scan(mono)
                conns.housekeeping(mono)
                if now >= self._next_housekeeping:
                    self._housekeeping(now)
            core.notice("the broker is shutting down", out)
            self._flush(out, last=True)
        finally:
            gc.set_threshold(*old_gc)
            gc.unfreeze()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self.close()
        log.info("stopped")
        return 0

    def _internal_error(self, ident: bytes, req: Any, out: Outbox) -> None:
        if self.cluster is not None and isinstance(sys.exc_info()[1], REDIS_ERRORS):
            # Redis is away: the request is refused, to be sent again.
            mono = time.monotonic()
            if mono >= self._next_store_log:
                self._next_store_log = mono + 10.0
                log.error("Redis cannot be reached: %s", sys.exc_info()[1])
            err = ProtocolError(
                Code.UNAVAILABLE,
                "the cluster's store cannot be reached; try again",
                retry_ms=STORE_RETRY_MS,
            )
            out.reply(ident, error_reply(err, getattr(req, "id", None)))
            return
        # A bug must cost one request, not the broker and every session.
        log.exception("internal error on %s", type(req).__name__)
        err = ProtocolError(Code.BAD_REQUEST, "internal error; the request was not handled")
        out.reply(ident, error_reply(err, getattr(req, "id", None)))

    def _read(self, handle: BatchHandler, out: Outbox) -> None:
        """Read and handle every request waiting on the ROUTER, up to BATCH
        of them or BATCH_S of time."""
        recv = self.router.recv
        max_text = self.config.max_text
        curve = self.guard is not None
        seen = self.conns.seen
        known = self.conns.fd_of
        deadline = time.monotonic() + BATCH_S
        for n in range(BATCH):
            if n & 63 == 63 and time.monotonic() > deadline:
                return
            try:
                ident = recv(_NOBLOCK)
            except zmq.Again:
                return
            # A Frame tells whether more parts follow for the price of
            # making it (~0.4 us); Socket.rcvmore costs 1.5 us in pyzmq (an
            # attribute lookup and an enum). With CURVE it also names the
            # key the connection authenticated with, never the message.
            body = recv(_NOBLOCK, copy=False)
            if body.more:
                self._multipart(ident, body, out)
                continue
            try:
                req = decode_request(body, max_text=max_text)
            except ProtocolError as err:
                if seen(ident, body):
                    out.reply(ident, error_reply(err))
                continue
            except Exception:
                if seen(ident, body):
                    self._internal_error(ident, None, out)
                continue
            kind = type(req)
            # Which connection it came on (for the connection bounds): once
            # for a say, whose connection is known from the hello before it,
            # unless it came back with its routing id and says only that.
            if (kind is not Say or ident not in known) and not seen(ident, body):
                continue  # from a connection being turned away
            try:
                key = str(body.get("User-Id")) if curve else None
                if kind is Hello:
                    handle(ident, req, key, _peer_address(body))
                else:
                    handle(ident, req, key)
            except Exception:
                self._internal_error(ident, req, out)

    def _multipart(self, ident: bytes, body: zmq.Frame, out: Outbox) -> None:
        """A request of more than one frame: refused. Its remaining frames are
        read (a finished message is in the pipe whole), but a message of
        very many frames is stopped before it is finished by the connection
        checks, so this never reads more than a few."""
        self.conns.seen(ident, body)
        recv = self.router.recv
        extra = 1
        while recv(_NOBLOCK, copy=False).more:
            extra += 1
        err = ProtocolError(Code.BAD_REQUEST, f"a request is exactly one frame, not {extra + 1}")
        out.reply(ident, error_reply(err))

    def _subscriptions(self) -> None:
        """Apply the subscriptions that are room topics (or ``*``), within
        the bound per subscriber; ignore the rest."""
        pub = self.pub
        check = self.conns.subscription
        setsockopt = pub.setsockopt
        while int(pub.get(zmq.EVENTS)) & _POLLIN:
            frame = pub.recv(_NOBLOCK, copy=False)
            if check(frame):
                data = frame.bytes
                # XPUB_MANUAL applies it to the subscriber it came from: the
                # one whose message was read last.
                setsockopt(_SUBSCRIBE if data[0] == 1 else _UNSUBSCRIBE, data[1:])

    def _flush(self, out: Outbox, *, last: bool = False) -> Outbox:
        """Commit the batch and send what it made; returns the outbox for
        the next batch: ``out`` again, or a new one while ``out`` waits for
        Redis (see :meth:`RedisBackend.send`; ``last``: never so)."""
        moved = self.core.moved
        if moved:
            # A session taken over: the private messages waiting on the store
            # for its old connection go to the new one (never lost to it).
            waiting = self._waiting.pushes
            for i, (to, push) in enumerate(waiting):
                hops = 0
                while to in moved and hops < len(moved):
                    to, hops = moved[to], hops + 1
                waiting[i] = (to, push)
            moved.clear()
        sent = self._inflight
        if sent is not None:
            self._inflight = None
            assert isinstance(self.store, RedisBackend)
            try:
                try:
                    self.store.receive()
                except StoreFull:
                    # Once more at once, with this batch's writes (the store
                    # put them behind the first's), as a commit tries again
                    # on a dropped connection.
                    self.store.commit()
            except StoreFull as err:
                # Both wait, unacknowledged.
                self._store_full(err, sent)
                self._store_full(err, out)
                return out
            except StoreError:
                log.exception("the store failed; stopping (nothing unwritten was acknowledged)")
                sent.clear()
                out.clear()
                self.stopping = True
                return out
            self._send(sent, later=out)
        if self.core.read_only:
            # Writes are refused meanwhile: what this batch made needs no commit.
            self._send(out)
            return out
        store = self.store
        if not last and isinstance(store, RedisBackend) and store.can_send():
            try:
                store.send()
            except StoreFull:
                pass  # committed below, which tries a dropped connection again
            else:
                self._inflight = out
                return Outbox()
        try:
            store.commit()
        except StoreFull as err:
            self._store_full(err, out)
            return out
        except StoreError:
            log.exception("the store failed; stopping (nothing unwritten was acknowledged)")
            out.clear()
            self.stopping = True
            return out
        self._send(out)
        return out

    def _start_over(self, out: Outbox) -> None:
        """Redis lost the cluster's state (it restarted empty, or a replica
        without it took over): what this node knows of sessions and seqs
        would mislead. It starts over with a new epoch and the store's new
        id, so its clients see a changed store and reload, as after a
        broker restart with a lost store."""
        assert self.cluster is not None and isinstance(self.store, RedisBackend)
        self.cluster.store_lost = False  # (set again by the next check if this fails)
        old = self.store.store_id
        try:
            self.store.store_id = self.store.new_store_id(replacing=old)
        except REDIS_ERRORS as err:
            log.error("Redis lost this cluster's state, and cannot be reached: %s", err)
            return
        log.error(
            "Redis no longer holds this cluster's state (store %s, now %s): starting "
            "over; clients reload their rooms",
            old,
            self.store.store_id,
        )
        out.clear()
        self._waiting.clear()
        self._inflight = None
        self.store.discard()  # the old core's unacknowledged batch: not into the new store
        keys, password = self.core.operator_keys, self.core.oper_password
        self.core = Core(self.config, self.store, directory=self.cluster)
        self.core.operator_keys, self.core.oper_password = keys, password

    def _publish(self, topic: bytes, body: bytes) -> None:
        """An event of the cluster (any node's, durable already), as it
        comes in seq order from the relay (see _cluster.py)."""
        _send(self.pub, topic, _SNDMORE)
        _send(self.pub, body)

    def _send(self, out: Outbox, later: Outbox | None = None) -> None:
        """Send what the committed batch ``out`` made; ``later``: the batch
        handled since it was sent to Redis (see :meth:`_flush`)."""
        if self.cluster is not None:
            # Numbered for good by Redis now; the relay publishes the events.
            assert isinstance(self.store, RedisBackend)
            apply_results(self.store, self.core, out, *([later] if later is not None else []))
            out.events.clear()
        self._subscriptions()  # a subscriber that came before this batch gets it
        pub = self.pub
        send = _send
        for topic, body in out.events:
            send(pub, topic, _SNDMORE)
            send(pub, body)
        for body in out.notices:
            pub.send_multipart((NOTICE_TOPIC, body))
        router = self.router
        conns = self.conns
        for frames, pushes in ((out.free, False), (out.replies, False), (out.pushes, True)):
            for ident, frame in frames:
                try:
                    # ROUTER_MANDATORY reports a gone peer on the first frame,
                    # so a failed send never leaves half a message queued.
                    send(router, ident, _MORE_NOBLOCK)
                    send(router, frame, _NOBLOCK)
                    if pushes:
                        # Held against the recipient's send queue like its
                        # replies: senders could otherwise fill it for it.
                        conns.sent(ident, len(frame))
                except zmq.ZMQError as err:
                    # EHOSTUNREACH: the peer is gone; EAGAIN: its queue is
                    # full. A reply or event is repaired by the client (it
                    # resends, or reads history); a private message has no
                    # history, so its session keeps it until heard from.
                    if err.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                        raise
                    if err.errno == errno.EAGAIN:
                        conns.full(ident)
                    # (A push whose session has ended goes with it.)
                    nick = self.core.hold(ident, frame) if pushes else None
                    if nick is not None:
                        log.info("%s cannot be reached; a private message is held for it", nick)
        for ident, nbytes in out.bulk.items():
            conns.sent(ident, nbytes)
        out.clear()

    # ------------------------------------------------------------- store

    def _store_full(self, err: StoreFull, out: Outbox) -> None:
        """The batch could not be written: keep what depends on it,
        unpublished and unacknowledged, and refuse writes until a commit
        succeeds. Replies that do not depend on it go now."""
        waiting = self._waiting
        for name in ("replies", "events", "notices", "pushes"):
            getattr(waiting, name).extend(getattr(out, name))
            getattr(out, name).clear()
        for ident, n in out.bulk.items():
            waiting.bulk[ident] = waiting.bulk.get(ident, 0) + n
        out.bulk.clear()
        self._send(out)  # what is left: out.free
        self.core.read_only = True
        self._store_failed_at = time.monotonic()
        self._next_store_retry = self._store_failed_at + STORE_RETRY_S
        self._log_store(str(err))

    def _log_store(self, text: str) -> None:
        now = time.monotonic()
        if now >= self._next_store_log:
            self._next_store_log = now + 60.0
            log.error(
                "%s; writes are refused with 'unavailable' until there is room again "
                "(reads go on; %d events wait)",
                text,
                len(self._waiting.events),
            )

    def _retry_store(self, now: float) -> None:
        self._next_store_retry = now + STORE_RETRY_S
        try:
            self.store.commit()
        except StoreFull as err:
            self._log_store(str(err))
            return
        except StoreError:
            log.exception("the store failed; stopping (nothing unwritten was acknowledged)")
            self.stopping = True
            return
        if now - self._store_failed_at > 5.0 or now >= self._next_store_log - 55.0:
            log.warning(
                "the store takes writes again after %.1f s; %d waiting events published",
                now - self._store_failed_at,
                len(self._waiting.events),
            )
        self.core.read_only = False
        self._send(self._waiting)

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_S
        try:
            if self.store.housekeeping(now, self.config.retain_s):
                self._next_housekeeping = now + 1.0  # more is due: soon, a slice at a time
        except (sqlite3.Error, StoreError) as err:
            log.warning("housekeeping of the store failed: %s", err)

    # --------------------------------------------------------- reporting

    def _report_forgotten(self, now: float) -> None:
        if now < self._next_forgotten_report:
            return  # at most a line a minute
        self._next_forgotten_report = now + 60.0
        n = self.core.recent.forgotten_early
        log.warning(
            "%d request ids forgotten in under ten minutes to keep at most %d "
            "(--dedup-max, --dedup-mb): a resend of one of them would be published again",
            n - self._forgotten_reported,
            self.core.recent.max_entries,
        )
        self._forgotten_reported = n

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _drain_wakeups(self, wake_r: socket.socket) -> None:
        try:
            while wake_r.recv(512):
                pass
        except BlockingIOError:
            pass
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGINT, signal.SIGTERM):
                log.info("got %s, shutting down", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self._reread()

    def _reread(self) -> None:
        """SIGHUP: the allow-list and the server operators, read again."""
        if self.guard is not None:
            try:
                n = self.guard.reload()
                log.info("SIGHUP: allow-list re-read, %d key%s", n, "" if n == 1 else "s")
            except ValueError as err:
                log.error("SIGHUP: %s; keeping the old allow-list", err)
        o = self.config
        if o.operators is None and o.oper_password_file is None:
            return
        try:
            keys, password = read_operators(o.operators, o.oper_password_file)
        except ValueError as err:
            log.error("SIGHUP: %s; keeping the old operators", err)
            return
        self.core.operator_keys, self.core.oper_password = keys, password
        for s in self.core.sessions.values():
            if s.peer_key is not None:
                s.oper = s.peer_key in keys  # a key taken off the list is no operator now
        log.info("SIGHUP: operators re-read, %d key%s", len(keys), "" if len(keys) == 1 else "s")

    def _announce(self) -> None:
        o = self.config
        log.info("zchat-broker %s, epoch %s", VERSION, self.core.epoch)
        log.info("requests on %s (ROUTER)", self.bind_endpoint)
        log.info("events   on %s (XPUB), advertised as %s", self.pub_endpoint, self.config.events)
        log.info(
            "store %s; %d recent request ids; history kept %s",
            self.store.summary(),
            self.recovered,
            f"{o.retain_days:g} days" if o.retain_days else "forever",
        )
        log.info(
            "limits: timeout %d ms, heartbeat %d ms, rate %s/s burst %d (address %s/s), "
            "text %d chars, frame %d bytes, %d connections (%d per address), "
            "%d sessions per address, %d rooms per session",
            o.timeout_ms,
            o.heartbeat_ms,
            f"{o.rate:g}" if o.rate > 0 else "unlimited",
            o.burst,
            f"{o.address_rate:g}" if o.rate > 0 and o.address_rate > 0 else "unlimited",
            o.max_text,
            o.max_msg_bytes,
            self.conns.limit,
            o.connections_per_address,
            o.sessions_per_address,
            o.rooms_per_session,
        )
        if o.operators is not None or o.oper_password_file is not None:
            by = []
            if o.operators is not None:
                n = len(self.core.operator_keys)
                by.append(f"{n} key{'' if n == 1 else 's'} in {o.operators}")
            if o.oper_password_file is not None:
                by.append(f"the password in {o.oper_password_file} (/oper)")
            log.info("server operators: %s; re-read on SIGHUP", " and ".join(by))
        if self.config.curve:
            allowed = "every client key" if o.allow_keys is None else f"the keys in {o.allow_keys}"
            log.info(
                "CURVE on: server key %s (fingerprint %s); admitting %s",
                self.public_key,
                key_fingerprint(self.public_key),
                allowed,
            )
        else:
            for ep in (self.bind_endpoint, self.pub_endpoint):
                if not is_loopback(ep):
                    log.warning(
                        "%s is reachable beyond this machine and NOT encrypted: anyone on "
                        "the network can read and forge chat; see --curve-secret",
                        ep,
                    )
        if o.ready_file:
            tmp = o.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(
                    {
                        "bind": self.bind_endpoint,
                        "publish": self.pub_endpoint,
                        "events": self.config.events,
                        "epoch": self.core.epoch,
                        "pid": os.getpid(),
                        "public_key": getattr(self, "public_key", None),
                    },
                    f,
                )
            os.replace(tmp, o.ready_file)

    def _close_sockets(self) -> None:
        conns = getattr(self, "conns", None)
        if conns is not None:
            conns.close()
        for sock in (self.router, self.pub):
            sock.close(linger=LINGER_MS)
        if self.guard is not None:
            self.guard.stop()
        self.ctx.term()

    def close(self) -> None:
        try:
            self.store.close()
        except StoreError as err:
            log.error("%s: the last batch was not written (nor acknowledged)", err)
        finally:
            self._close_sockets()
