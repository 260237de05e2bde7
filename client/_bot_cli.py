"""``zchat bot FILE_OR_NAME``: run a bot from a file or a shipped one."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

from ._errors import InvalidInput
from ._keys import curve_keys
from ._programs import add_common, fail, run_program
from ._render import SafeFormatter
from .bot import Bot

PROG = "zchat bot"
SHIPPED = ("antiflood", "dice", "echo", "logger", "remind")


def load(spec: str) -> Bot:
    """The ``bot`` of a Python file, or of a shipped bot by name.

    A bot from a file keeps its state beside it, in ``FILE.state.json``,
    unless it names another file itself (``Bot(..., state_path=...)``).

    Raises:
        ValueError: there is no such bot, or the file defines none.
    """
    path = Path(spec)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ValueError(f"no bot file {spec}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"{spec} is not a Python file")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    elif spec in SHIPPED:
        module = importlib.import_module(f"client.bots.{spec}")
    else:
        raise ValueError(f"no bot {spec!r}: give a .py file or one of {', '.join(SHIPPED)}")
    bot = getattr(module, "bot", None)
    if not isinstance(bot, Bot):
        raise ValueError(f"{spec} defines no 'bot = Bot(...)'")
    if path.suffix == ".py" and bot.state_path is None:
        bot.state_path = path.with_name(f"{path.stem}.state.json")
    return bot


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a bot until interrupted (Ctrl-C, SIGTERM or SIGHUP say goodbye first).",
    )
    p.add_argument(
        "bot", metavar="FILE_OR_NAME", help=f"a bot file, or one of: {', '.join(SHIPPED)}"
    )
    add_common(p, nick_env=False)
    p.add_argument("--room", action="append", help="rooms to join (default: the bot's own)")
    p.add_argument(
        "--state",
        metavar="FILE",
        help="the file the bot's state is kept in (default: FILE.state.json beside a bot "
        "file; $XDG_DATA_HOME/zchat/bots/NICK.state.json for a shipped bot)",
    )
    p.add_argument(
        "--oper-password-file",
        metavar="FILE",
        help="become a server operator with the password on the first line of FILE "
        "(a broker's --oper-password-file), to moderate every room",
    )
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
    if args.room:
        bot.rooms = args.room
    if args.state:
        bot.state_path = args.state
    if args.oper_password_file:
        try:
            lines = Path(args.oper_password_file).read_text().splitlines()
        except OSError as err:
            return fail(PROG, f"cannot read {args.oper_password_file}: {err.strerror}", 2)
        if not lines or not lines[0].strip():
            return fail(PROG, f"{args.oper_password_file} holds no password", 2)
        bot.oper_password = lines[0].strip()

    async def body() -> int:
        try:
            curve = curve_keys(args.server_key)
        except ValueError as err:
            raise InvalidInput("bad_key", str(err)) from None
        client = bot.make_client(args.connect, curve=curve)
        try:
            await bot.run(client, timeout=args.timeout)
        finally:
            # Says bye, also when a signal cancelled the run: the nick is
            # free at once, not after the broker's session timeout.
            await client.close()
        return 0

    return run_program(PROG, body)
