"""The client's sans-I/O core: fed frames and times, no event loop, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilizer_asgi.client._protocol import (
    ACK_DELAY,
    ACK_EVERY,
    ClientProtocol,
    Failure,
    Frame,
    Message,
    Opened,
    ResyncEvent,
    build_url,
    decode_frame,
    encode_data,
    is_retryable_status,
    parse_retry_after,
    should_reconnect,
)

RS = "\x1e"
URL = "ws://example.test/ws"


def control(kind: str, **fields: Any) -> str:
    return RS + json.dumps({"t": kind, **fields})


def hello(
    session: str = "s1", token: str = "tok1", *, resumed: bool = False, ack: int = 0, **extra: Any
) -> str:
    fields: dict[str, Any] = {
        "v": 1,
        "session": session,
        "token": token,
        "interval": 25.0,
        "timeout": 10.0,
        "resumed": resumed,
        "reason": None,
        "ack": ack,
    }
    fields.update(extra)
    return control("hello", **fields)


def controls(frames: list[Frame]) -> list[dict[str, Any]]:
    """The control frames among `frames`, decoded."""
    return [
        json.loads(f[1:]) for f in frames if isinstance(f, str) and f[:1] == RS and f[1:2] != RS
    ]


def data(frames: list[Frame]) -> list[Frame]:
    """The data frames among `frames`, as transmitted (still escaped)."""
    return [f for f in frames if not (isinstance(f, str) and f[:1] == RS and f[1:2] != RS)]


def opened(now: float = 0.0, **kwargs: Any) -> ClientProtocol:
    """A protocol whose first connection got its hello at `now`."""
    proto = ClientProtocol(URL, **kwargs)
    proto.connection_made(now)
    proto.receive(hello(), now)
    proto.events_received()
    proto.data_to_send()
    return proto


# -- codec and helpers -------------------------------------------------------------------------


def test_build_url_opts_in_and_keeps_user_parameters() -> None:
    """The URL gets stabilizer=1; the user's own parameters stay byte for byte and in order."""
    assert build_url(URL) == URL + "?stabilizer=1"
    assert build_url(URL + "?a=1&b=%20x") == URL + "?a=1&b=%20x&stabilizer=1"


def test_build_url_resume_replaces_stale_parameters() -> None:
    """Resuming adds an escaped token and the inbound count, replacing earlier stabilizer_*."""
    url = build_url(URL + "?stabilizer=1&room=7&stabilizer_ack=3", token="a/b+c=", ack=12)
    assert url == URL + "?room=7&stabilizer=1&stabilizer_resume=a%2Fb%2Bc%3D&stabilizer_ack=12"


def test_build_url_empty_token_does_not_resume() -> None:
    """A server that issued an empty token cannot resume: nothing is asked for."""
    assert build_url(URL, token="", ack=5) == URL + "?stabilizer=1"


