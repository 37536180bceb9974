"""The server's REST surface and its session WebSocket, against a real uvicorn server on
127.0.0.1 (websockets backend) in a background thread: TTS turns streamed in 20 ms chunks,
interrupt, malformed input, tokens, limits, uploads, expiry and client disconnects.

Async parts run on their own loop with ``asyncio.run``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import time
from collections.abc import Coroutine
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emolive.engine.offline import DEFAULT_PORTRAIT
from emolive.server.config import Settings
from emolive.bench.background_server import LOOPS, BackgroundServer

pytestmark = pytest.mark.timeout(120)

RATE = 16000
# The hand-built baseline: always installed and deterministic. These tests judge the server
# (transport, clock, lifecycle); the learned models are judged by their own tests.
MOTION = "baseline"
CHUNK = RATE // 50  # 20 ms
TEXT = "Bob, my papa bought a big map of Panama."
LONG_TEXT = "Bob, my papa bought a big map of Panama. Palm trees bob above the bay, and mom baked a pie."
MAX_SESSIONS = 3
IDLE_TIMEOUT_S = 4.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 40.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module", params=LOOPS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("server-data"), ice_loopback=True, workers=2, motion=MOTION,
                        max_sessions=MAX_SESSIONS, idle_timeout_s=IDLE_TIMEOUT_S, detach_grace_s=0.5)
    with BackgroundServer(settings, loop=request.param) as srv:
        yield srv


@pytest.fixture()
def http(server: BackgroundServer):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    # Leave no session behind for the next test (max_sessions is small).
    for session_id in server.app.state.registry.ids():
        server.call(server.app.state.registry.close(session_id, "test cleanup"))


def _speech(text: str) -> np.ndarray:
    from emolive.training.tts import available_voices, synthesize

    if "flite:slt" not in available_voices():
        pytest.skip("flite slt is not installed")
    audio = synthesize(text, "flite:slt", rate=RATE).audio
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 2.5 s of flite slt, 16 kHz int16."""
    return _speech(TEXT)


@pytest.fixture(scope="module")
def long_speech() -> np.ndarray:
    return _speech(LONG_TEXT)


def new_session(http: httpx.Client, **options) -> dict:
    response = http.post("/v1/sessions", json=options)
    assert response.status_code == 201, response.text
    return response.json()


def ws_url(server: BackgroundServer, session: dict, token: str | None = None) -> str:
    return f"{server.ws_url}/v1/sessions/{session['session_id']}/ws?token={token or session['token']}"


