"""The broker's TCP connections, seen from below ZeroMQ.

Theory of operation. libzmq hides connections behind its sockets: it bounds
a message's frames but not how many frames an unfinished message has, a
peer's reply queue by count but not by bytes, and it accepts connections
until the process runs out of file descriptors. What it does offer is
enough to bound all of that from outside:

* a socket monitor reports each accepted connection with its file
  descriptor, and each closed one;
* every frame carries the descriptor it came in on (``SRCFD``);
* the kernel knows, per descriptor, how much was received (``TCP_INFO``)
  and how much of that libzmq has not read yet (``FIONREAD``), how much the
  peer acknowledged and how much is still unsent (``TIOCOUTQ``);
* shutting a descriptor down makes libzmq drop that connection as if the
  peer had gone: its unfinished message is rolled back and its queues are
  freed (measured: 300 MB of unread replies returned at once).

So :class:`Connections` keeps a table of descriptors from the monitors of
the ROUTER and the XPUB, and disconnects ("kicks") a connection that

* comes beyond ``max_connections``, or beyond ``connections_per_address``
  from its client address;
* had libzmq read more than ``unfinished_kb`` from it while delivering no
  message: the frames of a message that never ends (a 30-million-part
  message is 1.9 GB in libzmq, and no libzmq option bounds it);
* leaves more than ``sendq_kb`` of replies unread (counted as the bytes of
  replies sent to it less what its TCP acknowledged), or whose reply queue
  is full, or that acknowledged nothing for ``timeout_ms`` while data
  waited for it: a slow consumer, as NATS calls it;
* sent junk subscriptions (anything but a room topic, ``*`` or the empty
  prefix), or more of them than a session can have rooms;
* said nothing at all for ``timeout_ms`` after connecting.

A kicked client's libzmq reconnects by itself; its session, if it has one,
lives on for ``timeout_ms`` and resumes when it speaks again. The table is
checked once a second, and at once when what the process has allocated
grows by 8 MiB.
Descriptors are numbers the kernel reuses, so before shutting one down the
table checks that it still leads to the peer recorded for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import resource
import socket
import struct
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from messages import NOTICE_TOPIC, is_room

from ._config import KIB, MIB, Config, address_key

log = logging.getLogger("zchat.broker")

LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received.
_ACKED_AT, _RECEIVED_AT, _TCP_INFO_LEN = 120, 128, 136
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_ACCEPT_FAILED
SCAN_S = 1.0
# Process growth that triggers a scan at once. An unfinished message's empty
# frames cost libzmq 46 bytes each: 8 MiB is 180,000 frames, which the loop
# reads in 0.2 s if the message is finished before the scan stops it.
GROWTH_SCAN_BYTES = 8 * MIB
HEAP_CHECK_S = 0.02  # how often the growth is looked at
JUNK_MAX = 100  # ignored subscriptions a subscriber may send before it goes
RESERVED_FDS = 64  # for the store, libzmq's own descriptors, logs
SILENT_GRACE_S = 1.0  # a new connection's time to say something before it may be evicted


def open_file_limit() -> int:
    """Raise the soft limit of open files to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limit(config: Config) -> int:
    """``--max-connections``, or what the open-file limit leaves room for."""
    room = open_file_limit() - RESERVED_FDS
    if config.max_connections:
        if config.max_connections > room:
            log.warning(
                "--max-connections %d is more than the open-file limit allows (%d); using %d",
                config.max_connections,
                room + RESERVED_FDS,
                room,
            )
        return max(1, min(config.max_connections, room))
    return max(16, room)


def trim_memory() -> None:
    """Give freed memory back to the system (glibc keeps it otherwise)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_mallinfo2 = getattr(_libc, "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    """What the process has allocated: glibc's count over every arena (0.5
    us), libzmq's I/O thread included; freed memory leaves it at once, so it
    shows growth where the resident size, which keeps freed pages until they
    are trimmed, would not. Elsewhere, the resident size."""
    if _mallinfo2 is not None:
        info = _mallinfo2()
        return int(info.uordblks + info.hblkhd)
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Conn:
    """One TCP connection to the ROUTER (``kind`` "router") or the XPUB."""

    __slots__ = (
        "acked",
        "acked_base",
        "active",
        "addr",
        "fd",
        "idents",
        "junk",
        "kicked",
        "kind",
        "peer",
        "quiet_base",
        "sent",
        "sent_base",
        "since",
        "stalled_since",
        "subs",
    )

    def __init__(self, fd: int, peer: Any, kind: str, now: float) -> None:
        self.fd = fd
        self.peer = peer
        self.addr = address_key(peer[0]) if isinstance(peer, tuple) else ""
        self.kind = kind
        self.since = now
        self.idents: set[bytes] = set()
        self.subs: set[bytes] = set()
        self.junk = 0
        self.active = False  # a message came from it since the last scan
        self.quiet_base = -1  # what libzmq had read when it last delivered
        self.sent = 0  # bytes of replies sent to it (other than say's acks)
        self.sent_base = 0  # of which its TCP acknowledged up to here
        self.acked = -1
        self.acked_base = -1
        self.stalled_since: float | None = None
        self.kicked = False


def _peer(fd: int) -> Any:
    """The remote address of descriptor ``fd``, without taking it over."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return s.getpeername()
    except OSError:
        return None
    finally:
        s.detach()


