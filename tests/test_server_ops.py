"""Running the server in production: ICE (STUN/TURN) settings handed to clients, loopback ICE
by default on a loopback bind, /metrics without per-session series, failed sessions counted
and explained, and the API docs working with no network (real headless Chromium).

Servers are real uvicorn servers on 127.0.0.1 (emolive.bench.background_server.BackgroundServer).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcicetransport import connection_kwargs
from websockets.asyncio.client import connect

from conftest import run_emolive
from emolive.server.config import IceServer, Settings
from emolive.server.metrics import Metrics
from emolive.bench.background_server import BackgroundServer
from emolive.server.webrtc import rtc_configuration

pytestmark = pytest.mark.timeout(120)

CHROMIUM = Path("/usr/bin/chromium")
MOTION = "baseline"  # always installed: these tests judge the server, not a model
TURN = {"urls": "turn:turn.example.org:3478?transport=tcp", "username": "alice", "credential": "s3cret"}
CONNECT_TIMEOUT_S = 2.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 40.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
    for line in metrics_text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    raise AssertionError(f"{name}{{{wanted}}} is not in /metrics")


# ---------------------------------------------------------------------------------------
# Settings


def test_ice_servers_from_json_or_urls_with_clear_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMOLIVE_ICE_SERVERS", json.dumps([TURN, {"urls": ["stun:127.0.0.1:3478"]}]))
    servers = Settings.from_env().ice_servers
    assert servers == (IceServer((TURN["urls"],), "alice", "s3cret"), IceServer(("stun:127.0.0.1:3478",)))
    # aiortc's peer connection takes the TURN server with its credentials.
    kwargs = connection_kwargs(rtc_configuration(Settings(ice_servers=servers)).iceServers)
    assert (kwargs["turn_server"], kwargs["turn_transport"]) == (("turn.example.org", 3478), "tcp")
    assert (kwargs["turn_username"], kwargs["turn_password"]) == ("alice", "s3cret")
    assert kwargs["stun_server"] == ("127.0.0.1", 3478)

    monkeypatch.setenv("EMOLIVE_ICE_SERVERS", "stun:a.example:3478, stun:b.example:19302")  # the older form
    assert [s.urls for s in Settings.from_env().ice_servers] == [("stun:a.example:3478",), ("stun:b.example:19302",)]

    for raw, message in [
        ('[{"urls": "turn:t.example:3478"}]', "needs a 'username' and a 'credential'"),
        ('[{"url": "stun:s.example"}]', "unknown field(s) ['url']"),
        ('[{"urls": "turn:t.example"', "not valid JSON"),
        ("http://s.example", "is not a stun:/turn: URL"),
        ('[{"urls": [], "username": "u"}]', "'urls' must be a URL or a non-empty list"),
    ]:
        monkeypatch.setenv("EMOLIVE_ICE_SERVERS", raw)
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            Settings.from_env()
        assert str(error.value).startswith("EMOLIVE_ICE_SERVERS: ")


def test_ice_servers_error_does_not_print_the_credential(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMOLIVE_ICE_SERVERS", json.dumps([{**TURN, "urls": "turn:"}]))
    with pytest.raises(ValueError) as error:
        Settings.from_env()
    assert "s3cret" not in str(error.value)


def test_loopback_candidates_default_to_a_loopback_bind(monkeypatch: pytest.MonkeyPatch):
    for host, expected in [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("localhost", True),
                           ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("emolive.example", False)]:
        assert Settings(host=host).loopback_candidates is expected, host
    assert Settings(host="127.0.0.1", ice_loopback=False).loopback_candidates is False  # --no-ice-loopback
    assert Settings(host="0.0.0.0", ice_loopback=True).loopback_candidates is True
    monkeypatch.setenv("EMOLIVE_ICE_LOOPBACK", "0")
    assert Settings.from_env().loopback_candidates is False


def test_serve_help_lists_the_new_options_and_variables():
    result = run_emolive("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in ("--ice-servers", "--no-ice-loopback", "--metrics-per-session"):
        assert option in text
    for name in ("EMOLIVE_ICE_SERVERS", "EMOLIVE_ICE_LOOPBACK", "EMOLIVE_METRICS_PER_SESSION",
                 "EMOLIVE_PEER_CONNECT_TIMEOUT_S"):
        assert name in text


def test_bad_ice_servers_stop_the_server_with_one_line():
    result = run_emolive("serve", "--port", "0", "--ice-servers", '[{"urls": "turn:t.example:3478"}]')
    assert result.returncode == 2
    assert "turn:t.example:3478 needs a 'username' and a 'credential'" in result.stderr
    assert "Traceback" not in result.stderr


def test_per_session_series_only_when_asked():
    async def exposition(metrics: Metrics) -> str:
        metrics.observe_fps("0123abcd", 24.0)
        return metrics.render()[0].decode()

    default = run(exposition(Metrics()))
    assert 'session="' not in default and sample(default, "emolive_sessions_fps_count") == 1
    per_session = run(exposition(Metrics(per_session=True)))
    assert sample(per_session, "emolive_session_fps", session="0123abcd") == 24.0


# ---------------------------------------------------------------------------------------
# A server with ICE servers: handed to each session's client


@pytest.fixture(scope="module")
def ice_server(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("ice-server"), motion=MOTION, render_processes=0,
                        ice_servers=[TURN, "stun:127.0.0.1:3478"])
    with BackgroundServer(settings) as srv:
        yield srv


def test_session_response_carries_the_ice_servers(ice_server: BackgroundServer):
    with httpx.Client(base_url=ice_server.url, timeout=30) as http:
        created = http.post("/v1/sessions", json={"video": False})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["ice_servers"] == [{"urls": [TURN["urls"]], "username": "alice", "credential": "s3cret"},
                                       {"urls": ["stun:127.0.0.1:3478"]}]  # no null username on a STUN entry
        # Credentials go to the session's client only: no unauthenticated endpoint has them.
        for path in ("/healthz", "/metrics", "/openapi.json", "/v1/avatars"):
            assert "s3cret" not in http.get(path).text, path
        http.delete(f"/v1/sessions/{body['session_id']}", headers={"Authorization": f"Bearer {body['token']}"})


# ---------------------------------------------------------------------------------------
# Failures and metrics


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("ops-server"), motion=MOTION, workers=2,
                        max_sessions=3, detach_grace_s=0.5, peer_connect_timeout_s=CONNECT_TIMEOUT_S)
    with BackgroundServer(settings) as srv:
        yield srv


@pytest.fixture()
def http(server: BackgroundServer):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    for session_id in server.app.state.registry.ids():
        server.call(server.app.state.registry.close(session_id, "test cleanup"))


def stacks_of(server: BackgroundServer) -> str:
    """Every thread's stack and the server loop's pending tasks, for a wait that never ended."""
    threads = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = [f"thread {threads.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}"
             for ident, frame in sys._current_frames().items()]
    try:
        tasks = server.call(_pending_tasks())
    except TimeoutError:
        tasks = ["the server's event loop did not answer in 10 s: its thread above is where it blocks"]
    return "\n".join(parts + tasks)


async def _pending_tasks() -> list[str]:
    out = []
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(file=stack)
        out.append(f"task {task.get_name()}:\n{stack.getvalue()}")
    return out


def new_session(http: httpx.Client, **options) -> tuple[dict, dict]:
    response = http.post("/v1/sessions", json=options)
    assert response.status_code == 201, response.text
    body = response.json()
    return body, {"Authorization": f"Bearer {body['token']}"}


async def closed_message(server: BackgroundServer, session: dict, then: Coroutine[Any, Any, Any]) -> dict:
    """Open the session's WebSocket, run ``then``, and return the ``closed`` message."""
    url = f"{server.ws_url}/v1/sessions/{session['session_id']}/ws?token={session['token']}"
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "want": ["events"]}))
        assert json.loads(await ws.recv())["type"] == "started"
        await then
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "closed":
                return message
    raise AssertionError("the socket closed without a 'closed' message")


