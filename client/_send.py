"""``zchat send``: say something from a script, and know it arrived."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence

from ._client import valid_room
from ._errors import ZchatError
from ._programs import (
    EXIT_UNREACHABLE,
    add_common,
    default_nick,
    describe,
    exit_status,
    fail,
    make_client,
    read_line,
    run_program,
)

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
        "--visible",
        action="store_true",
        help="join and leave the room visibly (by default a send is quiet: the room sees "
        "only its messages)",
    )
    p.add_argument("text", nargs="*", help="the message; without it, one message per stdin line")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    texts = [" ".join(args.text)] if args.text else None

    async def body() -> int:
        room = valid_room(args.room) if args.room is not None else None
        # Quiet: a script's session publishes no join or leave of its own.
        client = make_client(
            args,
            args.nick or default_nick("send"),
            [room] if room else [],
            quiet=not args.visible,
        )
        await client.start(timeout=args.timeout)
        sent = 0
        try:
            async for text in _lines(texts):
                if not text.strip():
                    continue
                where = f"line {sent + 1}: " if texts is None else ""
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
                    return fail(PROG, where + describe(err), exit_status(err))
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
        line = await read_line()
        if not line:
            return
        yield line.rstrip("\n")
