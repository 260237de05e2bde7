"""Which CURVE key a nick belongs to.

With CURVE on, a nick belongs to the first public key that used it: a
session asking for it with another key gets ``unauthorized``. A claim is
kept in the store, so it outlives restarts, and covers the nick's skeleton
(:func:`messages.nick_skeleton`), so ``aIice`` is as much alice's as
``alice``.

Without an allow-list anyone can make keys, so claims are bounded: a key
claims at most ``nicks_per_key`` nicks and the broker holds at most
``max_claims`` (past either, sessions use nicks without claiming them), and
a claim lapses when its nick has not been used for ``nick_claim_days``. An operator releases one with ``zchat-broker nick
release NICK``, which deletes the stored claim; the broker reads the store
again before refusing anyone, so the release takes effect at once. With an
allow-list every key is trusted: claims are unbounded and never lapse.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from messages import nick_skeleton

DAY_S = 86_400.0
# A claim's time of last use is written at most this often, not on every hello.
TOUCH_S = 3_600.0
# At the cap, lapsed claims are looked for at most this often (a full scan).
SWEEP_S = 60.0


class ClaimStore(Protocol):
    def nick_claims(self) -> dict[str, tuple[str, float]]: ...
    def nick_claim(self, nick: str) -> tuple[str, float] | None: ...
    def set_nick_claim(self, nick: str, key: str, used: float) -> None: ...
    def drop_nick_claim(self, nick: str) -> None: ...


class Claims:
    """Nick claims by key: in memory, written through to the store."""

    def __init__(
        self,
        store: ClaimStore,
        *,
        per_key: int,
        lapse_days: float,
        bounded: bool,
        max_claims: int = 0,
        shared: bool = False,
    ) -> None:
        self.store = store
        # Other brokers (nodes of a cluster) claim nicks in the same store:
        # a nick not claimed here is looked up there before it is given.
        self.shared = shared
        self.per_key = per_key if bounded else 0
        self.lapse_s = lapse_days * DAY_S if bounded else 0.0
        self.max_claims = max_claims if bounded else 0
        self._next_sweep = 0.0
        self.owners: dict[str, tuple[str, float]] = store.nick_claims()
        self.by_skeleton: dict[str, str] = {nick_skeleton(n): n for n in self.owners}
        self.count: Counter[str] = Counter(key for key, _ in self.owners.values())

    def __len__(self) -> int:
        return len(self.owners)

    def owner(self, nick_key: str, now: float) -> str | None:
        """The key the nick (or a nick that looks like it) belongs to, if any."""
        if self.shared and nick_key not in self.owners:
            found = self.store.nick_claim(nick_key)
            if found is not None and nick_skeleton(nick_key) not in self.by_skeleton:
                self.owners[nick_key] = found
                self.by_skeleton[nick_skeleton(nick_key)] = nick_key
                self.count[found[0]] += 1
        claimed = self.by_skeleton.get(nick_skeleton(nick_key))
        if claimed is None:
            return None
        key, used = self.owners[claimed]
        if self.lapse_s and now - used > self.lapse_s:
            self._drop(claimed)
            return None
        return key

    def check(self, nick_key: str, key: str | None, now: float) -> bool:
        """Whether ``key`` may use the nick; the store is read again before
        saying no, in case an operator released the claim meanwhile."""
        owner = self.owner(nick_key, now)
        if owner is None or owner == key:
            return True
        claimed = self.by_skeleton[nick_skeleton(nick_key)]
        if self.store.nick_claim(claimed) is None:
            self._drop(claimed, stored=False)
            return True
        return False

    def use(self, nick_key: str, key: str | None, now: float) -> None:
        """``key`` uses the nick (already checked): claim it, or note the use."""
        if key is None:
            return
        claimed = self.by_skeleton.get(nick_skeleton(nick_key))
        if claimed is not None:
            owner, used = self.owners[claimed]
            if owner == key and now - used >= TOUCH_S:
                self.owners[claimed] = (key, now)
                self.store.set_nick_claim(claimed, key, now)
            return
        if self.per_key and self.count[key] >= self.per_key:
            return  # this key has claimed its share: the nick stays unclaimed
        if self.max_claims and len(self.owners) >= self.max_claims:
            self._sweep(now)
            if len(self.owners) >= self.max_claims:
                return  # the broker holds all it may: unclaimed too
        self.owners[nick_key] = (key, now)
        self.by_skeleton[nick_skeleton(nick_key)] = nick_key
        self.count[key] += 1
        self.store.set_nick_claim(nick_key, key, now)

    def release(self, nick_key: str) -> None:
        """Forget the claim of ``nick_key`` (as claimed): a server operator's
        ``release``."""
        if nick_key in self.owners:
            self._drop(nick_key)

    def _sweep(self, now: float) -> None:
        """Drop the claims that lapsed (they are otherwise dropped only when
        their nick is next asked for)."""
        if not self.lapse_s or now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        for nick in [n for n, (_, used) in self.owners.items() if now - used > self.lapse_s]:
            self._drop(nick)

    def _drop(self, nick_key: str, *, stored: bool = True) -> None:
        key, _ = self.owners.pop(nick_key)
        self.by_skeleton.pop(nick_skeleton(nick_key), None)
        self.count[key] -= 1
        if not self.count[key]:
            del self.count[key]  # keys come and go: keep none at zero
        if stored:
            self.store.drop_nick_claim(nick_key)
