"""The live web view: its state driven with messages, its HTTP/WebSocket app, and its settings."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import cv2
import numpy as np
import pytest
import zmq
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from models.errors import ConfigError
from models.verdict import smooth
from stream import protocol
from stream.view import CSP, TOKEN_COOKIE, ViewConfig, ViewState, downscale, image_message, make_app, view
from tests.stream.conftest import T0, score

TOKEN = "a-token-of-at-least-16-chars"


def frame(seq: int, *, stream: str = "probe1", height: int = 480, width: int = 1280, value: int = 0) -> protocol.Frame:
    image = np.full((height, width, 3), value, np.uint8)
    image[:, : width // 2] = 200
    return protocol.Frame(stream, seq, T0 + seq * 0.04, seq * 0.04, image.shape, "uint8", "raw", None, image.tobytes())


def scores(values, threshold=0.5, stream="probe1"):
    return [score(i, v, stream=stream, threshold=threshold) for i, v in enumerate(values)]


# --- ViewState ---------------------------------------------------------------------------


def test_state_shows_the_smoothed_verdict_and_every_score_once_per_browser():
    state = ViewState(ViewConfig(hold=3), clock=lambda: T0 + 10)
    values = [0.9, 0.2, 0.9, 0.9, 0.9, 0.8, 0.1, 0.9]
    for msg in scores(values):
        state.update(msg, now=T0)
    cursor = {}
    first = state.snapshot(cursor)
    (row,) = first["streams"]
    assert row["stream"] == "probe1" and row["seq"] == 7 and row["score"] == pytest.approx(0.9)
    expected = smooth([v >= 0.5 for v in values], 3)
    assert row["verdict"] == "Head" and expected[-1]
    # Head since seq 2, the first of the three that turned it; in view for the frames' own time since then.
    assert row["since_seq"] == 2 and row["in_view_s"] == pytest.approx(5 * 0.04)
    points = first["points"]["probe1"]
    assert [p[0] for p in points] == list(range(8))
    assert [bool(p[3]) for p in points] == list(expected)
    assert [p[2] for p in points] == pytest.approx(values)
    # A second snapshot for the same browser carries no points it already has; a new score only.
    assert "probe1" not in state.snapshot(cursor)["points"]
    state.update(score(8, 0.3), now=T0)
    assert [p[0] for p in state.snapshot(cursor)["points"]["probe1"]] == [8]
    # Another browser gets the whole timeline.
    assert len(state.snapshot({})["points"]["probe1"]) == 9
    json.dumps(state.snapshot({}), allow_nan=False)


def test_state_marks_warm_up_and_gaps_and_forgets_the_verdict_at_end_of_stream():
    state = ViewState(ViewConfig(hold=1))
    state.update(score(0, 0.9, flags=("warmup",)))
    state.update(score(3, 0.9, flags=("gap",)))
    points = state.snapshot({})["points"]["probe1"]
    assert [(p[5], p[6]) for p in points] == [(True, False), (False, True)]
    assert state.snapshot({})["streams"][0]["flags"] == ["gap"]
    state.update(protocol.EndOfStream("probe1", 3, "eof", T0))
    state.update(score(0, 0.1))
    assert state.snapshot({})["streams"][0]["verdict"] == "Not-Head"


def test_the_newest_frame_wins_and_images_are_encoded_at_most_max_fps():
    state = ViewState(ViewConfig(max_fps=10, image_width=320))
    for seq in range(5):
        state.update(frame(seq))
    assert state.encode_due(now=100.0) == 1
    sent = {}
    ((stream, seq, jpeg),) = state.images(sent)
    assert (stream, seq) == ("probe1", 4)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    # Downscaled on the server to the page's width, aspect kept.
    assert image.shape == (120, 320, 3)
    assert state.images(sent) == []
    state.update(frame(5))
    assert state.encode_due(now=100.05) == 0, "a second image within 1/max_fps"
    state.update(frame(6))
    assert state.encode_due(now=100.1) == 1
    assert [s for _, s, _ in state.images(sent)] == [6]
    assert state.encoded == 2 and state.frames_seen == 7


def test_a_frame_that_cannot_be_shown_is_skipped():
    state = ViewState(ViewConfig())
    bad = protocol.Frame("probe1", 0, T0, None, (10, 10), "uint8", "jpeg", None, b"not a jpeg")
    state.update(bad)
    assert state.encode_due(now=1.0) == 0 and state.images({}) == []


@pytest.mark.parametrize("image", [np.zeros((40, 50), np.uint8), np.zeros((40, 50, 4), np.uint8),
                                   np.zeros((40, 50, 1), np.uint8), np.full((40, 50), 65535, np.uint16)])
def test_downscale_takes_every_frame_kind_and_never_enlarges(image):
    out = downscale(image, 640)
    assert out.dtype == np.uint8 and out.shape[:2] == (40, 50)


def test_image_message_layout():
    data = image_message("probe1", 7, b"JPEG")
    (length,) = struct.unpack(">H", data[:2])
    assert json.loads(data[2:2 + length]) == {"stream": "probe1", "seq": 7} and data[2 + length:] == b"JPEG"


# --- settings ------------------------------------------------------------------------------


def test_a_network_address_needs_allow_remote_and_then_a_token():
    with pytest.raises(ConfigError, match="0.0.0.0 is not a loopback address.*--allow-remote"):
        ViewConfig(addr="0.0.0.0:8000")
    remote = ViewConfig(addr="0.0.0.0:8000", allow_remote=True)
    token = remote.access_token()
    assert len(token) >= 16 and token != remote.access_token()
    assert ViewConfig().access_token() is None
    assert ViewConfig(token=TOKEN).access_token() == TOKEN


@pytest.mark.parametrize("changes, message", [
    ({"addr": "nohost"}, "addr: 'nohost' must be HOST:PORT"),
    ({"addr": "127.0.0.1:99999"}, "must be HOST:PORT"),
    ({"token": "short"}, "token: must be at least 16"),
    ({"max_fps": 0}, "max_fps"),
    ({"image_width": 8}, "image_width"),
    ({"history_s": 0}, "history_s"),
    ({"hold": 0}, "hold"),
])
def test_bad_settings_are_one_line_each(changes, message):
    with pytest.raises(ConfigError, match=message):
        ViewConfig(**changes)


# --- the app over HTTP and WebSocket ---------------------------------------------------------


def serve_app(state, token, check):
    async def main():
        async with TestClient(TestServer(make_app(state, token))) as client:
            await check(client)

    asyncio.run(main())


def test_every_response_carries_the_security_headers_and_the_page_loads_nothing_from_elsewhere():
    async def check(client):
        for path in ("/", "/view.js", "/view.css", "/nope"):
            response = await client.get(path)
            assert response.headers["Content-Security-Policy"] == CSP, path
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
        page = await (await client.get("/")).text()
        assert "http" not in page.replace("http-equiv", ""), "the page links nothing outside the server"

    serve_app(ViewState(ViewConfig()), None, check)
    assert "default-src 'none'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP


def test_the_token_is_required_on_every_request_and_websocket():
    async def check(client):
        for path in ("/", "/view.js", "/ws", f"/?token={TOKEN}x"):
            response = await client.get(path)
            assert response.status == 403, path
            assert "wrong or missing access token" in await response.text()
        response = await client.get(f"/?token={TOKEN}")
        assert response.status == 200
        assert response.cookies[TOKEN_COOKIE]["httponly"] and response.cookies[TOKEN_COOKIE]["samesite"] == "Strict"
        # The cookie set by the first page carries the token on the page's own requests.
        assert (await client.get("/view.js")).status == 200
        ws = await client.ws_connect("/ws")
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == "state"
        await ws.close()

    serve_app(ViewState(ViewConfig(token=TOKEN)), TOKEN, check)


def test_a_websocket_from_another_origin_is_refused():
    async def check(client):
        response = await client.get("/ws", headers={"Origin": "http://evil.example", "Connection": "Upgrade",
                                                    "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status == 403 and "another origin" in await response.text()

    serve_app(ViewState(ViewConfig()), None, check)


def test_the_websocket_pushes_the_state_then_each_new_image_once():
    state = ViewState(ViewConfig(max_fps=50))
    for msg in scores([0.9, 0.9, 0.9]):
        state.update(msg)
    state.update(frame(2))
    state.encode_due(now=1.0)

    async def check(client):
        ws = await client.ws_connect("/ws")
        got = [await ws.receive(timeout=5) for _ in range(4)]
        await ws.close()
        texts = [json.loads(m.data) for m in got if m.type == WSMsgType.TEXT]
        images = [m.data for m in got if m.type == WSMsgType.BINARY]
        assert len(images) == 1, "an image is sent once, not with every state"
        (length,) = struct.unpack(">H", images[0][:2])
        assert json.loads(images[0][2:2 + length]) == {"stream": "probe1", "seq": 2}
        assert texts[0]["streams"][0]["verdict"] == "Head" and len(texts[0]["points"]["probe1"]) == 3
        assert all("probe1" not in t["points"] for t in texts[1:])

    serve_app(state, None, check)


def feed_until_it_stops(pub, task):
    """Scores until the view's subscription has surely settled, then only the end of stream, until it stops."""
    for seq in range(40):
        pub.send(protocol.encode(score(seq, 0.9)))
        time.sleep(0.025)
    end = time.monotonic() + 20
    while time.monotonic() < end and task.thread.is_alive():
        pub.send(protocol.encode(protocol.EndOfStream("probe1", 39, "eof", T0)))
        time.sleep(0.1)


