"""The zchat broker: a pure core, an SQLite store and a ZeroMQ shell.

Run it with ``zchat-broker`` (or ``python -m broker``).
"""

from ._core import VERSION, Config, Core, Outbox, Session, error_reply
from ._server import Options, Server, is_loopback
from ._store import Store

__all__ = [
    "VERSION",
    "Config",
    "Core",
    "Options",
    "Outbox",
    "Server",
    "Session",
    "Store",
    "error_reply",
    "is_loopback",
]
