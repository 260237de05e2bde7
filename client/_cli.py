"""``zchat``: the command line of the client programs.

``zchat`` alone is the interactive terminal client; ``zchat send``,
``zchat tail`` and ``zchat bot`` are the programs for scripts. Each lives in
a module of its own, and what they share is in ``_programs.py``; this one
only dispatches.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

SUBCOMMANDS = ("send", "tail", "bot")


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
