"""Tab completion for the terminal client: commands and their arguments
(from the command table), nicks, ``#rooms`` anywhere in a line, and the
commands bots offer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from . import _commands

if TYPE_CHECKING:
    from ._tui import ChatUI


class ChatCompleter(Completer):
    def __init__(self, ui: ChatUI) -> None:
        self.ui = ui

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        word = document.get_word_before_cursor(WORD=True)
        if text.startswith("/") and " " not in text:
            names = [f"/{n}" for c in _commands.COMMANDS for n in (c.name, *c.aliases)]
            yield from _matches(word, names)
            return
        if word.startswith("!"):
            yield from _matches(word, sorted({f"!{c.name}" for c in self.ui.bot_commands}))
            return
        rooms = [f"#{r}" for r in self.ui.client.rooms]
        if word.startswith("#"):
            yield from _matches(word, rooms)  # a room, in a command or in a sentence
            return
        command = _commands.find(text[1:].split(" ", 1)[0]) if text.startswith("/") else None
        first_arg = text.count(" ") == 1
        if command is not None and command.completes == "room" and first_arg:
            yield from _matches("#" + word, rooms, len(word))
            return
        if command is not None and command.completes == "mode":
            flags = [f"{sign}{f}" for f in _commands.MODE_WORDS for sign in "+-"]
            yield from _matches(word, flags)
            return
        at_start = " " not in text
        suffix = ": " if at_start and not text.startswith("/") else ""
        nicks = sorted(self.ui.nicks() - {self.ui.client.nick}, key=str.lower)
        yield from _matches(word, [n + suffix for n in nicks])


def _matches(word: str, options: Iterable[str], replace: int | None = None) -> Iterable[Completion]:
    low = word.lower()
    for option in options:
        if option.lower().startswith(low):
            yield Completion(option, start_position=-(len(word) if replace is None else replace))
