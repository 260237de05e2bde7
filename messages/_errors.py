"""The one error family of the protocol.

::

    Exception
     └── ProtocolError        a frame or field broke the contract; carries
                              the contract's error code, a message for
                              people, and the request id when one was read
"""

from __future__ import annotations

import enum


class Code(str, enum.Enum):
    """The contract's error codes; the value is what travels."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    NO_SESSION = "no_session"
    NICK_INVALID = "nick_invalid"
    NICK_TAKEN = "nick_taken"
    ROOM_INVALID = "room_invalid"
    NOT_IN_ROOM = "not_in_room"
    NO_SUCH_USER = "no_such_user"
    TEXT_INVALID = "text_invalid"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    # Additions: a bound of the broker was reached.
    LIMIT_REACHED = "limit_reached"
    UNAVAILABLE = "unavailable"
    # Addition: moderation said no (not an operator, banned, muted, not
    # invited, not voiced in a moderated room, the topic is locked).
    FORBIDDEN = "forbidden"

    # A code reads as what travels, in messages and f-strings alike (a str
    # enum would otherwise print as "Code.NICK_TAKEN" on some Pythons).
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ProtocolError(Exception):
    """A message broke the contract.

    Attributes:
        code: the contract's error code.
        message: what went wrong, in words for people.
        id: the offending request's ``id`` when it could be read, so the
            error reply can be matched to its request.
        retry_ms: for ``rate_limited`` and ``unavailable``, when to try again.
    """

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        id: str | None = None,
        retry_ms: int | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.id = id
        self.retry_ms = retry_ms
