"""``zchat``: the command line of the client programs.

``zchat`` alone is the interactive terminal client; ``zchat send``,
``zchat tail`` and ``zchat bot`` are the programs for scripts. Each lives in
a module of its own; this one only dispatches and holds the options they
share.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_CONNECT = "tcp://127.0.0.1:5555"
SUBCOMMANDS = ("send", "tail", "bot")


def add_common(p: argparse.ArgumentParser, *, nick_required: bool = False) -> None:
    """Options every client program takes, with their environment defaults."""
    p.add_argument(
        "--connect",
        default=os.environ.get("ZCHAT_CONNECT", DEFAULT_CONNECT),
        metavar="EP",
        help="the broker's request endpoint (env ZCHAT_CONNECT; default %(default)s)",
    )
    p.add_argument(
        "--nick",
        default=os.environ.get("ZCHAT_NICK"),
        required=nick_required and not os.environ.get("ZCHAT_NICK"),
        help="the nick to use (env ZCHAT_NICK)",
    )
    p.add_argument(
        "--server-key",
        default=os.environ.get("ZCHAT_SERVER_KEY"),
        metavar="KEY",
        help="the broker's CURVE public key: Z85 text or a public certificate file "
        "(env ZCHAT_SERVER_KEY); turns encryption on",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        command, rest = args[0], args[1:]
        if command == "send":
            from ._send import main as run
        elif command == "tail":
            from ._tail import main as run
        else:
            from ._bot_cli import main as run
        return run(rest)
    from ._tui import main as run_tui

    return run_tui(args)
