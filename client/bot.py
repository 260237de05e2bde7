"""Bots: a nick, some rooms, and handlers.

A complete bot::

    from client.bot import Bot

    bot = Bot("greeter", rooms=["general"])

    @bot.command("hello", usage="!hello [NAME]", help="say hello")
    def hello(msg, args):
        return f"hello, {args or msg.nick}!"       # a returned str is the reply

    @bot.on_join
    async def welcome(ev):
        await ev.reply(f"welcome, {ev.nick}")      # or reply yourself

Run it with ``zchat bot greeter.py`` (the module's ``bot`` is run), or from
Python with ``await bot.run(Client(...))``. Handlers may be plain functions
or coroutines; one that raises is logged and the bot goes on. The bot
announces its commands to the broker, so ``/help`` in the terminal client
lists them, and the client library reconnects by itself.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from messages import CommandSpec, JoinEvent, LeaveEvent, MsgEvent, PmPush

from ._client import Client

log = logging.getLogger("zchat.bot")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Message:
    """A message to the bot: in a room (``room`` set) or private (``room`` None)."""

    client: Client
    nick: str
    text: str
    room: str | None
    event: MsgEvent | PmPush

    @property
    def private(self) -> bool:
        return self.room is None

    async def reply(self, text: str) -> None:
        """Answer where the message came from: the room, or privately."""
        if self.room is None:
            await self.client.pm(self.nick, text)
        else:
            await self.client.say(self.room, text)


@dataclass
class Presence:
    """Someone joined or left a room the bot is in."""

    client: Client
    nick: str
    room: str
    event: JoinEvent | LeaveEvent

    async def reply(self, text: str) -> None:
        await self.client.say(self.room, text)


@dataclass
class _Command:
    spec: CommandSpec
    handler: Callable[..., Any]


@dataclass
class Bot:
    """A bot: its nick, its rooms, and what it does.

    Args:
        nick: the nick it asks for.
        rooms: the rooms it joins.
        prefix: what starts a command in a message (``!roll``).
    """

    nick: str
    rooms: list[str] = field(default_factory=lambda: ["general"])
    prefix: str = "!"
    _commands: dict[str, _Command] = field(default_factory=dict, repr=False)
    _on_message: list[Callable[..., Any]] = field(default_factory=list, repr=False)
    _on_pm: list[Callable[..., Any]] = field(default_factory=list, repr=False)
    _on_join: list[Callable[..., Any]] = field(default_factory=list, repr=False)
    _on_leave: list[Callable[..., Any]] = field(default_factory=list, repr=False)
    errors: int = 0

    # ------------------------------------------------------- registration

    def command(self, name: str, *, usage: str = "", help: str = "") -> Callable[[F], F]:
        """Register ``handler(msg, args)`` for ``!name args``."""
        spec = CommandSpec(name=name, usage=usage or f"{self.prefix}{name}", help=help)

        def register(fn: F) -> F:
            self._commands[name] = _Command(spec, fn)
            return fn

        return register

    def on_message(self, fn: F) -> F:
        """``fn(msg)`` for every room message that is not a command."""
        self._on_message.append(fn)
        return fn

    def on_pm(self, fn: F) -> F:
        """``fn(msg)`` for every private message that is not a command."""
        self._on_pm.append(fn)
        return fn

    def on_join(self, fn: F) -> F:
        """``fn(presence)`` when someone else joins one of the bot's rooms."""
        self._on_join.append(fn)
        return fn

    def on_leave(self, fn: F) -> F:
        """``fn(presence)`` when someone leaves one of the bot's rooms."""
        self._on_leave.append(fn)
        return fn

    @property
    def commands(self) -> list[CommandSpec]:
        return [c.spec for c in self._commands.values()]

    # ------------------------------------------------------------ running

    def client(self, connect: str, **kwargs: Any) -> Client:
        """A client for this bot (nick and rooms filled in)."""
        return Client(connect, self.nick, rooms=self.rooms, client_name="zchat-bot/0.1", **kwargs)

    async def run(self, client: Client) -> None:
        """Serve on ``client`` (started here if it is not yet) until it closes."""
        if client.welcome is None:
            await client.start()
        await client.offer_commands(self.commands)
        async for item in client.items():
            await self.dispatch(client, item)

    async def dispatch(self, client: Client, item: Any) -> None:
        """Handle one item from :meth:`Client.items`."""
        if isinstance(item, MsgEvent):
            if item.from_ == client.nick:
                return
            msg = Message(client, item.from_, item.text, item.room, item)
            await self._message(msg, self._on_message)
        elif isinstance(item, PmPush):
            msg = Message(client, item.from_, item.text, None, item)
            await self._message(msg, self._on_pm)
        elif isinstance(item, JoinEvent) and item.nick != client.nick:
            await self._call_all(self._on_join, Presence(client, item.nick, item.room, item))
        elif isinstance(item, LeaveEvent) and item.nick != client.nick:
            await self._call_all(self._on_leave, Presence(client, item.nick, item.room, item))

    async def _message(self, msg: Message, handlers: list[Callable[..., Any]]) -> None:
        text = msg.text.strip()
        if text.startswith(self.prefix):
            name, _, args = text[len(self.prefix) :].partition(" ")
            if name == "help" and "help" not in self._commands:
                await self._call(msg, lambda m, a: self.help_text())
                return
            cmd = self._commands.get(name)
            if cmd is not None:
                await self._call(msg, cmd.handler, args.strip())
                return
        await self._call_all(handlers, msg)

    def help_text(self) -> str:
        if not self._commands:
            return f"{self.nick} has no commands"
        return "; ".join(
            f"{c.spec.usage}: {c.spec.help}" if c.spec.help else c.spec.usage
            for c in self._commands.values()
        )

    async def _call_all(self, handlers: list[Callable[..., Any]], ctx: Any) -> None:
        for handler in handlers:
            await self._call(ctx, handler)

    async def _call(self, ctx: Any, handler: Callable[..., Any], *args: Any) -> None:
        try:
            result = handler(ctx, *args)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, str) and result:
                await ctx.reply(result)
        except Exception:
            self.errors += 1
            log.exception("handler %s failed; going on", getattr(handler, "__name__", handler))


__all__ = ["Bot", "Message", "Presence"]
