"""`WebSocketConfig`: the seed's rejections with the seed's exception types, and what each
setting the seed ignored now does."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from stabilizer_asgi import ConfigError
from stabilizer_asgi.compat import (
    CompressionMode,
    MemoryEvictionPolicy,
    WebSocketConfig,
    WebSocketConnectionManager,
)

# (field, value, exception type the seed raises); every one is also a ConfigError here.
REJECTED: list[tuple[str, Any, type[Exception]]] = [
    ("heartbeat_interval", 0, ValueError),
    ("heartbeat_interval", -1.5, ValueError),
    ("heartbeat_interval", "30", TypeError),
    ("heartbeat_timeout", 0, ValueError),
    ("heartbeat_timeout", None, TypeError),
    ("max_connections", 0, ValueError),
    ("max_connections", "10", TypeError),
    ("max_message_size", 0, ValueError),
    ("max_message_size", None, TypeError),
    ("reconnect_token_ttl", timedelta(0), ValueError),
    ("log_level", "INVALID", ValueError),
    ("log_level", "info", ValueError),
    ("num_shards", 0, ValueError),
    ("num_shards", -1, ValueError),
    ("max_concurrent_cleanup", 0, ValueError),
    ("max_concurrent_broadcast", -10, ValueError),
    ("memory_check_interval", 0, ValueError),
    ("memory_eviction_policy", "INVALID_POLICY", ValueError),
    ("memory_eviction_policy", 3, ValueError),
    ("max_memory_per_connection", 0, ValueError),
    ("max_memory_per_connection", "1k", TypeError),
    ("max_total_memory", -1024, ValueError),
]


@pytest.mark.parametrize(("name", "value", "kind"), REJECTED)
def test_seed_rejections_keep_the_seed_exception_type(
    name: str, value: Any, kind: type[Exception]
) -> None:
    """What the seed rejects is rejected with its exception type (and its message), as a
    ConfigError naming the field and what is allowed."""
    with pytest.raises(kind) as caught:
        WebSocketConfig(**{name: value})
    assert isinstance(caught.value, ConfigError)
    assert caught.value.field == name
    assert str(caught.value).startswith(f"{name} must be")
    assert "allowed:" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("heartbeat_type", "pong"), ("compression", "gzip"), ("enable_metrics", "yes")],
)
def test_settings_the_seed_ignored_are_checked(name: str, value: Any) -> None:
    """Values the seed took and ignored are refused loudly."""
    with pytest.raises(ConfigError, match=name):
        WebSocketConfig(**{name: value})


def test_enums_accept_their_values_in_any_case() -> None:
    """`memory_eviction_policy` and `compression` take members or their names, as the seed's
    eviction policy did."""
    config = WebSocketConfig(memory_eviction_policy="FIFO", compression="None")
    assert config.memory_eviction_policy is MemoryEvictionPolicy.FIFO
    assert config.compression is CompressionMode.NONE


def test_invalid_change_after_construction_is_caught_by_the_manager() -> None:
    """The dataclass can be changed after construction; the manager checks it again."""
    config = WebSocketConfig()
    config.num_shards = 0
    with pytest.raises(ValueError, match="num_shards must be positive"):
        WebSocketConnectionManager(config)


def test_settings_map_to_the_native_configuration() -> None:
    """Each seed setting with a native counterpart configures it; native keywords override."""
    mgr = WebSocketConnectionManager(
        WebSocketConfig(
            heartbeat_interval=5,
            heartbeat_timeout=7,
            max_connections=9,
            max_message_size=1000,
            num_shards=4,
            max_memory_per_connection=100,
            max_total_memory=1000,
            memory_eviction_policy="fifo",
            enable_reconnect=False,
        ),
        max_connections_per_ip=3,
    )
    native = mgr.stabilizer.config
    assert (native.heartbeat, native.ping_text, native.pong_text) == (
        "always",
        '{"type":"ping"}',
        "pong",
    )
    assert (native.heartbeat_interval, native.heartbeat_timeout) == (5.0, 7.0)
    assert (native.max_connections, native.max_message_size, native.num_shards) == (9, 1000, 4)
    assert (native.max_memory_per_session, native.max_total_memory) == (100, 1000)
    assert (native.eviction, native.resume_window, native.max_connections_per_ip) == (
        "fifo",
        0.0,
        3,
    )
    assert native.stats_path is None


def test_log_level_sets_the_library_logger() -> None:
    """`log_level` (ignored by the seed) sets the `stabilizer_asgi` logger's level."""
    WebSocketConnectionManager(WebSocketConfig(log_level="ERROR"))
    assert logging.getLogger("stabilizer_asgi").level == logging.ERROR


def test_inert_settings_and_compression_none_warn(caplog: pytest.LogCaptureFixture) -> None:
    """Settings this design has no use for, and `compression="none"`, say so when set."""
    with caplog.at_level(logging.WARNING, logger="stabilizer_asgi.compat"):
        WebSocketConnectionManager(WebSocketConfig(log_level="WARNING"))
        assert [r for r in caplog.records if r.name == "stabilizer_asgi.compat"] == []
        WebSocketConnectionManager(
            WebSocketConfig(
                log_level="WARNING",
                compression="none",
                max_concurrent_cleanup=5,
                max_concurrent_broadcast=5,
                memory_check_interval=1.0,
            )
        )
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "stabilizer_asgi.compat")
    assert "--ws-per-message-deflate false" in text
    for name in ("max_concurrent_cleanup", "max_concurrent_broadcast", "memory_check_interval"):
        assert f"{name}=" in text
