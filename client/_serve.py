"""``make serve``: the full-screen client in a browser, through
textual-serve, on loopback only.

Every page opened starts a ``zchat`` of its own, with the options given
after ours (``--nick`` is needed: a browser has no prompt to ask it in)::

    python -m client._serve --port 8000 --nick alice --connect tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

HOST = "127.0.0.1"  # never beyond this machine: the page speaks as its nick


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m client._serve",
        description="zchat in a browser on http://127.0.0.1:PORT; other options go to zchat",
    )
    p.add_argument("--port", type=int, default=8000, help="the port (default %(default)s)")
    args, rest = p.parse_known_args(argv)
    if "--nick" not in rest and not any(a.startswith("--nick=") for a in rest):
        if not os.environ.get("ZCHAT_NICK"):
            p.error("give --nick NICK (or ZCHAT_NICK): a browser has no prompt to ask it in")
    from textual_serve.server import Server

    command = shlex.join([sys.executable, "-m", "client", *rest])
    Server(command, host=HOST, port=args.port, title="zchat").serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
