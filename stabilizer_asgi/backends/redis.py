"""The Redis backend: every process sharing one Redis URL and `cluster_name` is a node.

How a publication travels, and why nothing is lost or repeated:

- The publisher gives every publication an origin sequence number `s` (per node) and `p`, the
  `s` of its previous publication on the same topic. One script call per publication (batched
  with whatever else is queued, in one pipeline) appends it to the topic's history stream
  (bounded by `history_messages`, expiring `history_ttl` after the last one) and PUBLISHes it
  with its stream id. Nothing is done per recipient.
- Publications wait in an ordered, bounded outbox while Redis is unreachable and go out in order
  when it returns. A batch whose outcome is unknown is sent again; receivers drop repeats.
- A node reads every topic it subscribes to (everyone's, and its groups') on one pub/sub
  connection. On every (re)connection it subscribes first, then reads each topic's stream from
  the last id it delivered (the whole stream if Redis lost its data: the epoch key changed),
  delivers what it missed in per-origin order, then carries on with the live messages.
- Per (origin, topic) a receiver remembers the last `s` it delivered: an `s` at or below it is a
  repeat (dropped); a `p` above it means publications it never saw existed. Only then is there a
  gap (Redis restarted empty before they were read, history trimmed, an outbox overflowed): it is
  counted, logged and reported to the node (`Node.lost`). A Redis restart alone is not a gap.
- A probe published to the node's own channel every `probe_interval / 4` must come back within
  `probe_interval / 2`; if it does not, the subscription is deaf (e.g. a connection kept to a
  demoted primary) and is rebuilt, so it is healed within `probe_interval`.

Presence: every `probe_interval / 4` a node refreshes its record (connections) with a TTL of
3 × `probe_interval` and reads every live node's; a node that stops refreshing drops out of every
view within 3 × `probe_interval`. Commands go out on one channel every node reads; each node
answers on the requester's channel (done / refused / not here).

Requires the asyncio event loop (redis-py's asyncio client). No Redis Cluster (keys of one
cluster name are used together in scripts); Sentinel and managed Redis work through their URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .. import logging as _log
from ..core.backoff import Backoff
from ..exceptions import ConfigError
from .base import (
    BackendStatus,
    Command,
    Handover,
    Node,
    NodeInfo,
    Parcel,
    ParkRequest,
    Payload,
    Publication,
    Whereabouts,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

logger = logging.getLogger("stabilizer_asgi")

# Topic names: "*" is every session; "g:<name>" is a group.
ALL_TOPIC = "*"
# Publications a publisher remembers the previous sequence number of (per topic, LRU).
MAX_TOPICS = 65_536
# Outbox entries sent in one pipeline at most.
MAX_BATCH = 512
_RECONNECT = Backoff(base=0.05, cap=0.5)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Appends one frame to a parked session's mailbox (bounded; overflow marks a gap and frees it).
# Used by _PUBLISH (per parked recipient) and _APPEND (a `send`). Repeats of one publication
# (a batch sent again) are recognised by the origin's sequence number.
_MAILBOX = """
local function mailbox(prefix, sid, entry, size, origin, seq)
  local rec = prefix .. ':park:' .. sid
  local f = redis.call('HMGET', rec, 'st', 'o', 'n', 'nb', 'mm', 'mb', 'gap')
  if not f[1] then return false end
  if f[1] == '1' and origin ~= '' and f[2] == origin then return true end
  if f[7] == '1' then return true end
  if origin ~= '' then
    local last = tonumber(redis.call('HGET', rec, 's:' .. origin) or '0')
    if seq <= last then return true end
    redis.call('HSET', rec, 's:' .. origin, seq)
  end
  local box = prefix .. ':mb:' .. sid
  if tonumber(f[3]) + 1 > tonumber(f[5]) or tonumber(f[4]) + size > tonumber(f[6]) then
    redis.call('HSET', rec, 'gap', '1')
    redis.call('DEL', box)
    return true
  end
  redis.call('RPUSH', box, entry)
  redis.call('HINCRBY', rec, 'n', 1)
  redis.call('HINCRBY', rec, 'nb', size)
  redis.call('PEXPIRE', box, redis.call('PTTL', rec))
  return true
end
"""
# KEYS: stream, channel, the topic's parked set. ARGV: maxlen, ttl ms, message, prefix.
_PUBLISH = (
    _MAILBOX
    + """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], id .. '\\n' .. ARGV[3])
