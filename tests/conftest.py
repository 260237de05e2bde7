from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, settings

from .helpers import Broker, RawClient
from .redis_servers import RedisClusterServers, RedisServer

# CI machines are shared and slow: no deadlines per example, a fixed budget.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("ci")


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC for the test (times printed as clients print them)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start brokers (``make_broker("--rate", "0")``); all are killed after."""
    brokers: list[Broker] = []
    count = 0

    def make(*args: str, store: str | None = None, start: bool = True) -> Broker:
        nonlocal count
        count += 1
        workdir = tmp_path / f"broker{count}"
        workdir.mkdir()
        b = Broker(workdir, *args, store=store)
        brokers.append(b)
        return b.start() if start else b

    yield make
    for b in brokers:
        b.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """A broker with a file store and short timeouts, so faults show quickly."""
    return make_broker("--timeout-ms", "3000", "--heartbeat-ms", "500")


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def raw(broker: Broker, zctx: zmq.Context[Any]) -> Callable[[], RawClient]:
    """Raw DEALER+SUB clients of ``broker``, closed after the test."""
    made: list[RawClient] = []

    def make() -> RawClient:
        c = RawClient(zctx, broker.endpoint, broker.events)
        made.append(c)
        return c

    yield make  # type: ignore[misc]
    for c in made:
        c.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server, every write fsynced to its AOF; killed after."""
    with RedisServer(tmp_path / "redis", aof=True) as server:
        yield server


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three Redis cluster masters covering all 16384 slots; killed after."""
    with RedisClusterServers(tmp_path / "redis-cluster") as cluster:
        yield cluster


# `make test` runs the suite on two workers (pytest-xdist, --dist loadgroup).
# The tests that push a machine as hard as it goes (full-speed chaos, the
# attacks with a polite client timed beside them, the cluster's kills) run
# one at a time on one worker, so that they never share the machine with
# each other; the rest, mostly waiting on sockets, fill the other.
HEAVY = ("test_faults.py", "test_limits.py", "test_cluster.py", "test_hostile.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HEAVY or "full_speed" in item.name:
            item.add_marker(pytest.mark.xdist_group("heavy"))


@pytest.fixture
def nodes(make_broker: Callable[..., Broker], redis_server: Any) -> Callable[..., list[Broker]]:
    """``nodes(n, *flags)``: n brokers, nodes of a cluster on one Redis,
    with short timeouts, so faults show quickly."""

    def make(n: int, *args: str) -> list[Broker]:
        return [
            make_broker(
                "--cluster",
                redis_server.url,
                "--timeout-ms",
                "3000",
                "--heartbeat-ms",
                "500",
                *args,
            )
            for _ in range(n)
        ]

    return make
