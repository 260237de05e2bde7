"""``logger``: writes every event of its rooms to ``DIR/ROOM.log``.

``DIR`` is ``$ZCHAT_LOG_DIR``, or ``zchat-logs`` in the current folder.
Each line is the event as JSON, exactly as on the wire, so the files can be
searched with ``jq``. ``!lastlog`` says which file and how many lines, not
where the file is: the folders of the machine the bot runs on are nobody
else's business.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from client._client import Client
from client.bot import Bot, Message
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, TopicEvent, encode

ROOM_EVENTS = (MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent)


def count_lines(path: Path) -> int:
    """How many lines the file holds (0 when there is none), read in chunks."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


class LoggerBot(Bot):
    """A bot that logs its rooms, and counts the lines it logged."""

    def __init__(self, nick: str, **kwargs: Any) -> None:
        super().__init__(nick, **kwargs)
        # Lines of each room's file, once counted: a count is then kept up to
        # date by each write instead of reading the file again.
        self.lines: dict[str, int] = {}

    def log_dir(self) -> Path:
        return Path(os.environ.get("ZCHAT_LOG_DIR", "zchat-logs"))

    def log_file(self, room: str) -> Path:
        return self.log_dir() / f"{room}.log"

    async def dispatch(self, client: Client, item: Any) -> None:
        if isinstance(item, ROOM_EVENTS):
            path = self.log_file(item.room)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(encode(item) + b"\n")
            if item.room in self.lines:
                self.lines[item.room] += 1
        await super().dispatch(client, item)

    async def line_count(self, room: str) -> int:
        if room not in self.lines:
            # In a thread: a log of months would stall every room meanwhile.
            self.lines[room] = await asyncio.to_thread(count_lines, self.log_file(room))
        return self.lines[room]


bot = LoggerBot("logger")


@bot.command("lastlog", usage="!lastlog", help="which file this room is logged to")
async def _where(msg: Message, args: str) -> str:
    if msg.room is None:
        return "ask in a room: I log the rooms I am in, " + ", ".join(
            f"#{r}" for r in msg.client.rooms
        )
    lines = await bot.line_count(msg.room)
    return (
        f"#{msg.room} is logged to {msg.room}.log, {lines} line{'s' if lines != 1 else ''} so far"
    )
