"""A node of a cluster: sessions, members and events shared through Redis.

Theory of operation. Each node keeps its own ROUTER and PUB for its own
clients, and :class:`Cluster` keeps what the nodes share:

* Sessions. A session is a hash ``zchat:{s}:<nick key>`` (nick, node, a
  hash of its token, its CURVE key, its rooms) created only if absent, so a
  nick is unique across the cluster. Its node renews its lease (a deadline
  in the sorted set ``zchat:{s}:leases``) every second; a client that moves
  to another node hands its token over (:meth:`Cluster.take`) and keeps its
  rooms, with no leave or join, and the old node is told to forget it.
  When a node dies its sessions' leases run out, and a reaper (any node,
  once a second, each session under the atomic removal of its lease) ends
  each with one ``timeout`` leave per room.
* Members. ``zchat:{room}:members`` maps the nick keys of a room's members,
  on every node, to their nicks, for ``joined``, ``who`` and ``rooms``.
* Events. Every node subscribes to ``zchat:events`` (see ``_redis.py``) and
  republishes, on its PUB, the events of the rooms it has members in, in seq
  order; a jump in seq is filled from the room's stream first. The channel
  is probed when quiet (a pub/sub connection can hang after a failover and
  deliver nothing while looking healthy): when the probe does not come back,
  the node connects again and fills every room from its stream.
* Private messages to a session on another node go on that node's channel.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import redis

from messages import NOTICE_TOPIC, Ack, Joined, decode_reply, encode

from ._backend import SessionRecord
from ._config import wildcard_host
from ._redis import EVENTS_CHANNEL, PREFIX, REDIS_ERRORS, RedisBackend, room_key

if TYPE_CHECKING:
    from ._core import Core, Outbox

log = logging.getLogger("zchat.broker")

LEASES = PREFIX + "{s}:leases"
# When each session was last active (what who reports as idle), by record
# key: kept apart from the records, so that renewing never makes one.
ACTIVE = PREFIX + "{s}:active"
ROOMS = PREFIX + "{s}:rooms"
NODES = PREFIX + "{s}:nodes"
TICK_S = 1.0
PROBE_QUIET_S = 2.0
PROBE_WAIT_S = 3.0
REAP_BATCH = 100
_LOST: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)
STORE_CHECK_S = 2.0

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'nick', ARGV[1], 'node', ARGV[2], 'tok', ARGV[3],
           'pk', ARGV[4], 'quiet', ARGV[5], 'addr', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[6], KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[7], KEYS[1])
return 1
"""

_TAKE = """
local rec = redis.call('HMGET', KEYS[1], 'tok', 'pk', 'node')
if not rec[1] then return 0 end
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[3], 'addr', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
if rec[3] ~= ARGV[3] then
  redis.call('PUBLISH', ARGV[5] .. rec[3], 'moved ' .. KEYS[1])
end
return redis.call('HGETALL', KEYS[1])
"""

_END = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  redis.call('ZREM', KEYS[3], KEYS[1])
  return 1
end
return 0
"""

# Takes a lapsed session for this node's reaping, at once: its record is
# gone before the reaping node's batch publishes its leaves, so no other
# node reaps it again and no token takes it back meanwhile (Cluster._reap_due
# also takes it out of its rooms' member lists at once).
_REAP = """
local score = redis.call('ZSCORE', KEYS[1], KEYS[2])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], KEYS[2])
local rec = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
return rec
"""

_RENAME = """
if KEYS[1] ~= KEYS[2] then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  local all = redis.call('HGETALL', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], KEYS[1])
  redis.call('ZREM', KEYS[4], KEYS[1])
  if #all > 0 then redis.call('HSET', KEYS[2], unpack(all)) end
  redis.call('ZADD', KEYS[3], ARGV[3], KEYS[2])
  redis.call('ZADD', KEYS[4], ARGV[4], KEYS[2])
