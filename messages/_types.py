"""One typed class per message of the contract.

Each class is a frozen msgspec Struct tagged by its ``type`` field. The
same ``type`` value can name different messages in different directions
(``pm`` is a request and a push, ``nick`` a request, a reply and an event),
so messages are grouped by direction, and each direction has its own
tagged union: :data:`Request` (DEALER -> ROUTER), :data:`Reply` (ROUTER ->
DEALER, replies and pushes) and :data:`Event` (PUB -> SUB).

Optional fields default to ``None`` and are left out of the encoded frame;
fields the contract says are present but may be null (``who.room``) have no
default, so they are always written.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args

import msgspec

from ._errors import Code, ProtocolError
from ._rules import GOOD_ROOMS, TEXT_MAX, check_nick, check_room, check_search, clean_text

ReqId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_INT64_MAX = 2**63 - 1
Seq = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]

HISTORY_DEFAULT = 50
HISTORY_MAX = 500


class _Msg(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    tag_field="type",
):
    pass


# --------------------------------------------------------------- requests


class _Request(_Msg, frozen=True):
    id: ReqId | None = None
    # Whether the request needs a session (everything but hello and ping).
    needs_session: ClassVar[bool] = True

    def checked(self, max_text: int = TEXT_MAX) -> Any:
        """This request with its fields normalized, or ``ProtocolError``."""
        return self


class Hello(_Request, tag="hello", kw_only=True, frozen=True):
    nick: str
    token: str | None = None
    client: Any = None
    # Addition: a session that only sends or only reads (a script, a tail):
    # its joins and leaves are not published, and who lists it apart.
    quiet: bool | None = None
    needs_session: ClassVar[bool] = False

    def checked(self, max_text: int = TEXT_MAX) -> Hello:
        check_nick(self.nick)
        return self


class Join(_Request, tag="join", kw_only=True, frozen=True):
    room: str

    def checked(self, max_text: int = TEXT_MAX) -> Join:
        check_room(self.room)
        return self


class Part(_Request, tag="part", kw_only=True, frozen=True):
    room: str
    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Part:
        check_room(self.room)
        return _with_reason(self)


class Say(_Request, tag="say", kw_only=True, frozen=True):
    room: str
    text: str
    action: bool | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Say:
        text = self.text
        # The broker's hot path: a known room and a plain line of text
        # (printable, no trailing space, within the limit) need no call.
        if (
            self.room in GOOD_ROOMS
            and text.isprintable()
            and text.rstrip() is text
            and 0 < len(text) <= max_text
        ):
            return self
        check_room(self.room)
        text = clean_text(text, max_text)
        return self if text == self.text else msgspec.structs.replace(self, text=text)


class Pm(_Request, tag="pm", kw_only=True, frozen=True):
    to: str
    text: str

    def checked(self, max_text: int = TEXT_MAX) -> Pm:
        if not isinstance(self.to, str) or not self.to:
            raise ProtocolError(Code.BAD_REQUEST, "pm needs a nick in 'to'")
        text = clean_text(self.text, max_text)
        return self if text == self.text else msgspec.structs.replace(self, text=text)


# Addition: lists that can be long come in pages. ``after`` is where the
# previous page ended (a nick, a room name, or "name nick" for commands), and
# the reply's ``more`` says whether another page follows.
Cursor = Annotated[str, msgspec.Meta(max_length=100)]


class Who(_Request, tag="who", kw_only=True, frozen=True):
    room: str | None = None
    after: Cursor | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Who:
        if self.room is not None:
            check_room(self.room)
        return self


class Rooms(_Request, tag="rooms", kw_only=True, frozen=True):
    after: Cursor | None = None


class History(_Request, tag="history", kw_only=True, frozen=True):
    room: str
    after: Seq | None = None
    before: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)] | None = None

    def checked(self, max_text: int = TEXT_MAX) -> History:
        check_room(self.room)
        return self

    @property
    def effective_limit(self) -> int:
        return min(self.limit or HISTORY_DEFAULT, HISTORY_MAX)


class Search(_Request, tag="search", kw_only=True, frozen=True):
    """Addition: the ``msg`` events of ``room`` whose text has every word of
    ``text`` (each beginning a word, any case), the newest page first; the
    reply's ``before`` continues with older ones."""

    room: str
    text: str
    before: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)] | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Search:
        check_room(self.room)
        check_search(self.text)
        return self

    @property
    def effective_limit(self) -> int:
        return min(self.limit or HISTORY_DEFAULT, HISTORY_MAX)


