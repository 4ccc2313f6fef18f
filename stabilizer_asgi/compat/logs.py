"""The seed's logging helpers, pointed at this project's logger."""

from __future__ import annotations

import logging

from .config import LOG_LEVELS

LOGGER_NAME = "stabilizer_asgi"


def get_logger(name: str) -> logging.Logger:
    """A child of the library's logger (the seed's were under `fastapi_websocket_stabilizer`)."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def configure_logging(level: str = "INFO") -> None:
    """Set the library logger's level and give it one stream handler (as the seed did; calling
    it twice does not add a second handler)."""
    upper = level.upper()
    if upper not in LOG_LEVELS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}: {level!r}")
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(upper)
    if not any(getattr(h, "_stabilizer_compat", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s - %(name)s - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S"
            )
        )
        handler._stabilizer_compat = True  # type: ignore[attr-defined]
        log.addHandler(handler)
