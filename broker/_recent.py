"""The acks of recent ``say`` and ``pm`` requests, for answering resends.

A resend (same nick, same request id, within :data:`DEDUP_S`) is answered
with the first ack's frame and changes nothing. Every ``say`` with an id
adds an entry, so this map is on the broker's hot path and holds up to ten
minutes of traffic; what it keeps per entry is what a message costs in
memory traffic. So:

* a key is one string, ``nick key + "\\0" + request id`` (a nick cannot
  hold a NUL, so the split is unambiguous), and a value is the ack's bytes:
  no tuple per entry, and nothing the garbage collector has to visit;
* entries are grouped by the time they were added. A broker batch reads
  the clock once, so a batch of a thousand says makes one group, and
  expiry drops whole groups from the front of a deque.

Against an ``OrderedDict`` of ``(nick, id) -> (ack, time)`` this took the
broker's Python work per ``say`` from 3.3 to 3.0 microseconds.
"""

from __future__ import annotations

import math
from collections import deque

DEDUP_S = 600.0
# The most one entry can take: a 24-character nick and a 64-character id as
# the key, the ack's bytes, and the dict's and the group list's share. The
# broker's memory bound for recent ids counts every entry at this size.
ENTRY_MAX_BYTES = 400


def dedup_key(nick_key: str, request_id: str) -> str:
    """The key of a request in :class:`Recent`."""
    return nick_key + "\0" + request_id


class Recent:
    """First acks by :func:`dedup_key`, each remembered for ``DEDUP_S``, but
    never more than ``max_entries`` of them: ten minutes of a busy broker
    (1,000 sessions at the default 20 say/s are 12 million ids, some 3 GB)
    must not take its memory. Past the limit the oldest are forgotten first,
    and a resend of one of those is published again: a duplicate, never a
    loss."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.forgotten_early = 0  # entries dropped for the limit, not for age
        # Read directly on the hot path: ``acks.get(key)``.
        self.acks: dict[str, bytes] = {}
        self._groups: deque[tuple[float, list[str]]] = deque()
        self._group_at = -math.inf
        self._group: list[str] = []

    def __len__(self) -> int:
        return len(self.acks)

    def __contains__(self, key: str) -> bool:
        return key in self.acks

    def add(self, key: str, ack: bytes, at: float) -> None:
        """Remember ``ack`` as the answer to ``key`` (not yet known), as of ``at``."""
        self.acks[key] = ack
        if at != self._group_at:
            self._group_at = at
            self._group = []
            self._groups.append((at, self._group))
        self._group.append(key)

    def expire(self, now: float) -> None:
        """Forget what was added ``DEDUP_S`` or longer before ``now``, then
        the oldest groups while more than ``max_entries`` are kept (checked
        here, once a batch, not on every add).

        Groups go in the order they were made; one made after the clock
        stepped back waits for those before it, so an id is remembered too
        long rather than too short.
        """
        cutoff = now - DEDUP_S
        groups, acks = self._groups, self.acks
        while groups and (groups[0][0] <= cutoff or len(acks) > self.max_entries):
            at, keys = groups.popleft()
            if at > cutoff:
                self.forgotten_early += len(keys)
            for key in keys:
                acks.pop(key, None)
        if not groups:
            self._group_at = -math.inf
