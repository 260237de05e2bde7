"""The zchat broker: a pure core, an SQLite store and a ZeroMQ shell.

Run it with ``zchat-broker`` (or ``python -m broker``).
"""

from ._config import Config
from ._core import VERSION, Core, Outbox, Session, error_reply
from ._server import Server, is_loopback
from ._store import Store, StoreError, StoreFull

__all__ = [
    "VERSION",
    "Config",
    "Core",
    "Outbox",
    "Server",
    "Session",
    "Store",
    "StoreError",
    "StoreFull",
    "error_reply",
    "is_loopback",
]
