"""The real ``zchat`` program in a pseudo-terminal, read back through a
terminal emulator (pyte), against a real broker."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from .helpers import ROOT, Broker, RawClient

ROWS, COLS = 40, 110


class _Screen(pyte.Screen):  # type: ignore[misc]
    """A screen that answers the terminal's questions (cursor position)."""

    def __init__(self, reply: Callable[[str], None]) -> None:
        super().__init__(COLS, ROWS)
        self._reply = reply

    def write_process_input(self, data: str) -> None:
        self._reply(data)


class Terminal:
    def __init__(self, args: list[str], home: Path) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            TERM="xterm-256color",
            XDG_DATA_HOME=str(home / "data"),
            XDG_CONFIG_HOME=str(home / "config"),
            COLUMNS=str(COLS),
            LINES=str(ROWS),
        )
        env.pop("NO_COLOR", None)
        self.child = pexpect.spawn(
            sys.executable, ["-m", "client", *args], env=env, dimensions=(ROWS, COLS), cwd=str(home)
        )
        self.screen = _Screen(lambda data: self.child.send(data))
        self.stream = pyte.ByteStream(self.screen)
        self.seen = ""  # every line that was ever on screen, for what scrolled away

    def pump(self) -> None:
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except (pexpect.TIMEOUT, pexpect.EOF):
                break
            self.stream.feed(data)
            self.seen += "\n".join(self.screen.display) + "\n"

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            m = re.search(pattern, self.seen)
            if m:
                return m
            if time.monotonic() > deadline or (
                not self.child.isalive() and not self.child_has_output()
            ):
                raise AssertionError(f"{pattern!r} never showed; screen:\n{self.text()}")

    def child_has_output(self) -> bool:
        return False

    def type(self, text: str) -> None:
        self.child.send(text)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


@pytest.fixture
def term(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    made: list[Terminal] = []

    def make(*args: str) -> Terminal:
        t = Terminal(["--plain", "--connect", broker.endpoint, *args], tmp_path)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def bob_in_general(zctx: Any, broker: Broker) -> RawClient:
    bob = RawClient(zctx, broker.endpoint, broker.events)
    assert bob.request({"type": "hello", "nick": "bob"})["type"] == "welcome"
    bob.subscribe(b"#general\x00")
    assert bob.request({"type": "join", "room": "general"})["type"] == "joined"
    return bob


def next_event(
    c: RawClient, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, ev = c.event(max(0.1, deadline - time.monotonic()))
        if pred(ev):
            return ev


def test_asks_for_a_nick_until_it_is_good(
    term: Callable[..., Terminal], zctx: Any, broker: Broker
) -> None:
    bob = bob_in_general(zctx, broker)
    t = term()
    t.wait_for("Pick a nick")
    t.type("9lives\r")
    t.wait_for("not valid")
    t.type("bob\r")
    t.wait_for("in use")
    t.type("alice\r")
    t.wait_for("connected to .* as alice")
    t.wait_for(r"2 here: alice, bob")
    bob.close()


def test_a_chat_session(term: Callable[..., Terminal], zctx: Any, broker: Broker) -> None:
    bob = bob_in_general(zctx, broker)
    t = term("--nick", "alice")
    t.wait_for(r"2 here: alice, bob")
    # A message from someone else: time, nick, text; markup stays literal.
    bob.request({"type": "say", "room": "general", "text": "hi alice [bold red]look[/]"})
    t.wait_for(r"\[\d\d:\d\d:\d\d\] <bob> hi alice \[bold red\]look\[/\]")
    # What alice types reaches bob, and shows once on her screen.
    t.type("hello bob\r")
    ev = next_event(bob, lambda e: e["type"] == "msg" and e["from"] == "alice")
    assert ev["text"] == "hello bob"
    t.wait_for(r"<alice> hello bob")
    assert len(re.findall(r"<alice> hello bob", t.text())) == 1
    t.type("/whosonline\r")
    t.wait_for(r"online: 2")
    t.wait_for(r"bob\s+│\s+\d+s")
    # Private messages both ways.
    t.type("/pm bob just between us\r")
    push = bob.recv_until(lambda m: m["type"] == "pm")
    assert (push["from"], push["text"]) == ("alice", "just between us")
    t.wait_for(r"\[pm to bob\] just between us")
    bob.request({"type": "pm", "to": "alice", "text": "likewise"})
    t.wait_for(r"\[pm from bob\] likewise")
    t.type("/frobnicate\r")
    t.wait_for(r"unknown command /frobnicate")
    t.type("/quit off to lunch\r")
    ev = next_event(bob, lambda e: e["type"] == "leave")
    assert (ev["nick"], ev["reason"]) == ("alice", "quit")
    t.child.expect(pexpect.EOF, timeout=20)
    t.child.close()
    assert t.child.exitstatus == 0
    bob.close()


def test_plain_line_mode_when_not_a_terminal(broker: Broker, tmp_path: Path, zctx: Any) -> None:
    import subprocess

    bob = bob_in_general(zctx, broker)
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "--connect", broker.endpoint, "--nick", "pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("from a pipe\n/quit\n")
        proc.stdin.flush()
        ev = next_event(bob, lambda e: e["type"] == "msg")
        assert (ev["from"], ev["text"]) == ("pipe", "from a pipe")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "\x1b[" not in out and "connected to" in out
    bob.close()