class Client:
    """A websockets client that sorts what it receives: JSON messages and JPEG payloads."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.messages: list[tuple[float, dict]] = []
        self.jpegs: list[bytes] = []
        self._reader = asyncio.ensure_future(self._read())
        self._new = asyncio.Event()

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                self.jpegs.append(message)
            else:
                self.messages.append((time.monotonic(), json.loads(message)))
            self._new.set()

    def of_type(self, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m["type"] == kind]

    async def wait_for(self, predicate, timeout: float = 10.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for stamp, message in self.messages[seen:]:
                if predicate(message):
                    return stamp, message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = sorted({m["type"] for _, m in self.messages})
                raise AssertionError(f"no matching message within {timeout} s (got types {kinds})")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def start(self, **fields) -> dict:
        await self.ws.send(json.dumps({"type": "start", **fields}))
        return (await self.wait_for(lambda m: m["type"] in ("started", "error")))[1]

    async def stream(self, pcm: np.ndarray, realtime: bool = True) -> None:
        """Send ``pcm`` in 20 ms chunks, paced in real time unless told otherwise."""
        begin = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), CHUNK)):
            await self.ws.send(pcm[offset : offset + CHUNK].astype("<i2").tobytes())
            if realtime:
                await asyncio.sleep(max(0.0, begin + (i + 1) * 0.02 - time.monotonic()))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def session_gone(server: BackgroundServer, session_id: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if session_id not in server.app.state.registry:
            return True
        time.sleep(0.05)
    return False


def session_task_names(server: BackgroundServer) -> list[str]:
    async def names() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if not t.done()]

    return server.call(names())


# ---------------------------------------------------------------------------------------
# The TTS path over the WebSocket


def test_tts_turn_gives_playback_events_and_motion(server, http, speech):
    session = new_session(http, video=False)

    async def scenario() -> Client:
        async with connect(ws_url(server, session)) as ws:
            client = Client(ws)
            started = await client.start(sample_rate=RATE, want=["events", "motion"])
            assert started["type"] == "started" and started["sample_rate"] == RATE
            assert "jawOpen" in started["channels"]
            await client.stream(speech)
            await ws.send(json.dumps({"type": "end_of_turn"}))
            await client.wait_for(lambda m: m["type"] == "playback_finished", timeout=5)
            await client.close()
            return client

    client = run(scenario())
    started = client.of_type("playback_started")
    finished = client.of_type("playback_finished")
    assert len(started) == 1 and len(finished) == 1
    assert started[0]["turn"] == finished[0]["turn"]
    assert finished[0]["interrupted"] is False
    duration_ms = 1000 * len(speech) / RATE
    assert abs(finished[0]["position_ms"] - duration_ms) < 100, (finished[0], duration_ms)

    rows = client.of_type("motion")
    assert len(rows) > 25 * len(speech) / RATE * 0.8  # a row per frame, none skipped for a fast reader
    indices = [r["index"] for r in rows]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert set(rows[0]["values"]) == set(client.of_type("started")[0]["channels"])
    jaw_speaking = [r["values"]["jawOpen"] for r in rows if r["speaking"]]
    jaw_silent = [r["values"]["jawOpen"] for r in rows if not r["speaking"]]
    assert jaw_speaking and jaw_silent
    assert max(jaw_speaking) > 0.3 and np.mean(jaw_speaking) > np.mean(jaw_silent) + 0.05


def test_interrupt_finishes_turn_and_returns_face_to_rest(server, http, long_speech):
    session = new_session(http, video=False)

    async def scenario() -> tuple[Client, float]:
        async with connect(ws_url(server, session)) as ws:
            client = Client(ws)
            await client.start(sample_rate=RATE, want=["events", "motion"])
            await client.stream(long_speech, realtime=False)  # queue it all: the session paces playback
            await client.wait_for(lambda m: m["type"] == "playback_started", timeout=5)
            await asyncio.sleep(1.0)
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "interrupt"}))
            stamp, finished = await client.wait_for(lambda m: m["type"] == "playback_finished", timeout=5)
            await asyncio.sleep(1.0)  # let the face settle
            await client.close()
            return client, stamp - sent, finished

    client, delay, finished = run(scenario())
    assert finished["interrupted"] is True
    assert delay < 0.2, f"playback_finished came {delay * 1000:.0f} ms after interrupt"
    assert 500 < finished["position_ms"] < 1000 * len(long_speech) / RATE - 500
    rows = [r for r in client.of_type("motion") if r["index"] > finished["frame_index"]]
    assert len(rows) >= 15
    assert not any(r["speaking"] for r in rows)
    settled = [r["values"]["jawOpen"] for r in rows[-10:]]
    assert max(settled) < 0.05, settled


def test_malformed_messages_get_errors_and_session_survives(server, http, speech):
    session = new_session(http, video=False)

    async def scenario() -> Client:
        async with connect(ws_url(server, session)) as ws:
            client = Client(ws)
            bad = [b"\x01\x02\x03", "not json", json.dumps([1, 2]), json.dumps({"no": "type"}),
                   json.dumps({"type": "dance"}), json.dumps({"type": "start", "sample_rate": 12}),
                   json.dumps({"type": "start", "want": ["video"]}), json.dumps({"type": "start", "sample_rate": "16k"})]
            for message in bad:
                await ws.send(message)
            await client.wait_for(lambda m: len(client.of_type("error")) >= len(bad), timeout=5)
            await ws.send(json.dumps({"type": "ping"}))
            await client.wait_for(lambda m: m["type"] == "pong", timeout=5)
            await client.start(sample_rate=RATE, want=["events"])
            await client.stream(speech[: RATE // 2], realtime=False)
            await ws.send(json.dumps({"type": "end_of_turn"}))
            await client.wait_for(lambda m: m["type"] == "playback_finished", timeout=5)
            await client.close()
            return client

    client = run(scenario())
    errors = client.of_type("error")
    assert len(errors) == 8
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    assert "2-byte" in errors[0]["message"]
    assert client.of_type("playback_finished")[0]["interrupted"] is False


def test_jpeg_frames_come_with_a_json_header(server, http):
    session = new_session(http)

    async def scenario() -> Client:
        async with connect(ws_url(server, session)) as ws:
            client = Client(ws)
            await client.start(want=["jpeg"], jpeg_quality=85)
            await client.wait_for(lambda m: len(client.jpegs) >= 5, timeout=10)
            await client.close()
            return client

    client = run(scenario())
    headers = client.of_type("frame")
    assert len(headers) >= 5
    for header, payload in zip(headers, client.jpegs):
        assert header["format"] == "jpeg" and header["bytes"] == len(payload)
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (512, 512, 3)


# ---------------------------------------------------------------------------------------
# Lifecycle


def test_websocket_drop_ends_session_and_its_tasks(server, http):
    session = new_session(http, video=False)
    sid = session["session_id"]
    live = server.app.state.registry.get(sid)

    async def attach_and_vanish() -> None:
        ws = await connect(ws_url(server, session))
        await ws.send(json.dumps({"type": "start"}))
        await asyncio.sleep(0.3)
        ws.transport.abort()  # no close handshake: the client just vanishes

    run(attach_and_vanish())
    assert session_gone(server, sid, within=5.0)
    assert live.closed.is_set() and live.task_count == 0
    assert not [n for n in session_task_names(server) if sid in n]
    auth = {"Authorization": f"Bearer {session['token']}"}
    ended = http.get(f"/v1/sessions/{sid}", headers=auth).json()  # readable a while, with why it ended
    assert ended["state"] == "ended" and ended["close_reason"] == "last client left" and ended["failure"] is None
    assert http.delete(f"/v1/sessions/{sid}", headers=auth).status_code == 404


def test_session_without_client_expires(server, http):
    session = new_session(http, video=False)
    assert session["session_id"] in server.app.state.registry
    assert session_gone(server, session["session_id"], within=IDLE_TIMEOUT_S + 2.0)


def test_delete_session(server, http):
    session = new_session(http, video=False)
    auth = {"Authorization": f"Bearer {session['token']}"}
    info = http.get(f"/v1/sessions/{session['session_id']}", headers=auth).json()
    assert info["session_id"] == session["session_id"] and info["mode"] == "tts"
    assert http.delete(f"/v1/sessions/{session['session_id']}", headers=auth).status_code == 204
    assert http.get(f"/v1/sessions/{session['session_id']}", headers=auth).json()["state"] == "ended"
    offer = http.post(f"/v1/sessions/{session['session_id']}/offer", headers=auth, json={"sdp": "v=0"})
    assert offer.status_code == 404


# ---------------------------------------------------------------------------------------
# Tokens, limits, uploads


def test_tokens_are_required(server, http):
    session = new_session(http, video=False)
    sid = session["session_id"]
    assert http.get(f"/v1/sessions/{sid}").status_code == 401
    wrong = http.get(f"/v1/sessions/{sid}", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "error" in wrong.json()
    assert http.get(f"/v1/sessions/{sid}", params={"token": session["token"]}).status_code == 200
    assert http.post(f"/v1/sessions/{sid}/offer", json={"sdp": "v=0", "type": "offer"}).status_code == 401
    assert http.delete(f"/v1/sessions/{sid}", params={"token": "nope"}).status_code == 403
    assert http.get("/v1/sessions/0123456789abcdef", params={"token": "x"}).status_code == 404

    async def handshake(url: str) -> int:
        try:
            async with connect(url):
                return 101
        except InvalidStatus as error:
            return error.response.status_code

    assert run(handshake(ws_url(server, session, token="nope"))) == 403
    assert run(handshake(f"{server.ws_url}/v1/sessions/{sid}/ws")) == 401
    assert run(handshake(f"{server.ws_url}/v1/sessions/feedfacefeedface/ws?token=x")) == 404


def test_bad_requests_have_json_errors(server, http):
    unknown = http.post("/v1/sessions", json={"avatar_id": "nosuchavatar"})
    assert unknown.status_code == 404 and "nosuchavatar" in unknown.json()["error"]
    for body in ({"mode": "karaoke"}, {"head_motion": 5}, {"size": 513}, {"motion": "nope"}):
        response = http.post("/v1/sessions", json=body)
        assert response.status_code == 422 and response.json()["error"], body
    assert http.get("/v1/avatars/nosuchavatar").status_code == 404

    not_image = http.post("/v1/avatars", files={"file": ("notes.png", b"this is not a picture", "image/png")})
    assert not_image.status_code == 400 and "notes.png" in not_image.json()["error"]
    blank = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 180, 160)).save(blank, format="PNG")
    faceless = http.post("/v1/avatars", files={"file": ("wall.png", blank.getvalue(), "image/png")})
    assert faceless.status_code == 400 and "wall.png" in faceless.json()["error"]
    missing = http.post("/v1/avatars", data={"other": "x"})
    assert missing.status_code == 400 and missing.json()["error"]


def test_max_sessions_gives_503_with_retry_after(server, http):
    sessions = [new_session(http, video=False) for _ in range(MAX_SESSIONS)]
    over = http.post("/v1/sessions", json={"video": False})
    assert over.status_code == 503 and int(over.headers["Retry-After"]) > 0 and over.json()["error"]
    first = sessions[0]
    http.delete(f"/v1/sessions/{first['session_id']}", headers={"Authorization": f"Bearer {first['token']}"})
    assert http.post("/v1/sessions", json={"video": False}).status_code == 201


def test_avatar_upload_list_get_delete_and_reload(server, http):
    png = io.BytesIO()
    Image.open(DEFAULT_PORTRAIT).convert("RGB").save(png, format="PNG")
    response = http.post("/v1/avatars", files={"file": ("me.png", png.getvalue(), "image/png")})
    assert response.status_code == 201, response.text
    info = response.json()
    x0, y0, x1, y1 = info["face_box"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert info["id"] != "default"
    ids = [a["id"] for a in http.get("/v1/avatars").json()["avatars"]]
    assert ids[0] == "default" and info["id"] in ids
    assert http.get(f"/v1/avatars/{info['id']}").json()["face_box"] == info["face_box"]

    from emolive.server.avatars import AvatarStore

    reloaded = AvatarStore(server.settings.data_dir)  # what a restarted server sees
    assert reloaded.get(info["id"]) is not None

    assert http.delete("/v1/avatars/default").status_code == 403
    assert http.delete(f"/v1/avatars/{info['id']}").status_code == 204
    assert http.get(f"/v1/avatars/{info['id']}").status_code == 404
    assert AvatarStore(server.settings.data_dir).get(info["id"]) is None


def test_health_metrics_docs_and_demo_page(server, http):
    assert http.get("/healthz").json()["status"] == "ok"
    metrics = http.get("/metrics").text
    for name in ("emolive_active_sessions", "emolive_frames_out_total", "emolive_dropped_frames_total",
                 "emolive_engine_latency_seconds", "emolive_sessions_fps"):
        assert name in metrics
    assert http.get("/docs").status_code == 200
    page = http.get("/")
    assert page.status_code == 200 and 'id="start-mic"' in page.text
    assert http.get("/app.js").status_code == 200


def test_a_flood_of_tiny_turns_does_not_hurt_another_session(server, http, speech):
    """One client sends 20 000 turns of one sample each (2-byte audio + end_of_turn, ~0.6 MB)
    as fast as it can while another session streams: the streaming session keeps its frame
    rate, /healthz keeps answering, and the flooder is refused with a few errors, not 40 000."""
    streaming, flooding = new_session(http), new_session(http, video=False)

    async def flood() -> list[dict]:
        """The flooder, on its own thread and loop: it must not slow the probes below."""
        one_sample = np.zeros(1, "<i2").tobytes()
        end = json.dumps({"type": "end_of_turn"})
        async with connect(ws_url(server, flooding)) as ws:
            client = Client(ws)
            try:
                for _ in range(20_000):
                    await ws.send(one_sample)
                    await ws.send(end)
                await asyncio.sleep(1.0)
            except ConnectionClosed:
                pass  # closed by the server for flooding: fine
            await client.close()
            return client.of_type("error")

    flooder = concurrent.futures.ThreadPoolExecutor(1).submit(run, flood())

    async def scenario() -> tuple[list[float], list[float]]:
        async with connect(ws_url(server, streaming)) as ws:
            watcher = Client(ws)
            await watcher.start(sample_rate=RATE, want=["events", "motion"])
            await watcher.wait_for(lambda m: m["type"] == "motion", timeout=10)
            health: list[float] = []
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                while time.monotonic() - started < 4.0:
                    asked = time.monotonic()
                    assert (await client.get("/healthz")).status_code == 200
                    health.append(time.monotonic() - asked)
                    await asyncio.sleep(0.1)
            rows = [stamp for stamp, m in watcher.messages if m["type"] == "motion" and stamp > started + 1.0]
            await watcher.close()
            return rows, health

    rows, health = run(scenario())
    errors = flooder.result(timeout=60)
    seconds = rows[-1] - rows[0]
    print(f"flood beside a stream: {(len(rows) - 1) / seconds:.1f} motion rows/s, /healthz max "
          f"{1000 * max(health):.0f} ms, median {1000 * sorted(health)[len(health) // 2]:.0f} ms; {len(errors)} errors")
    assert (len(rows) - 1) / seconds >= 24 * 0.9, f"{len(rows)} motion rows in {seconds:.1f} s"
    assert max(health) < 0.5, f"/healthz took up to {max(health):.2f} s"
    assert errors and len(errors) < 100  # told, but not answered message for message
    assert any("turns are queued" in e["message"] or "message rate" in e["message"] for e in errors)
