"""What the socket tests share: brokers in subprocesses, a raw client, waits.

Every broker binds ports the OS picks and is killed at the end of its test;
every wait has a deadline and fails loudly when it passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import zmq

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)  # polling interval of a deadline wait, not a guess
        delay = min(delay * 2, 0.05)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run an asyncio test body with a global deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Broker:
    """A ``zchat-broker`` subprocess on OS-chosen loopback ports.

    ``restart()`` starts it again on the same ports and the same store, as
    an operator would after a crash.
    """

    def __init__(self, workdir: Path, *args: str, store: str | None = None) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.store = store if store is not None else str(workdir / "broker.db")
        self.bind = "tcp://127.0.0.1:0"
        self.publish = "tcp://127.0.0.1:0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.log = workdir / "broker.log"
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return str(self.ready["bind"])

    @property
    def events(self) -> str:
        return str(self.ready["publish"])

    def start(self, timeout: float = 15.0) -> Broker:
        ready_file = self.workdir / f"ready-{self.starts}.json"
        cmd = [
            sys.executable,
            "-m",
            "broker",
            "--bind",
            self.bind,
            "--publish",
            self.publish,
            "--store",
            self.store,
            "--ready-file",
            str(ready_file),
            *self.args,
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=self.workdir)
        self.starts += 1

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            return ready_file.exists()

        wait_until(up, timeout, "the broker to listen")
        self.ready = json.loads(ready_file.read_text())
        # A restart binds the very ports the first start was given.
        self.bind, self.publish = self.ready["bind"], self.ready["publish"]
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the clean way out."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> Broker:
        self.kill()
        return self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RawClient:
    """A DEALER and a SUB that speak the contract's JSON, nothing more.

    Every receive is bounded by a poll, so a missing reply fails the test
    instead of hanging it.
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, events: str | None = None) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.connect(endpoint)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        if events is not None:
            self.connect_events(events)

    def connect_events(self, events: str, timeout: float = 5.0) -> None:
        """Connect the SUB and wait for its handshake, so that a subscription
        made afterwards travels on a live connection."""
        from zmq.utils.monitor import recv_monitor_message

        mon = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self.sub.connect(events)
            if not mon.poll(int(timeout * 1000)):
                raise AssertionError(f"SUB could not connect to {events}")
            recv_monitor_message(mon)
        finally:
            self.sub.disable_monitor()
            mon.close(0)

    def send(self, msg: dict[str, Any] | bytes) -> None:
        self.dealer.send(msg if isinstance(msg, bytes) else json.dumps(msg).encode())

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.dealer.poll(int(left * 1000)):
                raise AssertionError(f"no reply within {timeout:g} s")
            try:
                # Not a blocking recv: a connection that dies after poll()
                # takes its message with it.
                return dict(json.loads(self.dealer.recv(zmq.NOBLOCK)))
            except zmq.Again:
                continue

    def request(self, msg: dict[str, Any] | bytes, timeout: float = 5.0) -> dict[str, Any]:
        self.send(msg)
        return self.recv(timeout)

    def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Replies and pushes until one matches ``pred`` (the others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching reply in time")
            msg = self.recv(left)
            if pred(msg):
                return msg

    def subscribe(self, topic: bytes) -> None:
        self.sub.subscribe(topic)

    def event(self, timeout: float = 5.0) -> tuple[bytes, dict[str, Any]]:
        if not self.sub.poll(int(timeout * 1000)):
            raise AssertionError(f"no event within {timeout:g} s")
        topic, body = self.sub.recv_multipart()
        return topic, dict(json.loads(body))

    def close(self) -> None:
        self.dealer.close(0)
        self.sub.close(0)


class PausableProxy:
    """A TCP proxy (in front of a broker's ROUTER, or a Redis) that can stop
    moving bytes, or send them elsewhere."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit("/", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                conn.close()  # the target is down: so is this connection
                continue
            self.socks += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def retarget(self, target: str) -> None:
        """Send new connections to ``target`` and cut the present ones."""
        host, port = target.rsplit("/", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()
        for s in self.socks:
            s.close()


class FakeBroker:
    """A stand-in broker on loopback: a ROUTER and a PUB on ports the OS
    picks; :meth:`serve` answers each request with :meth:`answer`."""

    def __init__(self, ctx: Any) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.pub = ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.events = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"

    def answer(self, req: Any) -> Any:
        raise NotImplementedError

    def welcome(self, req: Any, server: Any, *, timeout_ms: int) -> Any:
        """The ``welcome`` a stand-in answers ``hello`` with."""
        import messages as m

        return m.Welcome(
            id=req.id,
            nick=req.nick,
            token="t",
            server=server,
            events=self.events,
            heartbeat_ms=200,
            timeout_ms=timeout_ms,
            limits=m.Limits(max_text=4000, max_msg_bytes=65536, rate_per_s=20.0, burst=40),
        )

    async def serve(self) -> None:
        import messages as m

        while True:
            ident, frame = await self.router.recv_multipart()
            reply = self.answer(m.decode_request(frame))
            await self.router.send_multipart([ident, m.encode(reply)])

    def close(self) -> None:
        self.router.close(0)
        self.pub.close(0)


async def whole_history(client: Any, room: str = "general") -> list[Any]:
    """Every event of ``room`` the store keeps, oldest first, page by page."""
    events: list[Any] = []
    after = 0
    while True:
        page, more = await client.history(room, after=after, limit=500)
        events += page
        if not more:
            return events
        after = page[-1].seq
