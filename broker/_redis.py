"""The store of a cluster of brokers: Redis (or Valkey).

Theory of operation. Every node numbers its batch's events as the single
broker does, from what it knows of each room, but those numbers are only
provisional: another node may have written to the room meanwhile. At commit,
one Lua script per room (a batch's rooms pipelined, so Redis answers the
batch in one round trip and, with ``appendfsync always``, fsyncs once)
takes the room's events in order and, atomically:

* skips an event whose id is known (a resend: the request id of a
  ``say``, for ten minutes at least; other events get an id unique to the
  batch, so a commit retried after a partial failure adds nothing twice)
  and returns the first ``seq`` and ``ts`` instead. The ids are fields of
  the room's hash ``zchat:{room}:ids:<window>``, one per ten minutes of
  Redis's clock, each kept for two windows (see ``_APPEND``);
* numbers it from the ``seq`` of the room's meta hash (continuing from the
  room's log when the hash was lost, so a seq is never used twice);
* appends it to the room's stream with the seq as the entry id;

and publishes the batch's new events of the room on ``zchat:events``, in one
message, a line each.

A batch of room events only is sent without waiting for its answers, and
the node handles the next batch meanwhile (:meth:`RedisBackend.send`,
:meth:`RedisBackend.receive`); it acknowledges nothing of it before they
come.

The node then corrects what it prepared with provisional numbers (acks,
``joined`` replies, its own idea of the room's last seq): see
:attr:`RedisBackend.results`. It never publishes its events itself: every
node, the writer too, republishes what arrives on ``zchat:events`` for the
rooms it has members in, in seq order, and fills any jump from the stream
(see ``_cluster.py``).

All of a room's keys share the hash tag ``{room}``, so a room's script
touches one slot of a Redis Cluster (the script names its id hashes from
``KEYS[3]`` and Redis's clock: keys it is not given, but in that slot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import redis
import redis.cluster

from messages import nick_key, search_words

from ._backend import SEARCH_BUDGET_S, SEARCH_SCAN, Page, RoomState, StoreError, StoreFull, matcher
from ._recent import DEDUP_S, dedup_key

log = logging.getLogger("zchat.broker")

PREFIX = "zchat:"
EVENTS_CHANNEL = b"zchat:events"
STORE_KEY = "zchat:store"
CLAIMS_KEY = "zchat:claims"
REDIS_TIMEOUT_S = 5.0
# What a call to Redis can raise: redis-py's cluster client also raises
# RedisClusterException (no RedisError) when the cluster cannot be reached
# or a slot is not covered.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)
# How long a batch waits for its replicas (--redis-wait) before it is
# refused for now and tried again.
WAIT_MS = 1_000

# KEYS: the room's meta hash, its stream, and the base name of its id
# buckets. ARGV: the count of events, the stream's MAXLEN (0: none), the
# channel, the dedup window in seconds, the provisional seq of the first
# event (the batch's are consecutive; 0: not known), then the events'
# bodies, their ts and their ids, each a line (JSON and ids
# hold no raw newline): three arguments, not three an event, since packing
# and parsing arguments was a fifth of a node's time.
#
# The ids are fields of per-room hashes, one per window of Redis's clock
# (``<base>:<TIME / window>``): an id written in bucket b is found by a
# resend up to a window later, in bucket b or b + 1, so a run looks in the
# current and the previous bucket and writes to the current one. Two HMGETs
# and one HSET a batch, against a GET and a SET EX an event; bucket b
# expires at the end of b + 1, and is UNLINKed (freed off Redis's thread)
# by the first run of b + 2, so a busy room's big bucket never blocks
# Redis when it goes.
_APPEND = """
local function split(s)
  local t, pos = {}, 1
  while true do
    local e = string.find(s, '\\n', pos, true)
    if not e then
      t[#t + 1] = string.sub(s, pos)
      return t
    end
    t[#t + 1] = string.sub(s, pos, e - 1)
    pos = e + 1
  end
end
-- In chunks: Lua's unpack takes some 8,000 values at most.
local function hmget(key, fields, n)
  local got = {}
  for lo = 1, n, 1000 do
    local hi = math.min(n, lo + 999)
    local part = redis.call('HMGET', key, unpack(fields, lo, hi))
    for j = 1, hi - lo + 1 do got[lo + j - 1] = part[j] end
  end
  return got
end
local n = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local chan = ARGV[3]
local window = tonumber(ARGV[4])
local first = tonumber(ARGV[5])
local bodies = split(ARGV[6])
local stamps = split(ARGV[7])
local ids = split(ARGV[8])
local bucket = math.floor(tonumber(redis.call('TIME')[1]) / window)
local cur = KEYS[3] .. ':' .. bucket
redis.call('UNLINK', KEYS[3] .. ':' .. (bucket - 2))
local now = hmget(cur, ids, n)
local before = hmget(KEYS[3] .. ':' .. (bucket - 1), ids, n)
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq == 0 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) end
end
local out = {}
local published = {}
local fresh = {}
local kept = {}
for i = 1, n do
  local id = ids[i]
  local prev = now[i] or before[i] or fresh[id]
  if prev then
    out[i] = prev
  else
    seq = seq + 1
    local body = bodies[i]
    if first == 0 or seq ~= first + i - 1 then
      -- Numbered otherwise than the node guessed (another node wrote to
      -- the room, or a resend was skipped): the body gets the real seq.
      body = string.gsub(body, ',"seq":%d+', ',"seq":' .. seq, 1)
    end
    if maxlen > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, seq .. '-0', 'e', body)
    else
      redis.call('XADD', KEYS[2], seq .. '-0', 'e', body)
    end
    local value = seq .. ' ' .. stamps[i]
    fresh[id] = value
    kept[#kept + 1] = id
    kept[#kept + 1] = value
    published[#published + 1] = body
    out[i] = seq
  end
end
if #kept > 0 then
  redis.call('HSET', KEYS[1], 'seq', seq)
  for lo = 1, #kept, 2000 do
    redis.call('HSET', cur, unpack(kept, lo, math.min(#kept, lo + 1999)))
  end
  redis.call('EXPIREAT', cur, (bucket + 2) * window + 60)
  -- One message for the batch's events in the room, a line each (JSON
  -- text holds no raw newline): a message per event cost the relay more
  -- than everything else it does.
  redis.call('PUBLISH', chan, table.concat(published, '\\n'))
end
return out
"""


# A room's moderation changed only from what the node read (see
# Core._save_rules); a missing value reads as "".
_SWAP_RULES = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


class _Head(msgspec.Struct):
    """What the backend reads of an event body."""

    room: str
    seq: int
    ts: str
    id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")


_head = msgspec.json.Decoder(_Head)


def append_call(
    room: str, events: list[tuple[bytes, str, str]], maxlen: int = 0, first: int = 0
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of the append script for ``events`` of
    ``room``, each ``(body, ts, id)``; ``first``: the seq the
    first body holds, the others following it (0: they may not)."""
    keys = [room_key(room, "meta"), room_key(room, "log"), room_key(room, "ids")]
    return keys, [
        len(events),
        maxlen,
        EVENTS_CHANNEL,
        int(DEDUP_S),
        first,
        b"\n".join([body for body, _, _ in events]),
        "\n".join([ts for _, ts, _ in events]),
        "\n".join([ident for _, _, ident in events]),
    ]


def room_key(room: str, what: str) -> str:
    return f"{PREFIX}{{{room}}}:{what}"


def connect(url: str, *, cluster: bool = False) -> Any:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``); the
    password comes from the URL or ``ZCHAT_REDIS_PASSWORD``.

    Raises:
        ValueError: the URL is not one Redis takes.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{url!r} is not a Redis URL: write redis://HOST:PORT/DB")
    kwargs: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
    }
    if not parts.password and os.environ.get("ZCHAT_REDIS_PASSWORD"):
        kwargs["password"] = os.environ["ZCHAT_REDIS_PASSWORD"]
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _has_password(url: str) -> bool:
    return bool(urllib.parse.urlsplit(url).password or os.environ.get("ZCHAT_REDIS_PASSWORD"))


def describe(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class RedisBackend:
    """The :class:`~._backend.Backend` of a cluster node.

    Raises:
        StoreError: Redis cannot be reached or used.
    """

    def __init__(self, url: str, *, node: str, maxlen: int = 0, wait_replicas: int = 0) -> None:
        self.url = url
        self.node = node
        self.maxlen = maxlen
        self.wait_replicas = wait_replicas
        # redis-py types its answers as bytes or str by a constructor flag:
        # Any here, and the code reads bytes (decode_responses is off).
        self.r: Any = connect(url)
        self.clustered = False
        try:
            self.r.ping()
            if self.r.info("cluster").get("cluster_enabled"):
                # A Redis Cluster: a client that follows its slots.
                self.r.close()
                self.r = connect(url, cluster=True)
                self.clustered = True
            self.store_id = self.new_store_id()
            self.replid = self._replication()[0]
            self.durability = self._durability()
        except redis.RedisError as err:
            self.r.close()
            text = str(err)
            if isinstance(err, redis.AuthenticationError) or "authenticat" in text.lower():
                text = (
                    "it asks for a password, and "
                    + ("the one given is wrong" if _has_password(url) else "none was given")
                    + " (redis://:PASSWORD@HOST:PORT/DB, or ZCHAT_REDIS_PASSWORD)"
                )
            raise StoreError(f"cannot use Redis at {describe(url)}: {text}") from None
        self._append = self.r.register_script(_APPEND)
        self._swap = self.r.register_script(_SWAP_RULES)
        self.failed = False
        self._serial = 0
        # room -> [(provisional seq, body, head)] of the batch
        self._events: dict[str, list[tuple[int, bytes, _Head, str]]] = {}
        self._topics: dict[str, str] = {}
        self._rules: dict[str, bytes] = {}
        self._claims: dict[str, tuple[str, float] | None] = {}
        self._pm_ids: list[tuple[str, str, bytes]] = []
        # Commands of the directory (_cluster.py), run in the batch's pipeline.
        self.ops: list[tuple[Any, ...]] = []
        # After a commit: room -> provisional seq -> the real seq, or for an
        # event that was there already (a resend) its (seq, ts).
        self.results: dict[str, dict[int, int | tuple[int, str]]] = {}
        # A batch sent and not yet answered (see send): its pipeline (which
        # holds the connection it went on), its rooms and their places.
        self._flight: tuple[Any, list[Any], list[tuple[Any, int]]] | None = None

    def new_store_id(self, *, replacing: str | None = None) -> str:
        """The cluster's store id: made by the first node to ask, read by
        the others; ``replacing``: a new one in place of that one (which
        only the first node to notice replaces)."""
        if replacing is not None:
            self.r.eval(_REPLACE, 1, STORE_KEY, replacing, secrets.token_hex(8))
        self.r.set(STORE_KEY, secrets.token_hex(8), nx=True)
        value = self.r.get(STORE_KEY)
        return value.decode() if isinstance(value, bytes) else str(value)

    def store_lost(self) -> bool:
        """Whether Redis lost what this node knows: its store id is gone or
        changed (Redis restarted empty, or another node saw that first), or
        a replica took the primary's place. Replication is asynchronous, so
        a promoted replica may miss the last writes, and seqs that clients
        have seen would be given again: the replica keeps the store id, but
        its replication id tells (its previous one is the old primary's)."""
        value = self.r.get(STORE_KEY)
        if value is None or value.decode() != self.store_id:
            return True
        replid, previous = self._replication()
        promoted = replid != self.replid and previous == self.replid
        self.replid = replid
        return promoted

    def _replication(self) -> tuple[str, str]:
        """The primary's replication id and its previous one."""
        if self.clustered:
            return "", ""  # (each master has its own; a failover shows as a lost key)
        info = self.r.info("replication")
        return str(info.get("master_replid", "")), str(info.get("master_replid2", ""))

    def _durability(self) -> str:
        info = self.r.info("server")
        version = info.get("redis_version", "?")
        conf: dict[str, str] = {}
        try:
            for name in ("appendonly", "appendfsync"):
                conf.update({k: str(v) for k, v in self.r.config_get(name).items()})
        except redis.ResponseError:
            pass  # CONFIG may be renamed away on managed services
        if conf.get("appendonly") != "yes" or conf.get("appendfsync") != "always":
            log.warning(
                "Redis at %s runs with appendonly %s, appendfsync %s: an acknowledged "
                "message can be lost if Redis is killed (set appendonly yes and "
                "appendfsync always)",
                describe(self.url),
                conf.get("appendonly", "?"),
                conf.get("appendfsync", "?"),
            )
        return (
            f"Redis {version} at {describe(self.url)}, appendonly "
            f"{conf.get('appendonly', '?')}, appendfsync {conf.get('appendfsync', '?')}"
        )

    # ------------------------------------------------------------ writing

    def add(self, room: str, seq: int, body: bytes, at: float) -> None:
        head = _head.decode(body)
        if head.id is not None and head.from_ is not None:
            ident = "r" + dedup_key(nick_key(head.from_), head.id)
        else:
            # Made once, here: a commit retried after a partial failure
            # sends the same keys, and Redis finds what it did already.
            self._serial += 1
            ident = f"b{self.node}:{self._serial}"
        self._events.setdefault(room, []).append((seq, body, head, ident))

    def set_topic(self, room: str, topic: str) -> None:
        self._topics[room] = topic

    def set_rules(self, room: str, body: bytes) -> None:
        self._rules[room] = body

    def swap_rules(self, room: str, old: bytes | None, new: bytes) -> bool:
        try:
            return bool(self._swap(keys=[room_key(room, "rules")], args=[old or b"", new]))
        except REDIS_ERRORS as err:
            raise StoreError(f"cannot write to Redis at {describe(self.url)}: {err}") from None

    def rules(self, room: str) -> bytes | None:
        pending = self._rules.get(room)
        if pending is not None:
            return pending
        body: bytes | None = self.r.get(room_key(room, "rules"))
        return body

    def add_pm_id(self, sender: str, req_id: str, at: float, reply: bytes) -> None:
        self._pm_ids.append((sender, req_id, reply))

    def set_nick_claim(self, nick: str, key: str, used: float) -> None:
        self._claims[nick] = (key, used)

    def drop_nick_claim(self, nick: str) -> None:
        self._claims[nick] = None

    def _pipes(self) -> tuple[Callable[[str | bytes], Any], Callable[[], dict[int, list[Any]]]]:
        """``(pipe_for, execute)``: the pipeline a command on a key goes
        into, and running them all. One pipeline on a single Redis; on a
        Redis Cluster one per master, plain ones, since redis-py's cluster
        pipeline refuses scripts (a room's keys share a slot, so its script
        runs where that slot is)."""
        if not self.clustered:
            pipe = self.r.pipeline(transaction=False)
            return (lambda key: pipe), lambda: {id(pipe): self._execute(pipe)}
        pipes: dict[str, Any] = {}

        def pipe_for(key: str | bytes) -> Any:
            node = self.r.get_node_from_key(key)
            pipe = pipes.get(node.name)
            if pipe is None:
                pipe = pipes[node.name] = self.r.get_redis_connection(node).pipeline(
                    transaction=False
                )
            return pipe

        return pipe_for, lambda: {id(p): self._execute(p) for p in pipes.values()}

    def _execute(self, pipe: Any) -> list[Any]:
        """Run a batch's pipeline; with ``wait_replicas``, it counts only
        once that many replicas have it (WAIT, on the same connection)."""
        if self.wait_replicas <= 0:
            return list(pipe.execute())
        pipe.execute_command("WAIT", self.wait_replicas, WAIT_MS)
        answers = list(pipe.execute())
        copies = int(answers.pop())
        if copies < self.wait_replicas:
            # Applied on the primary but not yet safe: nothing is acked; the
            # retry finds it all there (its ids) and waits again.
            raise redis.TimeoutError(
                f"{copies} of the {self.wait_replicas} replicas asked for (--redis-wait) "
                f"had the batch within {WAIT_MS} ms"
            )
        return answers

    def _queue(
        self, pipe_for: Callable[[str | bytes], Any]
    ) -> tuple[list[tuple[str, list[tuple[int, bytes, _Head, str]]]], list[tuple[Any, int]]]:
        """Put the batch's writes in its pipelines: its rooms, and where each
        room's answer will be (its pipeline, its place there)."""
        rooms = list(self._events.items())
        places: list[tuple[Any, int]] = []
        for room, events in rooms:
            first = events[0][0]
            if events[-1][0] - first != len(events) - 1:
                first = 0  # (not consecutive: the script sets every seq)
            keys, args = append_call(
                room,
                [(body, head.ts, ident) for _, body, head, ident in events],
                self.maxlen,
                first,
            )
            pipe = pipe_for(keys[0])
            places.append((pipe, len(pipe)))
            self._append(keys=keys, args=args, client=pipe)
        for room, topic in self._topics.items():
            pipe_for(room_key(room, "meta")).hset(room_key(room, "meta"), "topic", topic)
        for room, body in self._rules.items():
            pipe_for(room_key(room, "rules")).set(room_key(room, "rules"), body)
        for nick, claim in self._claims.items():
            if claim is None:
                pipe_for(CLAIMS_KEY).hdel(CLAIMS_KEY, nick)
            else:
                pipe_for(CLAIMS_KEY).hset(CLAIMS_KEY, nick, f"{claim[1]} {claim[0]}")
        for sender, req_id, reply in self._pm_ids:
            key = f"{PREFIX}pmid:{dedup_key(sender, req_id)}"
            pipe_for(key).set(key, reply, ex=int(DEDUP_S))
        for op in self.ops:
            # (name or script, key, more args...)
            if callable(op[0]):
                op[0](pipe_for(op[1]), *op[1:])
            else:
                getattr(pipe_for(op[1]), op[0])(*op[1:])
        return rooms, places

    def _failed(self, err: Exception) -> StoreFull:
        # What the batch holds is kept whole, ids and all, for the next
        # commit (the shell refuses writes meanwhile): what Redis did of it
        # is found again by its ids, never done twice.
        self.failed = True
        if self.clustered:
            with contextlib.suppress(*REDIS_ERRORS):
                self.r.nodes_manager.initialize()  # slots may have moved
        return StoreFull(f"cannot write to Redis at {describe(self.url)}: {err}")

    def _found(
        self,
        rooms: list[tuple[str, list[tuple[int, bytes, _Head, str]]]],
        places: list[tuple[Any, int]],
        answers: dict[int, list[Any]],
    ) -> None:
        for (room, events), (pipe, place) in zip(rooms, places, strict=True):
            found: dict[int, int | tuple[int, str]] = {}
            for (seq, _, _, _), got in zip(events, answers[id(pipe)][place], strict=True):
                if isinstance(got, bytes):
                    first, _, ts = got.decode().partition(" ")
                    found[seq] = (int(first), ts)
                else:
                    found[seq] = int(got)
            self.results[room] = found

    def commit(self) -> None:
        if self._flight is not None:
            self.receive()
        self.results = {}
        if not (
            self._events or self._topics or self._rules or self._claims or self._pm_ids or self.ops
        ):
            return
        try:
            pipe_for, execute = self._pipes()
            rooms, places = self._queue(pipe_for)
            answers = execute()
        except REDIS_ERRORS as err:
            raise self._failed(err) from None
        self.failed = False
        self._found(rooms, places, answers)
        self._clear_batch()

    def _clear_batch(self) -> None:
        self._events.clear()
        self._topics.clear()
        self._rules.clear()
        self._claims.clear()
        self._pm_ids.clear()
        self.ops.clear()

    # A commit in two halves, so that the node handles the next batch while
    # Redis runs this one (Redis's time was four tenths of a node's, spent
    # waiting): :meth:`send` writes the batch to Redis and returns,
    # :meth:`receive` reads the answers. Only a batch of room events goes so
    # (the hot path): the directory's writes (sessions, members, claims) and
    # a room's rules are read back by the next batch's requests, so they
    # commit whole.

    def can_send(self) -> bool:
        """Whether the batch can go by :meth:`send`: a batch of room events
        only, on a single Redis, with none in flight."""
        return (
            not self.clustered
            and self._flight is None
            and not self.failed
            and bool(self._events)
            and not (self._topics or self._rules or self._claims or self._pm_ids or self.ops)
        )

    def send(self) -> None:
        """Write the batch's room events to Redis without waiting for the
        answers; the next batch collects meanwhile.

        Raises:
            StoreFull: Redis cannot be reached (the batch is kept for the
                next commit).
        """
        assert self.can_send()
        pipe = self.r.pipeline(transaction=False)
        rooms, places = self._queue(lambda key: pipe)
        if self.wait_replicas > 0:
            pipe.execute_command("WAIT", self.wait_replicas, WAIT_MS)
        try:
            if pipe.scripts:
                pipe.load_scripts()  # (on the pipeline's connection, kept till its reset)
            if pipe.connection is None:
                pipe.connection = self.r.connection_pool.get_connection()
            conn = pipe.connection
            conn.send_packed_command(conn.pack_commands([a for a, _ in pipe.command_stack]))
        except REDIS_ERRORS as err:
            if pipe.connection is not None:
                pipe.connection.disconnect()
            pipe.reset()  # (gives the connection back)
            raise self._failed(err) from None
        self._flight = (pipe, rooms, places)
        self._events = {}

    def receive(self) -> None:
        """Read the answers of the batch :meth:`send` wrote; then
        :attr:`results` holds them.

        Raises:
            StoreFull: Redis did not take it, or not all of it: the batch
                goes back before what collected since, for the next commit.
        """
        assert self._flight is not None
        pipe, rooms, places = self._flight
        self._flight = None
        conn = pipe.connection
        self.results = {}
        read = False
        try:
            answers: list[Any] = []
            failure: Exception | None = None
            for args, options in pipe.command_stack:
                try:
                    answers.append(pipe.parse_response(conn, args[0], **options))
                except redis.ResponseError as err:
                    failure = failure or err
            read = True
            if failure is not None:
                raise failure
            if self.wait_replicas > 0:
                copies = int(answers.pop())
                if copies < self.wait_replicas:
                    raise redis.TimeoutError(
                        f"{copies} of the {self.wait_replicas} replicas asked for "
                        f"(--redis-wait) had the batch within {WAIT_MS} ms"
                    )
        except REDIS_ERRORS as err:
            if not read:
                conn.disconnect()  # (answers may be left unread on it)
            later = self._events
            self._events = {room: list(events) for room, events in rooms}
            for room, events in later.items():
                self._events.setdefault(room, []).extend(events)
            raise self._failed(err) from None
        finally:
            pipe.reset()  # (gives the connection back)
        self._found(rooms, places, {id(pipe): answers})

    @property
    def in_flight(self) -> bool:
        """Whether a batch was sent and its answers are still to read."""
        return self._flight is not None

    def pending(self, room: str) -> bool:
        """Whether the batch being collected has events of ``room``."""
        return room in self._events

    def discard(self) -> None:
        """Forget what the batch added and no commit took: the node starts
        over on a store that lost its state (none of it was acknowledged)."""
        if self._flight is not None:
            pipe = self._flight[0]
            self._flight = None
            pipe.connection.disconnect()  # (its answers are never read)
            pipe.reset()
        self._clear_batch()
        self.results = {}
        self.failed = False

    # ------------------------------------------------------------ reading

    def room_state(self, room: str) -> RoomState | None:
        pending = self._events.get(room)
        if not pending and self._flight is not None:
            pending = dict(self._flight[1]).get(room)
        seq_b, topic_b = self.r.hmget(room_key(room, "meta"), ["seq", "topic"])
        topic = self._topics.get(room, topic_b.decode() if topic_b else "")
        if pending:
            return RoomState(last_seq=pending[-1][0], topic=topic)
        if seq_b is None:
            last = self.r.xrevrange(room_key(room, "log"), "+", "-", count=1)
            if not last:
                return None if topic_b is None else RoomState(0, topic)
            return RoomState(last_seq=_seq_of(last[0][0]), topic=topic)
        return RoomState(last_seq=int(seq_b), topic=topic)

    def page(
        self, room: str, *, after: int | None, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        stream = room_key(room, "log")
        hi = f"({before}-0" if before is not None else "+"
        pipe = self.r.pipeline(transaction=False)
        if after is not None:
            pipe.xrange(stream, f"({after}-0", hi, count=limit + 1)
        else:
            pipe.xrevrange(stream, hi, "-", count=limit + 1)
        pipe.xrange(stream, "-", "+", count=1)
        entries, oldest = pipe.execute()
        if after is None:
            entries.reverse()
            # The newest first when trimming to the page: the page ends at
            # ``before`` (or the end) and reaches back as far as it holds.
            kept: list[bytes] = []
            size = 0
            for _, fields in reversed(entries[-limit:]):
                body = fields[b"e"]
                size += len(body) + 1
                if kept and size > max_bytes:
                    break
                kept.append(body)
            kept.reverse()
            return Page(kept, len(kept) < len(entries), _seq_of(oldest[0][0]) if oldest else None)
        found: list[bytes] = []
        size = 0
        for _, fields in entries[:limit]:
            body = fields[b"e"]
            size += len(body) + 1
            if found and size > max_bytes:
                break
            found.append(body)
        return Page(found, len(found) < len(entries), _seq_of(oldest[0][0]) if oldest else None)

    def search(
        self, room: str, text: str, *, before: int | None, limit: int, max_bytes: int
    ) -> Page:
        """See :meth:`Backend.search`: the room's stream read newest first,
        :data:`SEARCH_SCAN` entries at most, a chunk at a time, each event
        checked with :func:`messages.words_match`."""
        words = search_words(text)
        if not words:
            return Page([], False, None)
        stream = room_key(room, "log")
        hi = f"({before}-0" if before is not None else "+"
        found: list[bytes] = []  # newest first
        size = scanned = 0
        matches = matcher(words)
        deadline = time.perf_counter() + SEARCH_BUDGET_S
        while scanned < SEARCH_SCAN and (not scanned or time.perf_counter() < deadline):
            count = min(_SEARCH_CHUNK, SEARCH_SCAN - scanned)
            entries = self.r.xrevrange(stream, hi, "-", count=count)
            for eid, fields in entries:
                body = fields[b"e"]
                if not matches(body):
                    continue
                size += len(body) + 1
                if len(found) >= limit or (found and size > max_bytes):
                    found.reverse()
                    return Page(found, True, None, before=_seq_of(eid) + 1)
                found.append(body)
            scanned += len(entries)
            if len(entries) < count:
                found.reverse()
                return Page(found, False, None)
            hi = f"({_seq_of(entries[-1][0])}-0"
        found.reverse()
        return Page(found, True, None, before=int(hi[1:].partition("-")[0]))

    def log_range(
        self, room: str, after: int, upto: int | None, *, count: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The stored events of ``room`` past ``after`` up to ``upto`` (or the
        end), the first ``count`` of them when given."""
        hi = f"{upto}-0" if upto is not None else "+"
        return [
            (_seq_of(eid), fields[b"e"])
            for eid, fields in self.r.xrange(room_key(room, "log"), f"({after}-0", hi, count=count)
        ]

    def recent_events(self, since: float) -> Iterator[bytes]:
        # The ids of says are kept by Redis itself (the append script).
        return iter(())

    def recent_pm_acks(self, since: float) -> Iterator[tuple[str, str, bytes]]:
        return iter(())

    def pm_ack(self, sender: str, req_id: str) -> bytes | None:
        """The ack of a private message, if another node took it already."""
        value = self.r.get(f"{PREFIX}pmid:{dedup_key(sender, req_id)}")
        return value if isinstance(value, bytes) else None

    def nick_claims(self) -> dict[str, tuple[str, float]]:
        found: dict[str, tuple[str, float]] = {}
        for nick, value in self.r.hgetall(CLAIMS_KEY).items():
            used, _, key = value.decode().partition(" ")
            found[nick.decode()] = (key, float(used))
        return found

    def nick_claim(self, nick: str) -> tuple[str, float] | None:
        value = self.r.hget(CLAIMS_KEY, nick)
        if value is None:
            return None
        used, _, key = value.decode().partition(" ")
        return key, float(used)

    # ------------------------------------------------------------- upkeep

    def housekeeping(self, now: float, retain_s: float) -> bool:
        # Request ids expire by themselves (EX); history is bounded by the
        # streams' MAXLEN (--cluster-max-events), not by age.
        return False

    def summary(self) -> str:
        return self.durability

    def close(self) -> None:
        try:
            if not self.failed:
                self.commit()
        except StoreFull as err:
            log.error("%s; what was pending was never acknowledged", err)
        finally:
            self.r.close()


_SEARCH_CHUNK = 250  # entries a search reads from Redis at a time


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])
