"""``remind``: reminders that survive a restart.

``!remind 10m stretch`` (or ``90s``, ``2h``, ``1d``, ``1h30m``): in ten
minutes the bot says ``alicia: stretch`` where it was asked, in the room or
privately. ``!reminders`` lists yours; ``!forget ID`` drops one.

Reminders are kept in ``bot.state`` with the wall-clock time they are due,
so a bot stopped and started again (a deploy, a crash, a reboot) still
says each one, late ones as soon as it is back. Each is timed with
``bot.later``; ``on_start`` times again those the last run left.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from client import InvalidInput, RequestRefused
from client.bot import Bot, Message

log = logging.getLogger("zchat.bot.remind")

bot = Bot("remind")

MAX_DELAY_S = 30 * 24 * 3600
MAX_PER_NICK = 20
MAX_TEXT = 400  # with the nick and a note, well within any broker's limit
LIST_CHARS = 3_000  # an answer to !reminders, within the broker's 4,000
LATE_S = 60  # later than this, say when it was due
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d+[smhd])+")
_PART = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> int:
    """``10m``, ``1h30m``, ``90s``: how many seconds.

    Raises:
        ValueError: not a duration, or not between 1 s and 30 days.
    """
    if _DURATION.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a duration: write it like 90s, 10m, 2h, 1d or 1h30m")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    if not 1 <= seconds <= MAX_DELAY_S:
        raise ValueError("a reminder is for 1 second to 30 days from now")
    return seconds


def describe(seconds: float) -> str:
    """``3600`` as ``1h``, ``5400`` as ``1h30m``: a delay, shortly."""
    seconds = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def reminders() -> dict[str, dict[str, Any]]:
    """The reminders waiting, by id, as kept in the bot's state."""
    saved: dict[str, dict[str, Any]] = bot.state.setdefault("reminders", {})
    return saved


def schedule(rid: str) -> None:
    """Time reminder ``rid`` to be said when it is due (at once if overdue)."""
    bot.later(max(0.0, reminders()[rid]["due"] - time.time()), fire, rid)


async def fire(rid: str) -> None:
    r = reminders().get(rid)
    if r is None or bot.client is None:
        return  # forgotten meanwhile
    late = time.time() - r["due"]
    note = f" (due {describe(late)} ago, I was away)" if late > LATE_S else ""
    text = f"{r['nick']}: {r['text']}{note}"
    try:
        if r["room"] is None:
            await bot.client.pm(r["nick"], text)
        else:
            await bot.client.say(r["room"], text)
    except (RequestRefused, InvalidInput) as err:
        # Refused (the nick gone, the room left): done all the same, not
        # tried again at each start.
        log.info("reminder %s could not be said: %s", rid, err)
    # Not when the bot stopped first (cancelled, or its client closed while
    # the broker was away): then it is still due, said at the next start.
    reminders().pop(rid, None)


@bot.on_start
def _reschedule(_: Bot) -> None:
    for rid in reminders():
        schedule(rid)


@bot.command("remind", usage="!remind DURATION TEXT", help="e.g. !remind 10m stretch")
def _remind(msg: Message, args: str) -> str:
    when, _, what = args.partition(" ")
    if not when or not what.strip():
        return f"{msg.nick}: usage: !remind DURATION TEXT, e.g. !remind 10m stretch"
    try:
        delay = parse_duration(when.lower())
    except ValueError as err:
        return f"{msg.nick}: {err}"
    what = what.strip()
    if len(what) > MAX_TEXT:
        return f"{msg.nick}: sorry, I keep reminders of at most {MAX_TEXT} characters"
    mine = [r for r in reminders().values() if r["nick"].lower() == msg.nick.lower()]
    if len(mine) >= MAX_PER_NICK:
        return f"{msg.nick}: sorry, you have {MAX_PER_NICK} reminders waiting already"
    # Never reused: a timer of a forgotten reminder must not find a new one.
    rid = str(bot.state.get("next_id", 1))
    bot.state["next_id"] = int(rid) + 1
    reminders()[rid] = {
        "nick": msg.nick,
        "room": msg.room,
        "text": what,
        "due": time.time() + delay,
    }
    schedule(rid)
    return f"{msg.nick}: in {describe(delay)}, I will say: {what} (reminder {rid})"


@bot.command("reminders", usage="!reminders", help="the reminders you have waiting")
def _list(msg: Message, args: str) -> str:
    now = time.time()
    mine = [
        f"{rid}: in {describe(r['due'] - now)}, {r['text']}"
        for rid, r in sorted(reminders().items(), key=lambda kv: kv[1]["due"])
        if r["nick"].lower() == msg.nick.lower()
    ]
    if not mine:
        return f"{msg.nick}: no reminders waiting"
    # Twenty of 400 characters would pass the broker's limit on a message:
    # as many as fit, and how many more.
    shown: list[str] = []
    for n, line in enumerate(mine):
        if len("; ".join([*shown, line])) + 20 > LIST_CHARS:  # 20: "; and N more"
            return f"{msg.nick}: " + "; ".join(shown) + f"; and {len(mine) - n} more"
        shown.append(line)
    return f"{msg.nick}: " + "; ".join(shown)


@bot.command("forget", usage="!forget ID", help="drop one of your reminders")
def _forget(msg: Message, args: str) -> str:
    r = reminders().get(args.strip())
    if r is None or r["nick"].lower() != msg.nick.lower():
        return f"{msg.nick}: you have no reminder {args.strip() or '(give its ID)'}"
    del reminders()[args.strip()]
    return f"{msg.nick}: forgotten"
