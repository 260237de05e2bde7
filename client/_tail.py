"""``zchat tail``: room events as lines, for people, pipes and ``jq``.

Output goes through a writer thread fed by a small queue. When the reader
of our stdout stalls, the queue fills and we stop taking events from the
client; the client then stops reading its SUB socket, PUB drops, and the
holes are repaired from history once the pipe moves again. Meanwhile the
event loop keeps the session alive with its heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import queue
import select
import sys
import threading
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from messages import (
    DEFAULT_ROOM,
    JoinEvent,
    LeaveEvent,
    ModeEvent,
    MsgEvent,
    NickEvent,
    TopicEvent,
    encode,
)

from ._client import Client, Disconnected, Reconnected, valid_room
from ._programs import add_common, default_nick, make_client, run_program
from ._render import event_line

PROG = "zchat tail"
ROOM_EVENTS = (MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent, ModeEvent)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Print room events as they arrive, each once and in order, "
        "after the last N from history.",
    )
    add_common(p)
    p.add_argument("--room", action="append", help="a room to follow (repeatable; default general)")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="first print the last N events of each room",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line, exactly as on the wire"
    )
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N events")
    p.add_argument(
        "--visible",
        action="store_true",
        help="be a member of the room that others see come and go (by default a tail "
        "is quiet: no join or leave of its own, listed apart by /who)",
    )
    return p


class _Lines:
    """Events as the terminal client shows them: colored on a terminal
    (unless NO_COLOR), plain in a pipe."""

    def __init__(self, me: str, room: str | None) -> None:
        self.me, self.room = me, room
        self.buf = io.StringIO()
        self.console = Console(
            file=self.buf, force_terminal=sys.stdout.isatty(), width=10_000, highlight=False
        )

    def __call__(self, ev: Any) -> bytes:
        self.console.print(event_line(ev, me=self.me, current=self.room), soft_wrap=True)
        text = self.buf.getvalue()
        self.buf.seek(0)
        self.buf.truncate()
        return text.encode()


class _Writer:
    """Writes chunks to stdout from a thread, so a slow pipe never blocks the
    loop: at most a few chunks wait for it. The thread is a daemon writing
    with ``os.write``: a reader stalled for good must not hold the program
    when it is stopped (the threads of ``asyncio.to_thread`` are waited for
    at its end, and one blocked inside ``sys.stdout`` holds a lock Python
    takes at its exit)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.room = asyncio.Semaphore(8)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stdout", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = sys.stdout.fileno()
        try:
            while (chunk := self.q.get()) is not None:
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:  # a stdout left non-blocking
                        select.select([], [fd], [])
                self._call(self.room.release)
        except BaseException as err:  # a closed pipe: the caller stops
            self.error = err
            self._call(self.room.release)  # a write waiting for room sees it
        self._call(self._finished)

    def _finished(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _call(self, fn: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the program ended
            self.loop.call_soon_threadsafe(fn)

    async def write(self, chunk: bytes) -> None:
        await self.room.acquire()
        if self.error is not None:
            raise BrokenPipeError("standard output was closed")
        self.q.put(chunk)

    async def close(self) -> None:
        """Wait until what was written is out."""
        self.q.put(None)
        await asyncio.shield(self.done)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)

    async def body() -> int:
        rooms = [valid_room(r) for r in args.room or [DEFAULT_ROOM]]
        # Quiet: a reader publishes no join or leave, is listed apart in
        # who, and counts none of its own presence in --count.
        client = make_client(args, args.nick or default_nick("tail"), [], quiet=not args.visible)
        await client.start(timeout=args.timeout)
        writer = _Writer()
        stopped = False
        try:
            return await _follow(client, rooms, args, writer)
        except BrokenPipeError:
            return 0
        except asyncio.CancelledError:
            stopped = True  # by a signal
            raise
        finally:
            await client.close()
            if writer.error is None:
                # Stopped, the rest gets a second: a reader that stalled for
                # good must not keep the program from ending.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(writer.close(), 1.0 if stopped else None)

    return run_program(PROG, body)


async def _follow(client: Client, rooms: list[str], args: Any, writer: _Writer) -> int:
    if args.json:

        def line(ev: Any) -> bytes:
            return encode(ev) + b"\n"

    else:
        line = _Lines(client.nick, rooms[0] if len(rooms) == 1 else None)

    printed = 0
    for room in rooms:
        joined = await client.join(room)
        # A quiet join makes no event: joined.seq is the last one before us.
        came = joined.seq + 1 if client.quiet else joined.seq
        if args.history > 0 and came > 1:
            events, _ = await client.history(room, before=came, limit=args.history)
            if args.count:
                events = events[: args.count - printed]
            if events:
                await writer.write(b"".join(line(e) for e in events))
                printed += len(events)
    if args.count and printed >= args.count:
        return 0
    chunk: list[bytes] = []
    async for item in client.items():
        if isinstance(item, ROOM_EVENTS):
            chunk.append(line(item))
            printed += 1
        elif isinstance(item, Disconnected):
            where = f" to {item.endpoint}" if item.endpoint else ""
            print(f"{PROG}: reconnecting{where} ({item.reason})", file=sys.stderr)
        elif isinstance(item, Reconnected):
            where = f" to {item.endpoint}" if item.endpoint else ""
            print(
                f"{PROG}: reconnected{where}, {item.recovered} missed events recovered",
                file=sys.stderr,
            )
        done = args.count and printed >= args.count
        if chunk and (done or client.backlog == 0 or len(chunk) >= 512):
            await writer.write(b"".join(chunk))
            chunk.clear()
        if done:
            break
    return 0
