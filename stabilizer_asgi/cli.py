"""`stabilizer-asgi serve MODULE:APP`: any ASGI app, behind the middleware, under uvicorn.

Every `StabilizerConfig` field is an option (`heartbeat_interval` → `--heartbeat-interval`) and
an environment variable (`STABILIZER_HEARTBEAT_INTERVAL`); a flag wins over the environment,
which wins over the default. The options are generated from the dataclass fields (types,
choices, defaults), so a new field is a new option. A bad value exits with status 2 and a
message naming the option and what is allowed.

An app that already adds `StabilizerMiddleware` itself (`app.add_middleware(...)`, or an
instance anywhere in its `.app` chain) is served as it is, never wrapped twice; setting a
middleware option for such an app is an error, since its own settings would silently win.

On SIGTERM the server drains first (health 503, new handshakes refused, each opted-in client
told to reconnect after a delay spread over `drain_period`, every websocket closed with 1012)
and only then lets uvicorn shut down. A second SIGTERM, or a Ctrl+C, skips the rest of the
drain. Ctrl+C alone keeps uvicorn's behaviour (stop now: sockets closed with 1012).

`--workers N` runs N processes; each imports MODULE:APP and wraps it itself, so each has its
own manager (limits, stats and sessions are per process; use the Redis backend to share). With
the memory backend and no --secret, one secret is generated for all the workers, so a token
shown to a worker that does not hold its session is answered "unknown", not "invalid".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import logging
import logging.config
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from types import FrameType, NoneType, UnionType
from typing import Any

try:
    import uvicorn
    from uvicorn.importer import ImportFromStringError, import_from_string
    from uvicorn.supervisors import multiprocess
except ImportError:  # pragma: no cover - depends on the installation
    raise SystemExit(
        "stabilizer-asgi serve needs uvicorn: pip install 'stabilizer-asgi[server]'"
    ) from None

from . import __version__
from . import logging as _log
from .asgi.middleware import StabilizerMiddleware
from .config import StabilizerConfig
from .core import wire
from .exceptions import ConfigError
from .manager import ShutdownReport, Stabilizer

logger = logging.getLogger(_log.LOGGER_NAME)

ENV_PREFIX = "STABILIZER_"
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not load its app
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class UsageError(Exception):
    """A bad option or environment value: `option` names it, the message says what is allowed."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


