"""``echo``: says back what it is told: ``!echo TEXT``, and private messages."""

from __future__ import annotations

from client.bot import Bot, Message

bot = Bot("echo")


@bot.command("echo", usage="!echo TEXT", help="repeat TEXT")
def _echo(msg: Message, args: str) -> str:
    return args or "(nothing to echo)"


@bot.on_pm
def _pm(msg: Message) -> str:
    return msg.text
