"""Who may do what to whom in a room, and what a room's moderation holds.

The rights model is one table, :data:`RIGHTS`: for each action, the least
role that may take it, and whether its target must rank below the actor
(an operator cannot kick another operator, nor the owner; the owner can).
Roles rank ``member < voice < op < owner < server``; ``server`` is a server
operator, who ranks above every room's owner. Two exceptions, in
:func:`may`: anyone may ``deop`` or ``devoice`` themselves.

A room's :class:`Rules` (owner, roles, bans, mutes, invitations, settings)
are kept in the store as one JSON value per room, written with the batch
that changes them and its ``mode`` event, so they outlive restarts and are
shared by the nodes of a cluster. Server-wide bans are the rules of the
room ``*``. Entries are bounded per room (``--max-moderation``): an owner is
anyone who made a room, so the lists are a client's to fill.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from pathlib import Path

import msgspec
from zmq.utils import z85

from messages import ROLES, nick_skeleton

RANK = {role: i for i, role in enumerate(ROLES)}

# action -> (the least role of the actor, whether the target must rank below)
RIGHTS: dict[str, tuple[str, bool]] = {
    "op": ("op", True),
    "deop": ("op", True),
    "voice": ("op", True),
    "devoice": ("op", True),
    "kick": ("op", True),
    "ban": ("op", True),
    "mute": ("op", True),
    "unmute": ("op", True),
    "unban": ("op", False),
    "invite": ("op", False),
    "mode": ("op", False),
    "bans": ("op", False),
    # the topic of a room whose topic is locked
    "topic": ("op", False),
    # say in a moderated room
    "speak": ("voice", False),
    # a ban of the whole server, kill, wall, release
    "server": ("server", False),
}
# Who may undo their own role.
SELF_ACTIONS = frozenset({"deop", "devoice"})


def may(actor: str, action: str, target: str | None = None, *, itself: bool = False) -> bool:
    """Whether someone of role ``actor`` may take ``action`` on someone of
    role ``target`` (None: no one in particular); ``itself``: the target is
    the actor."""
    if itself and action in SELF_ACTIONS:
        return True
    need, below = RIGHTS[action]
    if RANK[actor] < RANK[need]:
        return False
    return not (below and target is not None and RANK[target] >= RANK[actor])


class Entry(msgspec.Struct, frozen=True, omit_defaults=True):
    """A ban (``mask``) or a mute (``mask`` is ``nick:KEY``): by whom, when,
    until when (seconds since the epoch; None: for good), and why."""

    mask: str
    by: str
    at: float
    until: float | None = None
    reason: str | None = None
    # A mute's: the CURVE key of who was muted, when known: the mute holds
    # for that key under any nick (no leaving, renaming and coming back).
    key: str | None = None

    def live(self, now: float) -> bool:
        return self.until is None or self.until > now


class Rules(msgspec.Struct, omit_defaults=True):
    owner: str | None = None  # nick key
    roles: dict[str, str] = {}  # nick key -> "op" | "voice"
    bans: list[Entry] = []
    mutes: list[Entry] = []
    invited: list[str] = []  # nick keys
    modes: list[str] = []  # the MODE_FLAGS that are on

    def size(self) -> int:
        return len(self.roles) + len(self.bans) + len(self.mutes) + len(self.invited)

    def role(self, key: str) -> str:
        if key == self.owner:
            return "owner"
        return self.roles.get(key, "member")

    def prune(self, now: float) -> bool:
        """Drop lapsed bans and mutes; True when any was."""
        bans = [b for b in self.bans if b.live(now)]
        mutes = [m for m in self.mutes if m.live(now)]
        changed = len(bans) != len(self.bans) or len(mutes) != len(self.mutes)
        self.bans, self.mutes = bans, mutes
        return changed

    def muted(self, key: str, now: float, peer_key: str | None = None) -> Entry | None:
        for m in self.mutes:
            if (m.mask == f"nick:{key}" or (peer_key and m.key == peer_key)) and m.live(now):
                return m
        return None

    def banned(self, who: Identity, now: float) -> Entry | None:
        for b in self.bans:
            if b.live(now) and who.matches(b.mask):
                return b
        return None

    def rename(self, old: str, new: str) -> bool:
        """Roles, ownership and mutes follow a nick change (no one escapes
        a mute by renaming, and no one finds an operator's old nick free
        to take with its rights); True when anything moved."""
        moved = False
        if self.owner == old:
            self.owner, moved = new, True
        if old in self.roles:
            self.roles[new] = self.roles.pop(old)
            moved = True
        for i, m in enumerate(self.mutes):
            if m.mask == f"nick:{old}":
                self.mutes[i] = msgspec.structs.replace(m, mask=f"nick:{new}")
                moved = True
        if old in self.invited:
            self.invited = [new if k == old else k for k in self.invited]
            moved = True
        return moved


class Identity:
    """What a ban may match of a session: its nick (by look), its CURVE key,
    its address."""

    __slots__ = ("addr", "key", "skeleton")

    def __init__(self, nick: str, peer_key: str | None, addr: str) -> None:
        self.skeleton = nick_skeleton(nick)
        self.key = peer_key
        self.addr = addr

    def matches(self, mask: str) -> bool:
        kind, _, value = mask.partition(":")
        if kind == "nick":
            return nick_skeleton(value) == self.skeleton
        if kind == "key":
            return self.key is not None and value == self.key
        if kind == "addr":
            # An IPv6 client is known by its /64 (see _config.address_key).
            mine, theirs = _network(self.addr), _network(value)
            if mine is None or theirs is None or mine[0] != theirs[0]:
                return False
            # One holds the other when they agree on the shorter prefix.
            shift = mine[0] - min(mine[2], theirs[2])
            return mine[1] >> shift == theirs[1] >> shift
        return False


@functools.lru_cache(maxsize=8192)
def _network(text: str) -> tuple[int, int, int] | None:
    """``text`` as (bits, network as an int, prefix length), parsed once: a
    join is checked against every address ban of its room (up to
    --max-moderation of them), in integers."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net.max_prefixlen, int(net.network_address), net.prefixlen