def test_metrics_have_no_session_labels_and_count_tasks_and_fds(server, http):
    session, auth = new_session(http, video=False)
    deadline = time.monotonic() + 10
    while http.get(f"/v1/sessions/{session['session_id']}", headers=auth).json()["fps"] == 0:
        assert time.monotonic() < deadline, "the session measured no fps in 10 s"
        time.sleep(0.2)
    text = http.get("/metrics").text
    assert 'session="' not in text and session["session_id"] not in text
    assert sample(text, "emolive_sessions_fps_count") >= 1
    assert 0 < sample(text, "emolive_sessions_fps_min") <= 30
    assert sample(text, "emolive_session_tasks") >= 2  # its frame and event pumps at least
    assert sample(text, "emolive_asyncio_tasks") > sample(text, "emolive_session_tasks")
    assert sample(text, "process_open_fds") > 0 and sample(text, "process_resident_memory_bytes") > 10e6
    for reason in ("engine_error", "render_worker", "peer_failed", "peer_timeout"):
        sample(text, "emolive_sessions_failed_total", reason=reason)  # present from the start

    assert http.delete(f"/v1/sessions/{session['session_id']}", headers=auth).status_code == 204
    ended = http.get(f"/v1/sessions/{session['session_id']}", headers=auth).json()
    assert ended["state"] == "ended" and ended["close_reason"] == "deleted by the client"
    assert ended["failure"] is None
    text = http.get("/metrics").text
    assert sample(text, "emolive_session_tasks") == 0
    assert sample(text, "emolive_sessions_fps_min") != sample(text, "emolive_sessions_fps_min")  # NaN: none live


