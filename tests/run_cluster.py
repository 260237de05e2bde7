"""``make cluster``: Redis and three broker nodes on loopback, for trying
cluster mode by hand (Ctrl-C stops them all).

    python -m tests.run_cluster [--nodes N] [--port 5555] [--dir DIR]

Node i listens on PORT + 10 i (requests) and PORT + 10 i + 1 (events);
Redis, with ``appendonly yes`` and ``appendfsync always``, on PORT - 1 and
its files in DIR (default ``.cluster/``), so a second run finds the history
of the first.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .redis_servers import RedisServer


def main() -> int:
    p = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--dir", default=".cluster")
    args = p.parse_args()
    workdir = Path(args.dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(workdir / "redis")
    redis.start(port=args.port - 1)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        endpoints = []
        for i in range(args.nodes):
            req, pub = args.port + 10 * i, args.port + 10 * i + 1
            endpoint = f"tcp://127.0.0.1:{req}"
            endpoints.append(endpoint)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "broker",
                        "--cluster",
                        redis.url,
                        "--bind",
                        endpoint,
                        "--publish",
                        f"tcp://127.0.0.1:{pub}",
                    ],
                    stdout=open(workdir / f"node{i + 1}.log", "ab"),
                    stderr=subprocess.STDOUT,
                )
            )
        print(f"Redis on {redis.url} (files in {workdir / 'redis'})")
        for i, endpoint in enumerate(endpoints):
            print(f"node {i + 1} on {endpoint} (log: {workdir / f'node{i + 1}.log'})")
        print("\nIn other terminals, one client on each node:")
        everyone = ",".join(endpoints)
        for i, endpoint in enumerate(endpoints):
            rest = ",".join(e for e in endpoints if e != endpoint)
            print(f"  .venv/bin/zchat --nick user{i + 1} --connect {endpoint},{rest}")
        print(f"\nor any program with --connect {everyone}. Ctrl-C stops them all.")
        reported: set[int] = set()
        while not stopping:
            for i, proc in enumerate(procs):
                if proc.poll() is not None and i not in reported:
                    # Killing a node is the point of trying a cluster: the
                    # others go on, and its clients move to them.
                    reported.add(i)
                    print(f"node {i + 1} exited ({proc.returncode}); the others go on")
            # (Polling the children for the operator; nothing to wait on.)
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