class Nick(_Request, tag="nick", kw_only=True, frozen=True):
    nick: str

    def checked(self, max_text: int = TEXT_MAX) -> Nick:
        check_nick(self.nick)
        return self


class Topic(_Request, tag="topic", kw_only=True, frozen=True):
    room: str
    topic: str

    def checked(self, max_text: int = TEXT_MAX) -> Topic:
        check_room(self.room)
        topic = clean_text(self.topic, max_text, allow_empty=True)
        return self if topic == self.topic else msgspec.structs.replace(self, topic=topic)


class Ping(_Request, tag="ping", kw_only=True, frozen=True):
    needs_session: ClassVar[bool] = False


class Bye(_Request, tag="bye", kw_only=True, frozen=True):
    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Bye:
        return _with_reason(self)


REASON_MAX = 300


_R = TypeVar("_R", "Part", "Bye")


def _with_reason(req: _R) -> _R:
    """``req`` with its free-text ``reason`` checked like a text (no control
    character, at most REASON_MAX characters); an empty one is no reason."""
    if req.reason is None:
        return req
    reason = clean_text(req.reason, REASON_MAX, allow_empty=True) or None
    return req if reason == req.reason else msgspec.structs.replace(req, reason=reason)


class CommandSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A command a bot offers: ``name`` (typed as ``!name``), usage, help."""

    # \Z, not $: a $ also matches before a final newline ("roll\n").
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_\-]{1,32}\Z")]
    usage: Annotated[str, msgspec.Meta(max_length=100)] = ""
    help: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Offer(_Request, tag="offer", kw_only=True, frozen=True):
    """Addition: a bot announces its commands (replacing an earlier offer)."""

    commands: Annotated[list[CommandSpec], msgspec.Meta(max_length=50)]

    def checked(self, max_text: int = TEXT_MAX) -> Offer:
        for c in self.commands:
            for text in (c.usage, c.help):
                clean_text(text, max_text, allow_empty=True)
        return self


class Commands(_Request, tag="commands", kw_only=True, frozen=True):
    """Addition: which commands the members of a room (or everyone) offer."""

    room: str | None = None
    after: Cursor | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Commands:
        if self.room is not None:
            check_room(self.room)
        return self


# ------------------------------------------------ moderation (additions)

# Roles in a room, lowest first; "server" is a server operator, above every
# room's owner. "member" is everyone else.
ROLES = ("member", "voice", "op", "owner", "server")
# Room settings a ``mode`` request turns on or off.
MODE_FLAGS = ("invite_only", "moderated", "topic_lock")
# Whom a ban covers, written "kind:value": a nick (and every nick that looks
# like it), a CURVE public key (Z85, 40 characters), or a client address or
# network ("addr:203.0.113.7", "addr:2001:db8::/32").
BAN_KINDS = ("nick", "key", "addr")
SERVER_ROOM = "*"  # the "room" of server-wide bans
DURATION_MAX_S = 10 * 365 * 86_400
Duration = Annotated[int, msgspec.Meta(ge=1, le=DURATION_MAX_S)]
Mask = Annotated[str, msgspec.Meta(min_length=3, max_length=120)]


def check_mask(mask: str) -> str:
    """``mask`` ("nick:NAME", "key:KEY" or "addr:IP[/BITS]") normalized (a
    nick in lower case, an address in its short form), or ProtocolError."""
    kind, _, value = mask.partition(":")
    if kind == "nick":
        check_nick(value)
        return f"nick:{value.lower()}"
    if kind == "key":
        if len(value) != 40 or not value.isprintable() or " " in value:
            raise ProtocolError(Code.BAD_REQUEST, "a key mask is 'key:' and a 40-character Z85 key")
        return mask
    if kind == "addr":
        try:
            net = ipaddress.ip_network(value, strict=False)
            # One address is written as an address: addr:203.0.113.7.
            return f"addr:{net.network_address if net.num_addresses == 1 else net}"
        except ValueError:
            raise ProtocolError(
                Code.BAD_REQUEST,
                f"{value!r} is not an address or a network (203.0.113.7, 10.0.0.0/8)",
            ) from None
    raise ProtocolError(Code.BAD_REQUEST, "a ban mask is nick:NAME, key:KEY or addr:ADDRESS[/BITS]")


def _check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return clean_text(reason, 300, allow_empty=True) or None


def _check_room_or_server(room: str) -> None:
    if room != SERVER_ROOM:
        check_room(room)


class _OnNick(_Request, kw_only=True, frozen=True):
    """A moderation request about one person of a room."""

    room: str
    nick: str

    def checked(self, max_text: int = TEXT_MAX) -> Any:
        check_room(self.room)
        check_nick(self.nick)
        return self


class Op(_OnNick, tag="op", kw_only=True, frozen=True):
    """Addition: make ``nick`` an operator of ``room``."""


class Deop(_OnNick, tag="deop", kw_only=True, frozen=True):
    """Addition: ``nick`` is an operator no more."""


class Voice(_OnNick, tag="voice", kw_only=True, frozen=True):
    """Addition: ``nick`` may speak in ``room`` while it is moderated."""


class Devoice(_OnNick, tag="devoice", kw_only=True, frozen=True):
    pass


class Invite(_OnNick, tag="invite", kw_only=True, frozen=True):
    """Addition: ``nick`` may join ``room`` while it is invite-only."""


class Uninvite(_OnNick, tag="uninvite", kw_only=True, frozen=True):
    """Addition: take back ``nick``'s invitation."""