def test_encode_data_escapes_text_starting_with_rs() -> None:
    """App text starting with RS gets one more RS; bytes, dicts and lists are encoded as-is."""
    assert encode_data("hi") == "hi"
    assert encode_data(RS + "x") == RS + RS + "x"
    assert encode_data(bytearray(b"\x1e")) == b"\x1e"
    assert encode_data({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert encode_data([]) == "[]"
    with pytest.raises(TypeError):
        encode_data(1.5)


def test_decode_frame_classifies_and_unescapes() -> None:
    """Data is returned unescaped, control frames as dicts, malformed control as None."""
    assert decode_frame("plain") == "plain"
    assert decode_frame(b"\x1e{}") == b"\x1e{}"  # binary is never control
    assert decode_frame(RS + RS + "app") == RS + "app"
    assert decode_frame(control("ping", ts=1, n=0)) == {"t": "ping", "ts": 1, "n": 0}
    assert decode_frame(RS + "not json") is None
    assert decode_frame(RS + '{"no":"type"}') is None


@pytest.mark.parametrize(
    ("code", "again"),
    [(code, False) for code in (1000, 1001, 1005, 1008, 1009, 4000)]
    + [(code, True) for code in (1006, 1011, 1012, 1013, 1014)],
)
def test_which_close_codes_reconnect(code: int, again: bool) -> None:
    """Abnormal drops, heartbeat timeouts and restarts resume; deliberate closes are final."""
    assert should_reconnect(code) is again


def test_retryable_handshake_statuses_and_retry_after() -> None:
    """429 and 5xx refusals are retried; Retry-After is read as seconds or an HTTP date."""
    assert is_retryable_status(503) and is_retryable_status(429)
    assert not is_retryable_status(403) and not is_retryable_status(404)
    assert parse_retry_after("7", now_epoch=0) == 7.0
    assert parse_retry_after(None, now_epoch=0) is None
    assert parse_retry_after("soon", now_epoch=0) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now_epoch=4.0) == 6.0


# -- opening -----------------------------------------------------------------------------------


def test_nothing_is_transmitted_before_hello() -> None:
    """Sends before the hello wait; the hello releases them in order, counted from 1."""
    proto = ClientProtocol(URL)
    proto.send("early", 0.0)
    proto.connection_made(0.0)
    proto.send(b"bin", 0.0)
    assert proto.data_to_send() == []
    proto.receive(hello(), 0.1)
    assert proto.data_to_send() == ["early", b"bin"]
    assert proto.events_received() == [Opened("s1", resumed=False)]
    assert (proto.sent, proto.session_id, proto.token, proto.is_open) == (2, "s1", "tok1", True)


def test_data_before_hello_is_a_protocol_error() -> None:
    """A data frame before the hello fails the connection with 1002."""
    proto = ClientProtocol(URL)
    proto.connection_made(0.0)
    proto.receive("data", 0.0)
    assert proto.events_received() == [Failure(1002, "data frame before hello")]


@pytest.mark.parametrize(
    "frame",
    [hello(v=2), hello(session=None), hello(token=None)],
)
def test_unsupported_hello_is_a_protocol_error(frame: str) -> None:
    """A hello of another version or without a session or token fails with 1002."""
    proto = ClientProtocol(URL)
    proto.connection_made(0.0)
    proto.receive(frame, 0.0)
    assert proto.events_received() == [Failure(1002, "unsupported hello")]


def test_second_hello_on_a_connection_is_a_protocol_error() -> None:
    """Only one hello per connection."""
    proto = opened()
    proto.receive(hello(), 1.0)
    assert proto.events_received() == [Failure(1002, "unexpected hello")]


def test_inbound_data_is_unescaped_and_counted() -> None:
    """Data frames become Message events, RS-escaped text loses one RS, and `received` counts."""
    proto = opened()
    for frame in ("a", RS + RS + "b", b"c"):
        proto.receive(frame, 1.0)
    assert proto.events_received() == [Message("a"), Message(RS + "b"), Message(b"c")]
    assert proto.received == 3


def test_malformed_and_unknown_control_frames_are_ignored() -> None:
    """Neither is app data, neither changes anything."""
    proto = opened()
    proto.receive(RS + "{oops", 1.0)
    proto.receive(control("future-thing", x=1), 1.0)
    assert proto.events_received() == []
    assert proto.data_to_send() == []
    assert proto.is_open
    assert proto.invalid_control_frames == 2


@pytest.mark.parametrize(
    "frame",
    [
        RS + "[" * 2000 + "]" * 2000,
        RS + '{"t":"ping","ts":NaN,"n":0}',
        RS + '{"t":"ping","ts":1e999,"n":0}',
        RS + '{"t":"ping","ts":"1","n":0}',
        RS + '{"t":"ping","n":0}',
        RS + '{"t":"pong","ts":1,"n":' + "9" * 4000 + "}",
        RS + '{"t":"ack","n":[1]}',
        RS + '{"t":"reconnect","after_ms":Infinity}',
        RS + '{"t":"reconnect","after_ms":0,"reason":"\\ud800"}',
        RS + '{"t":"hello","v":1,"session":"s","token":"\\ud800"}',
    ],
)
def test_hostile_control_frames_are_counted_and_ignored(frame: str) -> None:
    """Deep nesting, non-finite or huge numbers, wrong types, lone surrogates: counted, no
    event, no answer, no failure (never a NaN pong, never a token that cannot be sent)."""
    proto = opened()
    proto.receive(frame, 1.0)
    assert proto.invalid_control_frames == 1
    assert proto.events_received() == []
    assert proto.data_to_send() == []
    assert proto.is_open


# -- heartbeat and acks ------------------------------------------------------------------------


def test_server_ping_is_answered_with_ts_and_count() -> None:
    """A server ping gets a pong echoing its ts with n = data frames received."""
    proto = opened()
    proto.receive("x", 1.0)
    proto.receive(control("ping", ts=123.456789, n=0), 1.0)
    assert controls(proto.data_to_send()) == [{"t": "pong", "ts": 123.456789, "n": 1}]


def test_silent_server_is_pinged_then_declared_dead() -> None:
    """After ping_interval of silence the client pings; ping_timeout later it fails with 1011."""
    proto = opened(now=0.0, ping_interval=2.0, ping_timeout=1.0)
    assert proto.next_deadline() == 2.0
    proto.tick(1.9)
    assert proto.data_to_send() == []
    proto.tick(2.0)
    assert controls(proto.data_to_send()) == [{"t": "ping", "ts": 2.0, "n": 0}]
    assert proto.next_deadline() == 3.0
    proto.tick(3.0)
    assert proto.events_received() == [Failure(1011, "ping timeout")]


def test_any_inbound_frame_proves_the_server_alive() -> None:
    """Data arriving after our ping cancels the death sentence and restarts the silence clock."""
    proto = opened(now=0.0, ping_interval=2.0, ping_timeout=1.0)
    proto.tick(2.0)
    proto.receive("late but alive", 2.5)
    proto.tick(3.0)
    assert [e for e in proto.events_received() if isinstance(e, Failure)] == []
    assert proto.next_deadline() == min(4.5, 2.5 + ACK_DELAY)


def test_pong_measures_rtt_and_trims_send_buffer() -> None:
    """The pong to our ping gives the RTT, and its n releases acknowledged frames."""
    proto = opened(now=0.0, ping_interval=2.0)
    for i in range(3):
        proto.send(f"m{i}", 0.0)
    proto.tick(2.0)
    proto.receive(control("pong", ts=2.0, n=2), 2.25)
    assert proto.rtt == 0.25
    assert (proto.server_acked, proto.buffered) == (2, 1)


def test_acks_beyond_what_was_sent_are_ignored() -> None:
    """A count larger than `sent` (a confused server) trims only what was sent."""
    proto = opened()
    proto.send("only", 0.0)
    proto.receive(control("ack", n=99), 0.0)
    assert (proto.server_acked, proto.buffered) == (1, 0)
    proto.receive(control("ack", n="bogus"), 0.0)
    assert proto.server_acked == 1


def test_ack_is_sent_every_ack_every_frames() -> None:
    """After ACK_EVERY unreported data frames the client sends an ack at once."""
    proto = opened()
    for i in range(ACK_EVERY):
        proto.receive(f"m{i}", 1.0)
    assert controls(proto.data_to_send()) == [{"t": "ack", "n": ACK_EVERY}]


def test_ack_is_sent_ack_delay_after_the_first_unreported_frame() -> None:
    """A trickle of frames is acknowledged at the latest ACK_DELAY after the first of them."""
    proto = opened(now=0.0)
    proto.receive("a", 1.0)
    proto.receive("b", 1.5)
    assert proto.next_deadline() == 1.0 + ACK_DELAY
    proto.tick(1.0 + ACK_DELAY)
    assert controls(proto.data_to_send()) == [{"t": "ack", "n": 2}]
    assert proto.next_deadline() == 1.5 + proto.ping_interval


def test_half_full_send_buffer_solicits_the_servers_count() -> None:
    """At half of max_pending unacknowledged frames the client pings once for the server's n."""
    proto = opened(max_pending=4)
    proto.send("a", 0.0)
    assert controls(proto.data_to_send()) == []
    proto.send("b", 0.0)
    assert [c["t"] for c in controls(proto.data_to_send())] == ["ping"]
    proto.send("c", 0.0)  # the first ping is still out: no second one
    assert controls(proto.data_to_send()) == []
    proto.receive(control("pong", ts=0.0, n=3), 0.01)
    assert proto.buffered == 0


def test_send_buffer_is_bounded() -> None:
    """Unacknowledged plus pending frames never exceed max_pending; send raises beyond it."""
    proto = opened(max_pending=2)
    proto.send("a", 0.0)
    proto.connection_lost(1006, "", 0.0)
    proto.send("b", 0.0)
    assert not proto.can_send()
    with pytest.raises(OverflowError):
        proto.send("c", 0.0)


def test_paused_client_keeps_the_server_from_declaring_it_dead() -> None:
    """While the app is not reading, the client sends acks at the server's half interval
    instead of pinging, and never declares the (unread) server dead."""
    proto = ClientProtocol(URL, ping_interval=20.0, ping_timeout=1.0)
    proto.connection_made(0.0)
    proto.receive(hello(interval=4.0), 0.0)
    proto.data_to_send()
    proto.receive("x", 0.5)
    proto.pause_reading(1.0)
    assert proto.next_deadline() == min(3.0, 0.5 + ACK_DELAY)
    for now in (1.5, 3.0, 3.5, 5.5, 7.5, 60.0):  # 3.0: not yet 2 s after the ack at 1.5
        proto.tick(now)
    assert [c["t"] for c in controls(proto.data_to_send())] == ["ack"] * 5
    assert proto.events_received()[-1:] == [Message("x")]  # no Failure
    proto.resume_reading(60.0)
    assert proto.next_deadline() == 80.0


# -- drops, resume and resync ------------------------------------------------------------------


def test_close_codes_and_reconnect_hint() -> None:
    """A 1000 close is final unless a reconnect hint preceded it, whose after_ms is the delay."""
    proto = opened()
    assert not proto.connection_lost(1000, "bye", 1.0).reconnect
    proto = opened()
    proto.receive(control("reconnect", after_ms=1500, reason="draining"), 1.0)
    decision = proto.connection_lost(1012, "", 1.5)
    assert (decision.reconnect, decision.delay, decision.reason) == (True, 1.0, "draining")
    decision = proto.connection_lost(1006, "", 2.0)  # the hint was used up
    assert (decision.reconnect, decision.delay) == (True, None)


def test_resume_url_carries_token_and_inbound_count() -> None:
    """After a drop the next URL asks to resume with the token and the data frames received."""
    proto = opened()
    proto.receive("a", 1.0)
    proto.receive("b", 1.0)
    proto.connection_lost(1006, "", 2.0)
    assert proto.connect_url() == URL + "?stabilizer=1&stabilizer_resume=tok1&stabilizer_ack=2"


def test_resume_resends_exactly_what_the_server_lacks_then_pending() -> None:
    """On resumed:true the frames after hello.ack are resent in order, then the pending ones."""
    proto = opened()
    for text in ("m1", "m2", RS + "m3"):
        proto.send(encode_data(text), 0.0)
    proto.data_to_send()
    proto.connection_lost(1006, "", 1.0)
    proto.send("m4", 1.0)  # while reconnecting
    proto.connection_made(2.0)
    assert proto.data_to_send() == []
    proto.receive(hello(resumed=True, ack=1, token="tok2"), 2.0)
    assert proto.data_to_send() == ["m2", RS + RS + "m3", "m4"]
    assert proto.events_received() == [Opened("s1", resumed=True)]
    assert (proto.sent, proto.server_acked, proto.token) == (4, 1, "tok2")


def test_a_resumed_hello_with_nothing_to_resend_is_confirmed_at_once() -> None:
    """After resumed:true with nothing to resend or pending, the client sends an `ack` at once,
    so the server learns the new token arrived (and retires the one resumed with)."""
    proto = opened()
    proto.receive("a", 1.0)
    proto.data_to_send()
    proto.connection_lost(1006, "", 1.0)
    proto.connection_made(2.0)
    proto.receive(hello(resumed=True, ack=0, token="tok2"), 2.0)
    assert controls(proto.data_to_send()) == [{"t": "ack", "n": 1}]


def test_replayed_frames_continue_the_inbound_count() -> None:
    """Frames the server replays after a resume are delivered and counted as new ones."""
    proto = opened()
    proto.receive("a", 1.0)
    proto.connection_lost(1012, "", 1.0)
    proto.connection_made(2.0)
    proto.receive(hello(resumed=True, ack=0), 2.0)
    proto.receive("b", 2.0)
    assert [e for e in proto.events_received() if isinstance(e, Message)] == [
        Message("a"),
        Message("b"),
    ]
    assert proto.received == 2


def test_refused_resume_is_a_resync() -> None:
    """resumed:false after a drop gives a ResyncEvent with the unacknowledged frames, resets the
    counters, and still sends what was pending on the new session."""
    proto = opened()
    proto.send("acked", 0.0)
    proto.send(encode_data(RS + "unacked"), 0.0)
    proto.receive(control("ack", n=1), 0.5)
    proto.receive("in", 0.5)
    proto.connection_lost(1006, "", 1.0)
    proto.send("pending", 1.0)
    proto.connection_made(2.0)
    proto.receive(hello(session="s2", token="t2", reason="expired"), 2.0)
    assert proto.events_received() == [
        Message("in"),
        ResyncEvent("expired", "s1", "s2", (RS + "unacked",)),
        Opened("s2", resumed=False),
    ]
    assert proto.data_to_send() == ["pending"]
    assert (proto.session_id, proto.sent, proto.received, proto.server_acked) == ("s2", 1, 0, 0)
    assert proto.connect_url().endswith("stabilizer_resume=t2&stabilizer_ack=0")


def test_resync_without_reason_says_unknown() -> None:
    """A server that gives no reason (or an empty one) is reported as "unknown"."""
    proto = opened()
    proto.connection_lost(1006, "", 1.0)
    proto.connection_made(1.0)
    proto.receive(hello(session="s2", reason=""), 1.0)
    resync = proto.events_received()[0]
    assert isinstance(resync, ResyncEvent) and resync.reason == "unknown"


def test_empty_token_means_a_new_session_after_a_drop() -> None:
    """With no token to resume with, the client reconnects fresh and reports a resync."""
    proto = ClientProtocol(URL)
    proto.connection_made(0.0)
    proto.receive(hello(token=""), 0.0)
    proto.connection_lost(1006, "", 1.0)
    assert proto.connect_url() == URL + "?stabilizer=1"
    proto.connection_made(1.0)
    proto.receive(hello(session="s2", token=""), 1.0)
    assert isinstance(proto.events_received()[1], ResyncEvent)


# -- the whole protocol against a model server over a lossy line --------------------------------


class ModelServer:
    """An exact-resume server as the wire protocol describes it, for the property test."""

    def __init__(self) -> None:
        self.inbound: list[Frame] = []  # data the app received, unescaped
        self.outbound: list[Frame] = []  # data the app sent, unescaped
        self.client_acked = 0
        self.token = 0

    def connect(self, url: str) -> list[Frame]:
        """Frames the server sends right after accepting a connection to `url`."""
        query = dict(part.partition("=")[::2] for part in url.partition("?")[2].split("&"))
        assert query["stabilizer"] == "1"
        self.token += 1
        resumed = "stabilizer_resume" in query  # the model resumes every session it knows
        assert not resumed or int(query["stabilizer_resume"]) < self.token
        if not resumed:  # a new session: what an ungreeted one was sent is lost with it
            self.inbound, self.outbound, self.client_acked = [], [], 0
        ack = int(query.get("stabilizer_ack", "0"))
        assert ack >= self.client_acked  # the client never asks for what it acknowledged
        replay = [encode_data(f) for f in self.outbound[ack:]] if resumed else []
        frames: list[Frame] = [
            control(
                "hello",
                v=1,
                session="s",
                token=str(self.token),
                interval=1.0,
                timeout=1.0,
                resumed=resumed,
                reason=None,
                ack=len(self.inbound),
            )
        ]
        return frames + replay

    def receive(self, frame: Frame) -> list[Frame]:
        item = decode_frame(frame)
        if isinstance(item, dict):
            if item["t"] == "ping":
                return [control("pong", ts=item["ts"], n=len(self.inbound))]
            if item["t"] == "ack":
                self.client_acked = max(self.client_acked, item["n"])
            return []
        assert item is not None
        self.inbound.append(item)
        return []

    def send(self, message: str) -> Frame:
        self.outbound.append(message)
        return encode_data(message)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("client_send"), st.integers(1, 3)),
        st.tuples(st.just("server_send"), st.integers(1, 40)),
        st.tuples(st.just("deliver"), st.integers(0, 50)),
        st.tuples(st.just("cut"), st.booleans()),
        st.tuples(st.just("tick"), st.floats(0.1, 3.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_exactly_once_in_order_across_random_cuts(script: list[tuple[str, Any]]) -> None:
    """Whatever the drops and wherever they fall, every message in both directions arrives
    exactly once and in order once the line is good again."""
    server = ModelServer()
    proto = ClientProtocol(URL, max_pending=10_000, ping_interval=1.0, ping_timeout=1.0)
    now = 0.0
    sent_by_client: list[Frame] = []
    got_by_client: list[Frame] = []
    c2s: list[Frame] = []  # in flight
    s2c: list[Frame] = []
    up = False

    def pump() -> None:
        c2s.extend(proto.data_to_send())
        for event in proto.events_received():
            assert not isinstance(event, ResyncEvent)
            if isinstance(event, Message):
                got_by_client.append(event.data)
            elif isinstance(event, Failure):
                cut(lossy=True)

    def connect() -> None:
        nonlocal up
        proto.connection_made(now)
        s2c.extend(server.connect(proto.connect_url()))
        up = True

    def cut(lossy: bool) -> None:
        nonlocal up
        if not up:
            return
        if not lossy:  # a clean cut still loses what is in flight: TCP buffers are gone
            deliver(len(s2c) + len(c2s))
        s2c.clear()
        c2s.clear()
        up = False
        decision = proto.connection_lost(1006, "", now)
        assert decision.reconnect
        connect()

    def deliver(count: int) -> None:
        for _ in range(count):
            if s2c:
                proto.receive(s2c.pop(0), now)
                pump()
            if c2s:
                s2c.extend(server.receive(c2s.pop(0)))

    connect()
    n = 0
    for op, arg in script:
        if op == "client_send":
            for _ in range(arg):
                n += 1
                message = f"c{n}" if n % 3 else RS + f"c{n}"
                sent_by_client.append(message)
                proto.send(encode_data(message), now)
            pump()
        elif op == "server_send":
            for i in range(arg):
                s2c.append(server.send(f"s{len(server.outbound) + 1}" if i % 4 else RS + "s"))
        elif op == "deliver":
            deliver(arg)
        elif op == "cut":
            cut(lossy=arg)
        else:
            now += arg
            proto.tick(now)
            pump()
    # A last cut, then a good line until everything has crossed.
    cut(lossy=True)
    while s2c or c2s:
        deliver(1)
    assert server.inbound == sent_by_client
    assert got_by_client == server.outbound
