"""Configuration: every invalid value is refused at construction with a `ConfigError` that names
the field, the value and what is allowed; unknown options are refused too."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from stabilizer_asgi import (
    ConfigError,
    Stabilizer,
    StabilizerConfig,
    StabilizerMiddleware,
    backends,
)
from stabilizer_asgi.backends import BACKEND_MEMBERS, MemoryBackend


def _sync_hook(session: Any) -> None:
    """Not a coroutine function: hooks must be async."""


async def _async_hook(session: Any) -> None:
    """A valid hook."""


class _AsyncCallable:
    async def __call__(self, session: Any) -> None:
        """A valid hook: an object with an async `__call__`."""


class _BroadcastOnlyBackend:
    """The backend shape before the cluster seam: publish, no presence or token store."""

    async def start(self, deliver: Any) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, envelope: Any) -> tuple[int, int, int, int]: ...


SECRET_FIELDS = {"secret", "admin_token"}

INVALID: list[tuple[str, Any]] = [
    ("heartbeat", "sometimes"),
    ("heartbeat", None),
    ("heartbeat", True),
    ("heartbeat_interval", 0),
    ("heartbeat_interval", -1.5),
    ("heartbeat_interval", math.inf),
    ("heartbeat_interval", math.nan),
    ("heartbeat_interval", "25"),
    ("heartbeat_interval", True),
    ("heartbeat_interval", None),
    ("heartbeat_timeout", 0),
    ("heartbeat_timeout", -10),
    ("heartbeat_timeout", math.inf),
    ("ping_text", ""),
    ("ping_text", "\x1eping"),
    ("ping_text", 5),
    ("ping_text", b"ping"),
    ("pong_text", ""),
    ("pong_text", "\x1e"),
    ("pong_text", "ping"),  # the same as ping_text
    ("max_connections", 0),
    ("max_connections", -1),
    ("max_connections", 1.5),
    ("max_connections", True),
    ("max_connections", "100"),
    ("max_connections_per_ip", 0),
    ("max_connections_per_ip", 2.0),
    ("max_message_size", 0),
    ("max_message_size", -1),
    ("max_message_size", "1MiB"),
    ("rate_limit", (0, 1)),
    ("rate_limit", (-1, 1)),
    ("rate_limit", (1, 0)),
    ("rate_limit", (1, 1.5)),
    ("rate_limit", (math.inf, 1)),
    ("rate_limit", (math.nan, 1)),
    ("rate_limit", (True, 1)),
    ("rate_limit", (1,)),
    ("rate_limit", (1, 2, 3)),
    ("rate_limit", 10),
    ("rate_limit", "10/s"),
    ("num_shards", 0),
    ("num_shards", 65537),
    ("num_shards", 4.0),
    ("max_queue_messages", 0),
    ("max_queue_messages", None),
    ("max_queue_bytes", 0),
    ("max_queue_bytes", 1.5),
    ("max_read_ahead", 0),
    ("slow_consumer", "block"),
    ("slow_consumer", None),
    ("close_timeout", 0),
    ("close_timeout", -1),
    ("close_timeout", math.inf),
    ("close_timeout", math.nan),
    ("close_timeout", "5s"),
    ("close_timeout", None),
    ("max_memory_per_session", 0),
    ("max_memory_per_session", -5),
    ("max_total_memory", 0),
    ("max_total_memory", 1e6),
    ("eviction", "random"),
    ("eviction", "LRU"),
    ("client_id", "header:x-user"),
    ("client_id", 5),
    ("duplicate_client", "kick"),
    ("duplicate_client", None),
    ("resume_window", -1),
    ("resume_window", math.nan),
    ("resume_window", "2m"),
    ("replay_buffer_messages", -1),
    ("replay_buffer_messages", 1.5),
    ("replay_buffer_bytes", -1),
    ("secret", ""),
    ("secret", b""),
    ("secret", []),
    ("secret", [""]),
    ("secret", ["ok", 5]),
    ("secret", 12345),
    ("secret", {"kid": "key"}),
    ("stats_path", "stats"),
    ("stats_path", "/stats?x=1"),
    ("stats_path", 5),
    ("stats_path", ""),
    ("health_path", "health"),
    ("drain_path", "drain"),
    ("client_js_path", "client.js"),
    ("metrics_path", "metrics"),
    ("dashboard_path", "/_stabilizer/?x=1"),
    ("admin_token", ""),
    ("admin_token", "   "),
    ("admin_token", 1234),
    ("drain_period", -1),
    ("drain_period", math.inf),
    ("retry_after", -1),
    ("retry_after", 1.5),
    ("retry_after", None),
    ("on_connect", _sync_hook),
    ("on_connect", "hook"),
    ("on_disconnect", _sync_hook),
    ("on_timeout", print),
    ("on_resume", lambda session: None),
    ("backend", "postgres://db"),
    ("backend", "memory://"),
    ("backend", 5),
    ("backend", object()),
    ("backend", _BroadcastOnlyBackend()),
    ("cluster_name", ""),
    ("cluster_name", "two words"),
    ("cluster_name", "a:b"),
    ("cluster_name", None),
    ("probe_interval", 0),
    ("cluster_timeout", -1),
    ("cluster_outbox_messages", 0),
    ("cluster_outbox_bytes", 0),
    ("cluster_history", 0),
    ("cluster_connections", 0),
    ("otel", "yes"),
    ("otel", 1),
]


def test_every_field_has_an_invalid_case() -> None:
    """The invalid-value table covers every configuration field."""
    fields = {f.name for f in dataclasses.fields(StabilizerConfig)}
    assert fields == {name for name, _ in INVALID}


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_values_raise_config_error(field: str, value: Any) -> None:
    """An invalid value raises `ConfigError` (a `ValueError`) naming field, value, allowed."""
    kwargs: dict[str, Any] = {field: value}
    if field == "pong_text" and value == "ping":
        kwargs["ping_text"] = "ping"
    with pytest.raises(ConfigError) as info:
        StabilizerConfig(**kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert err.allowed
    message = str(err)
    assert repr(field) in message and err.allowed in message
    if field in SECRET_FIELDS:
        if isinstance(value, str | bytes) and value.strip():
            assert str(value) not in message  # secrets never appear in errors
    elif field == "backend" and isinstance(value, str) and "://" in value:
        # A URL may carry a password: only its scheme is shown.
        assert repr(value.split("://")[0] + "://...") in message
    else:
        assert repr(value) in message


@pytest.mark.parametrize(("field", "value"), INVALID[::7])
def test_invalid_values_are_refused_by_every_entry_point(field: str, value: Any) -> None:
    """The middleware and the manager validate their keyword arguments the same way."""
    kwargs: dict[str, Any] = {field: value}
    if field == "pong_text" and value == "ping":
        kwargs["ping_text"] = "ping"
    with pytest.raises(ConfigError) as mw_error:
        StabilizerMiddleware(Starlette(), **kwargs)
    with pytest.raises(ConfigError) as manager_error:
        Stabilizer(**kwargs)
    assert mw_error.value.field == manager_error.value.field == field


def test_secret_values_are_not_echoed() -> None:
    """A bad secret or admin token is reported without its content."""
    with pytest.raises(ConfigError) as info:
        StabilizerConfig(secret=["good-key", b""])
    assert "good-key" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        StabilizerConfig(admin_token=" \t ")
    assert info.value.field == "admin_token"


@pytest.mark.parametrize("name", ["heartbeat_intervall", "max_conections", "compression"])
def test_unknown_options_are_rejected(name: str) -> None:
    """A misspelt or unsupported option is refused with the list of known ones."""
    unknown: dict[str, Any] = {name: 1}
    for make in (
        lambda: StabilizerMiddleware(Starlette(), **unknown),
        lambda: Stabilizer(**unknown),
        lambda: StabilizerConfig.from_kwargs(**unknown),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.field == name
        assert "heartbeat_interval" in info.value.allowed
    with pytest.raises(TypeError):
        StabilizerConfig(**unknown)  # the dataclass itself: Python's own error


def test_add_middleware_validates_at_startup(client_factory: Callable[..., TestClient]) -> None:
    """With `Middleware(...)` the error surfaces when Starlette builds its stack, not later."""
    app = Starlette(middleware=[Middleware(StabilizerMiddleware, max_connections=0)])
    with pytest.raises(ConfigError) as info, client_factory(app):
        pass
    assert info.value.field == "max_connections"


USAGE = """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from stabilizer_asgi import StabilizerConfig, StabilizerMiddleware

