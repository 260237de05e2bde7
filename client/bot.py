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

    @bot.every(3600)
    async def chime(bot):
        await bot.client.say("general", "another hour")

Run it with ``zchat bot greeter.py`` (the module's ``bot`` is run), or from
Python with ``await bot.run(bot.make_client("tcp://127.0.0.1:5555"))``.

Theory of operation. :meth:`Bot.run` loads :attr:`Bot.state` from its file
(and locks it, so that two runs of one bot cannot share it), starts the
client (offering the session token saved by the previous run, so that a
bot restarted at once takes its session back, and waiting for its nick
while someone else holds it), offers its commands to the broker (``/help``
in the terminal client lists them), calls the ``on_start`` handlers, starts
the timers, and then handles the client's items one at a time, in order.
Handlers and timer calls (``_handle``) and the bot's tasks (``spawn``, which
``later`` uses) log what they raise, count it in :attr:`Bot.errors`, and
save the state if it changed; a failure never stops the bot. When ``run`` ends (the client closed, or
the task cancelled, as ``zchat bot`` does on SIGINT, SIGTERM or SIGHUP),
the bot's timers and tasks are cancelled and the state is saved. Closing
the client, which says ``bye``, is the caller's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from messages import (
    DEFAULT_ROOM,
    CommandSpec,
    JoinEvent,
    LeaveEvent,
    MsgEvent,
    PmPush,
    ProtocolError,
    check_nick,
)

from ._client import Client, Reconnected
from ._errors import InvalidInput, ZchatError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("zchat.bot")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The broker's default session timeout (15 s), and a margin: a bot restarted
# without its token finds its nick free again within this time.
NICK_WAIT_S = 20.0
CLIENT_NAME = "zchat-bot/0.1"
STATE_VERSION = 1
# What the broker admits in an offer (messages.CommandSpec), checked when a
# command is registered rather than when the broker refuses the offer.
_COMMAND_RE = re.compile(r"[a-z0-9_\-]{1,32}")
USAGE_MAX = 100
HELP_MAX = 200


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)


# -------------------------------------------------------------- contexts


@dataclass
class Message:
    """A message to the bot, as its handlers get it.

    Attributes:
        client: the client the bot is running on (the same as ``bot.client``).
        nick: who sent it.
        text: what they wrote (for a command, all of it, ``!roll 2d6``).
        room: the room it was said in, without ``#``; None for a private
            message.
        event: the message as the broker sent it: a
            :class:`messages.MsgEvent` (with ``seq``, ``ts``, ``action``) or a
            :class:`messages.PmPush`.
    """

    client: Client
    nick: str
    text: str
    room: str | None
    event: MsgEvent | PmPush

    @property
    def private(self) -> bool:
        """True for a private message (``room`` is None)."""
        return self.room is None

    async def reply(self, text: str) -> None:
        """Answer where the message came from: in its room, or privately.

        Raises:
            InvalidInput: ``text`` is empty or over the broker's limit.
            RequestRefused: the broker refused it.
        """
        if self.room is None:
            await self.client.pm(self.nick, text)
        else:
            await self.client.say(self.room, text)

    # A bot that is an operator of the room (``/op BOT``), or a server
    # operator, moderates through these.

    def _room(self) -> str:
        if self.room is None:
            raise InvalidInput("bad_request", "a private message has no room to moderate")
        return self.room

    async def mute(self, *, duration_s: int | None = None, reason: str | None = None) -> None:
        """Mute the sender in the message's room.

        Raises:
            InvalidInput: a private message (no room).
            RequestRefused: ``forbidden`` when the bot is no operator there.
        """
        await self.client.mute(self._room(), self.nick, duration_s=duration_s, reason=reason)

    async def kick(self, reason: str | None = None) -> None:
        """Put the sender out of the message's room."""
        await self.client.kick(self._room(), self.nick, reason)

    async def ban(
        self, *, match: str = "nick", duration_s: int | None = None, reason: str | None = None
    ) -> None:
        """Ban the sender from the message's room: their ``nick``, ``key`` or
        ``addr``."""
        await self.client.ban(
            self._room(), nick=self.nick, match=match, duration_s=duration_s, reason=reason
        )


