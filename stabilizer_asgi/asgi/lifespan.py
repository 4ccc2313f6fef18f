"""The lifespan scope behind the middleware: our start and stop around the app's, unseen.

`run` hosts the manager's machinery (backend, background service) for as long as the app's
lifespan; `refuse` reports settings that could not be raised where the user would see them.
"""

from __future__ import annotations

import logging

from ..exceptions import ConfigError
from ..manager import Stabilizer
from ..types import ASGIApp, Message, Receive, Scope, Send
from . import routes

logger = logging.getLogger("stabilizer_asgi")

STOP_FAILED = "Stopping the stabilizer service at the end of the app's lifespan failed"


async def refuse(error: ConfigError, scope: Scope, receive: Receive, send: Send) -> None:
    """Report a configuration error that could not be raised at construction."""
    if scope["type"] == "lifespan":
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": _failure(error)})
    raise error.with_traceback(None)  # the same error each time: not an ever longer trace


async def run(
    app: ASGIApp, manager: Stabilizer, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run the manager's machinery for as long as the app's lifespan, unseen by the server.

    The server must see the bare app's lifespan traffic and outcome, at the same moment.
    uvicorn reads the outcome of `lifespan.startup.failed` / `.shutdown.failed` as soon as
    the message arrives (an exception raised right after it must already have reached it),
    and cancels a lifespan call still running once `lifespan.shutdown.complete` has arrived
    (logging the CancelledError). So our machinery starts before the app sees
    `lifespan.startup` and stops before the app's last message is passed on; once the app
    returns or raises, nothing of ours awaits and its exception propagates as it is.
    """
    first = await receive()
    running = first.get("type") == "lifespan.startup"
    if running:
        try:
            await manager._start()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": _failure(exc)})
            raise
        routes.warn_unprotected(manager)  # here, once the server has configured logging
    pending: Message | None = first

    async def stop() -> Exception | None:
        """Stop our machinery (once); the error it raised, logged, if any."""
        nonlocal running
        if not running:
            return None
        running = False
        try:
            await manager._stop()
        except Exception as exc:
            logger.exception(STOP_FAILED)
            return exc
        return None

    async def lifespan_receive() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            # Servers that send this before closing sockets get a graceful shutdown here.
            await manager.shutdown()
        return message

    async def lifespan_send(message: Message) -> None:
        kind = message.get("type")
        if kind in _LAST_MESSAGES:
            error = await stop()
            if error is not None and kind == "lifespan.shutdown.complete":
                message = {"type": "lifespan.shutdown.failed", "message": _failure(error)}
        await send(message)

    try:
        await app(scope, lifespan_receive, lifespan_send)
    except Exception:
        await stop()
        raise
    except BaseException:  # cancelled: no await is allowed any more
        if running:
            running = False
            manager._stop_now()
        raise
    await stop()


# The app's messages after which the server moves on (starts serving, or exits).
_LAST_MESSAGES = frozenset(
    ("lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed")
)


def _failure(exc: Exception) -> str:
    return f"stabilizer_asgi: {type(exc).__name__}: {exc}"