def test_engine_failure_is_counted_and_explained(server, http):
    before = sample(http.get("/metrics").text, "emolive_sessions_failed_total", reason="engine_error")
    session, auth = new_session(http, video=False)
    live = server.app.state.registry.get(session["session_id"])

    async def break_engine() -> None:
        await asyncio.sleep(0.3)
        # The engine stops under the live session, as a crashed engine would: its streams end.
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.engine.close(), server.loop))

    closed = run(closed_message(server, session, break_engine()))
    assert closed["failure"] == "engine_error" and "stream ended" in closed["reason"]
    ended = http.get(f"/v1/sessions/{session['session_id']}", headers=auth)
    assert ended.status_code == 200
    assert ended.json()["state"] == "ended" and ended.json()["failure"] == "engine_error"
    assert ended.json()["close_reason"] == closed["reason"]
    # Only its own token reads it.
    assert http.get(f"/v1/sessions/{session['session_id']}", headers={"Authorization": "Bearer nope"}).status_code == 403
    after = sample(http.get("/metrics").text, "emolive_sessions_failed_total", reason="engine_error")
    assert after == before + 1


def _black_hole() -> socket.socket:
    """A UDP port on loopback that receives and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _offer_to_nowhere(server: BackgroundServer, session: dict, hole: socket.socket) -> None:
    """A real browser-like offer whose only ICE candidate is a port that never answers: the
    server's peer can never connect (as with a client behind a firewall and no TURN)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    port = hole.getsockname()[1]
    lines = [line for line in pc.localDescription.sdp.splitlines() if not line.startswith("a=candidate:")]
    sdp = []
    for line in lines:
        sdp.append(line)
        if line.startswith("a=ice-ufrag:"):
            sdp.append(f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        answer = await http.post(f"/v1/sessions/{session['session_id']}/offer",
                                 json={"sdp": "\r\n".join(sdp) + "\r\n", "type": "offer"},
                                 headers={"Authorization": f"Bearer {session['token']}"})
    assert answer.status_code == 200, answer.text


def test_peer_that_never_connects_fails_its_session_with_a_reason(server, http):
    before = sample(http.get("/metrics").text, "emolive_sessions_failed_total", reason="peer_timeout")
    session, auth = new_session(http, video=False)
    with _black_hole() as hole:
        started = time.monotonic()
        closed = run(closed_message(server, session, _offer_to_nowhere(server, session, hole)))
        waited = time.monotonic() - started
    assert closed["failure"] == "peer_timeout", closed
    assert f"did not connect within {CONNECT_TIMEOUT_S:g} s" in closed["reason"]
    assert waited >= CONNECT_TIMEOUT_S
    assert http.get(f"/v1/sessions/{session['session_id']}", headers=auth).json()["failure"] == "peer_timeout"
    after = sample(http.get("/metrics").text, "emolive_sessions_failed_total", reason="peer_timeout")
    assert after == before + 1


# ---------------------------------------------------------------------------------------
# In Chromium: the demo page says why its session failed; the API docs need no network

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_demo_page_shows_why_its_session_failed(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            *BROWSER_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            page.click("#start-mic")
            page.wait_for_function("window.emolive.state.status === 'streaming'", timeout=30_000)
            live = server.app.state.registry.get(page.evaluate("window.emolive.state.session.session_id"))
            # The engine stops under the session: its frame stream ends at once, and the page's report
            # is the point. The rest of close() (waiting for a frame in the executor) is checked after;
            # it ran past 10 s and 30 s in three full-suite runs that could not be reproduced, so a
            # repeat shows where it waited.
            closing = asyncio.run_coroutine_threadsafe(live.engine.close(), server.loop)
            status = page.locator("#status")
            sync_api.expect(status).to_contain_text("session failed (engine_error)", timeout=10_000)
            assert "stream ended" in status.inner_text() and status.get_attribute("data-state") == "error"
            try:
                closing.result(timeout=60.0)
            except TimeoutError:
                pytest.fail(f"engine.close() still waits after 60 s:\n{stacks_of(server)}")
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_api_docs_render_offline_in_chromium(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    origin = server.url
    outside: list[str] = []

    def only_loopback(route) -> None:
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:  # the browser has no network: a page that needs a CDN stays blank
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_loopback)
            page.goto(origin + "/docs")
            operation = page.locator(".opblock", has_text="/v1/sessions").first
            operation.wait_for(timeout=20_000)
            assert page.locator(".opblock").count() >= 8  # every REST operation is listed
            assert "emolive" in page.locator(".info .title").inner_text()
        finally:
            browser.close()
    assert outside == []