def test_with_until_eos_the_view_stops_after_every_stream_ended(sockets, address, background):
    addr = address()
    pub = sockets(zmq.PUB, bind=addr)
    urls = []
    task = background(lambda stop: view(ViewConfig(sub=addr, addr="127.0.0.1:0", until_eos=True), stop,
                                        on_ready=urls.append))
    feed_until_it_stops(pub, task)
    state = task.join()
    assert urls and urls[0].startswith("http://127.0.0.1:")
    assert state.ended and state.board.streams["probe1"].scores > 0


def test_with_keys_the_view_is_a_curve_client_of_the_worker(tmp_path, sockets, address, background):
    from stream import keys

    keys.make_keys(tmp_path, keys.DEFAULT_NAMES)
    addr = address()
    pub = sockets(zmq.PUB, bind=addr, curve=keys.server_keys(tmp_path, "worker"))
    task = background(lambda stop: view(ViewConfig(sub=addr, addr="127.0.0.1:0", until_eos=True, keys=tmp_path),
                                        stop))
    feed_until_it_stops(pub, task)
    assert task.join().board.streams["probe1"].scores > 0


def test_a_missing_key_stops_the_view_before_it_serves(tmp_path, address):
    with pytest.raises(ConfigError, match="client.key_secret"):
        view(ViewConfig(sub=address(), addr="127.0.0.1:0", keys=tmp_path))


