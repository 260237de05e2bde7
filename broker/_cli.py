"""``zchat-broker``: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import zmq

from ._core import VERSION
from ._server import Options, Server

MIN_LIBZMQ = (4, 3, 5)


def default_store() -> str:
    """``$XDG_DATA_HOME/zchat/broker.db``: history kept per user, not per folder."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "zchat", "broker.db")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zchat-broker",
        description="The zchat broker: takes requests on a ROUTER socket and "
        "publishes room events on a PUB socket. Logs to stderr; stops cleanly "
        "on SIGINT or SIGTERM.",
        epilog="Subcommand: 'zchat-broker keygen DIR [--name NAME]' writes a CURVE key pair.",
    )
    p.add_argument(
        "--bind",
        default="tcp://*:5555",
        metavar="EP",
        help="where clients send requests (ROUTER; default %(default)s)",
    )
    p.add_argument(
        "--publish",
        default="tcp://*:5556",
        metavar="EP",
        help="where room events are published (PUB; default %(default)s)",
    )
    p.add_argument(
        "--advertise",
        metavar="EP",
        help="the events endpoint to tell clients in 'welcome', when the "
        "bound address is not what they can reach (default: the --publish "
        "address; a wildcard host is replaced by clients)",
    )
    p.add_argument(
        "--store",
        default=None,
        metavar="PATH",
        help="the SQLite history store; ':memory:' keeps nothing across "
        f"restarts (default {default_store()})",
    )
    p.add_argument(
        "--retain-days",
        type=_retain,
        default=0.0,
        metavar="D",
        help="drop room history older than D days (each room keeps at least its "
        "newest events); 0 keeps everything (default)",
    )
    p.add_argument(
        "--fsync",
        action="store_true",
        help="flush every commit to disk, surviving a power cut as well as a crash (slower)",
    )
    p.add_argument(
        "--timeout-ms",
        type=_positive,
        default=15_000,
        metavar="N",
        help="end a session silent this long, with a 'timeout' leave (default %(default)s)",
    )
    p.add_argument(
        "--dedup-max",
        type=_positive,
        default=2_000_000,
        metavar="N",
        help="request ids remembered for answering resends (ten minutes' worth, "
        "but at most this many; about 250 bytes each; default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-ms",
        type=_positive,
        default=5_000,
        metavar="N",
        help="how often clients are asked to send at least a ping (default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        default=20.0,
        metavar="N",
        help="say/pm/nick/topic requests per second per session; 0 turns "
        "the limit off (default %(default)s)",
    )
    p.add_argument(
        "--burst",
        type=_positive,
        default=40,
        metavar="N",
        help="how many requests may come at once before --rate applies (default %(default)s)",
    )
    p.add_argument(
        "--max-text",
        type=_positive,
        default=4_000,
        metavar="N",
        help="longest text in characters (default %(default)s)",
    )
    p.add_argument(
        "--max-msg-bytes",
        type=_positive,
        default=65_536,
        metavar="N",
        help="largest request frame; ZeroMQ disconnects a peer that sends "
        "more (default %(default)s)",
    )
    p.add_argument(
        "--pub-hwm",
        type=int,
        default=100_000,
        metavar="N",
        help="events queued per subscriber before PUB drops (clients then "
        "repair from history; default %(default)s)",
    )
    p.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once listening, write the bound endpoints there as JSON "
        "(for scripts and tests that bind port 0 or '*')",
    )
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="turn CURVE encryption on for both sockets, with this secret "
        "certificate (from 'zchat-broker keygen')",
    )
    p.add_argument(
        "--allow-keys",
        metavar="DIR",
        help="with --curve-secret: admit only clients whose public "
        "certificates are in DIR (re-read on SIGHUP)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--version", action="version", version=f"zchat-broker {VERSION}")
    return p


def libzmq_problem(version: tuple[int, ...]) -> str | None:
    """Why this libzmq must not be used, or None when it is recent enough."""
    if tuple(version[:3]) < MIN_LIBZMQ:
        return (
            f"libzmq {'.'.join(map(str, version[:3]))} is too old: 4.3.5 or newer is needed "
            "(CVE-2019-13132 and CVE-2020-15166 in the CURVE handshake); upgrade pyzmq"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["keygen"]:
        from ._keys import keygen_main

        return keygen_main(args[1:])
    opts = parser().parse_args(args)
    logging.basicConfig(
        level=logging.WARNING if opts.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    log = logging.getLogger("zchat.broker")
    problem = libzmq_problem(zmq.zmq_version_info())
    if problem is not None:
        log.error("%s", problem)
        return 2
    if opts.allow_keys and not opts.curve_secret:
        log.error("--allow-keys needs --curve-secret: without CURVE there are no keys to check")
        return 2
    store = opts.store or default_store()
    if store != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
    options = Options(
        bind=opts.bind,
        publish=opts.publish,
        advertise=opts.advertise,
        store=store,
        fsync=opts.fsync,
        heartbeat_ms=opts.heartbeat_ms,
        timeout_ms=opts.timeout_ms,
        rate=opts.rate,
        burst=opts.burst,
        max_text=opts.max_text,
        max_msg_bytes=opts.max_msg_bytes,
        pub_hwm=opts.pub_hwm,
        ready_file=opts.ready_file,
        curve_secret=opts.curve_secret,
        allow_keys=opts.allow_keys,
        dedup_max=opts.dedup_max,
        retain_days=opts.retain_days,
    )
    try:
        server = Server(options)
    except zmq.ZMQError as err:
        log.error("cannot listen: %s (is another broker running on these ports?)", err)
        return 1
    except ValueError as err:
        log.error("%s", err)
        return 1
    except OSError as err:
        log.error("cannot open %s: %s", store, err)
        return 1
    return server.run()
