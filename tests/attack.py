"""What the hostile-client tests share: a polite client chatting beside the
attack, the broker's memory, attackers from other loopback addresses, and a
raw ZMTP speaker for what no ZeroMQ socket would send.

Shared by ``test_limits.py`` (bounded attacks in ``make test``) and the
hostile section of ``make bench`` (the same attacks at full speed).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from .helpers import Broker, RawClient, wait_until

P99_BOUND_S = 0.25


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def broker_rss(b: Broker) -> int:
    assert b.proc is not None and b.proc.poll() is None, "the broker is not running"
    return rss(b.proc.pid)


def from_address(endpoint: str, source: str) -> str:
    """``endpoint`` reached from loopback address ``source`` (127.0.0.2...):
    libzmq's ``tcp://SOURCE:0;HOST:PORT`` form."""
    host_port = endpoint.split("://", 1)[1]
    return f"tcp://{source}:0;{host_port}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Polite:
    """A client that keeps chatting in a thread of its own while an attack
    runs, and records how long each round trip took.

    One round trip in five is a ``say`` (so it also proves that messages
    keep flowing, at 10 a second, within the default rate), the others are
    ``ping``; with ``says`` False, all are pings.
    """

    def __init__(self, b: Broker, nick: str = "polite", *, says: bool = True) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.c = RawClient(self.ctx, b.endpoint)
        self.says = says
        welcome = self.c.request({"type": "hello", "nick": nick})
        assert welcome["type"] == "welcome", welcome
        assert self.c.request({"type": "join", "room": "general"})["type"] == "joined"
        self.rtts: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Polite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            msg: dict[str, Any] = (
                {"type": "say", "room": "general", "text": f"still here {i}", "id": f"p{i}"}
                if self.says and i % 5 == 0
                else {"type": "ping", "id": f"p{i}"}
            )
            t0 = time.monotonic()
            try:
                self.c.send(msg)
                while True:
                    reply = self.c.recv(5.0)
                    if reply.get("id") == f"p{i}":
                        break
            except AssertionError as err:
                self.failures.append(str(err))
                continue
            self.rtts.append(time.monotonic() - t0)
            if reply["type"] not in ("ack", "pong"):
                self.failures.append(json.dumps(reply))
            # Offered load: 50 requests a second, like a busy person.
            self._stop.wait(0.02)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self.c.close()
        self.ctx.destroy(linger=0)

    def check(self, *, minimum: int = 10) -> float:
        """The p99 round trip, asserted under the bound, with no failure
        (after at least ``minimum`` round trips, however quick the attack)."""
        wait_until(lambda: len(self.rtts) >= minimum or self.failures, what="round trips")
        self.stop()
        assert not self.failures, self.failures[:3]
        assert len(self.rtts) >= minimum, f"only {len(self.rtts)} round trips"
        p99 = percentile(self.rtts, 0.99)
        assert p99 < P99_BOUND_S, f"polite p99 {p99 * 1000:.0f} ms"
        return p99


class Zmtp:
    """A raw ZMTP 3.0 (NULL) peer over TCP, for frames no ZeroMQ socket sends."""

    def __init__(self, endpoint: str, *, socket_type: bytes = b"DEALER", source: str = "") -> None:
        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        self.sock = socket.socket()
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16
        self.sock.sendall(greeting + b"\x00" + b"\x00" * 31)
        got = b""
        while len(got) < 64:
            chunk = self.sock.recv(64 - len(got))
            assert chunk, "the broker closed the connection during the greeting"
            got += chunk
        prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
        body = b"\x05READY" + prop
        self.sock.sendall(b"\x04" + bytes([len(body)]) + body)

    def send_parts(self, count: int, *, finish: bool, chunk: int = 100_000) -> int:
        """Send ``count`` empty frames of one message (and its last frame when
        ``finish``); returns how many went before the broker hung up."""
        sent = 0
        block = b"\x01\x00" * chunk
        try:
            while sent < count:
                n = min(chunk, count - sent)
                self.sock.sendall(block if n == chunk else b"\x01\x00" * n)
                sent += n
            if finish:
                self.sock.sendall(b"\x00\x00")
        except OSError:
            pass
        return sent

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """Whether the broker closed this connection (within ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