@dataclass(frozen=True)
class Option:
    """One command-line option, also settable through `STABILIZER_<NAME>`."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    allowed: str
    choices: tuple[str, ...] | None = None
    config: bool = True  # a StabilizerConfig field (else a server option)
    secret: bool = False  # never echo the value
    switch: bool = False  # a flag without a value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class ImportRef:
    """A `module:attribute` string naming a callable, imported when the app is built."""

    path: str


# ---------------------------------------------------------------------- value parsers


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _int(text: str) -> int:
    return int(text)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def optional(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    return optional


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def choice(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return choice


def _rate_limit(text: str) -> tuple[float, int]:
    rate, sep, burst = text.partition(",")
    if not sep:
        raise ValueError(text)
    return _float(rate), _int(burst)


def _import_ref(text: str) -> ImportRef:
    module, sep, attr = text.partition(":")
    if not (module and sep and attr):
        raise ValueError(text)
    return ImportRef(text)


def _secret(text: str) -> str | list[str]:
    keys = text.split(",")
    if not all(keys):
        raise ValueError("<redacted>")
    return keys[0] if len(keys) == 1 else keys


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def _workers(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _optional_seconds(text: str) -> float | None:
    value = _optional(_float)(text)
    if value is not None and value < 0:
        raise ValueError(text)
    return typing.cast("float | None", value)


# ---------------------------------------------------------------------- the option table

_FIELD_HELP = {
    "heartbeat": "in-band heartbeat: 'auto' (opted-in clients), 'always' (plain clients too, "
    "with ping_text/pong_text) or 'off'",
    "heartbeat_interval": "seconds of inbound silence before a ping is sent",
    "heartbeat_timeout": "seconds after a ping without any inbound frame before the connection "
    "is closed with 1011",
    "ping_text": "ping payload for plain clients in heartbeat 'always' mode",
    "pong_text": "pong payload plain clients answer with (swallowed by the middleware)",
    "max_connections": "connections per process; over it handshakes get 503",
    "max_connections_per_ip": "connections per remote address",
    "max_message_size": "bytes; a larger inbound data frame closes the connection with 1009",
    "rate_limit": "inbound messages per second and burst per connection, as RATE,BURST; "
    "over it the connection is closed with 1008",
    "num_shards": "registry shards",
    "max_queue_messages": "outbound frames buffered per session",
    "max_queue_bytes": "outbound bytes buffered per session",
    "max_read_ahead": "inbound frames read ahead for an app that is not reading",
    "slow_consumer": "when a session's outbound queue is full: 'close' (1008) or 'drop' (newest)",
    "close_timeout": "seconds a close may wait to be written before the connection's transport "
    "is aborted",
    "max_memory_per_session": "bytes of user data and buffers per session",
    "max_total_memory": "bytes of user data and buffers for all sessions; over it, evict",
    "eviction": "which sessions lose their data first at max_total_memory",
    "client_id": "MODULE:CALLABLE taking the scope and returning a client id or None "
    "('none': use the client_id query parameter)",
    "duplicate_client": "a second connection with the same client id: 'allow', 'replace' "
    "(close the old one) or 'reject' (409)",
    "resume_window": "seconds a dropped session stays resumable",
    "replay_buffer_messages": "frames kept per session and direction for exact replay",
    "replay_buffer_bytes": "bytes kept per session and direction for exact replay",
    "secret": "reconnect-token key; KEY or NEW,OLD,... to rotate (the first signs). Prefer the "
    "environment variable: flags show up in ps",
    "stats_path": "stats route ('none' disables it)",
    "health_path": "health route ('none' disables it)",
    "drain_path": "drain route, POST only ('none' disables it)",
    "client_js_path": "browser client route ('none' disables it)",
    "metrics_path": "Prometheus metrics route, needs stabilizer-asgi[metrics] ('none' disables it)",
    "dashboard_path": "live dashboard page ('none' disables it)",
    "admin_token": "bearer token for the stats and drain routes (default: none, so drain is "
    "refused over HTTP and stats answer only direct loopback requests). Prefer the environment "
    "variable",
    "drain_period": "seconds over which a drain spreads reconnect hints and closes",
    "retry_after": "Retry-After seconds on 503 answers while draining or full",
    "on_connect": "MODULE:ASYNC_CALLABLE run with the session after each accept",
    "on_disconnect": "MODULE:ASYNC_CALLABLE run with the session when it ends",
    "on_timeout": "MODULE:ASYNC_CALLABLE run with the session on a heartbeat timeout",
    "on_resume": "MODULE:ASYNC_CALLABLE run with the session when it is resumed",
    "backend": "'memory', or redis://HOST:PORT/DB (also rediss://, unix://) for cluster mode "
    "(extra [redis]; needs --secret, one key for every node)",
    "cluster_name": "cluster mode: prefix of every Redis key and channel",
    "probe_interval": "cluster mode: seconds within which a deaf Redis subscription is found and "
    "rebuilt (a dead node leaves the others' view within 3x it)",
    "cluster_timeout": "cluster mode: seconds a command for a session on another node may take",
    "cluster_outbox_messages": "cluster mode: publications kept while Redis is unreachable",
    "cluster_outbox_bytes": "cluster mode: bytes kept while Redis is unreachable",
    "cluster_history": "cluster mode: publications kept per topic for nodes catching up",
    "cluster_connections": "cluster mode: most connections a node opens to Redis for its calls "
    "(more wait for one); its subscription has its own",
    "otel": "OpenTelemetry metrics and a span per connection, through the global providers "
    "(needs stabilizer-asgi[otel])",
}

_SECRET_FIELDS = ("secret", "admin_token")


def _config_option(field: dataclasses.Field[Any], hint: Any) -> Option:
    """The option for one `StabilizerConfig` field, derived from its type and default."""
    name = field.name
    optional = False
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = tuple(a for a in typing.get_args(hint) if a is not NoneType)
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else args
    origin = typing.get_origin(hint)
    choices: tuple[str, ...] | None = None
    if origin is typing.Literal:
        choices = tuple(str(c) for c in typing.get_args(hint))
        parse: Callable[[str], Any] = _choice(choices)
        allowed = " or ".join(repr(c) for c in choices)
    elif hint is bool:
        parse, allowed = _switch, "true or false"
    elif hint is float:
        parse, allowed = _float, "a number"
    elif hint is int:
        parse, allowed = _int, "an int"
    elif hint is str or hint is Any:
        parse, allowed = str, "a string"
    elif origin is tuple:
        parse, allowed = _rate_limit, "RATE,BURST (a number and an int), e.g. 20,40"
    elif origin is Callable or origin is typing.Callable:
        parse, allowed = _import_ref, "an import string MODULE:ATTRIBUTE"
    elif isinstance(hint, tuple) and str in hint:  # secret: str | bytes | Sequence[...]
        parse, allowed = _secret, "a non-empty key, or comma-separated keys"
    else:  # pragma: no cover - caught by the test that builds every option
        raise TypeError(f"no command-line parser for StabilizerConfig.{name}: {hint!r}")
    if optional:
        parse = _optional(parse)
        allowed += " or 'none'"
    return Option(
        name,
        parse,
        field.default,
        _FIELD_HELP.get(name, f"StabilizerConfig.{name}"),
        allowed,
        choices=choices,
        secret=name in _SECRET_FIELDS,
    )


def config_options() -> tuple[Option, ...]:
    """One option per `StabilizerConfig` field, in declaration order."""
    hints = typing.get_type_hints(StabilizerConfig, localns={"Scope": dict, "Session": object})
    return tuple(_config_option(f, hints[f.name]) for f in dataclasses.fields(StabilizerConfig))


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

SERVER_OPTIONS = (
    Option("host", str, "127.0.0.1", "interface to bind", "a host name or address", config=False),
    Option("port", _port, 8000, "TCP port to bind (0: any free port)", "an int from 0 to 65535",
           config=False),
    Option("workers", _workers, 1, "worker processes; each imports MODULE:APP and has its own "
           "manager", "an int >= 1", config=False),
    Option("factory", _switch, False, "MODULE:APP is a factory: call it without arguments to "
           "get the app", "a switch (environment: 1/0, true/false, yes/no, on/off)",
           config=False, switch=True),
    Option("app_dir", str, ".", "directory put first on sys.path before importing MODULE:APP",
           "a directory", config=False),
    Option("log_level", _choice(_LOG_LEVELS), "info", "log level of uvicorn and stabilizer_asgi",
           " or ".join(repr(c) for c in _LOG_LEVELS), choices=_LOG_LEVELS, config=False),
    Option("log_format", _choice(("text", "json")), "text", "'json': one JSON object per line "
           "(stabilizer_asgi.logging.JsonFormatter) for every logger", "'text' or 'json'",
           choices=("text", "json"), config=False),
    Option("timeout_graceful_shutdown", _optional_seconds, None, "seconds uvicorn waits for "
           "connections and tasks after the drain before cancelling them ('none': no limit)",
           "a number >= 0 or 'none'", config=False),
    Option("ws_ping_interval", _optional_seconds, 20.0, "uvicorn's own protocol-level ping "
           "interval ('none': off); independent of heartbeat_interval",
           "a number >= 0 or 'none'", config=False),
    Option("ws_ping_timeout", _optional_seconds, 20.0, "uvicorn's own protocol-level ping "
           "timeout ('none': off)", "a number >= 0 or 'none'", config=False),
    Option("forwarded_allow_ips", _optional(str), None, "comma-separated proxy addresses "
           "trusted for X-Forwarded-For ('*': every peer, which logs a warning; default: "
           "127.0.0.1 or $FORWARDED_ALLOW_IPS)",
           "addresses or 'none'", config=False),
    Option("root_path", str, "", "ASGI root_path when served under a path prefix", "a path",
           config=False),
)  # fmt: skip


def all_options() -> tuple[Option, ...]:
    return SERVER_OPTIONS + config_options()


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "":
        return "''"
    return str(value)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `stabilizer-asgi` parser and its `serve` subparser."""
    parser = argparse.ArgumentParser(
        prog="stabilizer-asgi",
        description="Production websockets for any ASGI app: heartbeat, sessions, broadcast, "
        "limits, resume and graceful drain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run MODULE:APP under uvicorn behind StabilizerMiddleware",
        usage="%(prog)s MODULE:APP [--host HOST] [--port PORT] [--workers N] [--OPTION VALUE ...]",
        description="Run MODULE:APP (Starlette, FastAPI or any ASGI callable) under uvicorn "
        "behind StabilizerMiddleware. Every option can also be set with the environment "
        "variable shown (a flag wins). On SIGTERM the server drains first (health 503, new "
        "handshakes refused, reconnect hints spread over --drain-period, closes with 1012), "
        "then uvicorn shuts down; a second SIGTERM or Ctrl+C skips the rest of the drain.",
    )
    serve.add_argument("app", metavar="MODULE:APP", help="import string of the ASGI app")
    server_group = serve.add_argument_group("server options")
    config_group = serve.add_argument_group(
        "middleware options (StabilizerConfig fields; not allowed for an app that already "
        "adds StabilizerMiddleware)"
    )
    for option in all_options():
        group = config_group if option.config else server_group
        text = f"{option.help} (default: {_shown(option.default)}; env {option.env})"
        if option.switch:
            group.add_argument(
                option.flag, dest=option.name, action="store_true", default=argparse.SUPPRESS,
                help=text,
            )  # fmt: skip
            continue
        group.add_argument(
            option.flag,
            dest=option.name,
            type=_argparse_type(option),
            default=argparse.SUPPRESS,
            metavar="{" + ",".join(option.choices) + "}" if option.choices else option.name.upper(),
            help=text,
        )
    return parser, serve


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError:
            shown = "<redacted>" if option.secret else repr(text)
            raise argparse.ArgumentTypeError(
                f"invalid value {shown} (allowed: {option.allowed})"
            ) from None

    return convert