local parked = redis.call('SMEMBERS', KEYS[3])
if #parked > 0 then
  local nl = string.find(ARGV[3], '\\n', 1, true)
  local header = cjson.decode(string.sub(ARGV[3], 1, nl - 1))
  local body = string.sub(ARGV[3], nl + 1)
  local entry = (header['b'] == 1 and 'b' or 't') .. body
  local skip = {}
  if header['x'] then for _, x in ipairs(header['x']) do skip[x] = true end end
  for _, sid in ipairs(parked) do
    if not skip[sid] then
      if not mailbox(ARGV[4], sid, entry, #body, header['o'], tonumber(header['s'])) then
        redis.call('SREM', KEYS[3], sid)
      end
    end
  end
end
return id
"""
)
# ARGV: prefix, session id, entry, size.
_APPEND = (
    _MAILBOX
    + """
if mailbox(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), '', 0) then return 1 end
return 0
"""
)
# Starts parking sessions and publishes the park's marker in the same step, so the node's reader
# meets the marker exactly where the parks took effect in the publication order.
# ARGV: prefix, owner, marker message, then per session: id, groups (JSON array), ttl ms,
# max messages, max bytes. Returns 1/0 per session (0: already parked).
_PARK_BEGIN = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 4, #ARGV, 5 do
  local sid = ARGV[i]
  local rec = p .. ':park:' .. sid
  if redis.call('EXISTS', rec) == 1 then
    out[#out + 1] = 0
  else
    local ttl = tonumber(ARGV[i + 2])
    redis.call('HSET', rec, 'o', ARGV[2], 'st', '1', 'n', 0, 'nb', 0, 'mm', ARGV[i + 3],
      'mb', ARGV[i + 4], 'gap', '0', 'g', ARGV[i + 1])
    redis.call('PEXPIRE', rec, ttl + 60000)
    redis.call('SADD', p .. ':pk:*', sid)
    for _, g in ipairs(cjson.decode(ARGV[i + 1])) do
      redis.call('SADD', p .. ':pk:g:' .. g, sid)
    end
    redis.call('ZADD', p .. ':parked', now + ttl, sid)
    out[#out + 1] = 1
  end
end
redis.call('PUBLISH', p .. ':n:' .. ARGV[2], ARGV[3])
return out
"""
# Forget a park record (its session is claimed, expired, or was not taken). ARGV: prefix, sid.
_UNPARK = """
local function unpark(p, sid)
  local rec = p .. ':park:' .. sid
  local groups = redis.call('HGET', rec, 'g')
  redis.call('DEL', rec, p .. ':mb:' .. sid)
  redis.call('SREM', p .. ':pk:*', sid)
  if groups then
    for _, g in ipairs(cjson.decode(groups)) do redis.call('SREM', p .. ':pk:g:' .. g, sid) end
  end
  redis.call('ZREM', p .. ':parked', sid)
end
"""
# ARGV: prefix, owner, session id, snapshot ('' = not taken: forget it), generation, confirmed.
_PARK_END = (
    _UNPARK
    + """
local rec = ARGV[1] .. ':park:' .. ARGV[3]
local f = redis.call('HMGET', rec, 'o', 'st')
if f[1] ~= ARGV[2] or f[2] ~= '1' then return 0 end
if ARGV[4] == '' then unpark(ARGV[1], ARGV[3]) return 0 end
redis.call('HSET', rec, 'st', '2', 'snap', ARGV[4], 'gen', ARGV[5], 'conf', ARGV[6])
return 1
"""
)
# ARGV: prefix, session id.
_LOCATE = """
local f = redis.call('HMGET', ARGV[1] .. ':park:' .. ARGV[2], 'st', 'o', 'g')
local own = redis.call('GET', ARGV[1] .. ':own:' .. ARGV[2])
return {f[1] or '', f[2] or own or '', f[3] or '[]'}
"""
# Claims a parked session; sent through the claiming node's outbox, so it is ordered after that
# node's earlier publications. The reply is kept under the claim's id for a minute: a batch
# sent again (its outcome unknown) gets the same answer instead of finding the session gone.
# ARGV: prefix, claiming node, session id, presented generation, ttl ms, marker, claim id.
_CLAIM = (
    _UNPARK
    + """
local p = ARGV[1]
local sid = ARGV[3]
local kept = p .. ':claimed:' .. ARGV[7]
if redis.call('EXISTS', kept) == 1 then return redis.call('LRANGE', kept, 0, -1) end
local rec = p .. ':park:' .. sid
local f = redis.call('HMGET', rec, 'st', 'snap', 'gen', 'conf', 'gap')
local g = tonumber(ARGV[4])
if not f[1] then
  local cur = tonumber(redis.call('GET', p .. ':gen:' .. sid) or '-1')
  if cur > g + 1 then return {'invalid'} end
  if redis.call('EXISTS', p .. ':own:' .. sid) == 1 then return {'moved'} end
  return {'missing'}
end
if f[1] ~= '2' then return {'parking'} end
local G = tonumber(f[3])
if not (g == G or (f[4] ~= '1' and g == G - 1)) then return {'invalid'} end
local box = redis.call('LRANGE', p .. ':mb:' .. sid, 0, -1)
unpark(p, sid)
local cur = tonumber(redis.call('GET', p .. ':gen:' .. sid) or '-1')
if g + 1 > cur then redis.call('SET', p .. ':gen:' .. sid, g + 1, 'PX', ARGV[5]) end
redis.call('SET', p .. ':own:' .. sid, ARGV[2], 'PX', ARGV[5])
redis.call('PUBLISH', p .. ':n:' .. ARGV[2], ARGV[6])
local out = {'ok', f[2], f[5]}
for _, e in ipairs(box) do out[#out + 1] = e end
redis.call('RPUSH', kept, unpack(out))
redis.call('PEXPIRE', kept, 60000)
return out
"""
)
# Parked sessions whose window passed: forgotten, their snapshots returned (at most ARGV[2]).
# ARGV: prefix, limit.
_EXPIRE_PARKED = (
    _UNPARK
    + """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', p .. ':parked', '-inf', now, 'LIMIT', 0,
    tonumber(ARGV[2]))) do
  local f = redis.call('HMGET', p .. ':park:' .. sid, 'st', 'snap')
  if f[1] == '2' and f[2] then out[#out + 1] = f[2] end
  unpark(p, sid)
end
return out
"""
)
# ARGV: prefix, node, window ms, how long a death is remembered (ms).
_FATE = """
if redis.call('EXISTS', ARGV[1] .. ':left:' .. ARGV[2]) == 1 then return 'expired' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = ARGV[1] .. ':dead:' .. ARGV[2]
local died = redis.call('GET', key)
if not died then
  redis.call('SET', key, now, 'PX', ARGV[4])
  return 'lost'
end
if now - tonumber(died) > tonumber(ARGV[3]) then return 'expired' end
return 'lost'
"""
# KEYS: nodes zset. ARGV: prefix, node id, ttl ms, record (or "" to leave).
# Returns the live nodes' ids and records, flattened.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local me = ARGV[2]
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[1], me)
  redis.call('DEL', ARGV[1] .. ':node:' .. me, ARGV[1] .. ':clients:' .. me)
  redis.call('SET', ARGV[1] .. ':left:' .. me, '1', 'PX', 86400000)
else
  redis.call('ZADD', KEYS[1], now + ttl, me)
  redis.call('SET', ARGV[1] .. ':node:' .. me, ARGV[4], 'PX', ttl)
  redis.call('PEXPIRE', ARGV[1] .. ':clients:' .. me, ttl)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local rec = redis.call('GET', ARGV[1] .. ':node:' .. id)
  if rec then
    out[#out + 1] = id
    out[#out + 1] = rec
  end
end
return out
"""
# KEYS: nodes zset. ARGV: prefix, node id, client id, exclusive ("1"/"0"), ttl ms.
# Returns {registered (1/0), holder ids...}.
_CLAIM_CLIENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {0}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if id ~= ARGV[2] then
    local n = tonumber(redis.call('HGET', ARGV[1] .. ':clients:' .. id, ARGV[3]) or '0')
    if n > 0 then out[#out + 1] = id end
  end
end
if ARGV[4] == '1' and #out > 1 then return out end
local mine = ARGV[1] .. ':clients:' .. ARGV[2]
redis.call('HINCRBY', mine, ARGV[3], 1)
redis.call('PEXPIRE', mine, ARGV[5])
out[1] = 1
return out
"""
# KEYS: the node's clients hash. ARGV: client id.
_RELEASE_CLIENT = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""
# KEYS: the session's generation key. ARGV: generation, ttl ms.
_CLAIM_TOKEN = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], tonumber(ARGV[1]) + 1, 'PX', ARGV[2])
return 1
"""


def _mail(entry: bytes) -> Payload:
    """A mailbox entry: "t" + UTF-8 text, or "b" + bytes."""
    if entry[:1] == b"t":
        return entry[1:].decode("utf-8", "surrogatepass")
    return bytes(entry[1:])


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _encode(header: dict[str, Any], payload: Payload | None) -> bytes:
    if isinstance(payload, str):
        header["b"] = 0
        body = payload.encode("utf-8", "surrogatepass")
    elif payload is None:
        body = b""
    else:
        header["b"] = 1
        body = bytes(payload)
    return _dumps(header).encode() + b"\n" + body


def _decode(data: bytes) -> tuple[dict[str, Any], Payload | None]:
    head, _, body = data.partition(b"\n")
    header: dict[str, Any] = json.loads(head)
    kind = header.get("b")
    if kind == 0:
        return header, body.decode("utf-8", "surrogatepass")
    if kind == 1:
        return header, body
    return header, None


@dataclass
class _Pending:
    """A command waiting for the other nodes' answers."""

    expected: set[str]
    done: anyio.Event
    result: bool = False


# Outbox entry kinds. _END_PARK completes a park in publish order; _TAKE is a claim (its reply
# goes to the waiting `_Claim`); _SIGNAL sets its event once everything before it was sent.
_PUB, _RAW, _RELEASE, _PROBE, _END_PARK, _SIGNAL, _TAKE = 0, 1, 2, 3, 4, 5, 6
# Parked sessions ended per presence round at most (by whichever node gets them first).
EXPIRE_BATCH = 100
# Seconds after which a claim's marker is given up on even without a resubscription (the session
# is then reported lost): far beyond any reader backlog seen in practice.
MUTE_LIMIT = 60.0
# How long the cluster remembers that a node died (its sessions' resumes answer "lost" at once
# instead of after a check, and "expired" once their window has passed).
DEATH_MEMORY_MS = 86_400_000


