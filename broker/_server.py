"""The ZeroMQ shell around the core: one thread, one loop, two sockets.

Each turn of the loop reads every request already waiting on the ROUTER
(up to a batch limit), hands each to the core, commits the store once, and
only then publishes the batch's events and sends its replies. A request
that does not decode is answered with an ``error`` and changes nothing.

Socket options are set on purpose (see ``shared/zeromq-notes.md``):

* ROUTER: ``ROUTER_MANDATORY`` so a reply to a vanished peer raises instead
  of vanishing, and every send is non-blocking so one slow client cannot
  stall the loop; ``ROUTER_HANDOVER`` so a client that reconnects with its
  routing id takes over the old pipe; ``MAXMSGSIZE`` set before bind.
* both: ``LINGER`` bounded, so shutdown never hangs; ZMTP heartbeats, so a
  half-open TCP connection is closed.
* PUB: a generous ``SNDHWM``; a subscriber that still falls behind loses
  events on PUB and repairs them from ``history``.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import zmq

from messages import NOTICE_TOPIC, Code, ProtocolError, decode_request

from ._core import BatchHandler, Config, Core, Outbox, error_reply
from ._keys import Guard, load_secret, secure
from ._store import Store

log = logging.getLogger("zchat.broker")

BATCH = 4096
# Plain ints: pyzmq's flag enums cost an Enum call per send on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_MORE_NOBLOCK = _NOBLOCK | _SNDMORE
# pyzmq's Socket.send is a Python layer (draft-socket routing ids and
# groups) over the backend's send, and costs 0.3 us more a call than it:
# the four sends of a say were a quarter of the broker's profile. The hot
# loop calls the backend's send, with bytes and plain flags only.
_send = zmq.backend.Socket.send
LINGER_MS = 500


@dataclass(frozen=True)
class Options:
    """Everything the command line sets."""

    bind: str = "tcp://*:5555"
    publish: str = "tcp://*:5556"
    advertise: str | None = None
    store: str = ":memory:"
    fsync: bool = False
    heartbeat_ms: int = 5_000
    timeout_ms: int = 15_000
    rate: float = 20.0
    burst: int = 40
    max_text: int = 4_000
    max_msg_bytes: int = 65_536
    pub_hwm: int = 100_000
    ready_file: str | None = None
    curve_secret: str | None = None
    allow_keys: str | None = None
    dedup_max: int = 2_000_000
    retain_days: float = 0.0


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def wildcard_host(endpoint: str) -> bool:
    host = endpoint.partition("://")[2].rsplit(":", 1)[0].strip("[]")
    return host in ("*", "0.0.0.0", "::")


class Server:
    """Binds the sockets, opens the store and runs the loop until a signal."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        self.stopping = False
        self._forgotten_reported = 0
        self._next_forgotten_report = 0.0
        self.dropped = 0
        self._signals: list[int] = []
        self.guard: Guard | None = None
        if opts.curve_secret is not None:
            public, secret = load_secret(opts.curve_secret)
            self.guard = Guard(self.ctx, opts.allow_keys)
            secure(self.router, public, secret)
            secure(self.pub, public, secret)
            self.public_key = public.decode()
        self._setup_sockets()
        self.store = Store(opts.store, fsync=opts.fsync)
        self.config = Config(
            events=opts.advertise or self.pub_endpoint,
            heartbeat_ms=opts.heartbeat_ms,
            timeout_ms=opts.timeout_ms,
            rate=opts.rate,
            burst=opts.burst,
            max_text=opts.max_text,
            max_msg_bytes=opts.max_msg_bytes,
            curve=opts.curve_secret is not None,
            dedup_max=opts.dedup_max,
            retain_s=opts.retain_days * 86_400,
        )
        self.core = Core(self.config, self.store)
        self.recovered = self.core.load_recent(time.time())

    def _setup_sockets(self) -> None:
        o = self.opts
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(1000, o.heartbeat_ms))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(2000, o.timeout_ms))
            sock.setsockopt(zmq.HEARTBEAT_TTL, min(max(2000, o.timeout_ms), 6_553_000))
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, o.max_msg_bytes)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        self.router.setsockopt(zmq.RCVHWM, 100_000)
        self.pub.setsockopt(zmq.SNDHWM, o.pub_hwm)
        # Subscribers send only subscriptions: a small limit stops a peer
        # from pushing large frames at the PUB socket.
        self.pub.setsockopt(zmq.MAXMSGSIZE, 1024)
        self.router.bind(o.bind)
        self.pub.bind(o.publish)
        self.bind_endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.pub_endpoint = self.pub.getsockopt(zmq.LAST_ENDPOINT).decode()

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
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(wake_r.fileno(), zmq.POLLIN)
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
        router, core = self.router, self.core
        try:
            while not self.stopping:
                expiry = core.next_expiry()
                now = time.time()
                wait = 1000 if expiry is None else min(1000, max(0, int((expiry - now) * 1000) + 1))
                ready = dict(poller.poll(wait))
                now = time.time()
                if router in ready:
                    self._read(core.batch(now, out), out)
                if wake_r.fileno() in ready:
                    self._drain_wakeups(wake_r)
                core.expire(now, out)
                if core.recent.forgotten_early != self._forgotten_reported:
                    self._report_forgotten(now)
                if out.replies or out.events or out.notices or out.pushes:
                    self._flush(out)
            core.notice("the broker is shutting down", out)
            self._flush(out)
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
        # A bug must cost one request, not the broker and every session.
        log.exception("internal error on %s", type(req).__name__)
        err = ProtocolError(Code.BAD_REQUEST, "internal error; the request was not handled")
        out.reply(ident, error_reply(err, getattr(req, "id", None)))

    def _read(self, handle: BatchHandler, out: Outbox) -> None:
        """Read and handle every request waiting on the ROUTER, up to BATCH."""
        recv = self.router.recv
        max_text = self.config.max_text
        curve = self.guard is not None
        for _ in range(BATCH):
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
                extra = 1
                while recv(_NOBLOCK, copy=False).more:
                    extra += 1
                err = ProtocolError(
                    Code.BAD_REQUEST, f"a request is exactly one frame, not {extra + 1}"
                )
                out.reply(ident, error_reply(err))
                continue
            try:
                req = decode_request(body, max_text=max_text)
            except ProtocolError as err:
                out.reply(ident, error_reply(err))
                continue
            try:
                handle(ident, req, body.get("User-Id") if curve else None)
            except Exception:
                self._internal_error(ident, req, out)

    def _flush(self, out: Outbox) -> None:
        self.store.commit()
        pub = self.pub
        if out.events:
            # libzmq reads new subscriptions only while processing commands,
            # which a burst of sends may skip for up to a millisecond; asking
            # for EVENTS processes them now, so a subscriber that subscribed
            # before this batch was handled is not dropped as a slow joiner.
            pub.getsockopt(zmq.EVENTS)
        send = _send
        for topic, body in out.events:
            send(pub, topic, _SNDMORE)
            send(pub, body)
        for body in out.notices:
            pub.send_multipart((NOTICE_TOPIC, body))
        router = self.router
        for frames, pushes in ((out.replies, False), (out.pushes, True)):
            for ident, frame in frames:
                try:
                    # ROUTER_MANDATORY reports a gone peer on the first frame,
                    # so a failed send never leaves half a message queued.
                    send(router, ident, _MORE_NOBLOCK)
                    send(router, frame, _NOBLOCK)
                except zmq.ZMQError as err:
                    # EHOSTUNREACH: the peer is gone; EAGAIN: its queue is
                    # full. A reply or event is repaired by the client (it
                    # resends, or reads history); a private message has no
                    # history, so its session keeps it until heard from.
                    if err.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                        raise
                    nick = self.core.hold(ident, frame) if pushes else None
                    if nick is None:
                        self.dropped += 1
                    else:
                        log.info("%s cannot be reached; a private message is held for it", nick)
        out.clear()

    def _report_forgotten(self, now: float) -> None:
        if now < self._next_forgotten_report:
            return  # at most a line a minute
        self._next_forgotten_report = now + 60.0
        n = self.core.recent.forgotten_early
        log.warning(
            "%d request ids forgotten in under ten minutes to keep at most %d "
            "(--dedup-max): a resend of one of them would be published again",
            n - self._forgotten_reported,
            self.config.dedup_max,
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
            elif signum == signal.SIGHUP and self.guard is not None:
                try:
                    n = self.guard.reload()
                    log.info("SIGHUP: allow-list re-read, %d keys", n)
                except ValueError as err:
                    log.error("SIGHUP: %s; keeping the old allow-list", err)

    def _announce(self) -> None:
        o = self.opts
        log.info(
            "zchat-broker %s, epoch %s", self.core._welcome_tail["server"].version, self.core.epoch
        )
        log.info("requests on %s (ROUTER)", self.bind_endpoint)
        log.info("events   on %s (PUB), advertised as %s", self.pub_endpoint, self.config.events)
        where = "in memory (nothing survives a restart)" if o.store == ":memory:" else o.store
        log.info(
            "store %s: %d rooms, %d events, %d recent request ids; history kept %s",
            where,
            len(self.core.rooms),
            self.store.count(),
            self.recovered,
            f"{o.retain_days:g} days" if o.retain_days else "forever",
        )
        log.info(
            "limits: timeout %d ms, heartbeat %d ms, rate %s/s burst %d, text %d chars, frame %d bytes",
            o.timeout_ms,
            o.heartbeat_ms,
            f"{o.rate:g}" if o.rate > 0 else "unlimited",
            o.burst,
            o.max_text,
            o.max_msg_bytes,
        )
        if self.config.curve:
            allowed = "every client key" if o.allow_keys is None else f"the keys in {o.allow_keys}"
            log.info("CURVE on: server key %s; admitting %s", self.public_key, allowed)
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

    def close(self) -> None:
        self.store.close()
        self.router.close()
        self.pub.close()
        if self.guard is not None:
            self.guard.stop()
        self.ctx.term()
