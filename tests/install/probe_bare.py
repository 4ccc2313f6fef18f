"""Run inside a fresh venv holding the wheel and no extra (`check_install.py`): every module
imports except those that need an extra, which say which one; the middleware serves a request."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import stabilizer_asgi
from stabilizer_asgi import StabilizerMiddleware

NEEDS = {
    "stabilizer_asgi.client": "stabilizer-asgi[client]",
    "stabilizer_asgi.cli": "[server]",
    "stabilizer_asgi.prometheus": "stabilizer-asgi[metrics]",
    "stabilizer_asgi.otel": "stabilizer-asgi[otel]",
}


def modules() -> list[str]:
    root = Path(stabilizer_asgi.__file__).parent
    assert "site-packages" in root.parts, f"not the installed package: {root}"
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def check_imports() -> int:
    count = 0
    for name in modules():
        needs = next((x for m, x in NEEDS.items() if name == m or name.startswith(m + ".")), None)
        if needs is None:
            importlib.import_module(name)
            count += 1
            continue
        try:
            importlib.import_module(name)
        except (ImportError, SystemExit) as exc:  # the CLI exits with its message
            assert needs in str(exc), f"{name}: {exc}"
        else:
            raise AssertionError(f"{name} imported without its extra ({needs})")
    return count


async def check_request() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"bare app"})

    wrapped = StabilizerMiddleware(app)
    for path, status in (("/", 200), ("/_stabilizer/health", 200)):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any], into: list[dict[str, Any]] = sent) -> None:
            into.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"localhost")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await wrapped(scope, receive, send)
        assert sent[0]["status"] == status, (path, sent)


if __name__ == "__main__":
    imported = check_imports()
    asyncio.run(check_request())
    print(f"bare install: {imported} modules imported, extras-only modules name their extra")
