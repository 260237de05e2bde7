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
import secrets
import signal
import sys
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
        metavar="EP",
        help="the broker's request endpoint, tcp://HOST:PORT (env ZCHAT_CONNECT; "
        "default %(default)s)",
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
        return await task
    except asyncio.CancelledError:
        if got:
            return 128 + got[0]
        raise
    finally:
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


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
