"""``zchat-broker``: the command line.

Its flags are the fields of :class:`~._config.Config`, so ``--help`` and the
defaults cannot drift apart. Subcommands: ``keygen`` writes a CURVE key
pair; ``nick`` lists and releases nick claims in a store.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence

import zmq

from messages import nick_key

from ._config import add_flags, default_store, from_args
from ._core import VERSION
from ._server import Server
from ._store import StoreError

MIN_LIBZMQ = (4, 3, 5)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zchat-broker",
        description="The zchat broker: takes requests on a ROUTER socket and "
        "publishes room events on a PUB socket. Logs to stderr; stops cleanly "
        "on SIGINT or SIGTERM.",
        epilog="Subcommands: 'zchat-broker keygen DIR [--name NAME]' writes a CURVE key "
        "pair; 'zchat-broker nick list|release NICK [--store PATH]' shows or frees "
        "nick claims.",
    )
    add_flags(p)
    p.set_defaults(store=None)
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


def nick_main(argv: Sequence[str]) -> int:
    """``zchat-broker nick list`` and ``zchat-broker nick release NICK``.

    Works beside a running broker: the broker reads a claim from the store
    again before it refuses anyone, so a release takes effect at once.
    """
    p = argparse.ArgumentParser(
        prog="zchat-broker nick",
        description="Nick claims (with CURVE, a nick belongs to the first key that used it).",
    )
    p.add_argument("action", choices=("list", "release"))
    p.add_argument("nick", nargs="?", help="the nick to release")
    p.add_argument("--store", default=default_store(), metavar="PATH", help="%(default)s")
    args = p.parse_args(argv)
    if not os.path.exists(args.store):
        print(f"zchat-broker nick: no store at {args.store}", file=sys.stderr)
        return 1
    try:
        db = sqlite3.connect(args.store, timeout=10)
        if args.action == "list":
            rows = db.execute("SELECT nick, key, used FROM nick_keys ORDER BY nick").fetchall()
            for nick, key, used in rows:
                when = (
                    datetime.datetime.fromtimestamp(used, datetime.timezone.utc).strftime(
                        "%Y-%m-%d"
                    )
                    if used
                    else "?"
                )
                print(f"{nick}\t{key}\tlast used {when}")
            return 0
        if not args.nick:
            p.error("release needs a NICK")
        with db:
            cur = db.execute("DELETE FROM nick_keys WHERE nick = ?", (nick_key(args.nick),))
        if cur.rowcount == 0:
            print(f"zchat-broker nick: {args.nick} is not claimed", file=sys.stderr)
            return 1
        print(f"released {args.nick}: the next key to use it claims it")
        return 0
    except sqlite3.Error as err:
        print(f"zchat-broker nick: {args.store}: {err}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["keygen"]:
        from ._keys import keygen_main

        return keygen_main(args[1:])
    if args[:1] == ["nick"]:
        return nick_main(args[1:])
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
    if opts.operators and not opts.curve_secret:
        log.error("--operators needs --curve-secret: without CURVE use --oper-password-file")
        return 2
    if opts.allow_keys and not opts.curve_secret:
        log.error("--allow-keys needs --curve-secret: without CURVE there are no keys to check")
        return 2
    store = opts.store or default_store()
    if store != ":memory:":
        try:
            os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
        except OSError as err:
            log.error("cannot make the store's folder for %s: %s", store, err.strerror)
            return 1
    config = from_args(opts, store=store)
    try:
        server = Server(config)
    except StoreError as err:
        log.error("%s", err)
        return 1
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