end
redis.call('HSET', KEYS[2], 'nick', ARGV[1], 'node', ARGV[2])
-- The rooms as the node knows them: a join of the same batch is written
-- only at its commit, after this.
for i = 5, #ARGV do redis.call('HSET', KEYS[2], 'r:' .. ARGV[i], '1') end
return 1
"""

# A session's room, written or removed only while the session exists: an
# update queued before the session was renamed or reaped must not make a
# record of nothing again (it would hold its nick for good).
_ROOM_FIELD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], '1')
else
  redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
end
return 1
"""


# Marks a server operator's record, only while it exists (as _ROOM_FIELD).
_OPER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'oper', '1')
return 1
"""


_HOLD = """
-- Once: a commit tried again after Redis did it already finds the mark.
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', 600) then return 0 end
redis.call('XADD', KEYS[1], '*', 'f', ARGV[1])
redis.call('INCRBY', KEYS[2], string.len(ARGV[1]))
local node = redis.call('HGET', KEYS[3], 'node')
if node then redis.call('PUBLISH', ARGV[2] .. node, ARGV[3]) end
return 1
"""

_TAKE_PMS = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('DEL', KEYS[1], KEYS[2])
local frames = {}
for i, e in ipairs(entries) do frames[i] = e[2][2] end
return frames
"""

# Sessions read at a time when every session is looked at (a server ban).
SESSIONS_PAGE = 1000
# Events read from a room's stream at a time, to fill a gap.
FILL_PAGE = 1000

# A server notice on the events channel, for every node to publish: the
# events are JSON objects, so this can be told from them by its first byte.
NOTICE_PREFIX = b"notice "


def _held_stream(key: str) -> str:
    return f"{PREFIX}{{s}}:pm:{key}"


def _held_bytes(key: str) -> str:
    return f"{PREFIX}{{s}}:pmb:{key}"


def session_key(key: str) -> str:
    return f"{PREFIX}{{s}}:u:{key}"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _RoomSeq(msgspec.Struct):
    room: str
    seq: int


_room_seq = msgspec.json.Decoder(_RoomSeq)


def _record(fields: dict[bytes, bytes]) -> SessionRecord:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return SessionRecord(
        nick=text.get("nick", ""),
        node=text.get("node", ""),
        token_hash=text.get("tok", ""),
        peer_key=text.get("pk", ""),
        quiet=text.get("quiet") == "1",
        rooms=[k[2:] for k in text if k.startswith("r:")],
        oper=text.get("oper") == "1",
        addr=text.get("addr", ""),
    )