class Kick(_OnNick, tag="kick", kw_only=True, frozen=True):
    """Addition: put ``nick`` out of ``room`` (they may come back)."""

    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Kick:
        super().checked(max_text)
        reason = _check_reason(self.reason)
        return self if reason == self.reason else msgspec.structs.replace(self, reason=reason)


class Mute(_OnNick, tag="mute", kw_only=True, frozen=True):
    """Addition: ``nick`` reads ``room`` but may not say anything there."""

    duration_s: Duration | None = None
    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Mute:
        super().checked(max_text)
        reason = _check_reason(self.reason)
        return self if reason == self.reason else msgspec.structs.replace(self, reason=reason)


class Unmute(_OnNick, tag="unmute", kw_only=True, frozen=True):
    pass


class Ban(_Request, tag="ban", kw_only=True, frozen=True):
    """Addition: keep someone out of ``room`` (``*``: the whole server).

    Either ``mask`` (see :func:`check_mask`), or ``nick`` of someone online
    with ``match`` saying what of theirs is banned: their ``nick`` (the
    default), their ``key`` or their ``addr``."""

    room: str
    mask: Mask | None = None
    nick: str | None = None
    match: str | None = None
    duration_s: Duration | None = None
    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Ban:
        _check_room_or_server(self.room)
        if (self.mask is None) == (self.nick is None):
            raise ProtocolError(Code.BAD_REQUEST, "ban needs a 'mask' or a 'nick', not both")
        if self.match is not None and (self.nick is None or self.match not in BAN_KINDS):
            raise ProtocolError(
                Code.BAD_REQUEST, "'match' goes with 'nick' and is nick, key or addr"
            )
        if self.nick is not None:
            check_nick(self.nick)
        mask = None if self.mask is None else check_mask(self.mask)
        reason = _check_reason(self.reason)
        if mask == self.mask and reason == self.reason:
            return self
        return msgspec.structs.replace(self, mask=mask, reason=reason)


class Unban(_Request, tag="unban", kw_only=True, frozen=True):
    room: str
    mask: Mask

    def checked(self, max_text: int = TEXT_MAX) -> Unban:
        _check_room_or_server(self.room)
        mask = check_mask(self.mask)
        return self if mask == self.mask else msgspec.structs.replace(self, mask=mask)


class Bans(_Request, tag="bans", kw_only=True, frozen=True):
    """Addition: a room's moderation: roles, settings, bans and mutes."""

    room: str

    def checked(self, max_text: int = TEXT_MAX) -> Bans:
        _check_room_or_server(self.room)
        return self


class Mode(_Request, tag="mode", kw_only=True, frozen=True):
    """Addition: turn room settings on (true) or off (false)."""

    room: str
    invite_only: bool | None = None
    moderated: bool | None = None
    topic_lock: bool | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Mode:
        check_room(self.room)
        if self.invite_only is None and self.moderated is None and self.topic_lock is None:
            raise ProtocolError(Code.BAD_REQUEST, "mode needs invite_only, moderated or topic_lock")
        return self


