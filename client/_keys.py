"""CURVE keys for clients: the broker's public key and our own key pair."""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth

from messages import key_fingerprint

from ._client import CurveKeys


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/zchat``: where the client keeps its key pair."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "zchat"


def server_public_key(value: str) -> bytes:
    """The broker's public key from Z85 text or a certificate file.

    Raises:
        ValueError: neither a readable certificate nor 40 characters of Z85.
    """
    path = Path(value).expanduser()
    if path.is_file():
        public, _ = zmq.auth.load_certificate(str(path))
        if not public:
            raise ValueError(f"{value}: no public key in this certificate")
        return public
    text = value.strip()
    if len(text) != 40:
        raise ValueError(
            f"server key {value!r} is neither a certificate file nor 40 characters of Z85"
        )
    try:
        zmq.utils.z85.decode(text.encode())
    except Exception:
        raise ValueError(f"server key {value!r} is not valid Z85") from None
    return text.encode()


def own_key_pair(directory: Path | None = None) -> tuple[bytes, bytes]:
    """This user's key pair, created on first use (secret readable by its owner only)."""
    directory = directory or config_dir()
    secret_file = directory / "client.key_secret"
    if not secret_file.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        zmq.auth.create_certificates(str(directory), "client")
        os.chmod(secret_file, 0o600)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    assert secret is not None
    return public, secret


def curve_keys(server_key: str | None, *, key_dir: Path | None = None) -> CurveKeys | None:
    """The keys for :class:`Client`, or ``None`` when no server key is given."""
    if not server_key:
        return None
    server = server_public_key(server_key)
    public, secret = own_key_pair(key_dir)
    return CurveKeys(server_public=server, public=public, secret=secret)


def fingerprint(public_key: bytes) -> str:
    """A short, readable digest of a public key, for people to compare; the
    broker and ``zchat-broker keygen`` show the same."""
    return key_fingerprint(public_key)
