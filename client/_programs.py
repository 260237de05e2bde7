"""What the programs share: their common options, connecting, stopping on a
signal, and turning every failure into one line on stderr and an exit
status, the same for every program:

====  ===============================================================
code  meaning
====  ===============================================================
0     done
1     the broker refused: a nick taken or owned by another key, a room
      or text it does not accept
2     wrong usage, found before anything was sent: an option, nick,
      room, endpoint or server key that is not valid, a text over the
      broker's limit
3     the broker cannot be reached: no answer in time, or a handshake
      it refused (keys, encryption)
129   stopped by SIGHUP, after saying goodbye to the broker
130   stopped by Ctrl-C (SIGINT), likewise
143   stopped by SIGTERM, likewise
====  ===============================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import secrets
import select
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._client import Client
from ._errors import ConnectRefused, ConnectTimeout, InvalidInput, ZchatError
from ._keys import curve_keys

DEFAULT_CONNECT = "tcp://127.0.0.1:5555"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def add_common(
    p: argparse.ArgumentParser, *, nick_required: bool = False, nick_env: bool = True
) -> None:
    """Options every client program takes, with their environment defaults
    (``nick_env`` False: the nick is not taken from ZCHAT_NICK, a person's)."""
    p.add_argument(
        "--connect",
        default=os.environ.get("ZCHAT_CONNECT", DEFAULT_CONNECT),
        metavar="EP[,EP...]",
        help="the broker's request endpoint, tcp://HOST:PORT; or several separated by "
        "commas, the nodes of a cluster: the first that answers is used, the next when "
        "it stops answering (env ZCHAT_CONNECT; default %(default)s)",
    )
    env_nick = os.environ.get("ZCHAT_NICK") if nick_env else None
    p.add_argument(
        "--nick",
        default=env_nick,
        required=nick_required and not env_nick,
        help="the nick to use" + (" (env ZCHAT_NICK)" if nick_env else ""),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when the broker does not answer for this long (default %(default)s)",
    )
    p.add_argument(
        "--server-key",
        default=os.environ.get("ZCHAT_SERVER_KEY"),
        metavar="KEY",
        help="the broker's CURVE public key: Z85 text or a public certificate file "
        "(env ZCHAT_SERVER_KEY); turns encryption on",
    )


def fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def default_nick(kind: str) -> str:
    """A nick for a script that did not name one: unlikely to be taken."""
    return f"{kind}-{secrets.token_hex(3)}"


def make_client(args: Any, nick: str, rooms: list[str], *, quiet: bool = False) -> Client:
    """A client from the common options.

    Raises:
        InvalidInput: the server key is not one.
    """
    try:
        curve = curve_keys(args.server_key)
    except ValueError as err:
        raise InvalidInput("bad_key", str(err)) from None
    return Client(args.connect, nick, rooms=rooms, curve=curve, quiet=quiet)


def exit_status(err: ZchatError) -> int:
    """The exit status of a program that failed with ``err``."""
    if isinstance(err, InvalidInput):
        return EXIT_USAGE
    if isinstance(err, ConnectTimeout | ConnectRefused):
        return EXIT_UNREACHABLE
    return EXIT_REFUSED


def describe(err: ZchatError) -> str:
    if isinstance(err, ConnectTimeout | ConnectRefused):
        return f"cannot reach the broker: {err.message}"
    if isinstance(err, InvalidInput):
        return err.message
    return f"{err.message} ({err.code})"


async def until_stopped(body: Coroutine[Any, Any, int]) -> int:
    """Run ``body``; SIGINT, SIGTERM or SIGHUP cancel it, so that its
    ``finally`` blocks say goodbye to the broker, and give 128 + the signal."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(body)
    got: list[int] = []

    def stop(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    try:
        status = await task
    except asyncio.CancelledError:
        if got:
            return 128 + got[0]
        raise
    else:
        # A body may end by itself on the cancel (the full-screen client's
        # Textual app does): the signal is still what stopped it.
        return 128 + got[0] if got else status
    finally:
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


# ------------------------------------------------------------------- stdin

_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[str]"]
_stdin_requests: queue.SimpleQueue[_Request] | None = None
_unread: list[str] = []  # lines read for a caller that was gone


async def read_line() -> str:
    """The next line of stdin, with its newline ("" at its end).

    Read by a daemon thread, on demand (nothing is read ahead, so another
    reader of stdin gets the rest), with ``os.read``: a thread of
    ``asyncio.to_thread`` would be waited for when the program ends, so a
    signal would wait on stdin for a line that may never come, and a thread
    blocked inside ``sys.stdin`` holds a lock Python takes at its exit.
    """
    global _stdin_requests
    if _unread:
        return _unread.pop(0)
    if _stdin_requests is None:
        _stdin_requests = queue.SimpleQueue()
        threading.Thread(
            target=_read_stdin, args=(_stdin_requests,), name="stdin", daemon=True
        ).start()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    _stdin_requests.put((loop, fut))
    return await fut


def _read_stdin(requests: queue.SimpleQueue[_Request]) -> None:
    fd = sys.stdin.fileno()
    encoding, errors = sys.stdin.encoding or "utf-8", sys.stdin.errors or "strict"
    buf = bytearray()
    ended = False
    while True:
        loop, fut = requests.get()
        line: str | None = None
        failure: BaseException | None = None
        try:
            while b"\n" not in buf and not ended:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:  # a stdin left non-blocking
                    select.select([fd], [], [])
                    continue
                ended = not chunk
                buf += chunk
            end = buf.find(b"\n") + 1 or len(buf)
            line = bytes(buf[:end]).decode(encoding, errors).replace("\r\n", "\n")
            del buf[:end]
        except BaseException as err:  # handed to the reader, in its loop
            failure = err
        with contextlib.suppress(RuntimeError):  # the loop is closed: the program ended
            loop.call_soon_threadsafe(_settle, fut, line, failure)


def _settle(fut: asyncio.Future[str], line: str | None, failure: BaseException | None) -> None:
    if fut.cancelled():
        if line:
            _unread.append(line)  # for the next reader
    elif failure is not None:
        fut.set_exception(failure)
    else:
        fut.set_result(line or "")


def run_program(prog: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``body`` until done or stopped; map every known failure to one
    line on stderr and the status of the table above."""
    try:
        return asyncio.run(until_stopped(body()))
    except ZchatError as err:
        return fail(prog, describe(err), exit_status(err))
    except OSError as err:
        return fail(prog, str(err), EXIT_REFUSED)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
