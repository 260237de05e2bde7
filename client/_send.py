"""``zchat send``: say something from a script, and know it arrived."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

from messages import ProtocolError, check_room, normalize_room

from ._cli import add_common
from ._client import ZchatError
from ._programs import EXIT_UNREACHABLE, default_nick, fail, make_client, run_program

PROG = "zchat send"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Send TEXT (or each line of standard input) to a room or a nick. "
        "Exits 0 once the broker has acknowledged every message.",
    )
    add_common(p)
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--room", help="the room to say it in (joined for the occasion)")
    to.add_argument("--to", metavar="NICK", help="send private messages to NICK instead")
    p.add_argument("--me", action="store_true", help="send as an action, like /me")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when the broker does not answer for this long (default %(default)s)",
    )
    p.add_argument("text", nargs="*", help="the message; without it, one message per stdin line")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    room = None
    if args.room is not None:
        room = normalize_room(args.room)
        try:
            check_room(room)
        except ProtocolError as err:
            return fail(PROG, err.message, 2)
    texts = [" ".join(args.text)] if args.text else None

    async def body() -> int:
        client = make_client(args, args.nick or default_nick("send"), [room] if room else [])
        await client.start(timeout=args.timeout)
        sent = 0
        try:
            async for text in _lines(texts):
                if not text.strip():
                    continue
                try:
                    if room is not None:
                        coro = client.say(room, text, action=args.me)
                    else:
                        coro = client.pm(args.to, text)
                    await asyncio.wait_for(coro, args.timeout)
                except asyncio.TimeoutError:
                    return fail(
                        PROG,
                        f"no acknowledgement within {args.timeout:g} s after {sent} messages",
                        EXIT_UNREACHABLE,
                    )
                except ZchatError as err:
                    where = f"line {sent + 1}: " if texts is None else ""
                    return fail(PROG, f"{where}{err.message} ({err.code})", 1)
                sent += 1
        finally:
            await client.close()
        return 0

    return run_program(PROG, body)


async def _lines(texts: list[str] | None) -> AsyncIterator[str]:
    """The texts given, or stdin line by line as it comes (a pipe may be slow)."""
    if texts is not None:
        for text in texts:
            yield text
        return
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        yield line.rstrip("\n")
