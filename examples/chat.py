"""Chat demo: a plain Starlette app plus one `add_middleware` line.

Run it with `make demo` (or `stabilizer-asgi serve examples.chat:app`, or
`uvicorn examples.chat:app`), open http://127.0.0.1:8000 in two tabs and chat. The page uses the
browser client served by the middleware, shows the connection state, and loses no line across a
network blip; after a server restart it says that it resynced.
"""

from __future__ import annotations

import html

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware

ROOM = "chat"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stabilizer-asgi chat</title>
<style>
 body { font: 15px system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; }
 #log { border: 1px solid #ccc; height: 22rem; overflow-y: auto; padding: .5rem; }
 #state { font-weight: bold; } .open { color: #080; } .closed { color: #a00; }
 .reconnecting, .connecting { color: #b60; } .note { color: #666; font-style: italic; }
</style></head>
<body>
<h1>chat</h1>
<p>connection: <span id="state" class="connecting">connecting</span>
 &middot; session <code id="session">-</code></p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" size="50" autofocus>
<button>send</button></form>
<script type="module">
import { StabilizerSocket } from "/_stabilizer/client.js";
const log = document.getElementById("log");
const state = document.getElementById("state");
function line(text, cls) {
  const p = document.createElement("div");
  p.textContent = text;
  if (cls) p.className = cls;
  log.append(p);
  log.scrollTop = log.scrollHeight;
}
const url = new URL("/ws", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new StabilizerSocket(url.href);
window.chat = ws;
ws.addEventListener("statechange", () => {
  state.textContent = ws.state;
  state.className = ws.state;
  document.getElementById("session").textContent = ws.sessionId || "-";
});
ws.addEventListener("message", (event) => line(event.data));
ws.addEventListener("resync", (event) =>
  line(`resynced: the server could not resume (${event.reason}); new session`, "note"));
document.getElementById("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) ws.send(input.value);
  input.value = "";
});
</script>
</body></html>
"""


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def who(request: Request) -> JSONResponse:
    """Who is in the room: the manager is in `request.state` for HTTP routes too."""
    stab = request.state.stabilizer
    return JSONResponse({"online": len(stab.sessions(group=ROOM)), "groups": stab.groups()})


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    stab = websocket.state.stabilizer
    me = websocket.state.stabilizer_session
    name = html.escape(websocket.query_params.get("name") or f"guest-{me.id[:4]}")
    if not me.resumed:  # a resumed session is still in the room and has had its greeting
        await stab.join(me.id, ROOM)
        await stab.broadcast(f"* {name} joined", group=ROOM)
    try:
        while True:
            text = await websocket.receive_text()
            await stab.broadcast(f"{name}: {text[:500]}", group=ROOM)
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/who", who),
        WebSocketRoute("/ws", chat),
    ]
)
app.add_middleware(StabilizerMiddleware, heartbeat_interval=15, heartbeat_timeout=10)
