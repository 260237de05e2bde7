"""``antiflood``: mutes whoever says more than N lines in M seconds.

Give it operator rights in a room (``/op antiflood`` there, by the room's
owner or an operator) and it mutes, for ``ZCHAT_FLOOD_MUTE`` seconds (60),
anyone who says more than ``ZCHAT_FLOOD_LINES`` lines (5) within
``ZCHAT_FLOOD_SECONDS`` (10). Lines are counted by the broker's time of
each, so events repaired after a reconnect count when they were said, not
when they arrived. Whom it may not mute (the broker says ``forbidden``:
it is no operator there, or they rank as high) it logs, and the first
time in a room it says there what it needs.

``!flood`` tells the limits in force.
"""

from __future__ import annotations

import logging
import os
from collections import deque

from client import RequestRefused
from client.bot import Bot, Message
from messages import parse_ts

log = logging.getLogger("zchat.bot.antiflood")

bot = Bot("antiflood")


def _setting(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


LINES = _setting("ZCHAT_FLOOD_LINES", 5)
SECONDS = _setting("ZCHAT_FLOOD_SECONDS", 10)
MUTE_S = _setting("ZCHAT_FLOOD_MUTE", 60)
# People followed at once: the oldest are dropped past it (a bot's memory
# is bounded like the broker's).
FOLLOWED_MAX = 10_000

_said: dict[tuple[str, str], deque[float]] = {}
_told: set[str] = set()  # rooms told the bot needs operator rights


@bot.on_message
async def _count(msg: Message) -> None:
    assert msg.room is not None
    at = parse_ts(msg.event.ts).timestamp()
    key = (msg.room, msg.nick.lower())
    times = _said.pop(key, None) or deque(maxlen=LINES + 1)
    _said[key] = times  # (re-inserted: the dict is in order of last line)
    times.append(at)
    while len(_said) > FOLLOWED_MAX:
        del _said[next(iter(_said))]
    if len(times) > LINES and times[-1] - times[0] <= SECONDS:
        times.clear()
        reason = f"flood: more than {LINES} lines in {SECONDS} s"
        try:
            await msg.mute(duration_s=MUTE_S, reason=reason)
        except RequestRefused as err:
            log.warning("cannot mute %s in #%s: %s", msg.nick, msg.room, err.message)
            if err.code == "forbidden" and msg.room not in _told:
                # Once a room: whoever owns it learns what the bot needs.
                _told.add(msg.room)
                await msg.reply(
                    f"I cannot mute floods in #{msg.room} without operator rights: "
                    f"/op {msg.client.nick}"
                )


@bot.command("flood", usage="!flood", help="the flood limits in force")
def _limits(msg: Message, args: str) -> str:
    return f"more than {LINES} lines in {SECONDS} s: muted for {MUTE_S} s"
