"""``logger``: writes every event of its rooms to ``DIR/ROOM.log``.

``DIR`` is ``$ZCHAT_LOG_DIR``, or ``zchat-logs`` in the current folder.
Each line is the event as JSON, exactly as on the wire, so the files can be
searched with ``jq``. ``!lastlog`` tells where the log is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from client._client import Client
from client.bot import Bot, Message
from messages import JoinEvent, LeaveEvent, MsgEvent, NickEvent, TopicEvent, encode

ROOM_EVENTS = (MsgEvent, JoinEvent, LeaveEvent, NickEvent, TopicEvent)


class LoggerBot(Bot):
    def log_dir(self) -> Path:
        return Path(os.environ.get("ZCHAT_LOG_DIR", "zchat-logs"))

    async def dispatch(self, client: Client, item: Any) -> None:
        if isinstance(item, ROOM_EVENTS):
            directory = self.log_dir()
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / f"{item.room}.log", "ab") as f:
                f.write(encode(item) + b"\n")
        await super().dispatch(client, item)


bot = LoggerBot("logger")


@bot.command("lastlog", usage="!lastlog", help="where this room is logged")
def _where(msg: Message, args: str) -> str:
    return f"#{msg.room} is logged to {bot.log_dir() / f'{msg.room}.log'}"