@dataclass
class Presence:
    """Someone other than the bot joined or left one of the bot's rooms.

    Attributes:
        client: the client the bot is running on.
        nick: who joined or left.
        room: the room, without ``#``.
        event: the :class:`messages.JoinEvent` or :class:`messages.LeaveEvent`;
            a leave's ``reason`` says which kind (``part``, ``quit``,
            ``timeout``, ``kick``) and its ``text`` what the leaver typed.
    """

    client: Client
    nick: str
    room: str
    event: JoinEvent | LeaveEvent

    @property
    def joined(self) -> bool:
        """True for a join, False for a leave."""
        return isinstance(self.event, JoinEvent)

    async def reply(self, text: str) -> None:
        """Say ``text`` in the room."""
        await self.client.say(self.room, text)


@dataclass
class _Command:
    spec: CommandSpec
    handler: Callable[..., Any]


# ----------------------------------------------------------------- state


def default_state_path(nick: str) -> Path:
    """Where a bot's state lives unless told otherwise:
    ``$XDG_DATA_HOME/zchat/bots/NICK.state.json`` (``~/.local/share`` when
    ``XDG_DATA_HOME`` is not set; nicks are case-insensitive, so the name is
    in lower case)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    # The XDG rule: a relative value is to be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "zchat" / "bots" / f"{nick.lower()}.state.json"


class BotState(MutableMapping[str, Any]):
    """A bot's small persistent key-value state: :attr:`Bot.state`.

    A dict whose keys are strings and whose values are JSON values (str,
    int, float, bool, None, and lists and dicts of them with str keys); a
    value that is not one is refused when it is set (``TypeError``). It is
    kept in a JSON file, loaded when the bot starts (empty until then) and
    saved:

    * after every handler, timer, ``later`` call and spawned task that
      changed it, by comparing its JSON, so that a change inside a value
      (``state["todo"].append(x)``) counts too;
    * when the bot stops;
    * at once by :meth:`save`.

    Each save writes a temporary file beside it (mode 0600) and renames it
    over the old one, so the file is always a whole version, never half of
    one. The file also keeps the bot's session token, a secret.
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._session: dict[str, str] = {}
        self._saved: bytes | None = None
        self._lock: IO[bytes] | None = None
        self.path: Path | None = None
        """The file it is kept in; None when it is not kept in one."""

    # -------------------------------------------------------- the mapping

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"bot.state keys are strings, not {type(key).__name__}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"bot.state[{key!r}] must be a JSON value: {err}") from None
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"BotState({self._data!r}, path={str(self.path) if self.path else None!r})"

    # ------------------------------------------------------------ the file

    def save(self) -> bool:
        """Write the state to its file now, if it changed since it was last
        read or written. Returns whether it wrote.

        Raises:
            TypeError: a value inside the state is not JSON.
            OSError: the file could not be written.
        """
        if self.path is None:
            return False
        body = self._encode()
        if body == self._saved:
            return False
        # mkstemp makes the file 0600: the token is a secret.
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._saved = body
        return True

    def _encode(self) -> bytes:
        doc = {"version": STATE_VERSION, "data": self._data, "session": self._session}
        # In insertion order, as a dict reads back: no sort_keys.
        text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
        return text.encode() + b"\n"

    def _open(self, path: Path) -> None:
        """Lock ``path`` for this run and load what it holds.

        Raises:
            ZchatError: another run holds the lock (``state_locked``).
            InvalidInput: the file is there but is not a bot's state
                (``bad_state``): it is left alone rather than overwritten.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock = self._take_lock(path)
        except OSError as err:
            # A read-only place (a container without a volume): the bot
            # still runs, and says once that its state will not last.
            log.warning(
                "cannot keep the bot's state in %s (%s): it lasts only while the bot runs",
                path,
                err.strerror or err,
            )
            self.path = None
            return
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as err:
            self._close()
            raise InvalidInput("bad_state", f"cannot read {path}: {err.strerror}") from None
        data: dict[str, Any] = {}
        session: dict[str, str] = {}
        if raw is not None:
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
                    raise ValueError("no 'data' object")
                data = doc["data"]
                got = doc.get("session")
                if isinstance(got, dict):
                    session = {k: v for k, v in got.items() if isinstance(v, str)}
            except ValueError as err:
                self._close()
                raise InvalidInput(
                    "bad_state", f"{path} is not a bot's state file ({err}); move it away"
                ) from None
        self._data, self._session, self.path = data, session, path
        self._saved = raw

    @staticmethod
    def _take_lock(path: Path) -> IO[bytes] | None:
        if fcntl is None:
            return None
        lock_path = path.with_name(path.name + ".lock")
        f = open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        try:
            # A lock the kernel drops when the process dies, however it dies:
            # a bot restarted after SIGKILL is not locked out.
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ZchatError(
                "state_locked",
                f"another run of this bot is using {path}; stop it, or give this one "
                "another state file",
            ) from None
        except BaseException:
            f.close()
            raise
        return f

    def _close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    # ------------------------------------------------------------ session

    def _token_for(self, nick: str) -> str | None:
        if self._session.get("nick", "").lower() == nick.lower():
            return self._session.get("token")
        return None

    def _keep_session(self, nick: str, token: str) -> None:
        self._session = {"nick": nick, "token": token}


# ------------------------------------------------------------------- bot


class Bot:
    """A bot: its nick, its rooms, and what it does.

    Args:
        nick: the nick it asks for.
        rooms: the rooms it joins (``["general"]`` when not given).
        prefix: what starts a command in a message (``!roll``).
        state_path: the file :attr:`state` is kept in. ``zchat bot FILE.py``
            uses ``FILE.state.json`` beside the bot's file; otherwise
            :func:`default_state_path` of the nick.
        nick_wait: at start, while the broker says the nick is taken, ask
            again every second for this many seconds before giving up
            (``nick_taken``).

    Attributes:
        client: the :class:`Client` that :meth:`run` is serving; None
            before it runs and after.
        state: the bot's persistent :class:`BotState`.
        errors: how many handlers, timers and tasks failed (each is logged).
    """

    def __init__(
        self,
        nick: str,
        *,
        rooms: Iterable[str] | None = None,
        prefix: str = "!",
        state_path: str | os.PathLike[str] | None = None,
        nick_wait: float = NICK_WAIT_S,
    ) -> None:
        if not prefix or prefix != prefix.strip():
            raise ValueError(f"a command prefix is one or more visible characters, not {prefix!r}")
        self.nick = nick
        self.rooms = list(rooms) if rooms is not None else [DEFAULT_ROOM]
        self.prefix = prefix
        self.state_path = state_path
        self.nick_wait = nick_wait
        # The broker's operator password, given once connected (see
        # Client.oper); ``zchat bot --oper-password-file`` sets it.
        self.oper_password: str | None = None
        self.client: Client | None = None
        self.state = BotState()
        self.errors = 0
        self._commands: dict[str, _Command] = {}
        self._on_message: list[Callable[..., Any]] = []
        self._on_pm: list[Callable[..., Any]] = []
        self._on_join: list[Callable[..., Any]] = []
        self._on_leave: list[Callable[..., Any]] = []
        self._on_start: list[Callable[..., Any]] = []
        self._timers: list[tuple[float, Callable[..., Any]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"Bot({self.nick!r}, rooms={self.rooms!r}, commands={list(self._commands)!r})"

    # ------------------------------------------------------- registration

    def command(self, name: str, *, usage: str = "", help: str = "") -> Callable[[F], F]:
        """Register ``handler(msg, args)`` for ``!name args``, in a room or
        privately; ``args`` is the rest of the text, stripped.

        Args:
            name: the command, lower case letters, digits, ``_`` and ``-``
                (at most 32); typed in any case.
            usage: how to call it, for ``!help`` and ``/help``
                (``!name`` when not given).
            help: what it does, in a few words.

        Raises:
            ValueError: the name, usage or help is not one the broker admits.
        """
        if _COMMAND_RE.fullmatch(name) is None:
            raise ValueError(
                f"command name {name!r}: use 1 to 32 of a-z, 0-9, '_' and '-' (no prefix)"
            )
        if len(usage) > USAGE_MAX or len(help) > HELP_MAX:
            raise ValueError(
                f"command {name!r}: usage is at most {USAGE_MAX} characters, help {HELP_MAX}"
            )
        spec = CommandSpec(name=name, usage=usage or f"{self.prefix}{name}", help=help)

        def register(fn: F) -> F:
            self._commands[name] = _Command(spec, fn)
            return fn

        return register

    def on_message(self, fn: F) -> F:
        """Call ``fn(msg)`` for every room message that is not a command
        (the bot's own are not handed to it)."""
        self._on_message.append(fn)
        return fn

    def on_pm(self, fn: F) -> F:
        """Call ``fn(msg)`` for every private message that is not a command."""
        self._on_pm.append(fn)
        return fn

    def on_join(self, fn: F) -> F:
        """Call ``fn(presence)`` when someone else joins one of the bot's rooms."""
        self._on_join.append(fn)
        return fn

    def on_leave(self, fn: F) -> F:
        """Call ``fn(presence)`` when someone else leaves one of the bot's rooms."""
        self._on_leave.append(fn)
        return fn

    def on_start(self, fn: F) -> F:
        """Call ``fn(bot)`` once the bot is connected, in its rooms and its
        state loaded, before any message is handled (once a run, not after
        each reconnection)."""
        self._on_start.append(fn)
        return fn

    def every(self, seconds: float) -> Callable[[F], F]:
        """Call ``fn(bot)`` every ``seconds`` while the bot runs, the first
        time ``seconds`` after it started.

        Calls do not overlap: a call that takes longer than the interval
        makes the timer skip the ticks it ran over. A call that raises is
        logged and counted, and the timer goes on.

        Raises:
            ValueError: ``seconds`` is not positive.
        """
        if not seconds > 0:
            raise ValueError(f"every({seconds!r}): the interval is a number of seconds above 0")

        def register(fn: F) -> F:
            self._timers.append((float(seconds), fn))
            return fn

        return register

    @property
    def commands(self) -> list[CommandSpec]:
        """The commands registered, as offered to the broker."""
        return [c.spec for c in self._commands.values()]

    # ------------------------------------------------------------ running

    def make_client(self, connect: str | Sequence[str], **kwargs: Any) -> Client:
        """A :class:`Client` for this bot, with its nick and rooms filled in.

        Args:
            connect: the broker's endpoint, ``tcp://HOST:PORT``, or several
                (a comma-separated string or a list): a cluster's nodes.
            **kwargs: more arguments for :class:`Client` (``curve=``, ...).
        """
        kwargs.setdefault("rooms", self.rooms)
        kwargs.setdefault("client_name", CLIENT_NAME)
        return Client(connect, self.nick, **kwargs)

    async def run(self, client: Client, *, timeout: float = 10.0) -> None:
        """Serve on ``client`` until it closes or this task is cancelled.

        Loads :attr:`state`; starts ``client`` if it is not yet (with the
        session token the last run saved, and waiting up to
        :attr:`nick_wait` for a nick that is taken); offers the commands;
        calls the ``on_start`` handlers; starts the timers; then handles
        every item. At the end it cancels the bot's timers and tasks and
        saves the state; closing ``client`` is left to the caller.

        Args:
            client: the client to serve, from :meth:`make_client` or made
                by hand.
            timeout: how long to wait for the broker's first answer when
                starting ``client``, in seconds (waiting for the nick comes
                on top).

        Raises:
            RuntimeError: the bot is already running.
            ZchatError: another run of this bot holds its state file
                (``state_locked``), or any error of :meth:`Client.start`.
            InvalidInput: the state file is not one (``bad_state``).
        """
        if self.client is not None:
            raise RuntimeError(f"bot {self.nick} is already running")
        try:
            check_nick(client.nick)  # before it names a file
        except ProtocolError as err:
            raise InvalidInput.of(err) from None
        path = Path(self.state_path) if self.state_path is not None else None
        self.state._open(path or default_state_path(client.nick))
        try:
            if client.welcome is None:
                if client.token is None:
                    client.token = self.state._token_for(client.nick)
                await client.start(timeout=timeout, nick_wait=self.nick_wait)
            self.client = client
            self._keep_session(client)
            if self.oper_password is not None:
                # A server operator: it moderates every room (given again by
                # the client after each reconnect).
                await client.oper(self.oper_password)
            log.info("%s is in %s", client.nick, ", ".join("#" + r for r in client.rooms))
            await client.offer_commands(self.commands)
            for fn in self._on_start:
                await self._handle(fn, self)
            for seconds, fn in self._timers:
                self.spawn(self._every(seconds, fn), name=f"every({seconds:g}) {_name(fn)}")
            async for item in client.items():
                if isinstance(item, Reconnected):
                    self._keep_session(client)  # a broker restart makes a new token
                await self.dispatch(client, item)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.client = None
            self._save_state()
            self.state._close()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of the bot: for work a handler starts and
        does not wait for.

        What it raises is logged and counted in :attr:`errors` (not lost as
        a task nobody awaited); the state is saved when it ends if it
        changed; it is cancelled when :meth:`run` ends. The task is
        returned, to cancel or await.

        Raises:
            RuntimeError: no event loop is running.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise RuntimeError(
                "bot.spawn needs a running event loop (call it from a handler)"
            ) from None
        task = loop.create_task(coro, name=name or _name(coro))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def later(
        self, delay: float, fn: Callable[..., Any] | Coroutine[Any, Any, Any], *args: Any
    ) -> asyncio.Task[Any]:
        """Call ``fn(*args)`` (a function or a coroutine function), or await
        the coroutine ``fn``, once, ``delay`` seconds from now, as a task of
        the bot (see :meth:`spawn`). Returns the task: cancel it to call
        the thing off.

        A delay does not outlive the bot's run: to remember something across
        a restart, keep it in :attr:`state` and schedule it again
        ``on_start``.

        Raises:
            TypeError: ``args`` given with a coroutine.
        """
        coro = fn if inspect.iscoroutine(fn) else None
        if coro is not None and args:
            coro.close()
            raise TypeError("later(delay, coro): a coroutine takes no args")

        async def fire() -> Any:
            await asyncio.sleep(max(0.0, delay))
            if coro is not None:
                return await coro
            result = fn(*args)  # type: ignore[operator]
            if inspect.isawaitable(result):
                result = await result
            return result

        task = self.spawn(fire(), name=f"later({delay:g}) {_name(fn)}")
        if coro is not None:
            # Called off before its time: the coroutine never ran, and
            # closing it says so (no "never awaited" warning).
            task.add_done_callback(lambda _: coro.close())
        return task

    async def dispatch(self, client: Client, item: Any) -> None:
        """Handle one item from :meth:`Client.items` (subclasses may add to it)."""
        if isinstance(item, MsgEvent):
            if item.from_ == client.nick:
                return
            msg = Message(client, item.from_, item.text, item.room, item)
            await self._message(msg, self._on_message)
        elif isinstance(item, PmPush):
            msg = Message(client, item.from_, item.text, None, item)
            await self._message(msg, self._on_pm)
        elif isinstance(item, JoinEvent) and item.nick != client.nick:
            presence = Presence(client, item.nick, item.room, item)
            for fn in self._on_join:
                await self._handle(fn, presence, reply=presence.reply)
        elif isinstance(item, LeaveEvent) and item.nick != client.nick:
            presence = Presence(client, item.nick, item.room, item)
            for fn in self._on_leave:
                await self._handle(fn, presence, reply=presence.reply)

    def help_text(self) -> str:
        """What ``!help`` answers: every command's usage and help."""
        if not self._commands:
            return f"{self.nick} has no commands"
        return "; ".join(
            f"{c.spec.usage}: {c.spec.help}" if c.spec.help else c.spec.usage
            for c in self._commands.values()
        )

    # ------------------------------------------------------------ private

    async def _message(self, msg: Message, handlers: list[Callable[..., Any]]) -> None:
        text = msg.text.strip()
        if text.startswith(self.prefix):
            name, _, args = text[len(self.prefix) :].partition(" ")
            name = name.lower()
            if name == "help" and "help" not in self._commands:
                await self._handle(lambda m: self.help_text(), msg, reply=msg.reply)
                return
            cmd = self._commands.get(name)
            if cmd is not None:
                await self._handle(cmd.handler, msg, args.strip(), reply=msg.reply)
                return
        for fn in handlers:
            await self._handle(fn, msg, reply=msg.reply)

    async def _handle(
        self,
        handler: Callable[..., Any],
        *args: Any,
        reply: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Call one handler: the state is saved if it changed; a str it
        returns is then sent with ``reply``; what it raises is logged and
        counted."""
        try:
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    result = await result
            finally:
                # Before the answer goes out: whoever reads "done" can count
                # on the change being on disk.
                self._save_state()
            if reply is not None and isinstance(result, str) and result:
                await reply(result)
        except Exception:
            self.errors += 1
            log.exception("handler %s failed; going on", _name(handler))

    async def _every(self, seconds: float, fn: Callable[..., Any]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._handle(fn, self)
            due += seconds
            now = loop.time()
            if due < now:  # it ran over: skip the ticks it missed, don't bunch them
                due += ((now - due) // seconds + 1) * seconds

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._save_state()
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self.errors += 1
            log.error("task %s failed", task.get_name(), exc_info=err)

    def _save_state(self) -> None:
        try:
            self.state.save()
        except Exception:
            self.errors += 1
            log.exception("cannot save the bot's state to %s", self.state.path)

    def _keep_session(self, client: Client) -> None:
        if client.token is not None:
            self.state._keep_session(client.nick, client.token)
            self._save_state()


__all__ = ["NICK_WAIT_S", "Bot", "BotState", "Message", "Presence", "default_state_path"]