# ---------------------------------------------------------------------- settings


@dataclass
class ServeSettings:
    """What `serve` was asked to do, with every value's source resolved."""

    target: str
    server: dict[str, Any]
    config: dict[str, Any]  # only the fields set by a flag or the environment
    sources: dict[str, str]  # option name -> the flag or variable that set it

    def app(self) -> Any:
        """The target app, imported and wrapped (`build_app`). Raises `UsageError`."""
        return build_app(
            self.target,
            factory=self.server["factory"],
            app_dir=self.server["app_dir"],
            config=self.config,
            sources=self.sources,
        )


def resolve(ns: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """Flags, then `STABILIZER_*` variables, then defaults. Raises `UsageError`."""
    given = vars(ns)
    server: dict[str, Any] = {}
    config: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in all_options():
        if option.name in given:
            value = given[option.name]
            sources[option.name] = option.flag
        elif environ.get(option.env, "") != "":
            raw = environ[option.env]
            try:
                value = option.parse(raw)
            except ValueError:
                shown = "<redacted>" if option.secret else repr(raw)
                raise UsageError(
                    f"{option.env} ({option.flag})",
                    f"invalid value {shown} (allowed: {option.allowed})",
                ) from None
            sources[option.name] = option.env
        elif option.config:
            continue
        else:
            value = option.default
        (config if option.config else server)[option.name] = value
    return ServeSettings(ns.app, server, config, sources)


# ---------------------------------------------------------------------- building the app


def find_manager(app: object) -> Stabilizer | None:
    """The manager of the `StabilizerMiddleware` in `app`'s middleware chain, if any.

    Follows `.app` and Starlette's built `.middleware_stack`, so it finds an instance added
    with `add_middleware` once the app has handled its first event (lifespan startup).
    """
    seen: set[int] = set()
    todo = [app]
    while todo and len(seen) < 64:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        # A middleware whose settings were refused in a running loop has no manager.
        manager = getattr(obj, "manager", None) if isinstance(obj, StabilizerMiddleware) else None
        if isinstance(manager, Stabilizer):
            return manager
        todo.append(getattr(obj, "middleware_stack", None))
        todo.append(getattr(obj, "app", None))
    return None


def _declared(app: object) -> Iterator[Any]:
    """The `add_middleware(StabilizerMiddleware, ...)` entries declared along `app`'s chain."""
    seen: set[int] = set()
    obj: object = app
    while obj is not None and id(obj) not in seen and len(seen) < 64:
        seen.add(id(obj))
        for middleware in getattr(obj, "user_middleware", None) or ():
            cls = getattr(middleware, "cls", None)
            if isinstance(cls, type) and issubclass(cls, StabilizerMiddleware):
                yield middleware
        obj = getattr(obj, "app", None)


def is_stabilized(app: object) -> bool:
    """True if `app` already runs behind `StabilizerMiddleware` (instance or `add_middleware`)."""
    return find_manager(app) is not None or next(_declared(app), None) is not None


def max_message_size_of(app: object) -> int | None:
    """The `max_message_size` of the `StabilizerMiddleware` in `app`: built (an instance, or a
    built middleware stack), or still only declared with `add_middleware`; the default if its
    options cannot be read."""
    manager = find_manager(app)
    if manager is not None:
        return manager.config.max_message_size
    middleware = next(_declared(app), None)
    if middleware is not None:
        args, kwargs = getattr(middleware, "args", ()), getattr(middleware, "kwargs", {})
        try:
            base = args[0] if args else kwargs.get("config")
            rest = {k: v for k, v in kwargs.items() if k != "config"}
            return StabilizerConfig.from_kwargs(base, **rest).max_message_size
        except (ConfigError, TypeError):
            pass  # its own error surfaces when the app starts
    return StabilizerConfig().max_message_size


def ws_max_size_for(max_message_size: int | None) -> int | None:
    """uvicorn's `ws_max_size` for our `max_message_size` (None: keep uvicorn's 16 MiB).

    uvicorn reads a whole message into memory, up to `ws_max_size`, before the middleware
    sees it, so without this `max_message_size` bounds nothing. See `wire.server_frame_limit`
    for why it is `max_message_size + 1`, at least 4096.
    """
    return wire.server_frame_limit(max_message_size)


def _check_added_middleware(app: object, target: str) -> None:
    """Validate the settings of a `StabilizerMiddleware` added with `add_middleware` now.

    Starlette builds its middleware at the first event, where a ConfigError can only fail the
    lifespan startup (status 3); checked here, it is a usage error like any bad option.
    """
    for middleware in _declared(app):
        args = tuple(getattr(middleware, "args", ()))
        kwargs = dict(getattr(middleware, "kwargs", {}))
        if "manager" in kwargs:
            continue
        config = args[0] if args else kwargs.pop("config", None)
        try:
            StabilizerConfig.from_kwargs(config, **kwargs)
        except ConfigError as exc:
            raise UsageError("MODULE:APP", f"{target} adds StabilizerMiddleware: {exc}") from None


def _import(target: str, what: str) -> Any:
    try:
        return import_from_string(target)
    except ImportFromStringError as exc:
        raise UsageError(what, f"cannot import {target!r}: {exc}") from None


def build_app(
    target: str, *, factory: bool, app_dir: str, config: dict[str, Any], sources: dict[str, str]
) -> Any:
    """Import `target` and wrap it in `StabilizerMiddleware` unless it is already wrapped."""
    if app_dir and os.path.abspath(app_dir) not in map(os.path.abspath, sys.path):
        sys.path.insert(0, os.path.abspath(app_dir))
    app = _import(target, "MODULE:APP")
    if factory:
        app = app()
    if not callable(app):
        raise UsageError("MODULE:APP", f"{target!r} is a {type(app).__name__}, not an ASGI app")
    if is_stabilized(app):
        _check_added_middleware(app, target)
        # A secret generated for the workers (`share_secret`) is the sidecar's own default,
        # not a setting the user gave: the app's own configuration stands.
        given = [name for name in config if sources.get(name) != GENERATED_SECRET]
        if given:
            name = given[0]
            raise UsageError(
                sources.get(name, name),
                f"{target} already adds StabilizerMiddleware, whose own settings would win: "
                "configure it in the app, or serve the app without the middleware",
            )
        return app
    values = {}
    for name, value in config.items():
        if isinstance(value, ImportRef):
            value = _import(value.path, sources.get(name, name))
        values[name] = value
    try:
        settings = StabilizerConfig(**values)
    except ConfigError as exc:
        option = sources.get(exc.field, exc.field)
        shown = "<redacted>" if exc.field in _SECRET_FIELDS else repr(exc.value)
        raise UsageError(option, f"invalid value {shown} (allowed: {exc.allowed})") from None
    return StabilizerMiddleware(app, config=settings)


# ---------------------------------------------------------------------- uvicorn glue


class SidecarConfig(uvicorn.Config):
    """uvicorn's Config, loading MODULE:APP through `build_app` (in every worker process)."""

    def __init__(self, settings: ServeSettings, app: Any = None, **kwargs: Any) -> None:
        self.stabilizer_settings = settings
        # The app already built by `main` (single process); workers build their own.
        self.prebuilt_app = app
        super().__init__(settings.target, **kwargs)

    def load_app(self) -> Any:
        app = self.prebuilt_app
        if app is None:
            try:
                app = self.stabilizer_settings.app()
            except UsageError as exc:
                logging.getLogger("uvicorn.error").error("%s", exc)
                sys.exit(STARTUP_FAILURE)
        manager = find_manager(app)
        if manager is not None:  # stats show uvicorn's limit from the start
            manager._server_limit(self.ws_max_size)
        return app


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose first SIGTERM drains the stabilizer before shutting down.

    uvicorn installs `handle_exit` with `signal.signal`, so it runs in the loop's thread
    between two bytecodes: it only schedules the drain. When the drain is over (or on a
    second SIGTERM, or any SIGINT) uvicorn's own `handle_exit` takes over, which closes the
    listening sockets, closes what is left with 1012 and sends `lifespan.shutdown`.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drain_report: ShutdownReport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_begun = False
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig == signal.SIGTERM and not self._drain_begun and self.started and loop is not None:
            manager = find_manager(self.config.loaded_app)
            if manager is not None and not self.should_exit:
                self._drain_begun = True
                _log.event(logger, _log.SIGNAL_RECEIVED, signal=_signame(sig), action="drain")
                loop.call_soon_threadsafe(self._start_drain, manager, sig)
                return
        if self._drain_begun and not self.should_exit:
            _log.event(logger, _log.SIGNAL_RECEIVED, signal=_signame(sig), action="exit")
        super().handle_exit(sig, frame)

    def _start_drain(self, manager: Stabilizer, sig: int) -> None:
        assert self._loop is not None
        self._drain_task = self._loop.create_task(self._drain(manager, sig))

    async def _drain(self, manager: Stabilizer, sig: int) -> None:
        try:
            self.drain_report = await manager.drain()
        except Exception:
            logger.exception("drain on %s failed; shutting down", _signame(sig))
        finally:
            if not self.should_exit:
                super().handle_exit(sig, None)


class DrainingProcess(multiprocess.Process):
    """A uvicorn worker process whose server is a `DrainingServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:  # pragma: no cover
        return str(sig)


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn and stabilizer_asgi in text or JSON."""
    upper = "DEBUG" if level == "trace" else level.upper()
    if fmt == "json":
        json_formatter = {"()": "stabilizer_asgi.logging.JsonFormatter"}
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": json_formatter, "access": dict(json_formatter)},
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "stream": "ext://sys.stderr",
                },
                "access": {
                    "class": "logging.StreamHandler",
                    "formatter": "access",
                    "stream": "ext://sys.stdout",
                },
            },
            "loggers": {
                "uvicorn": {"handlers": ["default"], "level": upper, "propagate": False},
                "uvicorn.error": {"level": upper},
                "uvicorn.access": {"handlers": ["access"], "level": upper, "propagate": False},
                _log.LOGGER_NAME: {"handlers": ["default"], "level": upper, "propagate": False},
            },
            # Every other logger (asyncio, websockets, py.warnings, the app's own) writes JSON
            # too, instead of Python's last-resort handler writing bare text to stderr.
            "root": {"handlers": ["default"], "level": "WARNING"},
        }
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["stabilizer"] = {"()": "stabilizer_asgi.logging.TextFormatter"}
    config["handlers"]["stabilizer"] = {
        "class": "logging.StreamHandler",
        "formatter": "stabilizer",
        "stream": "ext://sys.stderr",
    }
    config["loggers"][_log.LOGGER_NAME] = {
        "handlers": ["stabilizer"],
        "level": upper,
        "propagate": False,
    }
    return config


