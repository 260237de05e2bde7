"""CURVE for the broker: key generation and the ZAP authenticator.

With CURVE on, the broker always runs pyzmq's authenticator: libzmq lets
any client that knows the server's public key through when nothing answers
on ``inproc://zeromq.zap.01`` (libzmq #2594). Without an allow-list the
authenticator admits every key (``CURVE_ALLOW_ANY``), but it still runs, so
every frame carries its sender's key as the ``User-Id`` property.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from messages import key_fingerprint

log = logging.getLogger("zchat.broker")


def keygen(directory: str | Path, name: str = "broker") -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory``.

    The secret file is readable by its owner only.

    Raises:
        FileExistsError: a key pair of that name is already there.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise FileExistsError(f"{secret} already exists; not overwriting a key")
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def keygen_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="zchat-broker keygen",
        description="Write a CURVE key pair as ZeroMQ certificate files: NAME.key "
        "(public: give it to clients) and NAME.key_secret (keep it; mode 600).",
    )
    p.add_argument("dir", metavar="DIR", help="where to write the files")
    p.add_argument("--name", default="broker", help="file name stem (default %(default)s)")
    args = p.parse_args(argv)
    try:
        public, secret = keygen(args.dir, args.name)
    except OSError as err:
        print(f"zchat-broker keygen: {err}", file=sys.stderr)
        return 1
    key, _ = zmq.auth.load_certificate(str(public))
    print(
        f"public key {key.decode()}\n  fingerprint {key_fingerprint(key)}\n"
        f"  written to {public}\nsecret key written to {secret}"
    )
    return 0


def load_secret(path: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret certificate file.

    Raises:
        ValueError: the file holds no secret key.
    """
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


class _Authenticator(ThreadAuthenticator):
    """pyzmq's authenticator, telling the broker's log which keys it refuses
    (a client refused at the handshake sees only a failed connection): at
    most a line a minute, with how many were refused in all."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(ctx)
        self.refused = 0
        self._next_report = 0.0

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self.refused += 1
            now = time.monotonic()
            if now >= self._next_report:
                self._next_report = now + 60.0
                log.warning(
                    "refused a client key not in the allow-list: fingerprint %s "
                    "(%d refused in all)",
                    key_fingerprint(z85.encode(client_key)),
                    self.refused,
                )
        return allowed, reason


class Guard:
    """The authenticator of one broker, and the allow-list it enforces."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], allow_keys: str | None) -> None:
        self.allow_keys = allow_keys
        self.auth = _Authenticator(ctx)
        self.auth.start()
        self.reload()

    def reload(self) -> int:
        """(Re-)read the allow-list; returns how many keys it holds (-1: any)."""
        if self.allow_keys is None:
            self.auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            return -1
        if not os.path.isdir(self.allow_keys):
            raise ValueError(f"--allow-keys {self.allow_keys} is not a folder")
        self.auth.configure_curve(domain="*", location=self.allow_keys)
        return len(zmq.auth.load_certificates(self.allow_keys))

    def stop(self) -> None:
        self.auth.stop()


def secure(sock: zmq.Socket[bytes], public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server (before it binds)."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
