"""The client process of ``bench stream --transport webrtc``: one aiortc peer receiving video
and voice and one WebSocket pushing speech per session, on the same CLOCK_MONOTONIC as the
server's process. It decodes ``DECODED_STREAMS`` video streams (every ``THUMB_EVERY``-th frame
kept as a thumbnail for the PSNR check) and counts the others undecoded (``emolive.bench.undecoded``).
"""

from __future__ import annotations

import asyncio
import json
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from emolive.bench.speech import RATE, Feeder, sleep_until, speech_turns
from emolive.bench.stream.measure import THUMB_EVERY, WARMUP_S, cpu_seconds, thumbnail
from emolive.bench.undecoded import count_vp8_undecoded

DECODED_STREAMS = 1  # client video streams decoded; the others are counted undecoded


def client_main(conn: Connection, url: str, ws_url: str, sessions: list[dict], seconds: float, seed: int) -> None:
    """The child process: sends ("go", window), ("end", None), then ("result", figures) or
    ("error", traceback) down ``conn``."""
    try:
        conn.send(("result", asyncio.run(_clients(conn, url, ws_url, sessions, seconds, seed))))
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))



async def _clients(conn: Connection, url: str, ws_url: str, sessions: list[dict], seconds: float, seed: int) -> dict:
    import av
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    from emolive.server.webrtc import enable_loopback_candidates

    enable_loopback_candidates()
    count_vp8_undecoded(sessions[0]["size"], DECODED_STREAMS)
    turns, _ = speech_turns()
    peers, tasks, records = [], [], []

    async def read(track: Any, rec: dict) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "audio":
                rec["audio_samples"] += frame.samples
            elif isinstance(frame, av.VideoFrame):
                index = int(frame.pts) // 3600
                rec["video"].append((index, now))
                if index % THUMB_EVERY == 0:
                    rec["thumbs"].append((index, thumbnail(frame.to_ndarray(format="rgb24"))))
            elif frame.valid:
                rec["video"].append((int(frame.pts) // 3600, now))

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for s in sessions:
            pc = RTCPeerConnection()
            rec = {"video": [], "thumbs": [], "audio_samples": 0, "turns": 0, "events": []}
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")

            def on_track(track, rec=rec):
                tasks.append(asyncio.ensure_future(read(track, rec)))

            pc.on("track", on_track)
            await pc.setLocalDescription(await pc.createOffer())
            r = await http.post(f"/v1/sessions/{s['session_id']}/offer",
                                json={"sdp": pc.localDescription.sdp, "type": "offer"},
                                headers={"Authorization": f"Bearer {s['token']}"})
            r.raise_for_status()
            await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
            peers.append(pc)
            records.append(rec)
    sockets = []
    for s in sessions:
        ws = await connect(f"{ws_url}/v1/sessions/{s['session_id']}/ws?token={s['token']}", max_size=None)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "want": ["events"]}))
        sockets.append(ws)
    deadline = time.monotonic() + 30
    while not all(len(rec["video"]) >= 10 for rec in records):
        if time.monotonic() > deadline:
            raise RuntimeError(f"video did not flow: {[len(r['video']) for r in records]} frames")
        await asyncio.sleep(0.05)

    async def events(ws: Any, rec: dict) -> None:
        async for message in ws:
            if isinstance(message, str):
                rec["events"].append(json.loads(message))

    readers = [asyncio.ensure_future(events(ws, rec)) for ws, rec in zip(sockets, records)]
    feed_start = time.monotonic() + 0.3
    start = feed_start + WARMUP_S
    end = start + seconds
    conn.send(("go", (start, end)))
    cpu0 = cpu_seconds()

    async def feed(i: int) -> None:
        ws = sockets[i]
        feeder = Feeder(turns, np.random.default_rng(seed + i), first_turn=i)

        def push(chunk: np.ndarray) -> None:
            asyncio.ensure_future(ws.send(chunk.tobytes()))

        def end_turn() -> None:
            asyncio.ensure_future(ws.send(json.dumps({"type": "end_of_turn"})))

        offset = float(np.random.default_rng(seed + 100 + i).uniform(0, 0.5))
        # Speech starts before the window, so the window sees turns in full swing.
        records[i]["turns"] = await feeder.run(feed_start + offset, end - 0.4, push, end_turn)

    await asyncio.gather(*(feed(i) for i in range(len(sessions))), sleep_until(end))
    cpu = cpu_seconds() - cpu0
    conn.send(("end", None))
    await asyncio.sleep(0.5)
    for r in readers:
        r.cancel()
    for ws in sockets:
        await ws.close()
    for pc in peers:
        await pc.close()
    for t in tasks:
        t.cancel()
    return {"window": (start, end), "cpu": cpu,
            "sessions": [{"video": rec["video"], "thumbs": rec["thumbs"], "turns": rec["turns"],
                          "audio_s": rec["audio_samples"] / RATE} for rec in records]}