class Oper(_Request, tag="oper", kw_only=True, frozen=True):
    """Addition: become a server operator with the broker's password."""

    password: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Kill(_Request, tag="kill", kw_only=True, frozen=True):
    """Addition (server operators): end ``nick``'s session."""

    nick: str
    reason: str | None = None

    def checked(self, max_text: int = TEXT_MAX) -> Kill:
        check_nick(self.nick)
        reason = _check_reason(self.reason)
        return self if reason == self.reason else msgspec.structs.replace(self, reason=reason)


class Wall(_Request, tag="wall", kw_only=True, frozen=True):
    """Addition (server operators): a notice to everyone, on the ``*`` topic."""

    text: str

    def checked(self, max_text: int = TEXT_MAX) -> Wall:
        text = clean_text(self.text, max_text)
        return self if text == self.text else msgspec.structs.replace(self, text=text)


class Release(_Request, tag="release", kw_only=True, frozen=True):
    """Addition (server operators): forget which key a nick belongs to."""

    nick: str

    def checked(self, max_text: int = TEXT_MAX) -> Release:
        check_nick(self.nick)
        return self


Request = Union[
    Hello,
    Join,
    Part,
    Say,
    Pm,
    Who,
    Rooms,
    History,
    Search,
    Nick,
    Topic,
    Ping,
    Bye,
    Offer,
    Commands,
    Op,
    Deop,
    Voice,
    Devoice,
    Invite,
    Uninvite,
    Kick,
    Mute,
    Unmute,
    Ban,
    Unban,
    Bans,
    Mode,
    Oper,
    Kill,
    Wall,
    Release,
]

# ------------------------------------------------------ replies and pushes


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    version: str
    epoch: str
    # Addition: names the history store. It stays the same across restarts
    # on the same store, so a client can tell a restart (seq goes on) from a
    # store that was lost or is in memory (seq starts again).
    store: str | None = None
    # Addition: the ROUTER endpoints of the nodes of a cluster that share
    # rooms, sessions and history (absent on a single broker). A client adds
    # those it does not know to the endpoints it fails over to.
    nodes: list[str] | None = None


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_text: int
    max_msg_bytes: int
    rate_per_s: float
    burst: int


class _Reply(_Msg, frozen=True):
    id: str | None = None


class Welcome(_Reply, tag="welcome", kw_only=True, frozen=True):
    nick: str
    token: str
    server: ServerInfo
    events: str
    heartbeat_ms: int
    timeout_ms: int
    limits: Limits


class Joined(_Reply, tag="joined", kw_only=True, frozen=True):
    room: str
    topic: str
    members: list[str]
    seq: int
    # Addition: how many members the room has, sent when ``members`` had to
    # be cut short to keep the reply within the broker's size limit.
    member_count: int | None = None
    # Addition: true when the session was in the room already (a session
    # taken over by token, rejoining): nothing was published and ``seq`` is
    # the room's last event, which is not the joiner's own.
    already: bool | None = None
    # Addition: the room's settings that are on (see mode), and the roles
    # of those who have one ({nick: "owner" | "op" | "voice"}).
    modes: list[str] | None = None
    roles: dict[str, str] | None = None


class Parted(_Reply, tag="parted", kw_only=True, frozen=True):
    room: str


class Ack(_Reply, tag="ack", kw_only=True, frozen=True):
    """Acknowledges ``say`` and ``topic`` (``room``, ``seq``) or ``pm`` (``to``)."""

    ts: str
    room: str | None = None
    seq: int | None = None
    to: str | None = None


