"""The seam between the manager and its connections stays one-way and public."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "stabilizer_asgi"

# Connection members the manager once set or read directly; it now uses the public surface.
_CONN_PRIVATES = (
    "_abort|_proto|_offer_control|_resume_ack|_resume_generation|_resume_reason|_resume_token"
    "|_server_disconnect|_send_failed|_transport_failed|_hb|_hb_key|_inbox|_opened|_app_closed"
    "|_phase|_send"
)


def test_connection_module_does_not_import_the_manager() -> None:
    """asgi/connection.py imports nothing from the manager, not even for type checking."""
    tree = ast.parse((PKG / "asgi" / "connection.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module is None or "manager" not in node.module, ast.dump(node)
        elif isinstance(node, ast.Import):
            assert all("manager" not in a.name for a in node.names), ast.dump(node)


def test_manager_and_middleware_touch_no_connection_private() -> None:
    """manager.py and middleware.py reach no private member of a Connection."""
    pattern = re.compile(
        r"\b(?:conn|old|c|victim\._conn|old\._conn|session\._conn)\.(?:" + _CONN_PRIVATES + r")\b"
    )
    for path in (PKG / "manager.py", PKG / "asgi" / "middleware.py"):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert hits == [], (path.name, hits)
