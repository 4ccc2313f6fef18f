"""A uvicorn server for one app of ``_apps.py`` (run by ``_procs.ServerProcess``).

``python -m benchmarks._server --app ours --port 8765`` serves it on the loopback with uvicorn's
defaults (asyncio loop, websockets-sansio protocol, its own 20 s protocol-level keepalive
pings), logging only warnings, so every app pays the same server costs.
"""

from __future__ import annotations

import argparse
import json

from benchmarks._apps import APPS, Hub, build_app
from benchmarks._common import run_uvicorn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server")
    parser.add_argument("--app", choices=APPS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument("--heartbeat-timeout", type=float, default=None)
    parser.add_argument("--ours-options", type=json.loads, default=None)
    args = parser.parse_args(argv)

    return run_uvicorn(
        lambda: build_app(
            args.app,
            Hub(),
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            ours_options=args.ours_options,
        ),
        args.host,
        args.port,
    )


if __name__ == "__main__":
    raise SystemExit(main())