@dataclass
class _Park:
    """A park waiting for its point in this node's publication order."""

    ids: list[str]
    taken: dict[str, Parcel] | None = None
    reached: anyio.Event | None = None
    subscription: int = 0


@dataclass
class _Claim:
    """A claim whose reply and whose point in the publication order are both awaited."""

    adopt: Any
    args: tuple[Any, ...]
    subscription: int = 0
    status: str = ""
    reply: Handover | None = None
    replied: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    failed: bool = False

    def answer(self, out: Any) -> None:
        """The claim script's reply (the first one counts: a batch may be sent again)."""
        if self.replied.is_set():
            return
        self.status = out[0].decode()
        if self.status == "ok":
            self.reply = Handover(
                snapshot=bytes(out[1]),
                mailbox=tuple(_mail(entry) for entry in out[3:]),
                gap=out[2] == b"1",
            )
        self.replied.set()


class RedisBackend:
    """A node of the cluster named `cluster_name` on the Redis at `url` (see module docstring).

    `probe_interval`: seconds within which a deaf subscription is detected and rebuilt (also
    the presence period: a dead node leaves every view within 3 × it). `timeout`: seconds a
    command to another node, or one Redis call, may take. `max_outbox_messages` /
    `max_outbox_bytes`: what waits while Redis is unreachable. `history_messages`: publications
    kept per topic for nodes catching up; `history_ttl`: seconds a topic's history outlives its
    last publication.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster_name: str = "stabilizer",
        node_id: str | None = None,
        probe_interval: float = 10.0,
        timeout: float = 5.0,
        max_outbox_messages: int = 10_000,
        max_outbox_bytes: int = 16 * 1024 * 1024,
        history_messages: int = 10_000,
        history_ttl: float = 600.0,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            # Never echo the URL: it may carry a password.
            scheme = url.split("://", 1)[0] + "://..." if isinstance(url, str) else url
            raise ConfigError("backend", scheme, "a redis://, rediss:// or unix:// URL")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                "backend", "redis://…", "installed redis-py: pip install 'stabilizer-asgi[redis]'"
            ) from exc
        if (
            not isinstance(cluster_name, str)
            or not cluster_name
            or any(c.isspace() for c in cluster_name)
        ):
            raise ConfigError("cluster_name", cluster_name, "a non-empty str without whitespace")
        self._url = url
        self._node_id = node_id or secrets.token_hex(8)
        self._prefix = cluster_name
        self._probe_interval = float(probe_interval)
        self._timeout = float(timeout)
        self._max_outbox = max_outbox_messages
        self._max_outbox_bytes = max_outbox_bytes
        self._history = history_messages
        self._max_connections = max_connections
        self._history_ttl_ms = max(1, int(history_ttl * 1000))
        # A record refreshed every probe_interval / 4 lives 2.75 × probe_interval, so a dead node
        # is gone from every view (refreshed as often) within 3 × probe_interval.
        self._presence_ttl_ms = max(1, int(2.75 * self._probe_interval * 1000))
        p = cluster_name
        self._node_channel = f"{p}:n:{self._node_id}".encode()
        self._cmd_channel = f"{p}:cmd".encode()
        self._topic_prefix = f"{p}:c:".encode()
        self._nodes_key = f"{p}:nodes"
        self._epoch_key = f"{p}:epoch"
        self._clients_key = f"{p}:clients:{self._node_id}"

        self._node: Node | None = None
        self._redis: Redis | None = None
        self._sub_redis: Redis | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopping = False
        # Outbox: (kind, a, b, size) in publish order.
        self._outbox: deque[tuple[int, Any, bytes, int]] = deque()
        self._outbox_bytes = 0
        self._outbox_ready: anyio.Event | None = None
        self._outbox_empty: anyio.Event | None = None
        self._seq = 0
        self._topic_seq: OrderedDict[str, int] = OrderedDict()
        # Subscriptions: the groups this node wants, their confirmations, what was read.
        self._groups: set[str] = set()
        self._confirmed: dict[bytes, anyio.Event] = {}
        self._last_id: dict[str, tuple[int, int]] = {}
        self._seen: dict[tuple[str, str], int] = {}
        # When each origin was last heard of: what was read from it is forgotten only long
        # after it left (a Redis restart empties the presence view for a moment).
        self._heard: dict[str, float] = {}
        self._pubsub: PubSub | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self._first_attempt: anyio.Event | None = None
        self._finished = anyio.Event()
        self._live = False
        self._write_error: str | None = None
        self._read_error: str | None = None
        self._probe_pending_since: float | None = None
        self._epoch: bytes | None = None
        # Presence and commands.
        self._nodes: dict[str, NodeInfo] = {}
        self._clients: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._parks: dict[str, _Park] = {}
        self._claims: dict[str, _Claim] = {}
        # Sessions adopted whose claim's marker the reader has not reached: publications read
        # meanwhile are not delivered to them. At most one per claim.
        # → (the subscription it was muted under, since when)
        self._muted: dict[str, tuple[int, float]] = {}
        # Counts the reader's (re)subscriptions: odd while subscribing and catching up, even
        # while it reads live, in publication order. Parks and claims note it when they start.
        self._subscriptions = 0
        self._awaiting: dict[str, str] = {}  # claim id → its session, until the marker
        self._handovers: dict[str, tuple[anyio.Event, list[str]]] = {}
        self.counters: dict[str, int] = {
            "published": 0,
            "received": 0,
            "caught_up": 0,
            "duplicates": 0,
            "gaps": 0,
            "outbox_dropped": 0,
            "reconnects": 0,
            "deaf": 0,
            "epoch_changes": 0,
            "parked": 0,
            "claimed": 0,
            "mailbox_appends": 0,
            "parked_expired": 0,
        }
        self._scripts: dict[str, str] = {}

    # ------------------------------------------------------------------ facets

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def broker(self) -> RedisBackend:
        return self

    @property
    def presence(self) -> RedisBackend:
        return self

    @property
    def store(self) -> RedisBackend:
        return self

    # ------------------------------------------------------------------ lifecycle

    def _client(self, *, blocking: bool) -> Redis:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: this backend decides when to reconnect and says so. A
        # bounded pool whose callers wait for a free connection (redis-py's default pool
        # raises "Too many connections" at 100 busy ones, which a reconnect storm reaches).
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=4 if blocking else self._max_connections,
            timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self._timeout,
            socket_timeout=None if blocking else self._timeout,
            client_name=f"stabilizer:{self._prefix}:{self._node_id}",
        )
        client = Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # closing the client closes its pool
        return client

    async def run(
        self, node: Node, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._node is not None:
            raise RuntimeError("this backend is already running")
        self._node = node
        self._stopping = False
        self._first_attempt = anyio.Event()
        self._finished = anyio.Event()
        self._redis = self._client(blocking=False)
        self._sub_redis = self._client(blocking=True)
        self._nodes = {self._node_id: NodeInfo(self._node_id, node.connections())}
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                tg.start_soon(self._reader)
                tg.start_soon(self._ticker)
                # Start as a member of the cluster, or degraded (and saying so) when Redis is
                # unreachable: the node serves its own sessions either way.
                with anyio.move_on_after(self._timeout):
                    await self._first_attempt.wait()
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._node = None
            self._live = False
            with anyio.CancelScope(shield=True):
                for client in (self._pubsub, self._redis, self._sub_redis):
                    if client is not None:
                        with anyio.move_on_after(1.0):
                            with contextlib.suppress(Exception):  # a broken connection
                                await client.aclose()
            self._pubsub = self._redis = self._sub_redis = None
            for pending in self._pending.values():
                pending.done.set()
            self._finished.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Send what the outbox holds (up to `timeout`), leave the cluster, stop."""
        tg = self._tg
        if tg is None:
            return
        self._stopping = True
        with anyio.move_on_after(timeout):
            while self._outbox:
                empty = self._outbox_empty = anyio.Event()
                self._wake_writer()
                await empty.wait()
        if self._outbox:
            self.counters["outbox_dropped"] += len(self._outbox)
            _log.event(
                logger,
                _log.CLUSTER_OUTBOX_OVERFLOW,
                level=logging.ERROR,
                node=self._node_id,
                dropped=len(self._outbox),
                detail="stopped with publications Redis never took",
            )
        redis = self._redis
        if redis is not None:
            with anyio.move_on_after(min(timeout, self._timeout)):
                try:
                    await self._script(redis, "heartbeat", [self._nodes_key], *self._presence(""))
                    await redis.publish(
                        self._cmd_channel, _encode({"k": "bye", "f": self._node_id}, None)
                    )
                except Exception:
                    pass
        tg.cancel_scope.cancel()
        # Returns once its connections are closed: no other node mistakes it for alive.
        with anyio.move_on_after(2.0):
            await self._finished.wait()

    def status(self) -> BackendStatus:
        problem = None
        if self._node is None:
            problem = "not started"
        elif self._write_error is not None:
            problem = f"redis unreachable: {self._write_error}"
        elif self._read_error is not None:
            problem = f"subscription down: {self._read_error}"
        elif not self._live:
            problem = "subscription not confirmed"
        counters = dict(self.counters)
        counters["outbox"] = len(self._outbox)
        return BackendStatus(
            healthy=problem is None,
            problem=problem,
            nodes=tuple(sorted(self._nodes.values(), key=lambda n: n.id)),
            counters=counters,
        )

    # ------------------------------------------------------------------ broker: publishing

    def publish(self, publication: Publication) -> None:
        if self._node is None:
            return
        group = publication.group
        topic = ALL_TOPIC if group is None else "g:" + group
        self._seq = seq = self._seq + 1
        topics = self._topic_seq
        prev = topics.pop(topic, 0)
        topics[topic] = seq
        if len(topics) > MAX_TOPICS:
            topics.popitem(last=False)
        header: dict[str, Any] = {"o": self._node_id, "s": seq, "p": prev}
        if group is not None:
            header["g"] = group
        if publication.exclude:
            header["x"] = sorted(publication.exclude)
        self.counters["published"] += 1
        self._enqueue(_PUB, topic, _encode(header, publication.payload))

    def _enqueue(self, kind: int, target: Any, message: bytes, *, force: bool = False) -> bool:
        size = len(message)
        if not force and (
            len(self._outbox) >= self._max_outbox
            or self._outbox_bytes + size > self._max_outbox_bytes
        ):
            # Dropped, not sent: its sequence number is spent, so receivers see the gap.
            dropped = self.counters["outbox_dropped"] = self.counters["outbox_dropped"] + 1
            if _power_of_ten(dropped):  # loud, without a line per dropped publication
                _log.event(
                    logger,
                    _log.CLUSTER_OUTBOX_OVERFLOW,
                    level=logging.ERROR,
                    node=self._node_id,
                    dropped=dropped,
                    detail="outbox full while Redis is unreachable",
                )
            return False
        self._outbox.append((kind, target, message, size))
        self._outbox_bytes += size
        self._wake_writer()
        return True

    def _wake_writer(self) -> None:
        ready = self._outbox_ready
        if ready is not None:
            self._outbox_ready = None
            ready.set()

    async def _writer(self) -> None:
        """Send the outbox in order, in batches; keep it while Redis is unreachable."""
        outbox = self._outbox
        attempt = 0
        while True:
            if not outbox:
                empty = self._outbox_empty
                if empty is not None:
                    self._outbox_empty = None
                    empty.set()
                ready = self._outbox_ready = anyio.Event()
                await ready.wait()
                continue
            batch = [outbox[i] for i in range(min(len(outbox), MAX_BATCH))]
            try:
                await self._send_batch(batch)
            except Exception as exc:
                self._down("write", exc)
                await anyio.sleep(_RECONNECT.delay(attempt, random.random()))
                attempt += 1
                continue
            attempt = 0
            if self._write_error is not None:
                self._write_error = None
            for _ in batch:
                entry = outbox.popleft()
                self._outbox_bytes -= entry[3]
                if entry[0] == _SIGNAL:
                    entry[1].set()

    async def _send_batch(self, batch: list[tuple[int, Any, bytes, int]]) -> None:
        redis = self._redis
        assert redis is not None
        sha = await self._sha(redis, "publish")
        release = await self._sha(redis, "release")
        park_end = await self._sha(redis, "park_end")
        claim_sha = await self._sha(redis, "claim")
        pipe = redis.pipeline(transaction=False)
        p = self._prefix
        claims: list[tuple[int, _Claim]] = []
        for kind, target, message, _size in batch:
            if kind == _TAKE:
                claims.append((len(pipe), target))
                pipe.evalsha(claim_sha, 0, p, self._node_id, *target.args)
                continue
            if kind == _PUB:
                pipe.evalsha(
                    sha,
                    3,
                    f"{p}:h:{target}",
                    self._topic_prefix + target.encode(),
                    f"{p}:pk:{target}",
                    self._history,
                    self._history_ttl_ms,
                    message,
                    p,
                )
            elif kind in (_RAW, _PROBE):
                pipe.publish(target, message)
            elif kind == _END_PARK:
                session_id, generation, confirmed = target
                pipe.evalsha(
                    park_end, 0, p, self._node_id, session_id, message, generation, confirmed
                )
            elif kind == _RELEASE:
                pipe.evalsha(release, 1, self._clients_key, target)
        if not len(pipe):
            return
        results = await pipe.execute(raise_on_error=False)
        for index, claim in claims:
            if not isinstance(results[index], Exception):
                claim.answer(results[index])
        for result in results:
            if isinstance(result, Exception):
                if "NOSCRIPT" in str(result):
                    self._scripts.clear()  # Redis restarted: load the scripts again
                raise result

    # ------------------------------------------------------------------ scripts

    async def _sha(self, redis: Redis, name: str) -> str:
        sha = self._scripts.get(name)
        if sha is None:
            source = {
                "publish": _PUBLISH,
                "heartbeat": _HEARTBEAT,
                "claim_client": _CLAIM_CLIENT,
                "release": _RELEASE_CLIENT,
                "claim_token": _CLAIM_TOKEN,
                "append": _APPEND,
                "park_begin": _PARK_BEGIN,
                "park_end": _PARK_END,
                "locate": _LOCATE,
                "claim": _CLAIM,
                "expire_parked": _EXPIRE_PARKED,
                "fate": _FATE,
            }[name]
            sha = str(await redis.script_load(source))
            self._scripts[name] = sha
        return sha

    async def _script(self, redis: Redis, name: str, keys: list[str], *args: Any) -> Any:
        for _ in range(2):
            sha = await self._sha(redis, name)
            try:
                return await redis.evalsha(sha, len(keys), *keys, *args)
            except Exception as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                self._scripts.clear()
        raise RuntimeError("script could not be loaded")  # pragma: no cover

    # ------------------------------------------------------------------ broker: subscribing

    async def subscribe(self, group: str) -> None:
        if self._node is None or group in self._groups:
            return
        self._groups.add(group)
        channel = self._topic_prefix + ("g:" + group).encode()
        confirmed = self._confirmed[channel] = anyio.Event()
        pubsub = self._pubsub
        if pubsub is None or not self._live:
            # Unreachable: the next connection subscribes to it. The node's own sessions must
            # not wait for Redis.
            return
        try:
            await pubsub.subscribe(channel)
        except Exception as exc:  # the reader sees the broken connection and rebuilds it
            self._down("read", exc)
            return
        with anyio.move_on_after(self._timeout):
            await confirmed.wait()

    def unsubscribe(self, group: str) -> None:
        if group not in self._groups:
            return
        self._groups.discard(group)
        topic = "g:" + group
        channel = self._topic_prefix + topic.encode()
        self._confirmed.pop(channel, None)
        self._last_id.pop(topic, None)
        for key in [k for k in self._seen if k[1] == topic]:
            del self._seen[key]
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._unsubscribe, group, channel)

    async def _unsubscribe(self, group: str, channel: bytes) -> None:
        pubsub = self._pubsub
        if group in self._groups or pubsub is None or not self._live:
            return  # joined again meanwhile, or the next connection will not subscribe to it
        try:
            await pubsub.unsubscribe(channel)
        except Exception as exc:
            self._down("read", exc)

    async def _reader(self) -> None:
        """Keep one pub/sub connection subscribed and caught up; rebuild it whenever it fails."""
        attempt = 0
        while True:
            with anyio.CancelScope() as scope:
                self._reader_scope = scope
                try:
                    await self._listen()
                except Exception as exc:
                    self._down("read", exc)
            self._reader_scope = None
            self._live = False
            if self._first_attempt is not None:
                self._first_attempt.set()
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                with anyio.move_on_after(1.0, shield=True):
                    with contextlib.suppress(Exception):  # the connection is broken already
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            self.counters["reconnects"] += 1
            if scope.cancelled_caught:
                attempt = 0  # deaf: rebuild at once
                continue
            await anyio.sleep(_RECONNECT.delay(attempt, random.random()))
            attempt += 1

    def _topic_channels(self) -> list[bytes]:
        prefix = self._topic_prefix
        return [prefix + ALL_TOPIC.encode()] + [prefix + ("g:" + g).encode() for g in self._groups]

    async def _listen(self) -> None:
        sub = self._sub_redis
        redis = self._redis
        assert sub is not None and redis is not None
        pubsub = self._pubsub = sub.pubsub()
        # Odd while (re)subscribing and catching up, even once reading live (see below).
        self._subscriptions += 1 if self._subscriptions % 2 == 0 else 2
        wanted = [self._node_channel, self._cmd_channel, *self._topic_channels()]
        await pubsub.subscribe(*wanted)
        waiting = set(wanted)
        early: list[dict[str, Any]] = []
        with anyio.fail_after(self._timeout):
            while waiting:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    waiting.discard(message["channel"])
                else:
                    early.append(message)
        epoch_changed = await self._check_epoch(redis)
        caught_up = await self._catch_up(redis, epoch_changed)
        # Caught up: from here on the reader reads in publication order again, markers
        # included. A park or claim that was under way across the rebuild cannot be placed in
        # that order (its marker may be lost, and catch-up delivered without markers): its
        # sessions are reported lost or its park called off (see `_settled`).
        self._subscriptions += 1
        if self._muted:
            self._unmute_stale()
        await self._resync_clients(redis)
        self._live = True
        self._read_error = None
        self._probe_pending_since = None
        for channel, event in self._confirmed.items():
            if channel in wanted:
                event.set()
        if self._first_attempt is not None:
            self._first_attempt.set()
        _log.event(logger, _log.CLUSTER_UP, node=self._node_id, caught_up=caught_up)
        await self._announce(redis)
        for message in early:
            await self._handle(message)
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None:
                await self._handle(message)

    async def _check_epoch(self, redis: Redis) -> bool:
        """True when Redis lost its data since this node last saw it (the epoch key changed)."""
        pipe = redis.pipeline(transaction=False)
        pipe.set(self._epoch_key, secrets.token_hex(8), nx=True)
        pipe.get(self._epoch_key)
        _, epoch = await pipe.execute()
        previous, self._epoch = self._epoch, epoch
        if previous is None or previous == epoch:
            return False
        self.counters["epoch_changes"] += 1
        self._scripts.clear()
        _log.event(logger, _log.CLUSTER_EPOCH_CHANGED, level=logging.WARNING, node=self._node_id)
        return True

    async def _catch_up(self, redis: Redis, from_start: bool) -> int:
        """Deliver what was published on this node's topics while it was not listening."""
        entries: list[tuple[str, int, str, tuple[int, int], dict[str, Any], Payload | None]] = []
        p = self._prefix
        topics = [ALL_TOPIC] + ["g:" + g for g in self._groups]
        for topic in topics:
            last = self._last_id.get(topic)
            stream = f"{p}:h:{topic}"
            if last is None and not from_start:
                # Never read this topic: publications from now on are what it gets.
                newest: Any = await redis.xrevrange(stream, count=1)
                self._last_id[topic] = _stream_id(newest[0][0]) if newest else (0, 0)
                continue
            start = "-" if from_start or last is None else f"({last[0]}-{last[1]}"
            while True:
                batch: Any = await redis.xrange(stream, min=start, max="+", count=1000)
                for raw_id, fields in batch:
                    header, payload = _decode(fields[b"m"])
                    entries.append(
                        (header["o"], header["s"], topic, _stream_id(raw_id), header, payload)
                    )
                if len(batch) < 1000:
                    break
                start = "(" + batch[-1][0].decode()
        # Per origin in its publishing order; origins need no order among themselves.
        entries.sort(key=lambda e: (e[0], e[1]))
        delivered = 0
        for _origin, _seq, topic, stream_id, header, payload in entries:
            if self._accept(topic, stream_id, header, payload):
                delivered += 1
        self.counters["caught_up"] += delivered
        return delivered

    async def _resync_clients(self, redis: Redis) -> None:
        """Rewrite this node's client-id index (Redis may have lost it, or missed releases)."""
        pipe = redis.pipeline(transaction=False)
        pipe.delete(self._clients_key)
        if self._clients:
            pipe.hset(self._clients_key, mapping=dict(self._clients))  # type: ignore[arg-type]
            pipe.pexpire(self._clients_key, self._presence_ttl_ms)
        await pipe.execute()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":
            await self._confirm(message["channel"])
            return
        if kind != "message":
            return
        channel: bytes = message["channel"]
        data: bytes = message["data"]
        if channel.startswith(self._topic_prefix):
            topic = channel[len(self._topic_prefix) :].decode()
            raw_id, _, rest = data.partition(b"\n")
            header, payload = _decode(rest)
            self._accept(topic, _stream_id(raw_id), header, payload)
        elif channel == self._cmd_channel:
            self._on_command(*_decode(data))
        elif channel == self._node_channel:
            header, payload = _decode(data)
            if header.get("k") == "claimed":
                await self._claim_reached(header.get("r", ""))
            else:
                self._on_direct(header, payload)

    async def _confirm(self, channel: bytes) -> None:
        """A group subscription made while live is in place: note where its stream stands."""
        event = self._confirmed.get(channel)
        if event is None or event.is_set():
            return
        topic = channel[len(self._topic_prefix) :].decode()
        redis = self._redis
        if redis is not None and topic not in self._last_id:
            try:
                newest: Any = await redis.xrevrange(f"{self._prefix}:h:{topic}", count=1)
                self._last_id[topic] = _stream_id(newest[0][0]) if newest else (0, 0)
            except Exception as exc:
                self._down("read", exc)
        event.set()

    def _accept(
        self,
        topic: str,
        stream_id: tuple[int, int],
        header: dict[str, Any],
        payload: Payload | None,
    ) -> bool:
        """One publication read from a topic: deliver it unless it is a repeat; note gaps."""
        if topic != ALL_TOPIC and topic[2:] not in self._groups:
            return False  # left the group meanwhile
        last_id = self._last_id.get(topic)
        if last_id is None or stream_id > last_id:
            self._last_id[topic] = stream_id
        origin = header["o"]
        if origin == self._node_id:
            return False
        self._heard[origin] = time.monotonic()
        key = (origin, topic)
        seq = header["s"]
        last = self._seen.get(key)
        if last is not None:
            if seq <= last:
                self.counters["duplicates"] += 1
                return False
            prev = header.get("p", 0)
            if prev > last:
                self._gap(origin, topic, seq - last - 1)
        self._seen[key] = seq
        node = self._node
        if node is None or payload is None:
            return False
        self.counters["received"] += 1
        group = header.get("g")
        exclude = header.get("x")
        skip = frozenset(exclude) if exclude else frozenset()
        if self._muted:
            skip = skip | self._muted.keys()
        node.deliver(Publication(payload, group, skip))
        return True

    def _gap(self, origin: str, topic: str, missed: int) -> None:
        self.counters["gaps"] += 1
        group = None if topic == ALL_TOPIC else topic[2:]
        _log.event(
            logger,
            _log.CLUSTER_GAP,
            level=logging.ERROR,
            node=self._node_id,
            origin=origin,
            group=group,
            missed=missed,
        )
        node = self._node
        if node is not None:
            node.lost(group)

    def _down(self, side: str, exc: BaseException) -> None:
        error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if side == "write":
            changed = self._write_error is None
            self._write_error = error
        else:
            changed = self._read_error is None
            self._read_error = error
            self._live = False
        if changed:
            _log.event(
                logger, _log.CLUSTER_DOWN, level=logging.WARNING, node=self._node_id, error=error
            )

    # ------------------------------------------------------------------ commands

    async def request(self, command: Command) -> bool:
        others = {n for n in self._nodes if n != self._node_id}
        if self._node is None or not others or not self._live:
            return False  # alone, or cut off from the others: nobody can answer
        rid = secrets.token_hex(8)
        pending = self._pending[rid] = _Pending(others, anyio.Event())
        header: dict[str, Any] = {
            "k": "cmd",
            "r": rid,
            "f": self._node_id,
            "a": command.action,
            "t": command.target,
        }
        if command.group is not None:
            header["g"] = command.group
        if command.action in ("close", "kick_client"):
            header["c"] = command.code
            header["rs"] = command.reason
        try:
            if not self._enqueue(_RAW, self._cmd_channel, _encode(header, command.payload)):
                return False
            with anyio.move_on_after(self._timeout):
                await pending.done.wait()
            return pending.result
        finally:
            del self._pending[rid]

    def _on_command(self, header: dict[str, Any], payload: Payload | None) -> None:
        kind = header.get("k")
        origin = header.get("f")
        if not isinstance(origin, str) or origin == self._node_id:
            return
        if kind == "hello":
            self._nodes.setdefault(origin, NodeInfo(origin, 0))
            return
        if kind == "bye":
            self._nodes.pop(origin, None)
            return
        if kind != "cmd":
            return
        command = Command(
            action=header["a"],
            target=header["t"],
            payload=payload,
            group=header.get("g"),
            code=header.get("c", 1000),
            reason=header.get("rs", ""),
        )
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._execute, origin, header["r"], command)

    async def _execute(self, origin: str, rid: str, command: Command) -> None:
        node = self._node
        result: bool | None = None
        if node is not None:
            with anyio.move_on_after(self._timeout):
                try:
                    result = await node.execute(command)
                except Exception:
                    logger.exception("cluster command %s failed", command.action)
                    result = False
        reply = _encode({"k": "re", "r": rid, "f": self._node_id, "v": result}, None)
        self._enqueue(_RAW, f"{self._prefix}:n:{origin}".encode(), reply)

    def _on_direct(self, header: dict[str, Any], payload: Payload | None) -> None:
        kind = header.get("k")
        if kind == "probe":
            self._probe_pending_since = None
        elif kind == "parked":
            self._park_reached(header.get("r", ""))
        elif kind == "ho":
            tg = self._tg
            origin, rid = header.get("f"), header.get("r")
            if tg is not None and isinstance(origin, str) and isinstance(rid, str):
                tg.start_soon(self._hand_over_for, origin, rid, header.get("t"), header.get("g"))
        elif kind == "hr":
            waiting = self._handovers.get(header.get("r", ""))
            if waiting is not None:
                waiting[1].append(str(header.get("v")))
                waiting[0].set()
        elif kind == "re":
            pending = self._pending.get(header.get("r", ""))
            if pending is None:
                return
            origin = header.get("f")
            pending.expected.discard(origin)
            if header.get("v"):
                pending.result = True
                pending.done.set()
            elif not pending.expected:
                pending.done.set()

    async def _announce(self, redis: Redis) -> None:
        """Tell the other nodes this one is here, so their next command waits for its answer."""
        await self._presence_round(redis)
        await redis.publish(self._cmd_channel, _encode({"k": "hello", "f": self._node_id}, None))

    # ------------------------------------------------------------------ presence and probe

    def _presence(self, record: str) -> tuple[str, str, int, str]:
        return (self._prefix, self._node_id, self._presence_ttl_ms, record)

    async def _presence_round(self, redis: Redis) -> None:
        node = self._node
        connections = node.connections() if node is not None else 0
        census = node.census() if node is not None else (0, 0, 0)
        record = _dumps({"c": connections, "s": census})
        flat = await self._script(redis, "heartbeat", [self._nodes_key], *self._presence(record))
        nodes: dict[str, NodeInfo] = {}
        for i in range(0, len(flat), 2):
            node_id = flat[i].decode()
            try:
                doc = json.loads(flat[i + 1])
                connected, detached, groups = (int(x) for x in doc.get("s", (0, 0, 0)))
                nodes[node_id] = NodeInfo(
                    node_id, int(doc.get("c", 0)), connected, detached, groups
                )
            except (ValueError, AttributeError, TypeError):
                nodes[node_id] = NodeInfo(node_id, 0)
        nodes[self._node_id] = NodeInfo(self._node_id, connections, *census)
        self._nodes = nodes
        self._write_error = None
        # Forget what was read from nodes gone for longer than any history is kept (bounded by
        # the nodes of that period).
        now = time.monotonic()
        heard = self._heard
        for node_id in nodes:
            heard[node_id] = now
        horizon = now - self._history_ttl_ms / 1000
        gone = {origin for origin, at in heard.items() if at < horizon}
        if gone:
            for origin in gone:
                del heard[origin]
            for key in [k for k in self._seen if k[0] in gone]:
                del self._seen[key]

    async def _ticker(self) -> None:
        """Presence every probe_interval / 4, and the probe that proves the subscription."""
        period = self._probe_interval / 4
        while True:
            redis = self._redis
            if redis is not None and not self._stopping:
                try:
                    with anyio.fail_after(self._timeout):
                        await self._presence_round(redis)
                        await self._expire_parked(redis)
                    if self._muted:
                        self._unmute_stale()
                except Exception as exc:
                    self._down("write", exc)
            pending = self._probe_pending_since
            if self._write_error is not None:
                # Writes fail: the probe may never have reached Redis, so it proves nothing.
                self._probe_pending_since = pending = None
            elif (
                self._live
                and pending is not None
                and time.monotonic() - pending > self._probe_interval / 2
            ):
                self.counters["deaf"] += 1
                self._read_error = "probe not received: subscription deaf, rebuilding"
                self._live = False
                _log.event(logger, _log.CLUSTER_DEAF, level=logging.WARNING, node=self._node_id)
                scope = self._reader_scope
                if scope is not None:
                    scope.cancel()
            elif self._live and self._write_error is None and pending is None:
                # Timed from now: the outbox is empty or draining while Redis answers writes.
                self._probe_pending_since = time.monotonic()
                self._enqueue(_PROBE, self._node_channel, _encode({"k": "probe"}, None))
            await anyio.sleep(period)

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(sorted(self._nodes.values(), key=lambda n: n.id))

    async def claim_client(self, client_id: str, *, exclusive: bool) -> tuple[str, ...]:
        redis = self._redis
        registered = True
        holders: tuple[str, ...] = ()
        if redis is not None:
            try:
                with anyio.fail_after(self._timeout):
                    out = await self._script(
                        redis,
                        "claim_client",
                        [self._nodes_key],
                        self._prefix,
                        self._node_id,
                        client_id,
                        "1" if exclusive else "0",
                        self._presence_ttl_ms,
                    )
                registered = bool(out[0])
                holders = tuple(h.decode() for h in out[1:])
            except Exception as exc:
                # Unreachable: decide on this node's sessions alone; the index is rewritten
                # from `_clients` when Redis returns.
                self._down("write", exc)
        if registered:
            self._clients[client_id] = self._clients.get(client_id, 0) + 1
        return holders

    def release_client(self, client_id: str) -> None:
        n = self._clients.get(client_id, 0)
        if n <= 0:
            return
        if n == 1:
            del self._clients[client_id]
        else:
            self._clients[client_id] = n - 1
        self._enqueue(_RELEASE, client_id, b"")

    # ------------------------------------------------------------------ session store

    async def claim_token(self, session_id: str, generation: int, ttl: float) -> bool:
        redis = self._redis
        if redis is None:
            return True
        try:
            with anyio.fail_after(self._timeout):
                result = await self._script(
                    redis,
                    "claim_token",
                    [f"{self._prefix}:gen:{session_id}"],
                    generation,
                    max(1, int(ttl * 1000)),
                )
        except Exception as exc:
            # Unreachable: the session is this node's own, whose generation already makes its
            # tokens single-use here.
            self._down("write", exc)
            return True
        return bool(result)

    # -- moving sessions between nodes (see base.SessionStore and the module docstring)

    async def park(self, requests: Sequence[ParkRequest]) -> set[str]:
        redis = self._redis
        parked: set[str] = set()
        if redis is None or self._node is None or not requests:
            return parked
        for start in range(0, len(requests), MAX_BATCH):
            chunk = requests[start : start + MAX_BATCH]
            parked |= await self._park_chunk(redis, chunk)
        return parked

    async def _park_chunk(self, redis: Redis, chunk: Sequence[ParkRequest]) -> set[str]:
        rid = secrets.token_hex(8)
        park = self._parks[rid] = _Park([], reached=anyio.Event(), subscription=self._subscriptions)
        args: list[Any] = [self._prefix, self._node_id, _encode({"k": "parked", "r": rid}, None)]
        for r in chunk:
            args += [
                r.session_id,
                _dumps(list(r.groups)),
                max(1, int(r.ttl * 1000)),
                r.max_messages,
                r.max_bytes,
            ]
        try:
            try:
                with anyio.fail_after(self._timeout):
                    started = await self._script(redis, "park_begin", [], *args)
            except Exception as exc:
                self._park_failed(len(chunk), exc)
                return set()
            park.ids.extend(r.session_id for r, ok in zip(chunk, started, strict=True) if ok)
            if not park.ids:
                return set()
            # The park's point in the publication order is its marker: this node's reader
            # delivers everything published before it to the sessions here, then takes them.
            assert park.reached is not None
            with anyio.move_on_after(2 * self._timeout):
                await park.reached.wait()
            if not park.reached.is_set():
                # The reader is too far behind (or down): the parks are called off, the
                # sessions stay here (a resume elsewhere asks for them again).
                for session_id in park.ids:
                    self._enqueue(_END_PARK, (session_id, 0, 0), b"", force=True)
                self._park_failed(
                    len(park.ids), TimeoutError("park marker not reached"), down=False
                )
                return set()
            taken = park.taken or {}
            done = anyio.Event()
            self._enqueue(_SIGNAL, done, b"", force=True)
            with anyio.move_on_after(2 * self._timeout):
                await done.wait()
            # Not written yet (Redis slow or away): the ends wait in the outbox, in order.
            self.counters["parked"] += len(taken)
            return set(taken)
        finally:
            del self._parks[rid]

    def _park_failed(self, sessions: int, exc: BaseException, *, down: bool = True) -> None:
        if down:
            self._down("write", exc)
        _log.event(
            logger,
            _log.CLUSTER_PARK_FAILED,
            level=logging.ERROR,
            node=self._node_id,
            sessions=sessions,
            error=type(exc).__name__,
        )

    def _park_reached(self, rid: str) -> None:
        """The park's marker: take the sessions (snapshots) and complete the park in order."""
        park = self._parks.get(rid)
        node = self._node
        if park is None or park.reached is None or park.reached.is_set():
            return
        if park.subscription != self._subscriptions or self._subscriptions % 2:
            # The subscription was rebuilt since the park began: catch-up may have delivered
            # to these sessions what their mailboxes also hold. Called off; they stay here.
            node = None
        taken = node.take(park.ids) if node is not None else {}
        park.taken = taken
        for session_id in park.ids:
            parcel = taken.get(session_id)
            if parcel is None:  # not taken (resumed here meanwhile): the park is forgotten
                self._enqueue(_END_PARK, (session_id, 0, 0), b"", force=True)
            else:
                self._enqueue(
                    _END_PARK,
                    (session_id, parcel.generation, 1 if parcel.confirmed else 0),
                    parcel.snapshot,
                    force=True,
                )
        park.reached.set()

    async def locate(self, session_id: str) -> Whereabouts:
        redis = self._redis
        if redis is None:
            return Whereabouts()
        try:
            with anyio.fail_after(self._timeout):
                state, owner, groups = await self._script(
                    redis, "locate", [], self._prefix, session_id
                )
        except Exception as exc:
            self._down("write", exc)
            return Whereabouts(state="unreachable")
        state = {b"1": "parking", b"2": "parked"}.get(state, "")
        return Whereabouts(
            state=state,
            owner=owner.decode() or None,
            groups=tuple(str(g) for g in json.loads(groups)),
        )

    async def claim(
        self,
        session_id: str,
        generation: int,
        ttl: float,
        adopt: Callable[[Handover], None],
    ) -> str | None:
        if self._redis is None or self._node is None:
            return "unreachable"
        rid = secrets.token_hex(8)
        marker = _encode({"k": "claimed", "r": rid}, None)
        claim = self._claims[rid] = _Claim(
            adopt,
            (session_id, generation, max(1, int(ttl * 1000)), marker, rid),
            self._subscriptions,
        )
        # Through the outbox: ordered after every publication this node made before the call
        # (those reached the mailbox); what it publishes from now until `adopt` is the
        # caller's to hand to the session (see `SessionStore.claim`).
        self._enqueue(_TAKE, claim, b"", force=True)
        try:
            with anyio.move_on_after(2 * self._timeout):
                await claim.replied.wait()
            if not claim.replied.is_set():
                return "unreachable"
            if claim.status != "ok" or claim.reply is None:
                return claim.status
            # Adopted now; until this node's reader reaches the claim's marker, what it reads
            # was published before the claim (and is in the mailbox): not delivered to it.
            self._muted[session_id] = (self._subscriptions, time.monotonic())
            self._awaiting[rid] = session_id
            try:
                claim.adopt(claim.reply)
            except Exception:
                self._muted.pop(session_id, None)
                self._awaiting.pop(rid, None)
                logger.exception("adopting a claimed session failed")
                return "unreachable"
            if claim.subscription != self._subscriptions or self._subscriptions % 2:
                # The subscription was rebuilt (or is catching up) since the claim was sent.
                self._awaiting.pop(rid, None)
                self._report_lost(session_id)
            self.counters["claimed"] += 1
            return None
        finally:
            claim.failed = True
            claim.done.set()
            del self._claims[rid]

    async def _claim_reached(self, rid: str) -> None:
        """The claim's marker: from here on, what the reader delivers was published after the
        claim and reaches the adopted session (the reader waits for the adoption, which
        follows the claim's reply, already on its way)."""
        claim = self._claims.get(rid)
        if claim is not None:  # its reply is not in yet
            with anyio.move_on_after(2 * self._timeout):
                await claim.done.wait()
        session_id = self._awaiting.pop(rid, None)
        if session_id is not None:
            self._muted.pop(session_id, None)

    def _unmute_stale(self) -> None:
        """Claims whose marker can never come (the subscription was rebuilt since): what
        their sessions missed cannot be told, so they are reported lost (their clients
        resync). A reader that is merely behind reaches its markers: nothing is decided on
        time alone."""
        current = self._subscriptions
        horizon = time.monotonic() - MUTE_LIMIT
        stale = {
            sid for sid, (sub, since) in self._muted.items() if sub != current or since < horizon
        }
        for rid in [rid for rid, sid in self._awaiting.items() if sid in stale]:
            del self._awaiting[rid]
        for session_id in stale:
            self._report_lost(session_id)

    def _report_lost(self, session_id: str) -> None:
        """An adopted session whose claim cannot be placed in the publication order: unmuted,
        and reported lost to the node (its next resume answers "gap")."""
        self._muted.pop(session_id, None)
        self.counters["gaps"] += 1
        node = self._node
        if node is not None:
            node.lost_session(session_id)

    async def append(self, session_id: str, payload: Payload) -> bool:
        redis = self._redis
        if redis is None:
            return False
        if isinstance(payload, str):
            entry = b"t" + payload.encode("utf-8", "surrogatepass")
        else:
            entry = b"b" + bytes(payload)
        try:
            with anyio.fail_after(self._timeout):
                done = await self._script(
                    redis, "append", [], self._prefix, session_id, entry, len(entry) - 1
                )
        except Exception as exc:
            self._down("write", exc)
            return False
        if done:
            self.counters["mailbox_appends"] += 1
        return bool(done)

    async def fate(self, node_id: str, window: float) -> str:
        redis = self._redis
        if redis is None:
            return "lost"
        try:
            with anyio.fail_after(self._timeout):
                answer = await self._script(
                    redis,
                    "fate",
                    [],
                    self._prefix,
                    node_id,
                    max(1, int(window * 1000)),
                    DEATH_MEMORY_MS,
                )
        except Exception as exc:
            self._down("write", exc)
            return "lost"
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    async def hand_over(self, node_id: str, session_id: str, generation: int) -> str:
        redis = self._redis
        if redis is None or self._node is None:
            return "timeout"
        rid = secrets.token_hex(8)
        answer: list[str] = []
        event = anyio.Event()
        self._handovers[rid] = (event, answer)
        message = _encode(
            {"k": "ho", "r": rid, "f": self._node_id, "t": session_id, "g": generation}, None
        )
        channel = f"{self._prefix}:n:{node_id}".encode()
        try:
            # Nobody listening on the node's channel: it is gone (or its subscription is being
            # rebuilt, which takes well under the timeout): asked again until the timeout.
            with anyio.move_on_after(self._timeout):
                while True:
                    try:
                        receivers = await redis.publish(channel, message)
                    except Exception as exc:
                        self._down("write", exc)
                        receivers = 0
                    if receivers:
                        break
                    await anyio.sleep(0.05)
            if not receivers:
                return "gone"
            # Its answer may wait for an old connection to close and for the park.
            with anyio.move_on_after(2 * self._timeout):
                await event.wait()
            return answer[0] if answer else "timeout"
        finally:
            del self._handovers[rid]

    async def _hand_over_for(self, origin: str, rid: str, session_id: object, gen: object) -> None:
        node = self._node
        result = "gone" if self._stopping else "unknown"  # leaving: its sessions are parked
        if (
            node is not None
            and not self._stopping
            and isinstance(session_id, str)
            and isinstance(gen, int)
        ):
            try:
                result = await node.hand_over(session_id, gen)
            except Exception:
                logger.exception("cluster hand-over failed")
                result = "lost"
        reply = _encode({"k": "hr", "r": rid, "f": self._node_id, "v": result}, None)
        self._enqueue(_RAW, f"{self._prefix}:n:{origin}".encode(), reply, force=True)

    async def _expire_parked(self, redis: Redis) -> None:
        """End the parked sessions whose window passed (each by exactly one node)."""
        snapshots = await self._script(redis, "expire_parked", [], self._prefix, EXPIRE_BATCH)
        node = self._node
        for snapshot in snapshots:
            self.counters["parked_expired"] += 1
            if node is not None:
                try:
                    node.ended(bytes(snapshot))
                except Exception:
                    logger.exception("ending an expired parked session failed")

    async def generation(self, session_id: str) -> int | None:
        redis = self._redis
        if redis is None:
            return None
        try:
            with anyio.fail_after(self._timeout):
                value = await redis.get(f"{self._prefix}:gen:{session_id}")
        except Exception as exc:
            self._down("write", exc)
            return None
        return None if value is None else int(value)