class _TcpState:
    __slots__ = ("acked", "inq", "outq", "received")

    def __init__(self, acked: int, received: int, inq: int, outq: int) -> None:
        self.acked, self.received, self.inq, self.outq = acked, received, inq, outq


def _tcp_state(fd: int) -> _TcpState | None:
    buf = ctypes.create_string_buffer(_TCP_INFO_LEN)
    size = ctypes.c_uint32(_TCP_INFO_LEN)
    if _libc.getsockopt(fd, socket.IPPROTO_TCP, _TCP_INFO, buf, ctypes.byref(size)) != 0:
        return None
    if size.value < _TCP_INFO_LEN:
        return None
    acked, received = struct.unpack_from("=QQ", buf.raw, _ACKED_AT)
    q = ctypes.c_int()
    try:
        fcntl.ioctl(fd, termios.FIONREAD, q)
        inq = q.value
        fcntl.ioctl(fd, _TIOCOUTQ, q)
        outq = q.value
    except OSError:
        return None
    return _TcpState(acked, received, inq, outq)


class Connections:
    """Every TCP connection of the broker's two sockets, and their bounds.

    Args:
        config: the bounds.
        router: the ROUTER socket, before it binds.
        xpub: the XPUB socket, before it binds.
        active: whether a routing id's session was heard from since a time.
    """

    def __init__(
        self,
        config: Config,
        router: zmq.Socket[bytes],
        xpub: zmq.Socket[bytes],
        active: Callable[[bytes, float], bool],
    ) -> None:
        self.config = config
        self.limit = connection_limit(config)
        self.per_address = config.connections_per_address
        self.unfinished = config.unfinished_kb * KIB
        self.sendq = config.sendq_kb * KIB
        self.timeout_s = config.timeout_ms / 1000
        self.subs_max = config.rooms_per_session + 1  # its rooms and "*"
        self.enabled = LINUX  # the kernel readings are Linux's
        self._active = active
        self.by_fd: dict[int, Conn] = {}
        self.fd_of: dict[bytes, int] = {}  # routing id -> its connection's fd
        # Numbers of closed connections that were turned away, until reused
        # (at most one per descriptor).
        self._kicked_fds: set[int] = set()
        self.addresses: Counter[str] = Counter()
        self.kicks: Counter[str] = Counter()
        self._monitors = [
            (router.get_monitor_socket(_EVENTS), "router"),
            (xpub.get_monitor_socket(_EVENTS), "pub"),
        ]
        self._last_scan = time.monotonic()
        self._next_scan = self._last_scan + SCAN_S
        self._next_heap = 0.0
        self._heap_base = heap_bytes()
        self._closed_since_trim = 0
        self._next_trim = 0.0
        self._next_log: dict[str, float] = {}
        self.kicked_open = 0  # kicked, but libzmq has not reported them closed yet

    def __len__(self) -> int:
        return len(self.by_fd)

    @property
    def sockets(self) -> list[zmq.Socket[bytes]]:
        return [m for m, _ in self._monitors]

    # -------------------------------------------------------- monitor events

    def events(self, now: float) -> None:
        """Take in what the monitors reported."""
        for mon, kind in self._monitors:
            while True:
                try:
                    frames = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                ev = parse_monitor_message(frames)
                event, fd = int(ev["event"]), int(ev["value"])
                if event == zmq.EVENT_ACCEPTED:
                    self._accepted(fd, kind, now)
                elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                    self._closed(fd)
                elif event == zmq.EVENT_ACCEPT_FAILED:
                    self._say(
                        "accept",
                        "cannot accept connections: %s (open files: %d of %d)",
                        os.strerror(fd),
                        len(self.by_fd),
                        self.limit,
                    )

    def _accepted(self, fd: int, kind: str, now: float) -> None:
        self._closed(fd)  # a number reused before its close was read
        self._kicked_fds.discard(fd)
        conn = Conn(fd, _peer(fd), kind, now)
        self.by_fd[fd] = conn
        self.addresses[conn.addr] += 1
        if self.addresses[conn.addr] > self.per_address:
            self.kick(
                conn,
                "address",
                f"{self.addresses[conn.addr] - 1} connections from {conn.addr} already, "
                f"the most from one address",
            )
        elif len(self.by_fd) - self.kicked_open > self.limit:
            # Full. Connections that never said anything make room for the
            # newcomer, so that a flood of bare TCP connections cannot lock
            # clients out; one that speaks at once is not among them.
            victim = self._silent(now)
            self.kick(
                victim or conn,
                "full",
                f"the broker has {self.limit} connections, its most"
                + ("; the oldest silent one made room" if victim else ""),
            )

    def _silent(self, now: float) -> Conn | None:
        for conn in self.by_fd.values():  # oldest first: dicts keep order
            if now - conn.since < SILENT_GRACE_S:
                return None
            if not conn.kicked and not conn.idents and not conn.subs and not conn.active:
                return conn
        return None

    def _closed(self, fd: int) -> None:
        conn = self.by_fd.pop(fd, None)
        if conn is None:
            return
        if conn.kicked:
            self.kicked_open -= 1
            self._kicked_fds.add(fd)
        self.addresses[conn.addr] -= 1
        if self.addresses[conn.addr] <= 0:
            del self.addresses[conn.addr]
        for ident in conn.idents:
            if self.fd_of.get(ident) == fd:
                del self.fd_of[ident]
        self._closed_since_trim += 1

    # ----------------------------------------------------- what came in

    def seen(self, ident: bytes, frame: zmq.Frame) -> bool:
        """A request from ``ident`` arrived on ``frame``'s connection;
        returns False when that connection is being disconnected, so the
        request is to be dropped."""
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return True
        conn = self.by_fd.get(fd)
        if conn is None:
            # Its accept may not be read yet (libzmq reports it on another
            # pipe): read it, since it may be one the bounds turn away.
            self.events(time.monotonic())
            conn = self.by_fd.get(fd)
            if conn is None:
                # Closed already: dropped if it was turned away (what it sent
                # before it was cut is still in the ROUTER's queue).
                return fd not in self._kicked_fds
        if conn.kicked:
            # A hello from a connection turned away would take its nick
            # for --timeout-ms, from the client's own next try.
            return False
        conn.active = True
        if ident not in conn.idents:
            conn.idents.add(ident)
            self.fd_of[ident] = fd
        return True

    def subscription(self, frame: zmq.Frame) -> bool:
        """Whether a (un)subscription from a subscriber is to be applied;
        junk and subscriptions past the bound are not, and cost the sender."""
        data = frame.bytes
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            fd = -1
        conn = self.by_fd.get(fd)
        topic = data[1:]
        good = len(data) >= 1 and data[0] in (0, 1) and _valid_topic(topic)
        if conn is None:
            return good
        conn.active = True
        if good and data[0] == 0:
            conn.subs.discard(topic)
            return True
        if good and (topic in conn.subs or len(conn.subs) < self.subs_max):
            conn.subs.add(topic)
            return True
        conn.junk += 1
        if conn.junk > JUNK_MAX:
            self.kick(
                conn, "junk", f"{conn.junk} subscriptions that are not room topics, or too many"
            )
        return False

    # ------------------------------------------------------ what went out

    def sent(self, ident: bytes, nbytes: int) -> None:
        """``nbytes`` of replies were queued for ``ident``: check its send queue."""
        conn = self.by_fd.get(self.fd_of.get(ident, -1))
        if conn is None:
            return
        conn.sent += nbytes
        if conn.sent - conn.sent_base > self.sendq and self.enabled:
            self._check_sendq(conn, _tcp_state(conn.fd))

    def full(self, ident: bytes) -> None:
        """The ROUTER refused to queue more for ``ident`` (its high-water mark)."""
        conn = self.by_fd.get(self.fd_of.get(ident, -1))
        if conn is not None:
            self.kick(conn, "slow", "its reply queue is full: it does not read its replies")

    def _check_sendq(self, conn: Conn, st: _TcpState | None) -> None:
        if st is None:
            return
        if conn.acked_base < 0:
            conn.acked_base = st.acked
        # What its TCP acknowledged since the last look was read from the
        # queue (it includes framing and heartbeats: an overestimate, so a
        # reader is never taken for a slow consumer).
        conn.sent_base = min(conn.sent, conn.sent_base + st.acked - conn.acked_base)
        conn.acked_base = st.acked
        if st.outq == 0:
            conn.sent_base = conn.sent  # nothing waits in the kernel: nor before it
        if conn.sent - conn.sent_base > self.sendq:
            self.kick(
                conn,
                "slow",
                f"{(conn.sent - conn.sent_base) // KIB} KiB of replies unread, more than "
                f"--sendq-kb {self.config.sendq_kb}",
            )

    # ------------------------------------------------------------ checks

    def due(self, now: float) -> bool:
        """Whether :meth:`scan` should run now: once a second, and at once
        when the process has grown fast (an unfinished message being sent)."""
        if not self.enabled:
            return False
        if now >= self._next_scan:
            return True
        if now >= self._next_heap:
            self._next_heap = now + HEAP_CHECK_S
            heap = heap_bytes()
            self._heap_base = min(self._heap_base, heap)
            return heap - self._heap_base > GROWTH_SCAN_BYTES
        return False

    def scan(self, now: float) -> None:
        """Look at every connection's TCP state and kick what breaks a bound."""
        since = self._last_scan
        self._last_scan = now
        self._next_scan = now + SCAN_S
        for conn in list(self.by_fd.values()):
            if conn.kicked:
                continue
            st = _tcp_state(conn.fd)
            if st is None:
                if _peer(conn.fd) != conn.peer:
                    self._closed(conn.fd)  # gone, and its close not reported
                continue
            active = conn.active or any(self._active(i, since) for i in conn.idents)
            conn.active = False
            read = st.received - st.inq  # what libzmq took from the kernel
            if active or conn.quiet_base < 0:
                conn.quiet_base = read
            elif read - conn.quiet_base > self.unfinished:
                self.kick(
                    conn,
                    "unfinished",
                    f"{(read - conn.quiet_base) // KIB} KiB sent without finishing a message",
                )
                continue
            if not conn.idents and not conn.subs and now - conn.since > self.timeout_s:
                self.kick(conn, "silent", "it said nothing since it connected")
                continue
            if st.outq > 0 and st.acked == conn.acked:
                if conn.stalled_since is None:
                    conn.stalled_since = now
                elif now - conn.stalled_since > self.timeout_s:
                    self.kick(conn, "slow", "it read nothing for longer than --timeout-ms")
                    continue
            else:
                conn.stalled_since = None
            conn.acked = st.acked
            if conn.kind == "router" and conn.sent:
                self._check_sendq(conn, st)
        self._heap_base = heap_bytes()

    def housekeeping(self, now: float) -> None:
        """Return memory of closed connections to the system, now and then."""
        if self._closed_since_trim and now >= self._next_trim:
            self._closed_since_trim = 0
            self._next_trim = now + 5.0
            trim_memory()
            self._heap_base = heap_bytes()

    # -------------------------------------------------------------- kicks

    def kick(self, conn: Conn, kind: str, why: str) -> None:
        """Disconnect ``conn`` (for a reason of ``kind``, counted in
        :attr:`kicks`): libzmq drops it and everything it held."""
        if conn.kicked:
            return
        if _peer(conn.fd) != conn.peer:
            self._closed(conn.fd)  # not ours any more: its number was reused
            return
        conn.kicked = True
        self.kicked_open += 1
        # Linger 0: when libzmq closes it, the kernel resets the connection
        # and drops what it buffered, instead of waiting on a peer that may
        # never read.
        linger = struct.pack("ii", 1, 0)
        _libc.setsockopt(conn.fd, socket.SOL_SOCKET, socket.SO_LINGER, linger, len(linger))
        if _libc.shutdown(conn.fd, socket.SHUT_RDWR) != 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOTCONN, errno.EBADF):
                log.warning("could not disconnect %s: %s", _show(conn.peer), os.strerror(err))
            return
        self.kicks[kind] += 1
        self._say(kind, "disconnected %s %s (%s): %s", conn.kind, _show(conn.peer), kind, why)

    def _say(self, key: str, fmt: str, *args: Any) -> None:
        """Log, at most once a minute for the same reason."""
        now = time.monotonic()
        if now < self._next_log.get(key, 0.0):
            return
        self._next_log[key] = now + 60.0
        log.warning(fmt, *args)

    def close(self) -> None:
        for mon, _ in self._monitors:
            mon.close(0)


def _valid_topic(topic: bytes) -> bool:
    """A room's topic, ``*`` (notices), or empty (everything: one prefix,
    as cheap as any, for loggers and bridges)."""
    if topic == NOTICE_TOPIC or topic == b"":
        return True
    if len(topic) < 3 or topic[:1] != b"#" or topic[-1:] != b"\x00":
        return False
    try:
        return is_room(topic[1:-1].decode("ascii"))
    except UnicodeDecodeError:
        return False


def _show(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
