"""Every setting of the broker in one place: its default, its flag, its help.

The command line (``zchat-broker --help``), the shell and the core all read
:class:`Config`; nothing else states a default. A field with a ``help`` is a
flag, named after the field (``max_text`` is ``--max-text``). Bounds come in
groups, each of which a hostile client would otherwise grow without limit:
what one session may do, what one client address may do together, what
the broker holds in all, and what one connection may make it buffer.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KIB = 1024
MIB = 1024 * 1024


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or more, not {text}")
    return value


def _retain(text: str) -> float:
    value = float(text)
    # Resends are answered for ten minutes, from the ids the stored events
    # carry: history must outlive that.
    if value != 0 and value < 1 / 24:
        raise argparse.ArgumentTypeError(
            f"must be 0 (keep all) or at least 1/24 (an hour), not {text}"
        )
    return value


def _opt(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    group: str = "",
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "parse": parse, "metavar": metavar, "group": group},
    )


@dataclass(frozen=True)
class Config:
    """The broker's settings. Fields with a flag are documented by it."""

    # ------------------------------------------------------------ network
    bind: str = _opt("tcp://*:5555", "where clients send requests (ROUTER)", metavar="EP")
    publish: str = _opt("tcp://*:5556", "where room events are published (PUB)", metavar="EP")
    advertise: str | None = _opt(
        None,
        "the events endpoint to tell clients in 'welcome', when the bound address is "
        "not what they can reach (default: the --publish address; a wildcard host is "
        "replaced by clients)",
        metavar="EP",
    )
    ready_file: str | None = _opt(
        None,
        "once listening, write the bound endpoints there as JSON (for scripts and "
        "tests that bind port 0 or '*')",
        metavar="PATH",
    )
    curve_secret: str | None = _opt(
        None,
        "turn CURVE encryption on for both sockets, with this secret certificate "
        "(from 'zchat-broker keygen')",
        metavar="FILE",
    )
    allow_keys: str | None = _opt(
        None,
        "with --curve-secret: admit only clients whose public certificates are in DIR "
        "(re-read on SIGHUP)",
        metavar="DIR",
    )
    # --------------------------------------------------------- moderation
    operators: str | None = _opt(
        None,
        "with --curve-secret: the public keys (Z85, one a line, # comments) of server "
        "operators, who act in every room, kill sessions, ban server-wide (re-read on "
        "SIGHUP)",
        metavar="FILE",
        group="moderation",
    )
    oper_password_file: str | None = _opt(
        None,
        "a file whose first line is the password of server operators, given with an "
        "'oper' request (/oper); for brokers without CURVE (re-read on SIGHUP)",
        metavar="FILE",
        group="moderation",
    )
    max_moderation: int = _opt(
        500,
        "entries a room's moderation holds: roles, bans, mutes and invitations "
        "together (each change rewrites them)",
        parse=_positive,
        metavar="N",
        group="moderation",
    )
    # -------------------------------------------------------------- store
    store: str = _opt(
        ":memory:",
        "the SQLite history store; ':memory:' keeps nothing across restarts "
        "(zchat-broker's default: ~/.local/share/zchat/broker.db)",
        metavar="PATH",
        group="store",
    )
    fsync: bool = _opt(
        False,
        "flush every commit to disk, surviving a power cut as well as a crash (slower)",
        group="store",
    )
    retain_days: float = _opt(
        0.0,
        "drop room history older than D days (each room keeps at least its newest "
        "events); 0 keeps everything",
        parse=_retain,
        metavar="D",
        group="store",
    )
    store_max_mb: int = _opt(
        0,
        "the most the store may take on disk, in MiB; past it (or when the disk is "
        "full) writes are refused with 'unavailable' and reads go on; 0: the disk's size",
        parse=_count,
        metavar="N",
        group="store",
    )
    cluster: str | None = _opt(
        None,
        "run as a node of a cluster whose rooms, sessions and history are in this "
        "Redis or Valkey (redis://HOST:PORT/DB or rediss://...; a password from the URL "
        "or ZCHAT_REDIS_PASSWORD); --store is then not used",
        metavar="URL",
        group="cluster",
    )
    cluster_max_events: int = _opt(
        0,
        "in a cluster, keep about the last N events of each room (Redis MAXLEN); "
        "0 keeps everything",
        parse=_count,
        metavar="N",
        group="cluster",
    )
    redis_wait: int = _opt(
        0,
        "in a cluster, acknowledge a batch only once N Redis replicas have it (WAIT), "
        "so that a failover to one of them loses nothing acknowledged",
        parse=_count,
        metavar="N",
        group="cluster",
    )
    node_endpoint: str | None = _opt(
        None,
        "in a cluster, the ROUTER endpoint other nodes' clients can reach this node "
        "at, listed in 'welcome' (default: the bound one)",
        metavar="EP",
        group="cluster",
    )
    # ----------------------------------------------------------- sessions
    heartbeat_ms: int = _opt(
        5_000,
        "how often clients are asked to send at least a ping",
        parse=_positive,
        metavar="N",
        group="sessions",
    )
    timeout_ms: int = _opt(
        15_000,
        "end a session silent this long, with a 'timeout' leave",
        parse=_positive,
        metavar="N",
        group="sessions",
    )
    max_text: int = _opt(
        4_000, "longest text in characters", parse=_positive, metavar="N", group="sessions"
    )
    max_msg_bytes: int = _opt(
        65_536,
        "largest request frame; ZeroMQ disconnects a peer that sends more",
        parse=_positive,
        metavar="N",
        group="sessions",
    )
    rooms_per_session: int = _opt(
        100, "rooms one session may be in", parse=_positive, metavar="N", group="sessions"
    )
    dedup_max: int = _opt(
        2_000_000,
        "request ids remembered for answering resends (ten minutes' worth, but at most this many)",
        parse=_positive,
        metavar="N",
        group="sessions",
    )
    dedup_mb: int = _opt(
        256,
        "and at most this much memory for them, in MiB",
        parse=_positive,
        metavar="N",
        group="sessions",
    )
    # --------------------------------------------------------- rate limits
    rate: float = _opt(
        20.0,
        "requests that make events or work (join, part, say, pm, nick, topic, offer, "
        "history, who, rooms, commands) per second per session; 0 turns every rate "
        "limit off, for trusted bots and benchmarks",
        parse=_rate,
        metavar="N",
        group="rates",
    )
    burst: int = _opt(
        40,
        "how many of them may come at once before --rate applies",
        parse=_positive,
        metavar="N",
        group="rates",
    )
    address_rate: float = _opt(
        100.0,
        "the same, for all the sessions of one client address together",
        parse=_rate,
        metavar="N",
        group="rates",
    )
    address_burst: int = _opt(
        200, "the burst of --address-rate", parse=_positive, metavar="N", group="rates"
    )
    hello_rate: float = _opt(
        5.0,
        "new sessions per second from one client address",
        parse=_rate,
        metavar="N",
        group="rates",
    )
    hello_burst: int = _opt(
        50, "the burst of --hello-rate", parse=_positive, metavar="N", group="rates"
    )
    # ---------------------------------------------------- what is held in all
    max_sessions: int = _opt(
        50_000,
        "sessions in all (a session outlives its connection for --timeout-ms)",
        parse=_positive,
        metavar="N",
        group="held",
    )
    sessions_per_address: int = _opt(
        64,
        "sessions one client address may have at once",
        parse=_positive,
        metavar="N",
        group="held",
    )
    max_rooms: int = _opt(
        10_000,
        "rooms with people in them, in all (a room's history stays in the store after "
        "its last member leaves)",
        parse=_positive,
        metavar="N",
        group="held",
    )
    held_pm_kb: int = _opt(
        1_024,
        "private messages kept for one recipient whose connection is gone, in KiB",
        parse=_positive,
        metavar="N",
        group="held",
    )
    held_pm_mb: int = _opt(
        64,
        "private messages kept for all such recipients together, in MiB",
        parse=_positive,
        metavar="N",
        group="held",
    )
    nick_claim_days: float = _opt(
        30.0,
        "with CURVE and no --allow-keys: a nick's claim by a key lapses after this many "
        "days unused; 0 keeps claims forever",
        parse=_rate,
        metavar="D",
        group="held",
    )
    nicks_per_key: int = _opt(
        5,
        "with CURVE and no --allow-keys: nicks one key may claim",
        parse=_positive,
        metavar="N",
        group="held",
    )
    max_claims: int = _opt(
        100_000,
        "with CURVE and no --allow-keys: nick claims in all (keys cost nothing to make); "
        "past it, nicks are used unclaimed",
        parse=_positive,
        metavar="N",
        group="held",
    )
    # --------------------------------------------------------- connections
    max_connections: int = _opt(
        0,
        "TCP connections to both sockets together; the surplus is closed at once; "
        "0: derived from the open-file limit (raised to its hard limit at start)",
        parse=_count,
        metavar="N",
        group="connections",
    )
    connections_per_address: int = _opt(
        256,
        "TCP connections from one client address (a client makes two)",
        parse=_positive,
        metavar="N",
        group="connections",
    )
    max_reply_bytes: int = _opt(
        128 * KIB,
        "largest reply; history, who, rooms and commands come in pages of at most this",
        parse=_positive,
        metavar="N",
        group="connections",
    )
    sendq_kb: int = _opt(
        8 * 1024,
        "replies a client may leave unread, in KiB, before it is disconnected as a slow consumer",
        parse=_positive,
        metavar="N",
        group="connections",
    )
    unfinished_kb: int = _opt(
        1_024,
        "what a connection may send without finishing a message, in KiB, before it is disconnected",
        parse=_positive,
        metavar="N",
        group="connections",
    )
    pub_hwm: int = _opt(
        10_000,
        "events queued per subscriber before PUB drops (clients then repair from "
        "history); 0: no limit, for benchmarks that count deliveries",
        parse=_count,
        metavar="N",
        group="connections",
    )
    quiet: bool = _opt(False, "log warnings and errors only")
    # Not flags: set by the shell once it knows them.
    events: str = "tcp://127.0.0.1:5556"
    name: str = "zchat"

    @property
    def curve(self) -> bool:
        return self.curve_secret is not None

    @property
    def retain_s(self) -> float:
        return self.retain_days * 86_400

    @property
    def limited(self) -> bool:
        """Whether rate limits apply at all (``--rate 0`` turns them off)."""
        return self.rate > 0

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def flags() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`Config` that are command-line flags."""
    return [f for f in dataclasses.fields(Config) if f.metadata.get("help")]


GROUPS = {
    "": None,
    "moderation": "moderation",
    "store": "history store",
    "cluster": "cluster (several brokers sharing one Redis)",
    "sessions": "sessions",
    "rates": "rate limits (token buckets)",
    "held": "what the broker holds",
    "connections": "connections",
}


def add_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`Config`, with its default in its help."""
    groups: dict[str, Any] = {}
    for f in flags():
        meta = f.metadata
        title = GROUPS[meta["group"]]
        where = p if title is None else groups.setdefault(title, p.add_argument_group(title))
        flag = "--" + f.name.replace("_", "-")
        text = meta["help"]
        if f.type in (bool, "bool"):
            short = ["-q"] if f.name == "quiet" else []
            where.add_argument(*short, flag, action="store_true", help=text)
            continue
        if f.default is not None and f.name != "store":
            text += " (default %(default)s)"
        where.add_argument(
            flag,
            default=f.default,
            type=meta["parse"] or str,
            metavar=meta["metavar"],
            help=text,
        )


def from_args(args: argparse.Namespace, **overrides: Any) -> Config:
    values = {f.name: getattr(args, f.name) for f in flags()}
    values.update(overrides)
    return Config(**values)


def address_key(ip: str) -> str:
    """The client address that per-address bounds count: the IP, or for
    IPv6 its /64, which one customer usually holds whole (as Ergo does)."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return ip


def default_store() -> str:
    """``$XDG_DATA_HOME/zchat/broker.db``: history kept per user, not per folder."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "zchat", "broker.db")


def wildcard_host(endpoint: str) -> bool:
    host = endpoint.partition("://")[2].rsplit(":", 1)[0].strip("[]")
    return host in ("*", "0.0.0.0", "::")