_decode = msgspec.json.Decoder(Rules).decode
_encode = msgspec.json.Encoder().encode


def load(body: bytes | None) -> Rules | None:
    """The rules stored as ``body``; None when it does not read (damaged,
    or not this code's)."""
    if body is None:
        return Rules()
    try:
        return _decode(body)
    except msgspec.DecodeError:
        return None


def dump(rules: Rules) -> bytes:
    return _encode(rules)


def listed(roles: dict[str, str], owner: str | None) -> dict[str, str]:
    """The roles to show: the owner's with the others'."""
    shown = dict(roles)
    if owner is not None:
        shown[owner] = "owner"
    return shown


def modes_on(rules: Rules, flags: Iterable[str]) -> list[str]:
    return [f for f in flags if f in rules.modes]


def read_operators(
    keys_file: str | None, password_file: str | None
) -> tuple[frozenset[str], str | None]:
    """The server operators' public keys (``--operators``: Z85, one a line,
    ``#`` comments) and password (the first line of
    ``--oper-password-file``).

    Raises:
        ValueError: a file cannot be read, or holds what is not a key.
    """
    keys: set[str] = set()
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text().splitlines()
        except OSError as err:
            raise ValueError(f"--operators {keys_file}: {err.strerror}") from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                if len(line) != 40 or len(z85.decode(line)) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"--operators {keys_file}, line {n}: not a public key (40 characters of Z85)"
                ) from None
            keys.add(line)
    password = None
    if password_file is not None:
        try:
            text = Path(password_file).read_text()
        except OSError as err:
            raise ValueError(f"--oper-password-file {password_file}: {err.strerror}") from None
        password = text.splitlines()[0].strip() if text.strip() else ""
        if len(password) < 8:
            raise ValueError(
                f"--oper-password-file {password_file}: the password (its first line) "
                "needs 8 characters at least"
            )
    return frozenset(keys), password
