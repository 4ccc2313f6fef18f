"""The few event-loop specifics the adapter needs, kept in one place.

Everything else uses anyio. What anyio does not offer:
- starting a background service without a task group (when no lifespan ran), and
- finishing a coroutine that was started synchronously: a manager send is first stepped
  inline (no task, no scheduling) and, only if the server's `send` really has to wait for a
  slow transport, handed to a task that carries on from where it stopped. That hand-off is
  sound on asyncio, where a suspended coroutine yields a Future that any task may wait on,
  and not on trio, whose traps belong to the task that made them.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import sniffio

_system_tasks: set[asyncio.Task[Any]] = set()


def coroutine_send(
    send: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """The server's `send`, as a function that returns a coroutine.

    Manager sends step the coroutine by hand (`send(None)`, `yield from`). uvicorn's, hypercorn's
    and Starlette's test client's `send` are `async def` and are used as they are; anything else
    (a sync function returning an awaitable, an awaitable implemented in Rust or C) is wrapped
    once per connection, so the per-frame path needs no check.
    """
    if inspect.iscoroutinefunction(send):
        return send

    async def send_coroutine(message: Any) -> None:
        await send(message)

    return send_coroutine


def transport_of(send: Callable[..., Any]) -> Any:
    """The transport under a server's `send`, if the server lets us reach it; else None.

    ASGI offers no way to abort a connection whose peer stopped reading: a close cannot be
    written to a paused transport, and a server's graceful `transport.close()` waits for a
    buffer that never drains. uvicorn's `send` (all its websocket implementations) is a bound
    method of its protocol object, which holds the asyncio transport as `transport`.
    """
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if callable(getattr(transport, "abort", None)) and callable(
        getattr(transport, "get_extra_info", None)
    ):
        return transport
    return None


_LINGER_RESET = struct.pack("ii", 1, 0)


def abort_transport(transport: Any) -> None:
    """Close a transport at once, with a TCP reset: what was buffered for the peer is dropped.

    `transport.abort()` alone closes the descriptor but leaves the kernel an orphaned socket
    that keeps its unsent send buffer (megabytes for a peer that stopped reading) until its
    retries run out; `SO_LINGER` 0 frees it on the spot.
    """
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except (OSError, AttributeError, TypeError):  # not a TCP socket (e.g. a unix socket)
        pass
    transport.abort()


def _current_task_getter() -> Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]:
    """`asyncio.current_task(loop)`, as cheap as the running Python allows (twice per frame).

    Up to CPython 3.11 `current_task` is a Python function that looks the loop up in
    `asyncio.tasks._current_tasks`: use that dict's `get` directly. Later versions implement
    `current_task` in C (the dict may not exist any more): use it as it is.
    """
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(asyncio.current_task, types.FunctionType) and isinstance(tasks, dict):
        getter: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = tasks.get
        return getter
    return asyncio.current_task


current_task = _current_task_getter()


def library() -> str:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover - called from sync code
        return ""


def loop_token() -> object:
    """An object identifying the running event loop."""
    if library() == "asyncio":
        return asyncio.get_running_loop()
    import trio

    return trio.lowlevel.current_trio_token()


def spawn_system(fn: Callable[[], Awaitable[None]]) -> None:
    """Run `fn()` in the background of the current loop, outside any task group."""
    if library() == "asyncio":
        task = asyncio.get_running_loop().create_task(_as_coro(fn))
        _system_tasks.add(task)
        task.add_done_callback(_system_tasks.discard)
    else:
        import trio

        trio.lowlevel.spawn_system_task(_as_coro_factory(fn))


async def _as_coro(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


def _as_coro_factory(fn: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    async def run() -> None:
        await fn()

    return run


class Continue:
    """Await the rest of a coroutine that has already been stepped once and yielded `first`."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        to_yield = self._first
        while True:
            try:
                received = yield to_yield
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # forwarded into the coroutine, e.g. cancellation
                try:
                    to_yield = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    to_yield = coro.send(received)
                except StopIteration as stop:
                    return stop.value


def uncancel(task: asyncio.Task[Any]) -> bool:
    """Withdraw one cancellation request of ours; True if another one is still pending."""
    un = getattr(task, "uncancel", None)
    if un is None:  # pragma: no cover - Python 3.10
        return False
    return bool(un())
