"""What the non-interactive programs share: option parsing, connecting,
and turning every failure into one line on stderr and an exit status."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from messages import ProtocolError

from ._client import Client, ConnectTimeout, ZchatError
from ._keys import curve_keys

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def default_nick(kind: str) -> str:
    """A nick for a script that did not name one: unlikely to be taken."""
    return f"{kind}-{secrets.token_hex(3)}"


def make_client(args: Any, nick: str, rooms: list[str]) -> Client:
    return Client(args.connect, nick, rooms=rooms, curve=curve_keys(args.server_key))


def run_program(prog: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``body``; map every known failure to one line and a status."""
    try:
        return asyncio.run(body())
    except ConnectTimeout as err:
        return fail(prog, f"cannot reach the broker: {err.message}", EXIT_UNREACHABLE)
    except ZchatError as err:
        return fail(prog, f"{err.message} ({err.code})", EXIT_REFUSED)
    except ProtocolError as err:
        return fail(prog, f"{err.message} ({err.code.value})", EXIT_REFUSED)
    except (ValueError, OSError) as err:
        return fail(prog, str(err), EXIT_REFUSED)
    except KeyboardInterrupt:
        return 130
