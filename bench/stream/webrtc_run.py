"""``bench stream --transport webrtc``: the real server in this process, its clients in another.

The server (``BackgroundServer``, loopback ICE, the given settings) runs on a thread of this
process; N aiortc peers and WebSocket feeders run in a child process (``emolive.bench.stream.client``)
so that the server's CPU is measurable apart. What the bench learns of the server, it learns
through what the server offers for measurement, nothing patched:

- arrival: the registry builds each session's engine as :class:`RecordingSession`, a
  ``Session`` that records every push as ``push_audio`` takes it;
- "engine": a sink on the live session (:class:`ServerRecorder`) sees every frame the
  server's pump fans out to the WebRTC tracks;
- "sent": the live session's ``sent_observers`` hear every frame the video track hands
  aiortc's RTP sender (which packetizes and sends it at once: the frame leaves the server).

The client maps each received frame to its index by pts: aiortc's receiver rebases pts so
that the first packet it receives has pts 0, so a client's frame index is the first index
sent + pts / 3600.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emolive.bench.report import fmt, loadavg
from emolive.bench.stream.client import client_main
from emolive.bench.stream.measure import (THUMB_EVERY, WARMUP_S, AudioTracker, RunResult, SessionResult, cpu_seconds, psnr,
                                  thumbnail)
from emolive.engine.session import Session
from emolive.engine.media import video_pts


class RecordingSession(Session):
    """An engine session that records when each chunk of voice arrives, and what it was."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals = AudioTracker()

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        now = time.monotonic()
        super().push_audio(samples, sample_rate)
        if len(samples):
            self.arrivals.pushed(samples, now)

    def end_of_turn(self) -> None:
        super().end_of_turn()
        self.arrivals.end_of_turn()


