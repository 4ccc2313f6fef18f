"""The manager's link to its cluster: the backend's lifecycle, and the `Node` it calls back.

The manager owns one `Cluster`. It starts the backend when the app's lifespan starts (in the
manager's service task group) and stops it when the lifespan ends, after the connections have
gone, so publications made while draining still go out. It is never started lazily: a node
that served no lifespan would never join its cluster, so the first connection to such a node
logs a WARNING instead (`cluster_not_started`) and the node stays alone.

What the backend hands over (publications, commands, losses) is passed to the callables the
manager gives here, so this module knows nothing of sessions or connections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from . import logging as _log
from .backends import Backend, Command, MemoryBackend, NodeInfo, Parcel, Payload, Publication

logger = logging.getLogger("stabilizer_asgi")


class Cluster:
    """One node's side of the cluster seam (see `backends.base`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        deliver: Callable[[Payload, str | None, frozenset[str]], object],
        execute: Callable[[Command], Awaitable[bool | None]],
        lost: Callable[[str | None], object],
        connections: Callable[[], int],
        census: Callable[[], tuple[int, int, int]],
        take: Callable[[Sequence[str]], dict[str, Parcel]],
        hand_over: Callable[[str, int], Awaitable[str]],
        ended: Callable[[bytes], object],
        lost_session: Callable[[str], object],
    ) -> None:
        self.backend = backend
        self._deliver = deliver
        self._execute = execute
        self._lost = lost
        self._connections = connections
        self._census = census
        self._take = take
        self._hand_over = hand_over
        self._ended = ended
        self._lost_session = lost_session
        self._running = False
        self._warned = False
        # The in-memory default with no other node on its hub has nobody to talk to: the
        # manager then skips building publications at all (a broadcast costs what it did
        # before clusters existed).
        self._memory = backend if isinstance(backend, MemoryBackend) else None
        self.solo = self._memory is not None

    @property
    def node_id(self) -> str:
        return self.backend.node_id

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ lifecycle

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Join the cluster (returns once joined, or degraded if the store is unreachable)."""
        if self._running:
            return
        await tg.start(self._run)

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._running = True
        try:
            await self.backend.run(self, task_status=task_status)
        finally:
            self._running = False

    async def stop(self, timeout: float) -> None:
        """Send what is still queued (up to `timeout`) and leave the cluster."""
        if self._running:
            await self.backend.stop(timeout)

    def check_started(self) -> None:
        """Called per new connection: warn once if the node never joined its cluster."""
        if self._running or self._warned or self.solo:
            return
        self._warned = True
        _log.event(
            logger,
            _log.CLUSTER_NOT_STARTED,
            level=logging.WARNING,
        )

    # ------------------------------------------------------------------ towards the others

    @property
    def others(self) -> bool:
        """Whether publications may have anyone to reach (other nodes, or an unknown set)."""
        if not self._running:
            return False
        memory = self._memory
        return memory is None or not memory.alone

    def publish(self, payload: Payload, group: str | None, exclude: frozenset[str]) -> None:
        if self.others:
            self.backend.broker.publish(Publication(payload, group, exclude))

    async def request(self, command: Command) -> bool:
        if not self.others:
            return False
        return await self.backend.broker.request(command)

    async def subscribe(self, group: str) -> None:
        if self._running:
            await self.backend.broker.subscribe(group)

    def unsubscribe(self, group: str) -> None:
        if self._running:
            self.backend.broker.unsubscribe(group)

    # ------------------------------------------------------------------ Node (called back)

    def deliver(self, publication: Publication) -> None:
        self._deliver(publication.payload, publication.group, publication.exclude)

    async def execute(self, command: Command) -> bool | None:
        return await self._execute(command)

    def lost(self, group: str | None) -> None:
        self._lost(group)

    def connections(self) -> int:
        return self._connections()

    def census(self) -> tuple[int, int, int]:
        return self._census()

    def take(self, session_ids: Sequence[str]) -> dict[str, Parcel]:
        return self._take(session_ids)

    async def hand_over(self, session_id: str, generation: int) -> str:
        return await self._hand_over(session_id, generation)

    def ended(self, snapshot: bytes) -> None:
        self._ended(snapshot)

    def lost_session(self, session_id: str) -> None:
        self._lost_session(session_id)

    # ------------------------------------------------------------------ reporting

    def problem(self) -> str | None:
        """Why this node is not a healthy member of its cluster, or None."""
        if self.solo and not self._running:
            return None
        if not self._running:
            return "cluster backend not started"
        status = self.backend.status()
        return None if status.healthy else (status.problem or "unhealthy")

    def stats(self) -> dict[str, Any]:
        status = self.backend.status()
        infos = status.nodes
        if not any(n.id == self.node_id for n in infos):
            infos = (*infos, NodeInfo(self.node_id, self._connections()))
        mine = self._census()
        nodes: list[dict[str, Any]] = [
            {
                "id": n.id,
                "connections": n.connections,
                # This node's own figures are read now; the others' as of their last report.
                "sessions": dict(
                    zip(
                        ("connected", "detached"),
                        mine[:2] if n.id == self.node_id else (n.connected, n.detached),
                        strict=True,
                    )
                ),
                "groups": mine[2] if n.id == self.node_id else n.groups,
            }
            for n in sorted(infos, key=lambda n: n.id)
        ]
        return {
            "node": self.node_id,
            "healthy": self.problem() is None,
            "problem": self.problem(),
            "connections": sum(n["connections"] for n in nodes),
            "sessions": {
                "connected": sum(n["sessions"]["connected"] for n in nodes),
                "detached": sum(n["sessions"]["detached"] for n in nodes),
            },
            "nodes": nodes,
            "counters": dict(status.counters),
        }
