"""``dice``: rolls dice. ``!roll 2d6``, ``!roll d20+3``, ``!roll 4d6-1``."""

from __future__ import annotations

import random
import re

from client.bot import Bot, Message

bot = Bot("dice")

MAX_DICE = 100
MAX_SIDES = 1000
MAX_BONUS = 1000
_ROLL = re.compile(r"(\d*)d(\d+)(?:([+-])(\d+))?", re.IGNORECASE)
_rng = random.SystemRandom()


def roll(spec: str, rng: random.Random | random.SystemRandom = _rng) -> str:
    """The answer to ``!roll spec``: the rolls and the total.

    Raises:
        ValueError: why not, for people (``usage: ...``, ``sorry, ...``).
    """
    m = _ROLL.fullmatch(spec.strip() or "1d6")
    if m is None:
        raise ValueError("usage: !roll NdM[+K], e.g. !roll 2d6+1")
    count = int(m.group(1) or 1)
    sides = int(m.group(2))
    bonus = int(m.group(4) or 0) * (-1 if m.group(3) == "-" else 1)
    if not 1 <= count <= MAX_DICE:
        raise ValueError(f"sorry, I roll between 1 and {MAX_DICE} dice at a time")
    if not 2 <= sides <= MAX_SIDES:
        raise ValueError(f"sorry, dice have between 2 and {MAX_SIDES} sides here")
    if abs(bonus) > MAX_BONUS:
        raise ValueError(f"sorry, keep the modifier within ±{MAX_BONUS}")
    rolls = [rng.randint(1, sides) for _ in range(count)]
    total = sum(rolls) + bonus
    mod = f" {m.group(3)} {abs(bonus)}" if bonus else ""
    return f"{count}d{sides}: [{', '.join(map(str, rolls))}]{mod} = {total}"


def answer(nick: str, spec: str, rng: random.Random | random.SystemRandom = _rng) -> str:
    """What the bot says to ``nick``'s ``!roll spec``: ``alicia rolls 2d6:
    [3, 5] = 8``, or a refusal addressed to them (``alicia: sorry, ...``)."""
    try:
        return f"{nick} rolls {roll(spec, rng)}"
    except ValueError as err:
        return f"{nick}: {err}"


@bot.command("roll", usage="!roll NdM[+K]", help="roll N dice of M sides, plus K")
def _roll(msg: Message, args: str) -> str:
    return answer(msg.nick, args)
