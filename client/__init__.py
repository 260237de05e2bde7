"""The zchat client library, and the programs built on it.

:class:`Client` is an asyncio connection to a broker that reconnects,
resends what was not acknowledged and repairs holes in each room's ``seq``
from history, so each event reaches its user once, in order.
"""

from ._client import (
    Client,
    CurveKeys,
    Disconnected,
    Item,
    Reconnected,
    Repaired,
    Status,
)
from ._errors import (
    ClientClosed,
    ConnectRefused,
    ConnectTimeout,
    InvalidInput,
    RequestRefused,
    ZchatError,
)
from .bot import Bot, BotState, Message, Presence

__all__ = [
    "Bot",
    "BotState",
    "Client",
    "ClientClosed",
    "ConnectRefused",
    "ConnectTimeout",
    "CurveKeys",
    "Disconnected",
    "InvalidInput",
    "Item",
    "Message",
    "Presence",
    "Reconnected",
    "Repaired",
    "RequestRefused",
    "Status",
    "ZchatError",
]