class WhoUser(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    nick: str
    idle_ms: int
    # Addition: a quiet session (a script or a reader, see hello.quiet).
    quiet: bool = False
    # Addition: the user's role in the room asked about, when it has one.
    role: str | None = None


class WhoReply(_Reply, tag="who", kw_only=True, frozen=True):
    room: str | None
    users: list[WhoUser]
    more: bool = False


class RoomInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    topic: str
    members: list[str]
    # Addition: how many members the room has, when ``members`` is cut short.
    member_count: int | None = None


class RoomsReply(_Reply, tag="rooms", kw_only=True, frozen=True):
    rooms: list[RoomInfo]
    more: bool = False


class HistoryReply(_Reply, tag="history", kw_only=True, frozen=True):
    """``events`` are the stored event frames, spliced in without re-encoding."""

    room: str
    events: list[msgspec.Raw]
    more: bool
    # Addition: the seq of the oldest event the store still holds for the
    # room (None when it holds none). A client missing events before it
    # knows they are gone for good, rather than late.
    first: int | None = None


class SearchReply(_Reply, tag="search", kw_only=True, frozen=True):
    """Addition: matching ``msg`` events, oldest first, spliced in as stored.

    ``more`` says older matches may remain; then ``before`` is what to ask
    with next (the seq the search reached, which is not always an event of
    the page: a reply looks at a bounded number of events, and may hold
    none)."""

    room: str
    events: list[msgspec.Raw]
    more: bool
    before: int | None = None


class NickReply(_Reply, tag="nick", kw_only=True, frozen=True):
    old: str
    new: str


class Pong(_Reply, tag="pong", kw_only=True, frozen=True):
    epoch: str
    ts: str
    seqs: dict[str, int]


class ByeReply(_Reply, tag="bye", kw_only=True, frozen=True):
    pass


class Error(_Reply, tag="error", kw_only=True, frozen=True):
    code: str
    message: str
    retry_ms: int | None = None


class Offered(_Reply, tag="offered", kw_only=True, frozen=True):
    count: int


class CommandInfo(msgspec.Struct, frozen=True, kw_only=True):
    nick: str
    name: str
    usage: str
    help: str


class CommandsReply(_Reply, tag="commands", kw_only=True, frozen=True):
    room: str | None
    commands: list[CommandInfo]
    more: bool = False


class BanInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    mask: str
    by: str
    ts: str
    until: str | None = None
    reason: str | None = None


class MuteInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    nick: str
    by: str
    ts: str
    until: str | None = None
    reason: str | None = None


class BansReply(_Reply, tag="bans", kw_only=True, frozen=True):
    """Addition: the answer to ``bans``."""

    room: str
    bans: list[BanInfo]
    mutes: list[MuteInfo]
    roles: dict[str, str]
    modes: list[str]
    invited: list[str]
    # Older bans or mutes were left out to keep the reply within its bound.
    more: bool | None = None


class PmPush(_Msg, tag="pm", kw_only=True, frozen=True):
    from_: str = msgspec.field(name="from")
    to: str
    text: str
    ts: str


class Notice(_Msg, tag="notice", kw_only=True, frozen=True):
    """A notice to one client (pushed) or to everyone (on the ``*`` topic)."""

    text: str


Reply = Union[
    Welcome,
    Joined,
    Parted,
    Ack,
    WhoReply,
    RoomsReply,
    HistoryReply,
    SearchReply,
    NickReply,
    Pong,
    ByeReply,
    Error,
    Offered,
    CommandsReply,
    BansReply,
    PmPush,
    Notice,
]

# ----------------------------------------------------------------- events


class _Event(_Msg, gc=False, frozen=True):
    room: str
    seq: int
    ts: str


class MsgEvent(_Event, tag="msg", kw_only=True, frozen=True):
    from_: str = msgspec.field(name="from")
    text: str
    action: bool | None = None
    id: str | None = None


class JoinEvent(_Event, tag="join", kw_only=True, frozen=True):
    nick: str


class LeaveEvent(_Event, tag="leave", kw_only=True, frozen=True):
    nick: str
    reason: str
    # Addition: what the leaver typed (``/part #ops lunch break``, ``/quit
    # gone home``), or why they were put out.
    text: str | None = None
    # Addition: who put them out (reason "kick").
    by: str | None = None


class NickEvent(_Event, tag="nick", kw_only=True, frozen=True):
    old: str
    new: str


class TopicEvent(_Event, tag="topic", kw_only=True, frozen=True):
    nick: str
    topic: str


class ModeEvent(_Event, tag="mode", kw_only=True, frozen=True):
    """Addition: a moderation change in the room, made by ``nick``.

    ``mode`` is op, deop, voice, devoice, mute, unmute, ban, unban, invite or uninvite
    (about ``target``, a nick or a ban mask; mute and ban may have
    ``until`` and ``text``, the reason), or invite_only, moderated or
    topic_lock (turned ``on`` or off)."""

    nick: str
    mode: str
    target: str | None = None
    on: bool | None = None
    until: str | None = None
    text: str | None = None


RoomEvent = Union[MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent, ModeEvent]
Event = Union[MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent, ModeEvent, Notice]

REQUEST_TYPES: dict[str, type[Any]] = {cls.__struct_config__.tag: cls for cls in get_args(Request)}
