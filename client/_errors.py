"""The one error family of the client.

::

    Exception
     └── ZchatError               anything the client raises on purpose: .code, .message
          ├── RequestRefused       the broker answered with an error: .code is its
          │                        contract code (a :class:`messages.Code`), .retry_ms
          ├── InvalidInput         (also ValueError) refused before it was sent: a bad
          │                        nick, room or endpoint, a text over the broker's limit
          ├── ConnectTimeout       (also TimeoutError) the broker did not answer in time
          ├── ConnectRefused       the connection's handshake failed: a wrong server key,
          │                        a key the broker does not admit, CURVE on one side only
          └── ClientClosed         the client was closed while a request waited

``code`` is always a string, a :class:`messages.Code` where the contract
names one, so ``err.code == Code.NICK_TAKEN`` and ``err.code ==
"nick_taken"`` both read.
"""

from __future__ import annotations

from messages import Code, ProtocolError


def contract_code(code: str) -> str:
    """``code`` as a :class:`Code` when the contract knows it; a broker newer
    than this client may send others, kept as they are."""
    try:
        return Code(code)
    except ValueError:
        return code


class ZchatError(Exception):
    """Something the client could not do.

    Attributes:
        code: what went wrong, in one word: a contract code (``nick_taken``)
            or the client's own (``timeout``, ``closed``, ``handshake``).
        message: what went wrong, for people.
        retry_ms: when trying again may work, if the broker said.
    """

    def __init__(self, code: str, message: str, *, retry_ms: int | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = contract_code(code)
        self.message = message
        self.retry_ms = retry_ms


class RequestRefused(ZchatError):
    """The broker answered a request with an ``error``."""


class InvalidInput(ZchatError, ValueError):
    """Refused by the client itself, before anything was sent."""

    @classmethod
    def of(cls, err: ProtocolError) -> InvalidInput:
        return cls(err.code.value, err.message)


class ConnectTimeout(ZchatError, TimeoutError):
    """The broker did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class ConnectRefused(ZchatError):
    """The connection's handshake failed (see ZeroMQ's socket monitor): the
    broker and this client do not agree on encryption or keys."""

    def __init__(self, message: str) -> None:
        super().__init__("handshake", message)


class ClientClosed(ZchatError):
    """The client was closed while a request waited for its reply."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__("closed", message)


__all__ = [
    "ClientClosed",
    "ConnectRefused",
    "ConnectTimeout",
    "InvalidInput",
    "RequestRefused",
    "ZchatError",
    "contract_code",
]
