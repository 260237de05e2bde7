"""Frames to messages and back.

Frame layouts:

* request, DEALER -> ROUTER: one frame, a UTF-8 JSON object with ``type``.
* reply or push, ROUTER -> DEALER: one frame, the same.
* event, PUB -> SUB: two frames, ``[topic, json]``; the topic of a room
  event is ``b"#" + room + b"\\0"``, of a server-wide notice ``b"*\\0"``.
  The trailing NUL makes ZeroMQ's prefix match exact: a subscription to
  ``#dev\\0`` does not also match ``#devops``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ._errors import Code, ProtocolError
from ._rules import TEXT_MAX, check_id, is_id
from ._types import Event, Reply, Request

NOTICE_TOPIC = b"*\x00"

# What msgspec decodes from: bytes or any buffer (typing.Buffer is 3.12+).
Buffer = Any

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)
_event_decoder = msgspec.json.Decoder(Event)
_any_decoder = msgspec.json.Decoder()


# One message as the JSON bytes of its frame. The encoder's own method, not
# a function around it: the broker encodes two messages per say, and a
# Python call around each cost 5% of its time.
encode: Callable[[msgspec.Struct], bytes] = _encoder.encode


class BufferedEncoder:
    """Encodes messages through a buffer of its own, reused from one message
    to the next, and copies each result out once.

    msgspec's ``encode`` starts every message in a small new buffer and
    reallocates it as the output grows, three or four times for a chat
    message; on the broker's hot path that was 4% of a say. ``encode_into``
    leaves this buffer at the length of the last message, so it is
    reallocated only when a message is longer than the one before, once.
    Not thread-safe: one per thread.
    """

    def __init__(self) -> None:
        self._buffer = bytearray(512)
        self._encode_into = _encoder.encode_into

    def encode(self, msg: msgspec.Struct) -> bytes:
        """One message as the JSON bytes of its frame, as :func:`encode`."""
        buffer = self._buffer
        self._encode_into(msg, buffer)
        return bytes(buffer)


def room_topic(room: str) -> bytes:
    """The PUB topic (and SUB subscription) of ``room``."""
    return b"#" + room.encode() + b"\x00"


def topic_room(topic: bytes) -> str | None:
    """The room a topic names, or ``None`` for the notice topic."""
    if topic == NOTICE_TOPIC:
        return None
    if len(topic) < 3 or topic[:1] != b"#" or topic[-1:] != b"\x00":
        raise ProtocolError(Code.BAD_REQUEST, f"not an event topic: {topic[:40]!r}")
    return topic[1:-1].decode("utf-8", "replace")


def _peek_id(frame: Buffer) -> str | None:
    """The ``id`` of a frame that failed to decode, if one can be read."""
    try:
        obj = _any_decoder.decode(frame)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and is_id(rid):
            return rid
    return None


def _describe(err: Exception) -> tuple[Code, str]:
    text = str(err)
    if isinstance(err, msgspec.ValidationError):
        if text.endswith("at `$.type`") and text.startswith("Invalid value"):
            return Code.UNKNOWN_TYPE, "unknown request type " + text.split(" - ")[0][14:]
        if "missing required field `type`" in text:
            return Code.BAD_REQUEST, "a request needs a string field 'type'"
        if text.startswith("Expected `object`"):
            return Code.BAD_REQUEST, "a request must be a JSON object"
        return Code.BAD_REQUEST, text
    if isinstance(err, UnicodeError) or "UTF-8" in text or "utf-8" in text:
        return Code.BAD_REQUEST, "frame is not valid UTF-8"
    return Code.BAD_REQUEST, f"frame is not valid JSON ({text})"


def decode_request(frame: Buffer, *, max_text: int = TEXT_MAX) -> Request:
    """Decode and validate one request frame.

    Args:
        frame: the frame's bytes, or any object exposing them through the
            buffer protocol (a ``zmq.Frame``: no copy is made).
        max_text: the broker's text limit, for ``say``, ``pm`` and ``topic``.

    Returns:
        The request, its text normalized (trailing space stripped).

    Raises:
        ProtocolError: with the contract's code, and the request's ``id``
            whenever one could be read.
    """
    try:
        req = _request_decoder.decode(frame)
    except (ValueError, RecursionError) as err:
        # ValueError covers msgspec's DecodeError and the UnicodeDecodeError
        # it lets through for invalid UTF-8 inside a JSON string.
        code, message = _describe(err)
        raise ProtocolError(code, message, id=_peek_id(frame)) from None
    try:
        rid = req.id
        if rid is not None and not rid.isprintable():
            check_id(rid)
        checked: Request = req.checked(max_text)
        return checked
    except ProtocolError as err:
        err.id = req.id if is_id(req.id) else None
        raise


def decode_reply(frame: bytes) -> Reply:
    """Decode one frame received on a DEALER: a reply or a push.

    Raises:
        ProtocolError: the frame is not a message of the contract.
    """
    try:
        reply: Reply = _reply_decoder.decode(frame)
    except (ValueError, RecursionError) as err:
        raise ProtocolError(Code.BAD_REQUEST, f"bad reply frame: {err}") from None
    return reply


def decode_event(body: bytes) -> Event:
    """Decode the JSON frame of an event (PUB) or of a ``history`` entry.

    Raises:
        ProtocolError: the frame is not an event of the contract.
    """
    try:
        event: Event = _event_decoder.decode(body)
    except (ValueError, RecursionError) as err:
        raise ProtocolError(Code.BAD_REQUEST, f"bad event frame: {err}") from None
    return event


def to_builtins(msg: msgspec.Struct) -> Any:
    """A message as plain dicts and lists, exactly as it travels."""
    return msgspec.to_builtins(msg)