class ServerRecorder:
    """On the server's loop: the frames a live session fans out and the ones its video track
    sends, with the arrivals its :class:`RecordingSession` recorded."""

    def __init__(self, live: Any) -> None:
        self.tracker: AudioTracker = live.engine.arrivals
        self.frames: list[tuple[int, bool]] = []  # (index, has image) in the window
        self.sent: list[tuple[int, float]] = []  # (index, time) of frames handed to the RTP sender
        # Thumbnails of the frames the client thumbnails too: every THUMB_EVERY-th from the first
        # one sent, which is pts 0 at the client.
        self.thumbs: dict[int, np.ndarray] = {}
        self.window = (math.inf, math.inf)
        live.add_sink(self)
        live.sent_observers.append(self.on_sent)

    def on_sent(self, kind: str, pts: int, at: float) -> None:
        if kind == "video":
            self.sent.append((pts // video_pts(1), at))

    def put_frame(self, frame: Any) -> None:
        now = time.monotonic()
        self.tracker.frame(frame.index, frame.audio, now)
        if self.window[0] <= now < self.window[1]:
            self.frames.append((frame.index, frame.image is not None))
            if frame.image is not None and self.sent and (frame.index - self.sent[0][0]) % THUMB_EVERY == 0:
                self.thumbs[frame.index] = thumbnail(frame.image)


def webrtc_run(n: int, seconds: float, workers: int, render_processes: int, size: int, seed: int,
               motion: str) -> RunResult:
    """``n`` sessions of ``size``² through the real server for a window of ``seconds``."""
    import httpx

    from emolive.server.config import Settings
    from emolive.bench.background_server import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="emolive-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), ice_loopback=True, workers=workers,
                            render_processes=render_processes, max_sessions=max(n, 1),
                            motion=motion, idle_timeout_s=120.0, detach_grace_s=2.0, peer_silence_s=5.0)
        with BackgroundServer(settings) as srv:
            srv.app.state.registry.engine_type = RecordingSession
            created = []
            for i in range(n):
                r = httpx.post(f"{srv.url}/v1/sessions", json={"mode": "tts", "size": size, "motion": motion,
                                                                "seed": seed + i}, timeout=60)
                r.raise_for_status()
                created.append(r.json())

            async def install(session_id: str) -> ServerRecorder:
                return ServerRecorder(srv.app.state.registry.get(session_id))

            recorders = [srv.call(install(s["session_id"])) for s in created]
            render_workers = srv.app.state.registry.render_workers
            pids = render_workers.pids if render_workers else []
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, srv.url, srv.ws_url, created, seconds, seed),
                               daemon=True)
            proc.start()
            marks = {}
            result = None
            deadline = time.monotonic() + seconds + 180
            while True:
                while not parent.poll(0.5):
                    if not proc.is_alive() or time.monotonic() > deadline:
                        proc.kill()
                        raise RuntimeError(f"bench client process died or hung (exit code {proc.exitcode})")
                kind, value = parent.recv()
                if kind == "go":  # value = the window (start, end) on CLOCK_MONOTONIC
                    for rec in recorders:
                        srv.call(_set_window(rec, value))
                    time.sleep(max(0.0, value[0] - time.monotonic()))
                    marks["cpu0"], marks["t0"] = cpu_seconds(pids), time.monotonic()
                elif kind == "end":
                    marks["cpu1"], marks["t1"] = cpu_seconds(pids), time.monotonic()
                    codec = srv.call(_codec(srv.app.state.registry.get(created[0]["session_id"])))
                elif kind == "error":
                    raise RuntimeError(f"bench client failed:\n{value}")
                elif kind == "result":
                    result = value
                    break
            proc.join(30)
            infos = [httpx.get(f"{srv.url}/v1/sessions/{s['session_id']}",
                               headers={"Authorization": f"Bearer {s['token']}"}, timeout=10) for s in created]
            for s in created:
                httpx.delete(f"{srv.url}/v1/sessions/{s['session_id']}",
                             headers={"Authorization": f"Bearer {s['token']}"}, timeout=10)
    wall = marks["t1"] - marks["t0"]
    start, end = result["window"]
    sessions = []
    checks = []  # PSNR of decoded frames against the server's renders
    for i, rec in enumerate(recorders):
        client = result["sessions"][i]
        sent = rec.sent
        first_sent = sent[0][0] if sent else 0
        received = sorted((first_sent + pts_index, at) for pts_index, at in client["video"])  # (index, received_at)
        recv_index = np.array([r[0] for r in received], dtype=np.int64)
        recv_time = np.array([r[1] for r in received])
        in_window = (recv_time >= start) & (recv_time < end)
        hits = [h for h in rec.tracker.hits if start - WARMUP_S <= h.pushed_at]
        engine_lat = [1000 * (h.left_at - h.pushed_at) for h in hits]
        turn_lat = [1000 * (h.left_at - h.pushed_at) for h in hits if h.first_in_turn]
        sent_index = np.array([idx for idx, _ in sent], dtype=np.int64)
        client_lat, sent_lat = [], []
        for h in hits:
            k = np.searchsorted(recv_index, h.frame_index)
            if k < len(recv_index) and recv_index[k] - h.frame_index <= 2:
                client_lat.append(1000 * (recv_time[k] - h.pushed_at))
            k = np.searchsorted(sent_index, h.frame_index)
            if k < len(sent_index) and sent_index[k] - h.frame_index <= 2:
                sent_lat.append(1000 * (sent[k][1] - h.pushed_at))
        sent_at = dict(sent)
        for pts_index, thumb in client["thumbs"]:
            rendered_thumb = rec.thumbs.get(first_sent + pts_index)
            if rendered_thumb is not None:
                checks.append(psnr(np.asarray(thumb), rendered_thumb))
        transport_ms = [1000 * (at - sent_at[idx]) for idx, at in zip(recv_index.tolist(), recv_time.tolist())
                        if idx in sent_at]
        server_frames = rec.frames
        dropped_server = sum(1 for _, img in server_frames if not img)
        rendered = {idx for idx, img in server_frames if img}
        got = set(recv_index[in_window].tolist())
        lost = len({k for k in rendered if min(got, default=0) <= k <= max(got, default=-1)} - got)
        stats = infos[i].json().get("stats", {}) if infos[i].status_code == 200 else {}
        sessions.append(SessionResult(
            fps=sum(1 for _, img in server_frames if img) / (end - start), frames=len(server_frames),
            dropped=dropped_server, lat_ms=engine_lat, turn_lat_ms=turn_lat, mismatches=rec.tracker.mismatches,
            underruns=int(stats.get("underrun_frames", 0)),
            client_fps=int(in_window.sum()) / (end - start), client_lat_ms=client_lat, lost=lost,
            turns=client["turns"], transport_ms=transport_ms, sent_lat_ms=sent_lat))
    cpu = 100 * (marks["cpu1"] - marks["cpu0"]) / wall / n
    client_cpu = 100 * result["cpu"] / (end - start)
    notes = [f"server video: {codec}; 'fps' = frames with an image handed to the tracks, 'client fps' = whole "
             "frames received by the aiortc client (one stream decoded, the others counted undecoded); 'latency' = "
             "arrival -> server pump, 'sent' = arrival -> encoded frame handed to the RTP sender (leaves the "
             "server), 'client' = arrival -> received at the client (index from pts: aiortc rebases pts to the "
             "first packet received)",
             f"decoded-picture check: {len(checks)} decoded frames vs the server's renders, PSNR min "
             f"{fmt(min(checks, default=math.nan))} / median {fmt(statistics.median(checks) if checks else math.nan)} dB"
             + ("" if checks else " (no decoded frame matched: the check FAILED)")]
    return RunResult("webrtc", sessions, cpu, wall, client_cpu_pct=client_cpu, loadavg=loadavg(), notes=notes)


async def _codec(live: Any) -> str:
    """The server's video codec and who encodes it (aiortc, or the engine session)."""
    try:
        for sender in live.peer.getSenders():
            if sender.kind == "video" and sender.track is not None:
                codec = getattr(sender.track, "codec", "") or "?"
                return f"{codec}, encoded by " + ("the session" if codec == "video/vp8" else "aiortc")
    except Exception:
        pass
    return "?"


async def _set_window(rec: ServerRecorder, window: tuple[float, float]) -> None:
    rec.window = tuple(window)