app = Starlette(middleware=[Middleware(StabilizerMiddleware, heartbeat_interval=25)])
app.add_middleware(StabilizerMiddleware, heartbeat_interval=25, max_connections=10_000)
wrapped = StabilizerMiddleware(app, config=StabilizerConfig(heartbeat="off"))
"""


def test_documented_usage_type_checks(tmp_path: Path) -> None:
    """`add_middleware(StabilizerMiddleware, **settings)` passes `mypy --strict`."""
    import mypy.api as api

    source = tmp_path / "usage.py"
    source.write_text(USAGE)
    out, err, status = api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", str(source)]
    )
    assert status == 0, out + err


def test_config_and_manager_combinations() -> None:
    """`config=` plus keyword overrides merge; `manager=` excludes settings; junk config fails."""
    base = StabilizerConfig(heartbeat_interval=5, max_connections=10)
    mw = StabilizerMiddleware(Starlette(), config=base, max_connections=20)
    assert mw.config.heartbeat_interval == 5 and mw.config.max_connections == 20
    assert base.max_connections == 10
    assert StabilizerMiddleware(Starlette(), config=base).config is base
    manager = Stabilizer(heartbeat="off")
    assert StabilizerMiddleware(Starlette(), manager=manager).manager is manager
    with pytest.raises(ConfigError) as info:
        StabilizerMiddleware(Starlette(), manager=manager, heartbeat_interval=3)
    assert info.value.field == "manager"
    with pytest.raises(ConfigError) as info:
        StabilizerMiddleware(Starlette(), config={"heartbeat": "off"})  # type: ignore[arg-type]
    assert info.value.field == "config"


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("rate_limit", [5, 10], (5.0, 10)),
        ("rate_limit", (0.5, 1), (0.5, 1)),
        ("heartbeat_interval", 1, 1),
        ("heartbeat_timeout", 0.01, 0.01),
        ("max_message_size", None, None),
        ("max_connections", 1, 1),
        ("num_shards", 65536, 65536),
        ("replay_buffer_messages", 0, 0),
        ("resume_window", 0, 0),
        ("retry_after", 0, 0),
        ("secret", "k", "k"),
        ("secret", [b"new", "old"], [b"new", "old"]),
        ("stats_path", None, None),
        ("client_js_path", "/static/stab.js", "/static/stab.js"),
        ("on_connect", _async_hook, _async_hook),
        ("cluster_name", "chat-2", "chat-2"),
        ("probe_interval", 0.05, 0.05),
        ("ping_text", "❤", "❤"),
    ],
)
def test_valid_edge_values_are_accepted(field: str, value: Any, stored: Any) -> None:
    """Boundary values that are allowed are kept (tuples normalised)."""
    assert getattr(StabilizerConfig(**{field: value}), field) == stored


def test_hook_and_backend_objects_are_accepted() -> None:
    """An object with an async `__call__` is a hook; an object with the backend methods is a
    backend."""
    hook = _AsyncCallable()
    backend = MemoryBackend()
    cfg = StabilizerConfig(on_disconnect=hook, backend=backend)
    assert cfg.on_disconnect is hook and cfg.backend is backend


def test_public_view_hides_secrets(url_backend: None) -> None:
    """The stats document shows the settings without secrets or backend credentials."""
    cfg = StabilizerConfig(
        secret="s3cret", admin_token="t0ken", backend="fake://user:pw@host:6379/0"
    )
    assert cfg.backend == "fake://user:pw@host:6379/0"
    public = cfg.public()
    assert public["secret"] == "<set>" and public["admin_token"] == "<set>"
    assert "pw" not in public["backend"] and public["backend"].endswith("host:6379/0")
    assert set(public) == {f.name for f in dataclasses.fields(StabilizerConfig)}


def test_config_is_immutable() -> None:
    """A config cannot be changed after validation."""
    cfg = StabilizerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_connections = 5  # type: ignore[misc]


def test_backend_check_matches_the_backend_protocol() -> None:
    """Config requires exactly the members of `backends.base.Backend`, and the memory backend
    has them all."""
    from stabilizer_asgi.backends import Backend

    protocol_members = {name for name in vars(Backend) if not name.startswith("_")}
    assert set(BACKEND_MEMBERS) == protocol_members
    assert StabilizerConfig(backend=MemoryBackend()).backend is not None


class _UrlBackend(MemoryBackend):
    def __init__(self, url: str, **settings: Any) -> None:
        super().__init__()
        self.url = url


@pytest.fixture
def url_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """URL schemes as a backend package would register them: `fake://` (its requirement is
    installed) and `absent://` (its extra is not)."""
    monkeypatch.setitem(
        backends.URL_BACKENDS,
        "fake",
        backends.UrlBackend("fake", "json", "tests.asgi.test_config:_UrlBackend"),
    )
    monkeypatch.setitem(
        backends.URL_BACKENDS,
        "absent",
        backends.UrlBackend("absent", "no_such_module_here", "no_such_module_here:Backend"),
    )


def test_a_url_backend_whose_extra_is_installed_is_accepted_and_built(url_backend: None) -> None:
    """A URL with a registered scheme whose requirement imports passes the config, and the
    manager builds that backend from the URL."""
    cfg = StabilizerConfig(backend="fake://host:1/0", secret="k")
    backend = Stabilizer(cfg).backend
    assert isinstance(backend, _UrlBackend) and backend.url == "fake://host:1/0"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (
            "absent://user:pw@host",
            "a absent:// URL needs the [absent] extra: pip install 'stabilizer-asgi[absent]'",
        ),
        (
            "postgres://user:pw@host",
            "'memory', a absent:// or fake:// or redis:// or rediss:// or unix:// URL, "
            "or a backend object",
        ),
    ],
)
def test_a_url_backend_that_cannot_be_used_fails_at_config_time(
    url_backend: None, url: str, allowed: str
) -> None:
    """An unknown scheme, or a known one whose extra is missing, is a ConfigError from
    StabilizerConfig itself (what it accepts the manager can build), without the password."""
    with pytest.raises(ConfigError) as info:
        StabilizerConfig(backend=url)
    assert info.value.field == "backend" and info.value.allowed == allowed
    assert "pw" not in str(info.value)


def test_a_redis_backend_requires_a_shared_secret() -> None:
    """With a redis:// backend, no `secret` is a ConfigError naming `secret` (a key generated
    per process cannot be shared with the other nodes); with one it is accepted."""
    with pytest.raises(ConfigError) as info:
        StabilizerConfig(backend="redis://localhost:6379/0")
    assert info.value.field == "secret"
    cfg = StabilizerConfig(backend="rediss://localhost:6380/1", secret="k")
    assert cfg.backend == "rediss://localhost:6380/1"