def _configure_logging(level: str, fmt: str) -> None:
    logging.config.dictConfig(log_config(level, fmt))
    if fmt == "json":
        logging.captureWarnings(True)  # a `warnings.warn` line would not be JSON either


TRUST_ALL_PROXIES = "trust_all_proxies"
"""WARNING at startup: `--forwarded-allow-ips '*'` (event name)."""


def warn_trust_all(trusted: str | list[str] | None) -> None:
    """Warn when every peer may set the client address through X-Forwarded-For."""
    items = trusted.split(",") if isinstance(trusted, str) else list(trusted or ())
    if "*" in (item.strip() for item in items):
        logger.warning(
            "--forwarded-allow-ips '*' trusts X-Forwarded-For from every peer: any client can "
            "claim any address, which defeats max_connections_per_ip and makes client addresses "
            "in logs untrustworthy. List only your proxies' addresses unless every connection "
            "reaches this server through a proxy that overwrites the header.",
            extra={"event": TRUST_ALL_PROXIES},
        )


def serve(settings: ServeSettings, app: Any = None) -> int:
    """Run the app under uvicorn until a signal; the exit status."""
    s = settings.server
    built = app if app is not None else settings.app()
    ws_max_size = ws_max_size_for(max_message_size_of(built))
    limits = {} if ws_max_size is None else {"ws_max_size": ws_max_size}
    config = SidecarConfig(
        settings,
        app=app if s["workers"] == 1 else None,
        host=s["host"],
        port=s["port"],
        workers=s["workers"],
        log_level=s["log_level"],
        log_config=log_config(s["log_level"], s["log_format"]),
        timeout_graceful_shutdown=s["timeout_graceful_shutdown"],
        ws_ping_interval=s["ws_ping_interval"],
        ws_ping_timeout=s["ws_ping_timeout"],
        forwarded_allow_ips=s["forwarded_allow_ips"],
        root_path=s["root_path"],
        lifespan="auto",
        **limits,
    )
    # After the config: building it applied the log config, so the warning is formatted too.
    warn_trust_all(config.forwarded_allow_ips)
    if s["workers"] == 1:
        server = DrainingServer(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    # The supervisor creates (and re-creates) its workers through this module-level name;
    # swapping it only affects this process, which exists to run that supervisor.
    original = multiprocess.Process
    multiprocess.Process = DrainingProcess  # type: ignore[misc]
    try:
        with metrics_directory():
            sock = config.bind_socket()
            multiprocess.Multiprocess(config, sockets=[sock]).run()
    finally:
        multiprocess.Process = original  # type: ignore[misc]
    return 0


GENERATED_SECRET = "--workers (generated secret)"


def share_secret(settings: ServeSettings) -> None:
    """Give every worker one generated secret when several share the memory backend without
    one (with Redis a secret is required: a generated one cannot reach other machines)."""
    config = settings.config
    shared = settings.server["workers"] > 1 and "secret" not in config
    if shared and config.get("backend", "memory") == "memory":
        config["secret"] = secrets.token_urlsafe(32)
        settings.sources["secret"] = GENERATED_SECRET


@contextlib.contextmanager
def metrics_directory() -> Iterator[str | None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers' metrics, removed at exit.

    With several workers each process counts its own connections; prometheus_client's
    multiprocess mode adds them up through files in this directory. A directory the user set
    is theirs (and must be emptied between runs); without prometheus-client there is nothing
    to share.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or find_spec("prometheus_client") is None:
        yield None
        return
    path = tempfile.mkdtemp(prefix="stabilizer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by the spawned workers
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `stabilizer-asgi` command; returns the exit status."""
    parser, serve_parser = build_parser()
    ns = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = resolve(ns, environ)
        # Logging is configured before the app is imported and wrapped: whatever is logged
        # from then on (the generated-secret warning, the app's import-time records) is
        # formatted like uvicorn's own lines, never left to Python's bare last-resort handler.
        _configure_logging(settings.server["log_level"], settings.server["log_format"])
        share_secret(settings)
        # Import and wrap here, so a bad app or option fails now with status 2 rather than in
        # every worker; a single process serves this very app.
        app = settings.app()
    except UsageError as exc:
        serve_parser.error(str(exc))
    return serve(settings, app)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
