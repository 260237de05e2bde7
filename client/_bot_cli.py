"""``zchat bot FILE_OR_NAME``: run a bot from a file or a shipped one."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

from ._client import valid_room
from ._keys import curve_keys
from ._programs import add_common, fail, run_program
from ._render import SafeFormatter, safe
from .bot import Bot

PROG = "zchat bot"
SHIPPED = ("dice", "echo", "logger")


def load(spec: str) -> Bot:
    """The ``bot`` of a Python file, or of a shipped bot by name."""
    path = Path(spec)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ValueError(f"no bot file {spec}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    elif spec in SHIPPED:
        module = importlib.import_module(f"client.bots.{spec}")
    else:
        raise ValueError(f"no bot {spec!r}: give a .py file or one of {', '.join(SHIPPED)}")
    bot = getattr(module, "bot", None)
    if not isinstance(bot, Bot):
        raise ValueError(f"{spec} defines no 'bot = Bot(...)'")
    return bot


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Run a bot until interrupted.")
    p.add_argument(
        "bot", metavar="FILE_OR_NAME", help=f"a bot file, or one of: {', '.join(SHIPPED)}"
    )
    add_common(p)
    p.add_argument("--room", action="append", help="rooms to join (default: the bot's own)")
    args = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        bot = load(args.bot)
    except ValueError as err:
        return fail(PROG, str(err), 2)
    if args.nick:
        bot.nick = args.nick

    async def body() -> int:
        if args.room:
            bot.rooms = [valid_room(room) for room in args.room]
        client = bot.client(args.connect, curve=curve_keys(args.server_key))
        await client.start(timeout=args.timeout)
        logging.getLogger("zchat.bot").info(
            "%s is in %s", safe(client.nick), safe(", ".join("#" + r for r in client.rooms))
        )
        try:
            await bot.run(client)
        finally:
            await client.close()
        return 0

    return run_program(PROG, body)
