"""`Stabilizer`: the process-wide manager every endpoint reaches through `scope["state"]`."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.abc

from . import logging as _log
from .asgi import _runtime
from .asgi.connection import (
    DELIVERED,
    deliver,
    encode_message,
    escaped,
    frame_of,
    offer_one,
    payload_of,
)
from .backends import Command, Handover, Parcel, ParkRequest, Payload, create_backend
from .cluster import Cluster
from .config import StabilizerConfig
from .core import snapshot, wire
from .core.heartbeat import TimerWheel
from .core.limits import ConnectionCounter
from .core.metrics import History, Metrics, seconds
from .core.registry import Registry
from .core.replay import ReplayBuffer
from .core.session import Session, SessionState
from .core.tokens import (
    TokenSigner,
    UnknownKeyError,
    after_resume,
    normalize_secret,
    spendable,
)
from .exceptions import (
    ConfigError,
    InvalidTokenError,
    MemoryLimitExceededError,
    SessionNotFoundError,
    TokenExpiredError,
)
from .types import Message

if TYPE_CHECKING:
    from .asgi.connection import Connection

logger = logging.getLogger("stabilizer_asgi")

_monotonic = time.monotonic

# Close codes after which an opted-in session stays resumable (DETACHED) rather than ending:
# an abnormal drop, a heartbeat timeout, the server going away or restarting. 1005 ("no status")
# is included because uvicorn reports a lost TCP connection as 1005, not 1006; a client that
# means to end its session closes with 1000 or 1001.
DETACH_CODES = frozenset({1005, 1006, 1011, 1012, 1014})
# Ids of recently expired sessions, so a late token is answered "expired" rather than "unknown".
MAX_TOMBSTONES = 4096
# Expired detached sessions swept per housekeeping tick (bounded work per tick).
SWEEP_BATCH = 1000
# Seconds a hand-over waits for others to park with it in one batch.
PARK_GATHER = 0.002
# Seconds drain() waits for the apps of the connections it closed to unwind.
DRAIN_GRACE = 5.0


class BroadcastResult(NamedTuple):
    """What a broadcast did: sessions targeted, frames handed over, dropped, failed."""

    total: int
    delivered: int
    dropped: int
    failed: int


class ShutdownReport(NamedTuple):
    """What a drain or shutdown did: connections closed, closes that failed, seconds taken."""

    closed: int
    failed: int
    duration: float


class Stabilizer:
    """Sessions, groups, sends and broadcast, limits and heartbeat for one process."""

    def __init__(self, config: StabilizerConfig | None = None, **kwargs: Any) -> None:
        self.config = cfg = StabilizerConfig.from_kwargs(config, **kwargs)
        self._registry = Registry(cfg.num_shards)
        self._connecting: dict[str, Session] = {}
        self._limits = ConnectionCounter(cfg.max_connections, cfg.max_connections_per_ip)
        tick = min(cfg.heartbeat_interval, cfg.heartbeat_timeout) / 8
        self._tick = min(1.0, max(0.005, tick))
        self._wheel: TimerWheel[Connection] = TimerWheel(self._tick)
        self._tg: anyio.abc.TaskGroup | None = None
        self._service_token: object = None
        self._service_starting = False
        self._service_up: anyio.Event | None = None
        self._service_stopped: anyio.Event | None = None
        self._pending: list[tuple[Callable[..., Coroutine[Any, Any, Any]], tuple[Any, ...]]] = []
        self._draining = False
        self._total_memory = 0
        self._reg_seq = 0
        self._started = _monotonic()
        self.metrics = Metrics()
        self._prometheus: Any = None  # the metrics route's exporter, made on first use
        self._otel: Any = None  # OpenTelemetry instrumentation (`otel.instrument`)
        # Called by the housekeeper on each tick with the time (exporters that copy the
        # metrics somewhere, e.g. prometheus_client's multiprocess files).
        self._periodic: list[Callable[[float], None]] = [self._sample_history]
        self.history = History()
        # Kept for code that reads the counters table directly; the metrics core owns it.
        self.counters = self.metrics.counters
        # Connections whose app took frames not yet acknowledged to the client: acknowledged at
        # the next housekeeping tick. At most one entry per live connection (left at close);
        # emptied every tick.
        self._ack_due: set[Connection] = set()
        # The server's own websocket message limit (uvicorn: `ws_max_size`), read from the
        # first connection's `receive` (see `_probe_server`); None while not known.
        self._server_probed = False
        self._server_ws_max_size: int | None = None
        self.backend = create_backend(cfg)
        self.cluster = Cluster(
            self.backend,
            deliver=self._deliver_payload,
            execute=self._execute,
            lost=self._lost,
            connections=lambda: self._limits.total,
            census=self._census,
            take=self._take,
            hand_over=self._hand_over,
            ended=self._parked_ended,
            lost_session=self._lost_session,
        )
        # Groups this node is subscribed to for a session it is claiming from the cluster
        # (it must hear the group before the claim's point): kept while the claim runs.
        self._pinned: dict[str, int] = {}
        # Sessions being claimed here, with what this node broadcast to them since the claim
        # was sent (neither in their mailbox nor delivered here yet): handed over at adoption.
        # Each is bounded like a replay buffer.
        self._arriving: dict[str, _Arriving] = {}
        # Sessions being handed over to another node right now (at most one per session), and
        # the park batch gathering them.
        self._moving: dict[str, anyio.Event] = {}
        self._park_batch: _ParkBatch | None = None
        if cfg.otel:
            try:
                from .otel import instrument
            except ImportError as exc:
                raise ConfigError("otel", True, "False, or install stabilizer-asgi[otel]") from exc
            instrument(self)
        # In a cluster a token names the node holding its session (see `_resume_from_cluster`).
        self._token_node = "" if cfg.backend == "memory" else self.backend.node_id
        keys, generated = normalize_secret(cfg.secret)
        self._signer = TokenSigner(keys)
        self._resumable = (
            cfg.resume_window > 0 and cfg.replay_buffer_messages > 0 and cfg.replay_buffer_bytes > 0
        )
        # The replay buffer of every opted-in session until its first frame: an idle session
        # allocates none of its own (see `ReplayBuffer`).
        self._idle_replay: ReplayBuffer[Any] | None = (
            ReplayBuffer(cfg.replay_buffer_messages, cfg.replay_buffer_bytes, self.metrics)
            if self._resumable
            else None
        )
        self._detached: deque[tuple[float, Session]] = deque()
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        if generated:
            _log.event(logger, _log.SECRET_GENERATED, level=logging.WARNING)

    # The manager holds tasks, locks and connections and is shared by design: a copy of
    # `scope["state"]` (shallow or deep) must hand the app this same manager, not a clone.
    def __copy__(self) -> Stabilizer:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Stabilizer:
        return self

    # ------------------------------------------------------------------ queries

    def get(self, session_id: str) -> Session | None:
        """The session with this id (connected or detached) on this node, or None."""
        return self._registry.get(session_id) or self._connecting.get(session_id)

    def sessions(self, group: str | None = None) -> list[Session]:
        """This node's registered sessions, or its members of `group` (local in cluster mode)."""
        if group is None:
            return list(self._registry)
        return list(self._registry.members(group).values())

    def count(self) -> int:
        """Number of sessions registered on this node (local in cluster mode)."""
        return len(self._registry)

    def by_client(self, client_id: str) -> list[Session]:
        """This node's sessions whose client id is `client_id` (local in cluster mode)."""
        return self._registry.by_client(client_id)

    def groups(self) -> dict[str, int]:
        """Group name → number of members on this node (local in cluster mode)."""
        return self._registry.group_counts()

    @property
    def draining(self) -> bool:
        return self._draining

    def set_client_id(self, session_id: str, client_id: str | None) -> None:
        """Give a session another client id (None: none), e.g. once the app has authenticated
        its client; `by_client` and `duplicate_client` see the new one from now on."""
        if client_id is not None and (
            not isinstance(client_id, str) or not client_id or len(client_id) > 256
        ):
            raise ValueError(
                f"client_id must be None or a non-empty str of at most 256 characters: "
                f"{client_id!r}"
            )
        self._registry.set_client(self._require(session_id), client_id)

    # ------------------------------------------------------------------ sending

    def _require(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session is None:
            raise SessionNotFoundError(session_id)
        return session

    async def send(self, session_id: str, message: object) -> bool:
        """Send to one session without waiting on it; False if it is gone or the frame dropped.

        In cluster mode a session held by another node is sent to there (True once it was)."""
        frame, size = encode_message(message)
        session = self._registry.get(session_id)
        if session is None:
            return await self._send_elsewhere(session_id, payload_of(frame))
        if offer_one(session, frame, escaped(frame), size, _monotonic()) != DELIVERED:
            return False
        metrics = self.metrics
        metrics.frames_out += 1
        metrics.bytes_out += size
        return True

    async def _send_elsewhere(self, session_id: str, payload: Payload) -> bool:
        """`send` to a session this node does not hold: the node that does, else its mailbox
        if it is parked, else (claimed meanwhile) the node that took it."""
        cluster = self.cluster
        if not cluster.others:
            return False
        command = Command("send", session_id, payload=payload)
        if await cluster.request(command):
            return True
        if await self.backend.store.append(session_id, payload):
            return True
        return await cluster.request(command)

    async def broadcast(
        self,
        message: object,
        *,
        group: str | None = None,
        exclude: str | Collection[str] | None = None,
    ) -> BroadcastResult:
        """Send to every session (or a group's members) except `exclude`; never waits."""
        frame, size = encode_message(message)
        if exclude is None:
            skip: frozenset[str] = frozenset()
        elif isinstance(exclude, str):
            skip = frozenset((exclude,))
        else:
            skip = frozenset(exclude)
        started = _monotonic()
        counts = self._deliver(frame, size, group, skip)
        cluster = self.cluster
        if cluster.others:
            cluster.publish(payload_of(frame), group, skip)
            if self._arriving:
                for session_id, arriving in self._arriving.items():
                    if session_id not in skip and (group is None or group in arriving.groups):
                        arriving.add(frame, size, self.config.replay_buffer_messages)
        metrics = self.metrics
        metrics.count("broadcasts")
        metrics.observe_broadcast(_monotonic() - started)
        return BroadcastResult(*counts)

    def _deliver_payload(self, payload: Payload, group: str | None, skip: frozenset[str]) -> None:
        """A broadcast published by another node: fan it out to this node's sessions."""
        frame, size = frame_of(payload)
        self._deliver(frame, size, group, skip)

    def _deliver(
        self, frame: Message, size: int, group: str | None, skip: frozenset[str]
    ) -> tuple[int, int, int, int]:
        """Fan a broadcast out to this node's sessions: (total, delivered, dropped, failed)."""
        if group is None:
            targets: list[Session] = self._registry.snapshot()
        else:
            targets = list(self._registry.members(group).values())
        if skip:
            targets = [session for session in targets if session.id not in skip]
        counts = deliver(targets, frame, size, self.spawn)
        # Counted once per broadcast, not per recipient: frames handed to a transport (or held
        # for a client's resume), as in the result.
        metrics = self.metrics
        metrics.frames_out += counts[1]
        metrics.bytes_out += counts[1] * size
        return counts

    async def join(self, session_id: str, group: str) -> bool:
        """Add a session to a group (created on first join); False if no node has the session.

        Returns once it holds: a broadcast to the group made afterwards, on any node, reaches
        the session."""
        if not isinstance(group, str) or not group or len(group) > 256:
            raise ValueError(f"group must be a non-empty str of at most 256 characters: {group!r}")
        session = self.get(session_id)
        if session is None:
            return await self.cluster.request(Command("join", session_id, group=group))
        await self._join_local(session, group)
        return True

    async def _join_local(self, session: Session, group: str) -> None:
        registry = self._registry
        registry.join(session, group)
        if len(registry.members(group)) == 1:
            # The group's first member here: this node now needs the group's publications.
            await self.cluster.subscribe(group)

    async def leave(self, session_id: str, group: str) -> bool:
        """Remove a session from a group (a group with no members disappears); False if no
        node has the session."""
        session = self.get(session_id)
        if session is None:
            return await self.cluster.request(Command("leave", session_id, group=group))
        self._leave_local(session, group)
        return True

    def _leave_local(self, session: Session, group: str) -> None:
        self._registry.leave(session, group)
        self._unsubscribe_if_empty(group)

    def _unsubscribe_if_empty(self, group: str) -> None:
        """This node no longer needs `group`'s publications once no session here is in it
        (nor a session it is claiming)."""
        if not self._registry.members(group) and group not in self._pinned:
            self.cluster.unsubscribe(group)

    async def close(self, session_id: str, code: int = 1000, reason: str = "") -> bool:
        """Close a session's connection with `code`; False if there is no such live connection
        (on any node)."""
        session = self.get(session_id)
        if session is None:
            return await self.cluster.request(
                Command("close", session_id, code=code, reason=reason)
            )
        if session._conn is None:
            return False
        return bool(session._conn.abort(code, reason))

    # ------------------------------------------------------------------ cluster (called back)

    async def _execute(self, command: Command) -> bool | None:
        """A command from another node: True done, False refused, None: no such session here."""
        action = command.action
        if action == "kick_client":
            kicked = self._kick_client(command.target, command.code, command.reason)
            return True if kicked else None
        session = self.get(command.target)
        if session is None:
            return None
        if action == "send" and command.payload is not None:
            return await self.send(session.id, command.payload)
        if action == "close":
            return await self.close(session.id, command.code, command.reason)
        if action == "join" and command.group is not None:
            await self._join_local(session, command.group)
            return True
        if action == "leave" and command.group is not None:
            self._leave_local(session, command.group)
            return True
        return False

    def _kick_client(self, client_id: str, code: int, reason: str) -> int:
        """Close this node's connections of `client_id` (duplicate_client="replace")."""
        kicked = 0
        for old in self._registry.by_client(client_id):
            if old._conn is not None and old._conn.abort(code, reason):
                kicked += 1
        return kicked

    def _lost_session(self, session_id: str) -> None:
        """Publications for one session may have been lost (see `Node.lost_session`)."""
        session = self._registry.get(session_id)
        if session is None or session._replay is None:
            return
        session._lose_replay()
        if session._conn is not None:
            session._conn.abort(1012, "cluster gap")
        self.count_event("cluster_gaps")

    def _lost(self, group: str | None) -> None:
        """Publications for `group` (None: everyone) never arrived: no opted-in session that
        should have had them may resume exactly. Connected ones are closed 1012 so their
        clients reconnect now and resync ("gap"); detached ones answer "gap" when they come."""
        targets = self.sessions(group)
        closed = 0
        for session in targets:
            if session._replay is None:
                continue
            session._lose_replay()
            conn = session._conn
            if conn is not None and conn.abort(1012, "cluster gap"):
                closed += 1
        self.count_event("cluster_gaps")
        _log.event(
            logger,
            _log.CLUSTER_GAP_CLOSED,
            level=logging.WARNING,
            group=group,
            sessions=len(targets),
            closed=closed,
        )

    # ------------------------------------------------------------------ drain and shutdown

    async def drain(self, period: float | None = None) -> ShutdownReport:
        """Stop taking connections and move every client elsewhere, without a stampede.

        Health answers 503 and handshakes are refused from now on. Each opted-in client gets a
        `reconnect` hint whose delay is spread with jitter over `period` (default
        `drain_period`) and is then closed with 1012; plain clients, which cannot be told when
        to come back, are closed with 1012 at jittered moments spread over `period`.
        """
        period = self.config.drain_period if period is None else float(period)
        if period < 0:
            raise ValueError(f"period must be >= 0, got {period!r}")
        started = _monotonic()
        self._draining = True
        conns = [s._conn for s in self._registry if s._conn is not None]
        _log.event(logger, _log.DRAIN_STARTED, connections=len(conns), period=period)
        hinted = [c for c in conns if c.proto == "control"]
        plain = [c for c in conns if c.proto != "control"]
        # A connection that is already closing (or whose client leaves meanwhile) is not ours
        # to count; one we closed counts as closed once its app has unwound, else as failed.
        aborted: list[Connection] = []
        for conn in hinted:
            after_ms = int(random.uniform(0.0, period) * 1000)
            conn.offer_control(
                wire.encode_control("reconnect", after_ms=after_ms, reason="draining")
            )
            if conn.abort(1012, "server draining"):
                aborted.append(conn)
        if plain:
            moments = sorted(random.uniform(0.0, period) for _ in plain)
            for conn, at in zip(plain, moments, strict=True):
                delay = started + at - _monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                if conn.abort(1012, "server draining"):
                    aborted.append(conn)
        # In cluster mode the detached sessions move to the cluster store before the process
        # exits (their clients resume exactly on whichever node they reach), in batches as
        # their apps return, so few clients come back before their session is parked.
        parked = 0
        if self.cluster.others and self._resumable:
            with anyio.move_on_after(DRAIN_GRACE):
                while any(c.session._conn is c for c in aborted):
                    parked += await self._park_detached()
                    await anyio.sleep(0.05)
        else:
            await _unwound(aborted, DRAIN_GRACE)
        failed = sum(1 for c in aborted if c.session._conn is c)
        closed = len(aborted) - failed
        parked += await self._park_detached()
        report = ShutdownReport(closed, failed, round(_monotonic() - started, 3))
        self.count_event("drained", closed)
        _log.event(
            logger,
            _log.DRAINED,
            closed=closed,
            failed=failed,
            parked=parked,
            duration_ms=round(report.duration * 1000, 1),
        )
        return report

    async def shutdown(self, timeout: float = 30.0) -> ShutdownReport:
        """Close every remaining connection with 1012 and wait (up to `timeout`) for them to end."""
        started = _monotonic()
        self._draining = True
        conns = [s._conn for s in self._registry if s._conn is not None]
        aborted = [conn for conn in conns if conn.abort(1012, "server shutdown")]
        await _unwound(conns, timeout)
        failed = sum(1 for c in aborted if c.session._conn is c)
        report = ShutdownReport(len(aborted) - failed, failed, round(_monotonic() - started, 3))
        _log.event(
            logger,
            _log.SHUTDOWN,
            closed=report.closed,
            failed=failed,
            duration_ms=round(report.duration * 1000, 1),
        )
        return report

    # ------------------------------------------------------------------ cluster lifecycle

    async def _join_cluster(self) -> None:
        """Start the backend in the service task group (lifespan startup)."""
        tg = self._tg
        if tg is not None:
            await self.cluster.start(tg)

    async def _leave_cluster(self, timeout: float | None = None) -> None:
        """Send what is queued for the other nodes and leave (lifespan shutdown, after the
        connections are gone)."""
        await self.cluster.stop(self.config.cluster_timeout if timeout is None else timeout)

    async def _claim_client(self, session: Session) -> bool:
        """`duplicate_client` across the cluster for a new session: False to refuse it."""
        policy = self.config.duplicate_client
        client_id = session.client_id
        if (
            policy == "allow"
            or client_id is None
            or session._cluster_client
            or not self.cluster.others
        ):
            return True
        holders = await self.backend.presence.claim_client(client_id, exclusive=policy == "reject")
        if policy == "reject" and holders:
            return False
        session._cluster_client = True
        if holders:
            await self.cluster.request(
                Command("kick_client", client_id, code=1000, reason="replaced")
            )
        return True

    # ------------------------------------------------------------------ resume anywhere
    # A session moves between nodes through the cluster store (see backends/base.py): parked
    # by the node that holds it (a drain, or another node asking), claimed by the node its
    # client reached. Only the backend's ordering makes that exact; here are the decisions.

    def _park_request(self, session: Session, now: float) -> ParkRequest | None:
        """What parking `session` asks of the store: the rest of its resume window."""
        detached_at = session._detached_at
        left = self.config.resume_window - (now - detached_at if detached_at else 0.0)
        if left <= 0:
            return None
        cfg = self.config
        return ParkRequest(
            session.id,
            tuple(sorted(session.groups)),
            left,
            cfg.replay_buffer_messages,
            cfg.replay_buffer_bytes,
        )

    def _movable(self, session: Session) -> bool:
        return (
            session.state is SessionState.DETACHED
            and session._conn is None
            and session._replay is not None
        )

    async def _park_detached(self) -> int:
        """Park every detached session of this node in the cluster store (a drain, or the
        lifespan's end): they resume exactly on whichever node their clients reach."""
        if not self.cluster.others or not self._resumable:
            return 0
        now = _monotonic()
        requests = [
            r
            for r in (self._park_request(s, now) for s in self._registry if self._movable(s))
            if r is not None
        ]
        if not requests:
            return 0
        return len(await self.backend.store.park(requests))

    def _census(self) -> tuple[int, int, int]:
        """Sessions connected and detached here, and groups with members here (O(1))."""
        registered = len(self._registry)
        detached = self.metrics.detached_sessions
        return registered - detached, detached, self._registry.group_total()

    def _take(self, session_ids: Sequence[str]) -> dict[str, Parcel]:
        """`Node.take`: snapshot these detached sessions and let go of them (no end: no
        `on_disconnect`, no tombstone; they live on in the cluster store)."""
        taken: dict[str, Parcel] = {}
        why = "drain" if self._draining else "hand-over"
        for session_id in session_ids:
            session = self._registry.get(session_id)
            if session is None or not self._movable(session):
                continue
            try:
                blob = snapshot.dumps(session)
            except snapshot.SnapshotError as exc:
                self._session_event(
                    _log.NOT_MOVABLE, session, level=logging.WARNING, error=str(exc)
                )
                continue
            taken[session_id] = Parcel(blob, session._generation, session._token_confirmed)
            self._let_go(session)
            self.count_event("parked")
            self._session_event(_log.PARKED, session, why=why)
        return taken

    async def _hand_over(self, session_id: str, generation: int) -> str:
        """`Node.hand_over`: another node has a resume of this session with a token of
        `generation`. Its connection here (half-open, or not noticed gone yet) is closed and
        the session parked for that node to claim: "parked", else why not."""
        moving = self._moving.get(session_id)
        if moving is not None:
            # Another node's resume of it is being served (a racing resume): the session is
            # being parked; the claims decide which node gets it.
            with anyio.move_on_after(2 * self.config.cluster_timeout):
                await moving.wait()
            return "parked" if self._registry.get(session_id) is None else "lost"
        session = self._registry.get(session_id)
        if session is None:
            if session_id in self._tombstones:
                return "expired"
            if (await self.backend.store.locate(session_id)).state in ("parked", "parking"):
                return "parked"  # parked by this node a moment ago (a drain)
            return "unknown"
        if not spendable(session._generation, session._token_confirmed, generation):
            return "invalid"
        moving = self._moving[session_id] = anyio.Event()
        try:
            return await self._hand_over_now(session, generation)
        finally:
            del self._moving[session_id]
            moving.set()

    async def _hand_over_now(self, session: Session, generation: int) -> str:
        session_id = session.id
        conn = session._conn
        if conn is not None and conn.connecting:
            # A resume of it is being accepted here right now (the same client racing itself,
            # e.g. a retry after a lost hello): let that finish, then take the session over.
            with anyio.move_on_after(self.config.cluster_timeout):
                while conn.connecting and session._conn is conn:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            if not spendable(session._generation, session._token_confirmed, generation):
                return "invalid"
            conn = session._conn
            if conn is not None and conn.connecting:
                return "invalid"
        if conn is not None:
            self._detach(conn)
            conn.abort(1000, "session resumed on another connection")
            # What its app sends until it learns of the close goes to the session (see
            # `Connection._redirect`): parked once the app has returned, with those frames.
            with anyio.move_on_after(self.config.close_timeout):
                while not conn.finished:  # noqa: ASYNC110 - the app's own unwinding
                    await anyio.sleep(0.005)
        elif session.state is SessionState.DETACHED and self._window_passed(session):
            return "expired"
        if not self._movable(session):
            return "unknown"
        request = self._park_request(session, _monotonic())
        if request is None:
            return "expired"
        store = self.backend.store
        if await self._park_soon(request):
            self.count_event("handed_over")
            return "parked"
        # Parked by a drain's batch at the same moment: the asker claims it from there.
        if (await store.locate(session_id)).state in ("parked", "parking"):
            return "parked"
        return "lost"

    async def _park_soon(self, request: ParkRequest) -> bool:
        """Park one session for a hand-over, together with the others asked for at the same
        moment (a reconnect storm asks for hundreds): one store round per batch."""
        batch = self._park_batch
        if batch is None:
            batch = self._park_batch = _ParkBatch()
            self.spawn(self._run_park_batch, batch)
        batch.requests[request.session_id] = request
        with anyio.move_on_after(2 * self.config.cluster_timeout):
            await batch.done.wait()
        return request.session_id in batch.parked

    async def _run_park_batch(self, batch: _ParkBatch) -> None:
        try:
            await anyio.sleep(PARK_GATHER)
            self._park_batch = None  # asks from now on make the next batch
            batch.parked = await self.backend.store.park(list(batch.requests.values()))
        finally:
            if self._park_batch is batch:
                self._park_batch = None
            batch.done.set()

    def _parked_ended(self, blob: bytes) -> None:
        """`Node.ended`: a parked session's window passed; this node ends it for the cluster."""
        try:
            session = snapshot.loads(blob, memory_limit=None, on_charge=None, idle_replay=None)
        except snapshot.SnapshotError:
            logger.exception("an expired parked session could not be read")
            return
        session.state = SessionState.CLOSED
        self._tombstone(session.id)
        self.count_event("expired")
        self._ended_event(session, True)

    def _adopt(self, handover: Handover) -> Session:
        """A claimed session arrives: register it here, detached, with what waited for it
        (called at the claim's point in the publication order)."""
        session = snapshot.loads(
            handover.snapshot,
            memory_limit=self.config.max_memory_per_session,
            on_charge=self._on_charge,
            idle_replay=self._idle_replay,
        )
        for payload in handover.mailbox:
            frame, size = frame_of(payload)
            session._hold(escaped(frame), size)
        arriving = self._arriving.get(session.id)
        if arriving is not None:
            for frame, size in arriving.frames:
                session._hold(escaped(frame), size)
        if handover.gap or (arriving is not None and arriving.overflowed):
            session._lose_replay()
        session.state = SessionState.CLOSED  # registered below: the gauges count it from here
        self._reg_seq += 1
        session._seq = self._reg_seq
        self._registry.add(session)
        self._enqueue_detached(session)
        if session.client_id is not None and self.config.duplicate_client != "allow":
            # Its client now lives here for duplicate_client (its old node released it).
            session._cluster_client = True
            self.spawn(
                functools.partial(self.backend.presence.claim_client, exclusive=False),
                session.client_id,
            )
        self.count_event("adopted")
        self._session_event(_log.ADOPTED, session, mailbox=len(handover.mailbox))
        return session

    def _adopt_into(self, adopted: list[Session], handover: Handover) -> None:
        adopted.append(self._adopt(handover))

    async def _resume_from_cluster(self, conn: Connection) -> None:
        """A resume whose session this node does not hold: take it over from the node that
        does (or from the cluster store, where it is parked), or say honestly why not."""
        reason = await self._find_in_cluster(conn)
        if reason is not None:
            conn.refuse_resume(reason)
            self.count_event("resume_failed_" + reason)

    async def _find_in_cluster(self, conn: Connection) -> str | None:
        """`_resume_from_cluster`: None once `conn` resumes the session, else the reason."""
        token = conn.resume_token
        ack = conn.requested_ack
        if not self._resumable or not self.cluster.others:
            return "unknown"
        try:
            session_id, generation, node = self._signer.verify_node(token)
        except InvalidTokenError:
            return "unknown"  # a foreign key: no node of this cluster signed it
        if ack is None:
            return "invalid"
        store = self.backend.store
        cfg = self.config
        deadline = _monotonic() + 3 * cfg.cluster_timeout
        reason = "unknown"
        parking_since: float | None = None
        asked_again = False
        while _monotonic() < deadline:
            where = await store.locate(session_id)
            if where.state == "unreachable":
                break
            if where.state == "parking":
                # Its node is parking it: a moment. If that takes longer than a hand-over
                # may, the node is asked (a node killed while parking answers "gone").
                now = _monotonic()
                parking_since = now if parking_since is None else parking_since
                if now - parking_since < cfg.cluster_timeout:
                    await anyio.sleep(0.02)
                    continue
            if where.state != "parked":
                owner = where.owner or node
                if not owner or owner == self.cluster.node_id:
                    reason = await self._gone_here(session_id, generation)
                    break
                answer = await self.backend.broker.hand_over(owner, session_id, generation)
                if answer == "gone":
                    reason = await store.fate(owner, cfg.resume_window)
                    break
                if answer == "unknown":
                    if not asked_again:
                        # Parked by its node's drain between our look and its answer: once
                        # more from the top.
                        asked_again = True
                        continue
                    # Not on its node (ended there): a token already spent says "invalid".
                    reason = await self._gone_here(session_id, generation)
                    break
                if answer != "parked":
                    reason = "lost" if answer == "timeout" else answer
                    break
                where = await store.locate(session_id)
                if where.state != "parked":
                    continue
            adopted: list[Session] = []
            for group in where.groups:
                self._pinned[group] = self._pinned.get(group, 0) + 1
            try:
                for group in where.groups:
                    await self.cluster.subscribe(group)
                self._arriving[session_id] = _Arriving(frozenset(where.groups))
                result = await store.claim(
                    session_id,
                    generation,
                    max(cfg.resume_window, 60.0),
                    functools.partial(self._adopt_into, adopted),
                )
            finally:
                self._arriving.pop(session_id, None)
                for group in where.groups:
                    left = self._pinned[group] - 1
                    if left:
                        self._pinned[group] = left
                    else:
                        del self._pinned[group]
                        self._unsubscribe_if_empty(group)
            if result is None and adopted:
                return self._bind_adopted(conn, adopted[0], ack, generation)
            if result in ("moved", "parking", "missing"):
                continue  # claimed by another node meanwhile (a racing resume): ask again
            reason = "unknown" if result == "unreachable" else str(result)
            break
        return reason

    async def _gone_here(self, session_id: str, generation: int) -> str:
        """Why a session that the cluster says is this node's cannot be resumed."""
        if session_id in self._tombstones:
            return "expired"
        current = await self.backend.store.generation(session_id)
        if current is not None and generation < current:
            return "invalid"
        return "unknown"

    def _bind_adopted(
        self, conn: Connection, session: Session, ack: int, generation: int
    ) -> str | None:
        """Resume an adopted session on the connection that asked for it, if exactly: None,
        else why not (the session stays here, detached)."""
        replay = session._replay
        if replay is None or ack > replay.sent or session._conn is not None:
            return "invalid"
        if replay.since(ack) is None:
            return "gap"
        self._connecting.pop(conn.session.id, None)
        session.remote = conn.session.remote
        conn.rebind(session)
        session._ack_out(ack)
        self._bind(conn, (ack, generation), None)
        return None

    def health(self) -> tuple[str, str | None]:
        """("ok" | "degraded" | "draining", why not ok): what the health route answers."""
        if self._draining:
            return "draining", "draining"
        problem = self.cluster.problem()
        if problem is not None:
            return "degraded", problem
        return "ok", None

    # ------------------------------------------------------------------ stats

    def count_event(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name` (`ConnectionHost`: connections count through this too)."""
        self.metrics.count(name, n)

    def _probe_server(self, receive: Any) -> None:
        """Read the server's websocket message limit off its `receive`, once per process.

        The ASGI scope does not carry it. uvicorn's websocket protocols (websockets, sansio
        and wsproto) pass their own bound method as `receive` and keep their `Config` in
        `.config`; a server (or a middleware in between) that does not leaves it unknown.
        """
        config = getattr(getattr(receive, "__self__", None), "config", None)
        self._server_limit(getattr(config, "ws_max_size", None))

    def _server_limit(self, size: object) -> None:
        """The server's websocket message limit is `size` bytes (the sidecar says so at
        startup; `_probe_server` finds it otherwise). Anything but an int leaves it unknown."""
        self._server_probed = True
        if isinstance(size, int) and not isinstance(size, bool):
            self._server_ws_max_size = size

    def _message_limits(self) -> dict[str, Any]:
        ours = self.config.max_message_size
        theirs = self._server_ws_max_size
        wanted = wire.server_frame_limit(ours)
        above = None if theirs is None else wanted is not None and theirs > wanted
        return {
            "max_message_size": ours,
            "server_ws_max_size": theirs,
            "server_limit_above_ours": above,
        }

    def record_rtt(self, rtt: float) -> None:
        self.metrics.observe_rtt(rtt)

    def _sample_history(self, now: float) -> None:
        """Every `HISTORY_INTERVAL` seconds, remember the gauges and totals (for the dashboard)."""
        history = self.history
        if history.due(now):
            m = self.metrics
            registered = len(self._registry)
            history.add(
                (
                    round(time.time(), 3),
                    self._limits.total,
                    registered - m.detached_sessions,
                    m.detached_sessions,
                    m.frames_in,
                    m.frames_out,
                )
            )

    def _set_state(self, session: Session, state: SessionState) -> None:
        """Every state change of a registered session goes through here (the gauges follow)."""
        before = session.state
        if before is state:
            return
        if before is SessionState.DETACHED:
            self.metrics.detached_sessions -= 1
        elif state is SessionState.DETACHED:
            self.metrics.detached_sessions += 1
        session.state = state

    @property
    def memory(self) -> int:
        """Bytes accounted to all sessions (user data plus buffered frames)."""
        return self._total_memory

    def stats(self) -> dict[str, Any]:
        """Counters and gauges: the same document the stats route serves.

        Read from the metrics core: no walk over sessions, so its cost does not grow with them.
        """
        metrics = self.metrics
        counters = dict(metrics.counters)
        registered = len(self._registry)
        detached = metrics.detached_sessions
        rtt = metrics.rtt_summary()
        for name in ("pings", "heartbeat_timeouts", "broadcasts"):
            counters.pop(name, None)
        return {
            "connections": self._limits.total,
            "sessions": {"connected": registered - detached, "detached": detached, "closed": 0},
            "shards": self._registry.shard_counts(),
            "groups": self._registry.group_total(),
            "frames": {"in": metrics.frames_in, "out": metrics.frames_out},
            "bytes": {"in": metrics.bytes_in, "out": metrics.bytes_out},
            "heartbeat": {
                "scheduled": len(self._wheel),
                "pings": metrics.counters["pings"],
                "timeouts": metrics.counters["heartbeat_timeouts"],
                "rtt_p50": rtt["p50"],
                "rtt_p90": rtt["p90"],
                "rtt_p99": rtt["p99"],
                "rtt": rtt,
            },
            "closes": dict(metrics.closes),
            "rejections": metrics.prefixed("rejected_"),
            "resumes": {
                "resumed": metrics.counters["resumed"],
                "failed": metrics.prefixed("resume_failed_"),
            },
            "broadcasts": metrics.counters["broadcasts"],
            "broadcast_duration": {
                "count": metrics.broadcast_duration.count,
                "p50": seconds(metrics.broadcast_duration.quantile(0.5)),
                "p99": seconds(metrics.broadcast_duration.quantile(0.99)),
            },
            "replay": {"frames": metrics.replay_frames},
            "memory": {"total": self._total_memory, "limit": self.config.max_total_memory},
            "limits": self._message_limits(),
            "draining": self._draining,
            "uptime": round(_monotonic() - self._started, 3),
            "counters": {
                k: v
                for k, v in counters.items()
                if not k.startswith(("rejected_", "resume_failed_"))
            },
            "config": self.config.public(),
            "cluster": self.cluster.stats(),
        }

    # ------------------------------------------------------------------ background service

    def _ensure_service(self) -> None:
        """Make sure the housekeeping service runs in the current event loop."""
        if (
            self._tg is not None or self._service_starting
        ) and self._service_token is _runtime.loop_token():
            return
        self._service_starting = True
        self._service_token = _runtime.loop_token()
        _runtime.spawn_system(self._run_service)

    async def _run_service(self) -> None:
        """Host the housekeeper and every background task; runs until cancelled."""
        stopped = anyio.Event()
        self._service_stopped = stopped
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._service_token = _runtime.loop_token()
                self._service_starting = False
                pending, self._pending = self._pending, []
                for fn, args in pending:
                    tg.start_soon(fn, *args)
                tg.start_soon(self._housekeeper)
                if self._service_up is not None:
                    self._service_up.set()
                    self._service_up = None
        finally:
            if self._tg is not None and self._service_token is _runtime.loop_token():
                self._tg = None
                self._service_starting = False
            stopped.set()

    # The lifespan hooks. The middleware awaits `_start` before the app sees
    # `lifespan.startup` and `_stop` before the app's last lifespan message reaches the server,
    # so whatever runs here (the background service; a cluster backend's connections) is up for
    # the app's whole lifespan and down before the server moves on. An exception from `_start`
    # fails the startup with its message; one from `_stop` fails the shutdown.

    async def _start(self) -> None:
        """Lifespan startup: serve again (after a previous shutdown), start the service, then
        join the cluster (the backend runs in the service's task group)."""
        # A new run of the same app object (e.g. one `TestClient(app)` per test) serves again:
        # the previous run's shutdown must not keep refusing every handshake.
        self._draining = False
        if self._tg is None or self._service_token is not _runtime.loop_token():
            up = self._service_up = anyio.Event()
            self._ensure_service()
            await up.wait()
        await self._join_cluster()

    async def _stop(self) -> None:
        """Lifespan end: send what is queued for the other nodes and leave the cluster, then
        stop the background service of this loop."""
        try:
            try:
                # Sessions the server's own shutdown detached (uvicorn closes every websocket
                # with 1012 before lifespan shutdown) move to the cluster store first.
                await self._park_detached()
            finally:
                await self._leave_cluster()
        finally:
            stopped = self._stop_now()
            if stopped is not None:
                await stopped.wait()

    def _stop_now(self) -> anyio.Event | None:
        """Cancel the background service of this loop without waiting; the event it sets."""
        tg = self._tg
        if tg is None or self._service_token is not _runtime.loop_token():
            return None
        tg.cancel_scope.cancel()
        return self._service_stopped

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the background service (`ConnectionHost`), errors logged."""
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._guarded, fn, *args)
        else:
            self._pending.append((self._guarded, (fn, *args)))
            self._ensure_service()

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            logger.exception("stabilizer background task failed: %r", exc)

    async def _housekeeper(self) -> None:
        wheel = self._wheel
        now = _monotonic()
        while True:
            # Wake on the wheel's tick boundaries (not every `tick` from wherever we started):
            # a connection is then visited at most one tick after it is due, so a dead peer is
            # found at most 2 ticks late (the ping, then the verdict).
            wake = wheel.next_tick(now)
            await anyio.sleep(max(0.0, wake - _monotonic()))
            # Decide on the wheel's clock, the boundary, not on when this task got to run: a
            # verdict due on a boundary (`timeout` a whole number of ticks after a ping sent
            # on one) is then taken there, not a tick later because of the loop's latency.
            # A late loop catches up one tick per turn.
            now = wake
            if self._ack_due:
                due, self._ack_due = self._ack_due, set()
                for conn in due:
                    conn.send_ack()
            if self._detached:
                self._sweep(now)
            for periodic in self._periodic:
                try:
                    periodic(now)
                except Exception:
                    logger.exception("stabilizer periodic task failed")
            for conn in wheel.pop_due(now):
                conn.heartbeat_slot = None
                try:
                    next_at = conn.heartbeat(now)
                except Exception as exc:  # pragma: no cover - defensive
                    self.log_error("heartbeat check failed", conn.session, exc)
                    continue
                if next_at is not None:
                    conn.heartbeat_slot = wheel.schedule(conn, next_at)

    # ------------------------------------------------------------------ connection lifecycle

    def _admit(self, ip: str | None) -> str | None:
        """Take a connection slot or return why the handshake is refused."""
        if self._draining:
            return "draining"
        return self._limits.try_acquire(ip)

    def _release(self, ip: str | None) -> None:
        self._limits.release(ip)

    def _rejected(self, reason: str, remote: object) -> None:
        self.count_event("rejected_" + reason)
        _log.event(logger, _log.REJECTED, reason=reason, remote=remote)

    def _new_session(
        self, client_id: str | None, opted_in: bool, remote: tuple[str, int] | None
    ) -> Session:
        session = Session(
            client_id=client_id,
            opted_in=opted_in,
            remote=remote,
            memory_limit=self.config.max_memory_per_session,
            on_charge=self._on_charge,
        )
        if opted_in:
            session._replay = self._idle_replay
        self._connecting[session.id] = session
        return session

    def _open_session(
        self, opt_in: wire.OptIn, client_id: str | None, remote: tuple[str, int] | None
    ) -> tuple[Session, tuple[int, int] | None, str | None]:
        """The session for a new connection: `(session, resume, reason)`.

        With a valid resume request the detached (or half-open) session is claimed for this
        connection and `resume` is `(the client's stabilizer_ack, the token's generation)`;
        otherwise a new session is made and `reason` says why the old one could not be resumed
        (None if none was asked for).
        """
        reason = None
        if opt_in.opted_in and opt_in.resume_token is not None:
            session, generation, reason = self._claim(opt_in)
            if session is not None:
                assert opt_in.resume_ack is not None
                session.remote = remote  # the `resumed` record names the new connection's peer
                return session, (opt_in.resume_ack, generation), None
            if reason != "unknown" or not self.cluster.others:
                # (An unknown session may be elsewhere in the cluster: counted once the
                # cluster has answered, in `_resume_from_cluster`.)
                self.count_event("resume_failed_" + reason)
        return self._new_session(client_id, opt_in.opted_in, remote), None, reason

    def _claim(self, opt_in: wire.OptIn) -> tuple[Session | None, int, str]:
        """Check a resume request against the session it names; take the session over if it
        can be resumed exactly: `(session, token generation, "")`, else `(None, 0, reason)`.
        Nothing about the session changes when it cannot."""
        if not self._resumable:
            return None, 0, "unknown"
        try:
            session, generation = self._check_token(opt_in.resume_token)
        except TokenExpiredError:
            return None, 0, "expired"
        except InvalidTokenError as exc:
            unknown = isinstance(exc, (_UnknownSession, UnknownKeyError))
            return None, 0, "unknown" if unknown else "invalid"
        ack = opt_in.resume_ack
        replay = session._replay
        if opt_in.ack_invalid or ack is None or replay is None or ack > replay.sent:
            return None, 0, "invalid"
        if replay.since(ack) is None:
            return None, 0, "gap"
        old = session._conn
        if old is not None:
            # The previous connection is still open here (half-open, or the client gave up on
            # it first): it is superseded, and whatever it read but its app never took moves on.
            if old.connecting:  # CONNECTING: another resume of this session is in progress
                return None, 0, "invalid"
            self._detach(old)
            old.abort(1000, "session resumed on another connection")
        session._ack_out(ack)
        return session, generation, ""

    def _check_token(self, token: object) -> tuple[Session, int]:
        """The session a token may resume now and the token's generation; raises otherwise."""
        session_id, generation = self._signer.verify(token)
        session = self._registry.get(session_id)
        if session is None:
            if session_id in self._tombstones:
                raise TokenExpiredError("the session's resume window has passed")
            raise _UnknownSession("no such session")
        if not spendable(session._generation, session._token_confirmed, generation):
            raise InvalidTokenError("token already used")
        if session.state is SessionState.DETACHED:
            if self._window_passed(session):
                raise TokenExpiredError("the session's resume window has passed")
        elif session.state is not SessionState.CONNECTED:
            raise _UnknownSession("session is closed")
        return session, generation

    async def accepted(self, conn: Connection) -> None:
        """The app accepted: register the session, start its heartbeat, greet an opted-in client."""
        session = conn.session
        cfg = self.config
        replay: list[Any] = []
        resume_ack = conn.resume_ack
        resumed = resume_ack is not None
        if resume_ack is not None:
            assert session._replay is not None
            frames = session._replay.since(resume_ack)
            if frames is None:
                # The backlog overflowed while the app was accepting: the client retries and
                # gets a new session with reason "gap".
                conn.abort(1013, "resume gap, reconnect")
                return
            replay = frames
            if self.cluster.others:
                # Other nodes answer "invalid" for the token spent here from the moment the
                # client can know it was spent (its hello): recorded before the hello, not
                # behind it (a spawned claim lost that race under load). One Redis call per
                # resume, bounded by cluster_timeout; an unreachable Redis does not block it.
                await self.backend.store.claim_token(
                    session.id, conn.resume_generation, max(self.config.resume_window, 60.0)
                )
            session._generation = after_resume(session._generation, conn.resume_generation)
            session._token_confirmed = False
            session._detached_at = None
            session.resumed = True
            session.close_code = None
            session.close_reason = ""
            session._last_in = _monotonic()
            self.count_event("resumed")
        else:
            self._connecting.pop(session.id, None)
            self._reg_seq += 1
            session._seq = self._reg_seq
            self._registry.add(session)
        session._conn = conn
        self._set_state(session, SessionState.CONNECTED)
        if conn.has_heartbeat:
            next_at = session._last_in + cfg.heartbeat_interval
            conn.heartbeat_slot = self._wheel.schedule(conn, next_at)
        if conn.proto == "control":
            carried = len(session._carry) if session._carry else 0
            hello = wire.encode_control(
                "hello",
                v=wire.VERSION,
                session=session.id,
                token=self.issue_token(session.id) if self._resumable else "",
                interval=cfg.heartbeat_interval,
                timeout=cfg.heartbeat_timeout,
                resumed=resumed,
                reason=None if resumed else conn.resume_reason,
                ack=session.frames_in + carried,
            )
            await conn.greet(hello, replay)
        if self._otel is not None:
            self._otel.opened(conn, resumed)
        if resumed:
            self._session_event(
                _log.RESUMED,
                session,
                remote=session.remote,
                replayed=len(replay),
            )
            self._hook("on_resume", session)
            return
        self.count_event("connections_accepted")
        self._session_event(
            _log.CONNECTED,
            session,
            remote=session.remote,
            opted_in=session.opted_in,
        )
        self._hook("on_connect", session)

    def _bind(
        self,
        conn: Connection,
        resume: tuple[int, int] | None,
        reason: str | None,
        token: str | None = None,
        ack: int | None = None,
    ) -> None:
        """Attach a new connection to the session `_open_session` chose for it."""
        conn.bind_resume(reason, resume, token, ack)
        if resume is not None:
            conn.session._conn = conn  # claimed: frames sent meanwhile wait for the replay

    def _ended(self, conn: Connection) -> None:
        """The app returned: the session ends, or stays resumable after an abnormal drop."""
        conn.finish()
        self._ack_due.discard(conn)  # a closed connection is held by nothing of ours
        if conn.opened:
            code = conn.close_code()
            self.metrics.closed(code)
            if self._otel is not None:
                self._otel.closed(conn, code)
        session = conn.session
        self._connecting.pop(session.id, None)
        if session._conn is not conn:
            return  # never accepted, or superseded by a resume on another connection
        if not conn.opened:
            # A resume the app did not accept: the session stays detached, window restarted.
            session._conn = None
            self._enqueue_detached(session)
            return
        if session.close_code is None:
            if conn.server_disconnect is not None:
                session.close_code = conn.server_disconnect.get("code", 1005)
                session.close_reason = conn.server_disconnect.get("reason") or ""
            elif conn.send_failed:
                session.close_code = 1006
        if (
            session._replay is not None
            and not conn.app_closed
            and session.close_code in DETACH_CODES
        ):
            self._detach(conn)
            return
        self._end(session)

    def _detach(self, conn: Connection) -> None:
        """Keep the session resumable for `resume_window`, with what its app had not read."""
        session = conn.session
        unread = conn.take_unread()
        if unread:
            if session._carry is None:
                session._carry = deque()
            session._carry.extend(unread)
        session._conn = None
        self._enqueue_detached(session)
        self.count_event("detached")
        self._session_event(
            _log.DETACHED,
            session,
            code=session.close_code,
            reason=session.close_reason,
        )

    def _window_passed(self, session: Session) -> bool:
        """Whether a detached session's resume window has passed (the sweep may lag)."""
        detached_at = session._detached_at
        return detached_at is not None and _monotonic() - detached_at > self.config.resume_window

    def _enqueue_detached(self, session: Session) -> None:
        now = _monotonic()
        self._set_state(session, SessionState.DETACHED)
        session._detached_at = now
        self._detached.append((now + self.config.resume_window, session))

    def _sweep(self, now: float) -> None:
        """End detached sessions whose resume window has passed (bounded work per call)."""
        queue = self._detached
        window = self.config.resume_window
        for _ in range(SWEEP_BATCH):
            if not queue or queue[0][0] > now:
                return
            _, session = queue.popleft()
            if session.state is not SessionState.DETACHED or session._conn is not None:
                continue  # resumed, ended, or being resumed right now
            detached_at = session._detached_at
            if detached_at is not None and detached_at + window > now:
                continue  # detached again later: a newer entry is queued
            self._tombstone(session.id)
            self.count_event("expired")
            self._end(session, expired=True)

    def _tombstone(self, session_id: str) -> None:
        """Remember an expired session's id (bounded), so a late token answers "expired"."""
        tombstones = self._tombstones
        tombstones[session_id] = None
        if len(tombstones) > MAX_TOMBSTONES:
            tombstones.popitem(last=False)

    def _let_go(self, session: Session, *, keep_data: bool = False) -> None:
        """Forget a session here and free its memory: it ended, or moved to another node.
        With `keep_data`, its data stays (and counted) until `_ended_event` is done with it."""
        session._conn = None
        self._set_state(session, SessionState.CLOSED)
        groups = session.groups
        self._registry.remove(session)
        for group in groups:
            self._unsubscribe_if_empty(group)
        if session._cluster_client:
            session._cluster_client = False
            assert session.client_id is not None
            self.backend.presence.release_client(session.client_id)
        if not keep_data:
            session._release_data()
        session._release_buffers()

    def _end(self, session: Session, *, expired: bool = False) -> None:
        """The session is over: forget it, free its memory, log, run `on_disconnect` (which
        still sees the session's data; it is freed once the hook returns)."""
        self._let_go(session, keep_data=True)
        self._ended_event(session, expired)

    def _ended_event(self, session: Session, expired: bool) -> None:
        """Log the end of a session and run `on_disconnect` (once per session, cluster-wide)."""
        duration = time.time() - session.created_at
        self._session_event(
            _log.DISCONNECTED,
            session,
            code=session.close_code,
            reason=session.close_reason,
            duration_ms=round(duration * 1000, 1),
            rtt_ms=None if session.rtt is None else round(session.rtt * 1000, 1),
            expired=expired,
        )
        hook = self.config.on_disconnect
        if hook is None:
            session._release_data()
        else:
            self.spawn(self._run_hook, "on_disconnect", hook, session)

    # ------------------------------------------------------------------ ConnectionHost
    # What a connection asks of its manager (`asgi/host.py`): callbacks, not user API.

    def unschedule(self, conn: Connection, slot: int) -> None:
        self._wheel.cancel(conn, slot)

    def ack_soon(self, conn: Connection) -> None:
        self._ack_due.add(conn)

    def aborted(self, conn: Connection, code: int, reason: str) -> None:
        self.count_event(f"closed_{code}")

    def heartbeat_timeout(self, conn: Connection) -> None:
        self.count_event("heartbeat_timeouts")
        session = conn.session
        self._session_event(
            _log.HEARTBEAT_TIMEOUT,
            session,
            level=logging.INFO,
            remote=session.remote,
            rtt_ms=None if session.rtt is None else round(session.rtt * 1000, 1),
        )
        self._hook("on_timeout", session)

    def slow_consumer(self, conn: Connection) -> None:
        session = conn.session
        self._session_event(
            _log.SLOW_CONSUMER,
            session,
            level=logging.WARNING,
        )

    def _session_event(
        self, name: str, session: Session, level: int = logging.INFO, **fields: Any
    ) -> None:
        """Log lifecycle event `name` of `session`: its id and client id, then `fields`."""
        _log.event(
            logger, name, level=level, session=session.id, client=session.client_id, **fields
        )

    def log_error(self, what: str, session: Session, exc: BaseException) -> None:
        """Log a failure of ours around `session` (`ConnectionHost`), never raised."""
        logger.warning("%s for session %s: %r", what, session.id, exc)

    def _hook(self, name: str, session: Session) -> None:
        hook = getattr(self.config, name)
        if hook is not None:
            self.spawn(self._run_hook, name, hook, session)

    async def _run_hook(
        self, name: str, hook: Callable[[Session], Awaitable[None]], session: Session
    ) -> None:
        try:
            await hook(session)
        except Exception as exc:
            _log.event(
                logger,
                _log.HOOK_FAILED,
                level=logging.ERROR,
                hook=name,
                session=session.id,
                error=repr(exc),
            )
        finally:
            if name == "on_disconnect":
                session._release_data()

    # ------------------------------------------------------------------ memory

    def _on_charge(self, session: Session, delta: int) -> None:
        self._total_memory += delta
        limit = self.config.max_total_memory
        if delta > 0 and limit is not None and self._total_memory > limit:
            self._evict(self._total_memory - limit, protect=session)
            if self._total_memory > limit:
                self._total_memory -= delta
                raise MemoryLimitExceededError(
                    f"total session memory would be {self._total_memory + delta} bytes "
                    f"(max_total_memory={limit})"
                )

    def _evict(self, needed: int, protect: Session) -> None:
        policy = self.config.eviction
        candidates = [s for s in self._registry if s is not protect and s._mem > 0]
        if sum(s._mem for s in candidates) < needed:
            return  # evicting everyone would not make room: refuse the charge, close nobody
        if policy == "lru":
            candidates.sort(key=lambda s: max(s._last_in, s._last_out))
        elif policy == "fifo":
            candidates.sort(key=lambda s: s._seq)
        else:
            candidates.sort(key=lambda s: s.created_at)
        for victim in candidates:
            if needed <= 0:
                break
            freed = victim._mem
            victim._release_data()
            victim._release_buffers()
            needed -= freed
            self.count_event("evictions")
            self._session_event(
                _log.EVICTED,
                victim,
                level=logging.WARNING,
                policy=policy,
            )
            conn = victim._conn
            if conn is not None:
                conn.abort(1013, "memory limit")
            else:
                self._end(victim)

    # ------------------------------------------------------------------ tokens (resume)

    def issue_token(self, session_id: str) -> str:
        """A reconnect token for the session: single use, valid while the session can be
        resumed (it is connected, or detached for less than `resume_window`)."""
        session = self._require(session_id)
        return self._signer.sign(session.id, session._generation, self._token_node)

    async def validate_token(self, token: str) -> str:
        """The session id a token resumes; `InvalidTokenError` (tampered, foreign key, used,
        unknown session) or `TokenExpiredError` (resume window passed) otherwise."""
        return self._check_token(token)[0].id


class _ParkBatch:
    """Hand-overs parked together (see `Stabilizer._park_soon`)."""

    __slots__ = ("done", "parked", "requests")

    def __init__(self) -> None:
        self.requests: dict[str, ParkRequest] = {}
        self.parked: set[str] = set()
        self.done = anyio.Event()


class _Arriving:
    """What this node broadcast to a session while claiming it (see `Stabilizer._arriving`)."""

    __slots__ = ("frames", "groups", "overflowed")

    def __init__(self, groups: frozenset[str]) -> None:
        self.groups = groups
        self.frames: list[tuple[Message, int]] = []
        self.overflowed = False

    def add(self, frame: Message, size: int, bound: int) -> None:
        if len(self.frames) >= bound:
            self.overflowed = True
            return
        self.frames.append((frame, size))


class _UnknownSession(InvalidTokenError):
    """A genuine token for a session this process does not have."""


async def _unwound(conns: list[Connection], timeout: float) -> None:
    """Wait (up to `timeout`) until the apps of these closed connections have returned."""
    with anyio.move_on_after(timeout):
        while any(c.session._conn is c for c in conns):  # noqa: ASYNC110 - polls many ends
            await anyio.sleep(0.005)
