"""A load-generating process for ``benchmarks.deploy`` (driven by ``_procs.LoadGen``): a
:class:`benchmarks._deploy.Fleet` of Python clients (``stabilizer_asgi.client.connect``, opted
in) that exchange numbered messages both ways and check them.

Commands (one JSON line each, one JSON reply): ``open`` (``url``, ``start``, ``count``,
``concurrency``, ``local_host``), ``start`` (``interval``: each client sends its next message
every ``interval`` seconds), ``stop``, ``settle`` (``published``, ``idle``, ``timeout``: wait
until every client has every echo and broadcast), ``report`` (``published``, ``uncertain``,
``origins``), ``close``, ``exit``.
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import can_bind, run_loadgen, serve_loadgen_commands
from benchmarks._deploy import Fleet


async def serve() -> None:
    fleet = Fleet()

    async def open_(cmd: dict[str, Any]) -> dict[str, Any]:
        local = cmd.get("local_host")
        options: dict[str, Any] = {}
        if local and can_bind(local):
            options["ws_options"] = {"local_addr": (local, 0), "compression": None}
        opened = await fleet.open(
            cmd["url"],
            int(cmd["count"]),
            start=int(cmd.get("start", 0)),
            concurrency=int(cmd.get("concurrency", 50)),
            client_options=options,
        )
        return {"opened": opened, "errors": fleet.open_errors[:5]}

    def start(cmd: dict[str, Any]) -> dict[str, Any]:
        fleet.start_sending(float(cmd["interval"]))
        return {"sending": len(fleet.clients)}

    def stop(cmd: dict[str, Any]) -> dict[str, Any]:
        fleet.stop_sending()
        return {"stopped": True}

    async def settle(cmd: dict[str, Any]) -> dict[str, Any]:
        waited = await fleet.settle(
            cmd["published"], float(cmd.get("idle", 10)), float(cmd.get("timeout", 120))
        )
        return {"seconds": waited}

    def report(cmd: dict[str, Any]) -> dict[str, Any]:
        return fleet.report(cmd["published"], cmd.get("uncertain", ()), cmd.get("origins", ()))

    async def close(cmd: dict[str, Any]) -> dict[str, Any]:
        await fleet.close()
        return {"closed": True}

    def abort_all() -> None:
        for client in fleet.clients:
            ws = getattr(client.conn, "_ws", None)
            if ws is not None:
                ws.transport.abort()

    await serve_loadgen_commands(
        {
            "open": open_,
            "start": start,
            "stop": stop,
            "settle": settle,
            "report": report,
            "close": close,
        },
        abort_all,
    )


def main() -> int:
    return run_loadgen(serve)


if __name__ == "__main__":
    raise SystemExit(main())
