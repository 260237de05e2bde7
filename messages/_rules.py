"""Name, text and time rules of the contract, in one place.

Every check here raises :class:`ProtocolError` with the contract's code, so
the broker answers a bad field with the same words wherever it appears.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timezone

from ._errors import Code, ProtocolError

NICK_MAX = 24
ROOM_MAX = 32
ID_MAX = 64
TEXT_MAX = 4000
DEFAULT_ROOM = "general"

_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,23}")
_ROOM_RE = re.compile(r"[a-z0-9_\-]{1,32}")
# C0 controls other than tab and newline, DEL, and C1: the bytes that start
# terminal escape sequences. Refusing them at the broker means no client
# ever has to trust another client's text to be harmless on its screen.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# An id has no line of its own to keep: every control, tab and newline too.
_ID_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def is_id(rid: object) -> bool:
    """True when ``rid`` is a well-formed request id: 1 to 64 characters, no
    control character (an id is echoed in replies and may reach a screen)."""
    return (
        isinstance(rid, str)
        and 1 <= len(rid) <= ID_MAX
        and (rid.isprintable() or _ID_CONTROL_RE.search(rid) is None)
    )


def check_id(rid: str | None) -> None:
    if rid is not None and not is_id(rid):
        raise ProtocolError(
            Code.BAD_REQUEST,
            f"id must be 1 to {ID_MAX} characters with no control character",
        )


# Nicks that read alike. Nicks are ASCII, so the confusables of Unicode's
# UTS #39 that matter are few: capital I, lower-case l and the digit 1; the
# letter O and the digit 0; "rn" and "m"; "vv" and "w". Two nicks clash when
# their skeletons are equal (after case folding, as nick_key already does).
_CONFUSABLE_PAIRS = (("rn", "m"), ("vv", "w"))
_CONFUSABLE_CHARS = str.maketrans({"I": "l", "1": "l", "i": "l", "0": "o", "O": "o"})


def nick_skeleton(nick: str) -> str:
    """What ``nick`` looks like, for telling ``aIice`` from ``alice``: two nicks
    with the same skeleton are one nick to the broker.

    ``I``, ``l``, ``1`` (and ``i``, which is ``I`` in upper case) fold to
    ``l``; ``O`` and ``0`` to ``o``; ``rn`` to ``m``; ``vv`` to ``w``.
    """
    folded = nick.translate(_CONFUSABLE_CHARS).lower()
    for many, one in _CONFUSABLE_PAIRS:
        folded = folded.replace(many, one)
    return folded


def key_fingerprint(public_key: bytes | str) -> str:
    """A CURVE public key (Z85) as people compare it: the first 128 bits of
    its SHA-256, in eight groups of four hex digits. The same on every side:
    ``zchat-broker keygen``, the broker's log and the clients."""
    z85 = public_key.encode() if isinstance(public_key, str) else bytes(public_key)
    digest = hashlib.sha256(z85).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def is_nick(nick: object) -> bool:
    """True when ``nick`` is a well-formed nick (not whether it is free)."""
    return isinstance(nick, str) and _NICK_RE.fullmatch(nick) is not None


def is_room(room: object) -> bool:
    """True when ``room`` is a well-formed room name, without a leading ``#``."""
    return isinstance(room, str) and _ROOM_RE.fullmatch(room) is not None


def nick_key(nick: str) -> str:
    """The form nicks are compared in: case-insensitive, ASCII only."""
    return nick.lower()


def check_nick(nick: str) -> str:
    if not is_nick(nick):
        raise ProtocolError(
            Code.NICK_INVALID,
            f"nick {nick[:40]!r} is not valid: 1 to {NICK_MAX} characters of "
            "A-Z a-z 0-9 _ - ., starting with a letter",
        )
    return nick


# Room names already found valid (up to 10,000 of them): most requests name
# a room the broker has seen, and a set lookup is cheaper than the regex.
GOOD_ROOMS: set[str] = set()


