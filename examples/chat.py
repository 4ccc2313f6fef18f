"""Chat demo: a plain Starlette app plus one `add_middleware` line.

Run it with `make demo` (or `stabilizer-asgi serve examples.chat:app`, or
`uvicorn examples.chat:app`), open http://127.0.0.1:8000 in two tabs and chat. The page uses the
browser client served by the middleware and shows what it does: the connection state and its
round-trip time, and a "cut my connection" button that drops this tab's connection while a few
messages are sent to it, so you can watch the client reconnect and the server replay exactly
what was missed ("resumed, 3 missed messages replayed"). After a server restart, which loses
the sessions, it says "resynced" instead. The live dashboard is linked from the page.
"""

from __future__ import annotations

import html
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware

ROOM = "chat"
# Messages sent to a tab while its connection is cut: what the resume replays.
MISSED = 3

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stabilizer-asgi chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 15px system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
        color: #1d232b; }
 header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
 h1 { margin: 0 0 .5rem; font-size: 1.4rem; }
 .bar { display: flex; gap: 1.2rem; align-items: center; flex-wrap: wrap; margin: .5rem 0; }
 #state { font-weight: 600; padding: .1rem .55rem; border-radius: 1rem; color: #fff;
          background: #6b7480; }
 #state.open { background: #1f8f4e; } #state.closed { background: #c62f2f; }
 #state.reconnecting, #state.connecting { background: #c98a00; }
 .dim { color: #6b7480; font-size: .9rem; }
 #notice { min-height: 1.6rem; margin: .4rem 0; }
 #notice span { padding: .25rem .6rem; border-radius: .3rem; display: inline-block; }
 #notice .resumed { background: #e4f5ea; color: #146b39; }
 #notice .resynced { background: #fdecea; color: #9b2222; }
 #notice .info { background: #eef2f8; color: #33486b; }
 #log { border: 1px solid #d5d9de; border-radius: .4rem; height: 20rem; overflow-y: auto;
        padding: .5rem .7rem; background: #fff; }
 #log div { padding: .1rem 0; }
 .system { color: #6b7480; font-style: italic; }
 .replayed { background: #fff7d6; }
 form { display: flex; gap: .5rem; margin-top: .6rem; }
 input { flex: 1; font: inherit; padding: .35rem .5rem; }
 button { font: inherit; padding: .35rem .8rem; cursor: pointer; }
 #cut { background: #fff; border: 1px solid #c62f2f; color: #c62f2f; border-radius: .3rem; }
</style></head>
<body>
<header><h1>chat</h1>
<a href="/_stabilizer/" target="_blank" id="dashboard">live dashboard &rarr;</a></header>
<div class="bar">
 <span id="state" class="connecting">connecting</span>
 <span class="dim">round trip <b id="rtt">measuring&hellip;</b></span>
 <span class="dim">session <code id="session">-</code></span>
 <button id="cut" type="button" title="Drop this tab's connection; the server sends you
 messages meanwhile">cut my connection</button>
</div>
<div id="notice"></div>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="say something" autofocus>
<button>send</button></form>
<p class="dim">Open this page in two tabs. &ldquo;Cut my connection&rdquo; drops this tab's
WebSocket while __MISSED__ messages are sent to it; the client reconnects on its own and the
server replays exactly what it missed. A restarted server cannot resume: the page says it
resynced.</p>
<script type="module">
import { StabilizerSocket } from "/_stabilizer/client.js";
const $ = (id) => document.getElementById(id);
const log = $("log");
function line(text, cls) {
  const p = document.createElement("div");
  p.textContent = text;
  if (cls) p.className = cls;
  log.append(p);
  log.scrollTop = log.scrollHeight;
}
function notice(text, cls) {
  const span = document.createElement("span");
  span.textContent = text;
  span.className = cls;
  $("notice").replaceChildren(span);
}
const url = new URL("/ws", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const name = new URLSearchParams(location.search).get("name");
if (name) url.searchParams.set("name", name);
const ws = new StabilizerSocket(url.href, { pingInterval: 3000 });
window.chat = ws;
// Frames that arrive between a resume and the server's "resumed" marker are the replay. (The
// client emits "resync" before the state goes back to "open": a new session replays nothing.)
let replaying = false, replayed = 0, wasReconnecting = false, resynced = false;
ws.addEventListener("statechange", () => {
  $("state").textContent = ws.state;
  $("state").className = ws.state;
  $("session").textContent = ws.sessionId ? ws.sessionId.slice(0, 8) + "\\u2026" : "-";
  if (ws.state === "reconnecting") {
    wasReconnecting = true;
    notice("connection lost: reconnecting\\u2026", "info");
  } else if (ws.state === "open" && wasReconnecting) {
    wasReconnecting = false;
    replaying = !resynced;
    resynced = false;
    replayed = 0;
  }
});
ws.addEventListener("message", (event) => {
  const msg = JSON.parse(event.data);
  if (msg.type === "resumed") {
    replaying = false;
    const s = replayed === 1 ? "" : "s";
    notice(`resumed, ${replayed} missed message${s} replayed`, "resumed");
    return;
  }
  if (replaying) replayed += 1;
  line(msg.text, (msg.type === "system" ? "system" : "") + (replaying ? " replayed" : ""));
});
ws.addEventListener("resync", (event) => {
  resynced = true;
  notice(`resynced: the server could not resume (${event.reason}); new session`, "resynced");
  line("(messages sent while you were away are lost: the server started over)", "system");
});
setInterval(() => {
  if (ws.rtt != null) $("rtt").textContent = ws.rtt < 10 ? ws.rtt.toFixed(1) + " ms"
    : Math.round(ws.rtt) + " ms";
}, 500);
$("cut").addEventListener("click", async () => {
  if (!ws.sessionId) return;
  await fetch("/cut?session=" + encodeURIComponent(ws.sessionId), { method: "POST" });
});
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  if (input.value) ws.send(input.value);
  input.value = "";
});
window.moduleLoaded = true;
</script>
</body></html>
""".replace("__MISSED__", str(MISSED))


def chat_line(text: str, kind: str = "chat") -> str:
    return json.dumps({"type": kind, "text": text})


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def who(request: Request) -> JSONResponse:
    """Who is in the room: the manager is in `request.state` for HTTP routes too."""
    stab = request.state.stabilizer
    return JSONResponse({"online": len(stab.sessions(group=ROOM)), "groups": stab.groups()})


async def cut(request: Request) -> JSONResponse:
    """Drop one session's connection as a network failure would (1012: the client comes
    back), then send it a few messages: they wait in its replay buffer for the resume."""
    stab = request.state.stabilizer
    session_id = request.query_params.get("session", "")
    if not await stab.close(session_id, 1012, "cut by the demo button"):
        return JSONResponse({"cut": False}, status_code=404)
    for i in range(1, MISSED + 1):
        await stab.send(session_id, chat_line(f"sent while you were cut off ({i}/{MISSED})"))
    return JSONResponse({"cut": True, "missed": MISSED})


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    stab = websocket.state.stabilizer
    me = websocket.state.stabilizer_session
    name = html.escape(websocket.query_params.get("name") or f"guest-{me.id[:4]}")
    if me.resumed:
        # The replay of what this client missed went out with the accept: this marker comes
        # right after it, so the page can count what was replayed.
        await websocket.send_text(json.dumps({"type": "resumed"}))
    else:  # a resumed session is still in the room and has had its greeting
        await stab.join(me.id, ROOM)
        await stab.broadcast(chat_line(f"{name} joined", "system"), group=ROOM)
    try:
        while True:
            text = await websocket.receive_text()
            await stab.broadcast(chat_line(f"{name}: {text[:500]}"), group=ROOM)
    except WebSocketDisconnect:
        pass


def make_app() -> Starlette:
    """The demo app; every call makes a new one with its own manager (its own sessions)."""
    app = Starlette(
        routes=[
            Route("/", homepage),
            Route("/who", who),
            Route("/cut", cut, methods=["POST"]),
            WebSocketRoute("/ws", chat),
        ]
    )
    app.add_middleware(StabilizerMiddleware, heartbeat_interval=15, heartbeat_timeout=10)
    return app


app = make_app()