def test_a_stream_whose_scores_stop_is_tagged_and_its_outage_listed_when_they_come_back():
    clock = [T0]
    state = ViewState(ViewConfig(lost_after_s=2.0), clock=lambda: clock[0])

    def at(t, msg):
        clock[0] = T0 + t
        state.update(msg)

    def row(t):
        (found,) = state.snapshot({}, now=T0 + t)["streams"]
        return found

    for seq in range(5):
        at(seq * 0.1, score(seq))
    # A pause shorter than lost_after_s is no outage.
    at(1.9, score(5))
    assert row(3.0)["no_scores_s"] is None and row(3.0)["score_gaps"] == []
    # The worker died: frames may go on, scores do not.
    assert row(4.4)["no_scores_s"] == pytest.approx(2.5)
    at(6.9, score(6))
    back = row(7.0)
    assert back["no_scores_s"] is None
    assert back["score_gaps"] == [[pytest.approx(5.1), pytest.approx(5.0)]]
    # An ended stream owes no scores, and its next run starts without an outage.
    at(7.0, protocol.EndOfStream("probe1", 6, "eof", T0 + 7))
    assert row(20.0)["no_scores_s"] is None
    at(30.0, score(0))
    assert len(row(30.0)["score_gaps"]) == 1
    json.dumps(state.snapshot({}), allow_nan=False)