class Cluster:
    """The :class:`~._backend.Directory` of a node, its relay of events and
    its upkeep (leases, reaping, probing)."""

    def __init__(self, backend: RedisBackend, *, node: str, endpoint: str, timeout_s: float):
        self.backend = backend
        self.r: Any = backend.r
        self.node = node
        self.endpoint = endpoint
        # A session of a node that died is reaped this long after its last
        # renewal: its client notices the silence only after the timeout, then
        # needs a moment to find another node, and must find its session
        # there (a leave and a new join would tell the room it left).
        self.lease_s = 2 * timeout_s
        self.node_channel = f"{PREFIX}node:{node}".encode()
        self._create = self.r.register_script(_CREATE)
        self._take = self.r.register_script(_TAKE)
        self._end = self.r.register_script(_END)
        self._reap = self.r.register_script(_REAP)
        self._rename = self.r.register_script(_RENAME)
        self._hold = self.r.register_script(_HOLD)
        self._room_field = self.r.register_script(_ROOM_FIELD)
        self._oper = self.r.register_script(_OPER)
        self._held_serial = 0
        self._take_pms = self.r.register_script(_TAKE_PMS)
        self._next_tick = 0.0
        self._next_store_check = 0.0
        # Set when Redis no longer holds this cluster's state: the shell
        # starts over (see Server._start_over).
        self.store_lost = False
        self._probe_sent: float | None = None
        self._probes = 0
        self._heard = time.monotonic()
        self._verify = False  # (see _verify_sessions)
        self.nodes: list[str] = []
        self._renew(time.time(), None)  # listed before the first welcome
        self.reconnects = 0
        self.repaired = 0
        self.ps: Any = None
        self._subscribe()

    # ---------------------------------------------------------- pub/sub

    def _subscribe(self) -> None:
        if self.ps is not None:
            try:
                self.ps.close()
            except redis.RedisError:
                pass
        self.ps = self.r.pubsub()
        self.ps.subscribe(EVENTS_CHANNEL, self.node_channel)
        # Confirmed before anything is written: an event published before
        # the subscription took would reach this node only by repair.
        confirmed = 0
        deadline = time.monotonic() + 5.0
        while confirmed < 2 and time.monotonic() < deadline:
            msg = self.ps.get_message(timeout=0.5)
            if msg is not None and msg["type"] == "subscribe":
                confirmed += 1
        if confirmed < 2:
            raise redis.ConnectionError("the subscription to zchat:events was not confirmed")
        self._heard = time.monotonic()
        self._probe_sent = None

    def fileno(self) -> int:
        """The subscription's socket, to poll; -1 while there is none."""
        conn = getattr(self.ps, "connection", None)
        sock = getattr(conn, "_sock", None)
        return -1 if sock is None else int(sock.fileno())

    def pump(self, core: Core, out: Outbox, publish: Callable[[bytes, bytes], None]) -> None:
        """Take what arrived on the node's channels: events to republish,
        private messages to deliver, sessions taken by another node."""
        try:
            while True:
                msg = self.ps.get_message(timeout=0)
                if msg is None:
                    return
                self._heard = time.monotonic()
                if msg["type"] != "message":
                    continue
                data: bytes = msg["data"]
                if msg["channel"] == EVENTS_CHANNEL:
                    if data.startswith(b"{"):
                        self._relay(core, data.split(b"\n"), publish)
                    elif data.startswith(NOTICE_PREFIX):
                        publish(NOTICE_TOPIC, data[len(NOTICE_PREFIX) :])
                elif data.startswith(b"pm "):
                    s = core.nicks.get(data[3:].decode())
                    if s is not None:
                        out.pushes.extend((s.ident, f) for f in self.take_held(s.key))
                elif data.startswith(b"out "):
                    room, _, key = data[4:].decode().partition(" ")
                    core.put_out_here(room, key)
                elif data.startswith(b"moved "):
                    core.moved_away(data[6:].decode().rpartition(":u:")[2], time.time())
                elif data.startswith(b"probe "):
                    self._probe_sent = None
        except (redis.ConnectionError, redis.TimeoutError, OSError, AttributeError) as err:
            # (AttributeError: redis-py's PubSub after its connection was dropped.)
            self._reconnect(core, publish, str(err) or type(err).__name__)
        except REDIS_ERRORS as err:
            # A refusal while filling a gap or taking held messages: a later
            # event or the next probe tries again; the loop goes on.
            log.warning("the Redis subscription's work failed: %s", err)

    def _relay(
        self, core: Core, bodies: list[bytes], publish: Callable[[bytes, bytes], None]
    ) -> None:
        """One script's new events of one room, numbered one after another:
        only the first is read (decoding each cost the relay a third of
        its time)."""
        head = _room_seq.decode(bodies[0])
        room = core.rooms.get(head.room)
        if room is None:
            return  # nobody here is in it
        name = head.room
        seq = head.seq
        if seq + len(bodies) - 1 <= room.published:
            return  # it went out already
        if seq > room.published + 1:
            self._fill(core, room, seq - 1, publish)
        topic = room.pub_topic
        relayed = core.relayed
        rooms = core.rooms
        for body in bodies:
            if seq > room.published:
                if rooms.get(name) is not room:
                    return  # (put out of memory by what came before: nobody is in it now)
                publish(topic, body)
                room.published = seq
                if seq > room.seq:
                    room.seq = seq
                relayed(name, body)
            seq += 1

    def _fill(
        self, core: Core, room: Any, upto: int | None, publish: Callable[[bytes, bytes], None]
    ) -> None:
        # A page at a time: after a long loss of the subscription the gap
        # may hold more than the node should read into memory at once.
        while True:
            page = self.backend.log_range(room.name, room.published, upto, count=FILL_PAGE)
            for seq, body in page:
                publish(room.pub_topic, body)
                room.published = seq
                self.repaired += 1
                if seq > room.seq:
                    room.seq = seq
                core.relayed(room.name, body)
            if len(page) < FILL_PAGE:
                return

    def _reconnect(self, core: Core, publish: Callable[[bytes, bytes], None], why: str) -> None:
        log.warning("the Redis subscription was lost (%s); connecting again", why)
        self.reconnects += 1
        # What came on the node's channel meanwhile ("moved", "pm") is gone:
        # the next tick asks Redis instead.
        self._verify = True
        try:
            self._subscribe()
            for room in list(core.rooms.values()):
                self._fill(core, room, None, publish)
        except _LOST as err:
            log.error("cannot subscribe to Redis again: %s (retrying)", err)
            self._probe_sent = time.monotonic()  # try again at the next tick

    # ------------------------------------------------------------ upkeep

    def tick(
        self, now: float, core: Core, out: Outbox, publish: Callable[[bytes, bytes], None]
    ) -> None:
        """Once a second: renew the leases of this node's sessions, reap
        those of dead nodes, keep the list of nodes, probe the channel."""
        mono = time.monotonic()
        if mono < self._next_tick:
            return
        self._next_tick = mono + TICK_S
        try:
            if self._probe_sent is not None and mono - self._probe_sent > PROBE_WAIT_S:
                self._reconnect(core, publish, "a probe did not come back")
            elif self._probe_sent is None and mono - self._heard > PROBE_QUIET_S:
                self._probes += 1
                self._probe_sent = mono
                self.r.publish(self.node_channel, b"probe %d" % self._probes)
            if mono >= self._next_store_check:
                self._next_store_check = mono + STORE_CHECK_S
                if self.backend.store_lost():
                    self.store_lost = True
                    return
            self._renew(now, core)
            if self._verify:
                self._verify_sessions(now, core, out)
            self._reap_due(now, core, out)
        except REDIS_ERRORS as err:
            log.warning("cluster upkeep failed: %s", err)

    def _verify_sessions(self, now: float, core: Core, out: Outbox) -> None:
        """After the subscription was lost: a session taken by another node
        meanwhile is forgotten here (its "moved" never came: left to time
        out, it would publish leaves for a client alive elsewhere), one put
        out of a room by another node leaves it here (its "out" never came:
        a quiet one has no leave to see), and private messages held for this
        node's sessions are delivered (their "pm" never came)."""
        if self.backend.ops or self.backend.failed:
            return  # writes of this node wait: records may not show them yet
        mine = list(core.sessions.values())
        pipe = self.r.pipeline(transaction=False)
        for s in mine:
            pipe.hgetall(session_key(s.key))
            pipe.get(_held_bytes(s.key))
        answers = pipe.execute()
        for s, fields, held in zip(mine, answers[::2], answers[1::2], strict=True):
            rec = _record(fields) if fields else None
            if rec is not None and rec.node != self.node:
                log.warning("%s moved to another node while the subscription was lost", s.nick)
                core.moved_away(s.key, now)
                continue
            if rec is not None:
                for room in [r for r in s.rooms if r not in rec.rooms]:
                    core.put_out_here(room, s.key)
            if held:
                out.pushes.extend((s.ident, f) for f in self.take_held(s.key))
        self._verify = False

    def _renew(self, now: float, core: Core | None) -> None:
        pipe = self.r.pipeline(transaction=False)
        deadline = now + self.lease_s
        pipe.hset(NODES, self.node, f"{self.endpoint} {now + 3 * TICK_S + 2}")
        mine = list(core.sessions.values()) if core is not None else []
        for s in mine:
            k = session_key(s.key)
            pipe.zadd(LEASES, {k: deadline}, xx=True, ch=True)
            pipe.zadd(ACTIVE, {k: s.last_active}, xx=True)
        pipe.hgetall(NODES)
        answers = pipe.execute()
        found = answers[-1]
        # CH counts leases changed, not leases there: one written with this
        # very deadline (a session made in this loop turn) counts 0 too. Those
        # are asked about again; only a lease that is gone means ended.
        unchanged = [s for s, renewed in zip(mine, answers[1:-1:2], strict=True) if not renewed]
        if unchanged and core is not None:
            pipe = self.r.pipeline(transaction=False)
            for s in unchanged:
                pipe.zscore(LEASES, session_key(s.key))
            for s, score in zip(unchanged, pipe.execute(), strict=True):
                if score is None:
                    # Its lease ran out while this node stalled, and another
                    # node ended it (its leaves are out): forgotten here too;
                    # its client's next request starts it again.
                    log.warning("%s was ended by another node while this one stalled", s.nick)
                    core.moved_away(s.key, now)
        nodes = []
        for node, value in found.items():
            endpoint, _, until = value.decode().rpartition(" ")
            if float(until) >= now:
                if not wildcard_host(endpoint):  # (not one a client can reach)
                    nodes.append(endpoint)
            elif node.decode() != self.node:
                self.r.hdel(NODES, node)
        self.nodes = sorted(nodes)

    def _reap_due(self, now: float, core: Core, out: Outbox) -> None:
        for k in self.r.zrangebyscore(LEASES, "-inf", now, start=0, num=REAP_BATCH):
            fields = self._reap(keys=[LEASES, k, ACTIVE], args=[now])
            if not fields:
                continue  # renewed meanwhile, or another node reaped it
            pairs = dict(zip(fields[::2], fields[1::2], strict=True))
            rec = _record(pairs)
            key = k.decode().rpartition(":u:")[2]
            mine = core.nicks.get(key)
            if mine is not None and rec.node == self.node:
                # Ours and alive: this node stalled past the lease. Written
                # again, rather than ended under a client still chatting.
                log.warning("%s's lease ran out while this node stalled; renewed", rec.nick)
                if self.create(key, mine.nick, mine.token, mine.peer_key, mine.quiet, now):
                    for room in mine.rooms:
                        self.joined(room, key, mine.nick, mine.quiet)
                else:
                    core.moved_away(key, now)  # taken meanwhile: it is the other's now
                continue
            log.info("%s timed out on node %s, which is gone", rec.nick, rec.node)
            if rec.rooms:
                # Out of its rooms' member lists now, not with the batch: a
                # node dying before its commit loses the leaves (members see
                # none), never the lists (who, rooms, joins stay right).
                pipe = self.r.pipeline(transaction=False)
                for room in rec.rooms:
                    pipe.hdel(room_key(room, "members"), key)
                pipe.execute()
            core.reaped(key, rec, now, out)
            self.backend.ops.append(("delete", _held_stream(key), _held_bytes(key)))

    # --------------------------------------------------------- directory

    def find(self, key: str) -> SessionRecord | None:
        fields = self.r.hgetall(session_key(key))
        return _record(fields) if fields else None

    def sessions(self) -> Iterator[tuple[str, SessionRecord]]:
        # ZSCAN, not pages by rank: leases are renewed (their order changes)
        # every second, and a rank page would skip some and repeat others.
        # A scan returns each session there all along at least once; the
        # repeats it may give are dropped.
        seen: set[str] = set()
        batch: list[str] = []
        for member, _score in self.r.zscan_iter(LEASES, count=SESSIONS_PAGE):
            key = member.decode().rpartition(":u:")[2]
            if key not in seen:
                seen.add(key)
                batch.append(key)
            if len(batch) >= SESSIONS_PAGE:
                yield from self._found(batch)
                batch = []
        yield from self._found(batch)

    def _found(self, keys: list[str]) -> Iterator[tuple[str, SessionRecord]]:
        for key, rec in zip(keys, self.records(keys), strict=True):
            if rec is not None:
                yield key, rec

    def records(self, keys: list[str]) -> list[SessionRecord | None]:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(session_key(key))
        return [_record(f) if f else None for f in pipe.execute()] if keys else []

    def create(
        self,
        key: str,
        nick: str,
        token: str,
        peer_key: str | None,
        quiet: bool,
        now: float,
        addr: str = "",
    ) -> bool:
        args: list[Any] = [nick, self.node, _hash(token), peer_key or "", "1" if quiet else "0"]
        args += [now + self.lease_s, now, addr]
        return bool(self._create(keys=[session_key(key), LEASES, ACTIVE], args=args))

    def take(
        self, key: str, token: str, peer_key: str | None, now: float, addr: str = ""
    ) -> SessionRecord | None:
        fields = self._take(
            keys=[session_key(key), LEASES],
            args=[
                _hash(token),
                peer_key or "",
                self.node,
                now + self.lease_s,
                PREFIX + "node:",
                addr,
            ],
        )
        if not fields:
            return None
        return _record(dict(zip(fields[::2], fields[1::2], strict=True)))

    def rename(self, old: str, new: str, nick: str, rooms: list[str], quiet: bool) -> bool:
        now = time.time()
        ok = bool(
            self._rename(
                keys=[session_key(old), session_key(new), LEASES, ACTIVE],
                args=[nick, self.node, now + self.lease_s, now, *rooms],
            )
        )
        if ok:
            for room in rooms:
                if old != new:
                    self.backend.ops.append(("hdel", room_key(room, "members"), old))
                self.backend.ops.append(
                    ("hset", room_key(room, "members"), new, ("1" if quiet else "0") + nick)
                )
        return ok

    def joined(self, room: str, key: str, nick: str, quiet: bool) -> None:
        ops = self.backend.ops
        ops.append(("hset", room_key(room, "members"), key, ("1" if quiet else "0") + nick))
        ops.append((self._run_room_field, session_key(key), room, "1"))
        ops.append(("sadd", ROOMS, room))

    def left(self, room: str, key: str) -> None:
        ops = self.backend.ops
        ops.append(("hdel", room_key(room, "members"), key))
        ops.append((self._run_room_field, session_key(key), room, "0"))

    def _run_room_field(self, pipe: Any, record: str, room: str, present: str) -> None:
        self._room_field(keys=[record], args=[room, present], client=pipe)

    def ended(self, key: str, node: str | None = None) -> None:
        record = session_key(key)
        self.backend.ops.append((self._run_end, record, node or self.node))
        self.backend.ops.append(("delete", _held_stream(key), _held_bytes(key)))
        if node is not None and node != self.node:
            # Ended by this node for that one (a kill, a ban of the server):
            # it forgets the session at once, as one taken from it.
            self.backend.ops.append(
                ("publish", f"{PREFIX}node:{node}", b"moved " + record.encode())
            )

    def _run_end(self, pipe: Any, record: str, node: str) -> None:
        self._end(keys=[record, LEASES, ACTIVE], args=[node], client=pipe)

    def members(self, room: str) -> list[tuple[str, bool]]:
        return [
            (v.decode()[1:], v.startswith(b"1")) for v in self.r.hvals(room_key(room, "members"))
        ]

    def who(self, room: str | None, now: float) -> list[tuple[str, int, bool]]:
        if room is not None:
            keys = [session_key(k.decode()) for k in self.r.hkeys(room_key(room, "members"))]
        else:
            keys = [k.decode() for k in self.r.zrange(LEASES, 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, ["nick", "quiet"])
            pipe.zscore(ACTIVE, k)
        answers = pipe.execute()
        found = []
        for (nick, quiet), active in zip(answers[::2], answers[1::2], strict=True):
            if nick is not None:
                idle = max(0, int((now - float(active or 0)) * 1000))
                found.append((nick.decode(), idle, quiet == b"1"))
        return found

    def rooms(self) -> list[tuple[str, str, list[tuple[str, bool]]]]:
        names = sorted(n.decode() for n in self.r.smembers(ROOMS))
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(room_key(name, "meta"), "topic")
            pipe.hvals(room_key(name, "members"))
        found = pipe.execute()
        listed = []
        empty = []
        for i, name in enumerate(names):
            topic, members = found[2 * i], found[2 * i + 1]
            if not members:
                empty.append(name)
                continue
            listed.append(
                (
                    name,
                    topic.decode() if topic else "",
                    [(v.decode()[1:], v.startswith(b"1")) for v in members],
                )
            )
        if empty:
            self.r.srem(ROOMS, *empty)
        return listed

    def held(self, key: str) -> int:
        value = self.r.get(_held_bytes(key))
        return int(value) if value is not None else 0

    def deliver(self, node: str, key: str, frame: bytes) -> None:
        # Kept in the recipient's stream until a node hands it over: the
        # node the session is on when Redis takes it (it may have moved
        # since this was decided) is told, and a node that dies does not
        # take it along (the next node of the session does: take_held).
        self._held_serial += 1
        mark = f"{PREFIX}{{s}}:pmh:{self.node}:{self._held_serial}"
        self.backend.ops.append((self._run_hold, _held_stream(key), frame, mark))

    def _run_hold(self, pipe: Any, stream: str, frame: bytes, mark: str) -> None:
        key = stream.rpartition(":pm:")[2]
        self._hold(
            keys=[stream, _held_bytes(key), session_key(key), mark],
            args=[frame, PREFIX + "node:", b"pm " + key.encode()],
            client=pipe,
        )

    def set_oper(self, key: str) -> None:
        self.backend.ops.append((self._run_oper, session_key(key)))

    def _run_oper(self, pipe: Any, record: str) -> None:
        self._oper(keys=[record], client=pipe)

    def put_out(self, node: str, room: str, key: str) -> None:
        # With the batch, on that node's channel: a quiet session's kick
        # publishes no leave for it to see.
        channel = f"{PREFIX}node:{node}"
        self.backend.ops.append(("publish", channel, f"out {room} {key}".encode()))

    def wall(self, frame: bytes) -> None:
        # With the batch: every node (this one too) publishes it on hearing it.
        self.backend.ops.append(("publish", EVENTS_CHANNEL, NOTICE_PREFIX + frame))

    def take_held(self, key: str) -> list[bytes]:
        """The private messages waiting for ``key`` in Redis, taken out."""
        frames = self._take_pms(keys=[_held_stream(key), _held_bytes(key)])
        return list(frames or [])


def apply_results(backend: RedisBackend, core: Core, out: Outbox, *later: Outbox) -> None:
    """Correct what the batch prepared with provisional seqs (acks, joined
    replies, remembered acks, each room's last seq) by what Redis gave;
    ``later``: batches handled since it was sent, whose answers to resends
    of its requests hold the same provisional seqs."""
    patch: dict[tuple[str, int], tuple[int, str | None]] = {}
    for name, found in backend.results.items():
        real = 0
        for prov, got in found.items():
            if isinstance(got, tuple):
                patch[(name, prov)] = got
            else:
                real = max(real, got)
                if got != prov:
                    patch[(name, prov)] = (got, None)
        room = core.rooms.get(name)
        if room is not None and not backend.pending(name):
            # (With a later batch's events numbered past these already, the
            # room's count stays: lowered, it would number the next ones
            # again, and the seqs of two batches' acks would mix.)
            room.seq = max(real, room.published)
    backend.results = {}
    if not patch:
        return
    for frames in [f for box in (out, *later) for f in (box.replies, box.free)]:
        for i, (ident, frame) in enumerate(frames):
            if not (frame.startswith(b'{"type":"ack"') or frame.startswith(b'{"type":"joined"')):
                continue
            msg = decode_reply(frame)
            if not isinstance(msg, Ack | Joined) or msg.room is None or msg.seq is None:
                continue
            fix = patch.get((msg.room, msg.seq))
            if fix is None:
                continue
            seq, ts = fix
            if isinstance(msg, Ack):
                new = encode(msgspec.structs.replace(msg, seq=seq, ts=ts or msg.ts))
                s = core.sessions.get(ident)
                if msg.id is not None and s is not None:
                    k = s.dedup + msg.id
                    if k in core.recent.acks:
                        core.recent.acks[k] = new
            else:
                new = encode(msgspec.structs.replace(msg, seq=seq))
            frames[i] = (ident, new)
