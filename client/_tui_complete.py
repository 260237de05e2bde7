"""Tab completion for the terminal client: commands, nicks, rooms and the
commands bots offer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from ._render import COMMANDS

if TYPE_CHECKING:
    from ._tui import ChatUI

NICK_ARG = ("/pm", "/msg", "/who")
ROOM_ARG = ("/join", "/part", "/leave", "/who")


class ChatCompleter(Completer):
    def __init__(self, ui: ChatUI) -> None:
        self.ui = ui

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        word = document.get_word_before_cursor(WORD=True)
        first = text.split(" ", 1)[0]
        if text.startswith("/") and " " not in text:
            names = [c[0] for c in COMMANDS] + ["/leave", "/exit"]
            yield from _matches(word, names)
            return
        if word.startswith("!"):
            yield from _matches(word, sorted({f"!{c.name}" for c in self.ui.bot_commands}))
            return
        if first in ROOM_ARG and (word.startswith("#") or first != "/who"):
            rooms = [f"#{r}" for r in self.ui.client.rooms]
            yield from _matches(word if word.startswith("#") else "#" + word, rooms, len(word))
            if first != "/who":
                return
        at_start = text.count(" ") == 0
        suffix = ": " if at_start and not text.startswith("/") else ""
        nicks = sorted(self.ui.nicks() - {self.ui.client.nick}, key=str.lower)
        yield from _matches(word, [n + suffix for n in nicks])


def _matches(word: str, options: Iterable[str], replace: int | None = None) -> Iterable[Completion]:
    low = word.lower()
    for option in options:
        if option.lower().startswith(low):
            yield Completion(option, start_position=-(len(word) if replace is None else replace))