def check_room(room: str) -> str:
    if room in GOOD_ROOMS:
        return room
    if not is_room(room):
        raise ProtocolError(
            Code.ROOM_INVALID,
            f"room {room[:40]!r} is not valid: 1 to {ROOM_MAX} characters of a-z 0-9 _ -",
        )
    if len(GOOD_ROOMS) < 10_000:
        GOOD_ROOMS.add(room)
    return room


def normalize_room(typed: str) -> str:
    """What a user typed (``#General``) as a room name (``general``).

    Clients strip one leading ``#``; the case is kept so that a name with
    capitals is refused rather than silently changed into another room.
    """
    typed = typed.strip()
    return typed[1:] if typed.startswith("#") else typed


def clean_text(text: str, max_text: int = TEXT_MAX, *, allow_empty: bool = False) -> str:
    """``text`` with trailing space stripped, or ``text_invalid``.

    Args:
        text: the text as received.
        max_text: the broker's limit in characters.
        allow_empty: accept the empty string (a topic being cleared).
    """
    text = text.rstrip()
    if not text and not allow_empty:
        raise ProtocolError(Code.TEXT_INVALID, "text is empty")
    if len(text) > max_text:
        raise ProtocolError(
            Code.TEXT_INVALID,
            f"text is {len(text)} characters long; the limit is {max_text}",
        )
    if text.isprintable():
        # No control character and no surrogate is printable: most texts
        # are done here, five times faster than by the search below.
        return text
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        raise ProtocolError(
            Code.TEXT_INVALID,
            f"text contains control character U+{ord(bad.group()):04X} at "
            f"{bad.start()}; only newline and tab are allowed",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry lone surrogates ("\ud800") that no UTF-8 frame can.
        raise ProtocolError(Code.TEXT_INVALID, "text is not valid Unicode") from None
    return text


# Addition: search. What is typed is at most SEARCH_TEXT_MAX characters
# and SEARCH_WORDS_MAX words; a word is a run of letters and digits (what
# SQLite's unicode61 tokenizer calls a token), compared in lower case.
SEARCH_TEXT_MAX = 200
SEARCH_WORDS_MAX = 10
_WORD_RE = re.compile(r"[^\W_]+")


def search_words(text: str) -> list[str]:
    """The words of ``text``, in lower case and in order: runs of letters
    and digits (punctuation, ``_`` and space separate them)."""
    return _WORD_RE.findall(text.lower())


def check_search(text: str) -> list[str]:
    """The words of a ``search`` request's text, or ``bad_request``."""
    if len(text) > SEARCH_TEXT_MAX:
        raise ProtocolError(
            Code.BAD_REQUEST,
            f"search text is {len(text)} characters long; the limit is {SEARCH_TEXT_MAX}",
        )
    if not text.isprintable() and _CONTROL_RE.search(text) is not None:
        raise ProtocolError(Code.BAD_REQUEST, "search text contains a control character")
    words = search_words(text)
    if not words:
        raise ProtocolError(Code.BAD_REQUEST, "search text has no word to look for")
    if len(words) > SEARCH_WORDS_MAX:
        raise ProtocolError(
            Code.BAD_REQUEST,
            f"search text has {len(words)} words; the limit is {SEARCH_WORDS_MAX}",
        )
    return words


def words_match(words: list[str], text: str) -> bool:
    """Whether every one of ``words`` (lower case) begins a word of ``text``."""
    found = search_words(text)
    return all(any(w.startswith(q) for w in found) for q in words)


_last_ts: tuple[int, str] = (-1, "")


def format_ts(now: float) -> str:
    """``now`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    global _last_ts
    ms = int(now * 1000)
    # A broker batch stamps many events with one clock reading: format once.
    if _last_ts[0] == ms:
        return _last_ts[1]
    secs, frac = divmod(ms, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"
    _last_ts = (ms, text)
    return text


def parse_ts(ts: str) -> datetime:
    """A contract timestamp as an aware ``datetime`` in UTC.

    Raises:
        ValueError: ``ts`` is not an RFC 3339 timestamp.
    """
    value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value
