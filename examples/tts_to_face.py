"""The TTS-to-face path in one command: text -> local TTS -> the session's WebSocket (paced
like a live source) -> the face and the voice back over WebRTC, saved as an MP4.

    python examples/tts_to_face.py "Hello! I am the face of your voice agent." -o face.mp4

Without ``--server`` it starts an emolive server on a free loopback port for the run; with
``--server http://host:8000`` it uses that one. It prints what a voice agent cares about:
how long the audio took to send (real time, no drift), and the latency from the first voice
sent to ``playback_started`` and to the first voiced audio received over WebRTC.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CHUNK_SECONDS = 0.02  # what a streaming TTS sends
VOICED = 1000  # PCM16 level that counts as voice, not silence or codec noise


def post_json(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@contextlib.contextmanager
def emolive_server(url: str | None, motion: str) -> Iterator[str]:
    """The server to talk to: ``url``, or one started for this run on a free loopback port."""
    if url:
        yield url.rstrip("/")
        return
    import tempfile

    from emolive.server.config import Settings
    from emolive.bench.background_server import BackgroundServer

    with tempfile.TemporaryDirectory() as data, BackgroundServer(Settings(data_dir=Path(data), motion=motion,
                                                                          ice_loopback=True)) as server:
        yield server.url


async def speak(server: str, pcm: np.ndarray, rate: int, output: Path) -> dict:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from websockets.asyncio.client import connect

    from emolive.server.webrtc import enable_loopback_candidates

    enable_loopback_candidates()  # a server on this machine may be reachable on loopback only
    session = post_json(f"{server}/v1/sessions", {"mode": "tts"})
    sid, token = session["session_id"], session["token"]
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    video: list = []
    audio: list[tuple[float, np.ndarray]] = []  # (arrival, 48 kHz mono int16)
    readers: list[asyncio.Task] = []

    async def read(track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                video.append(frame.to_ndarray(format="rgb24"))
            else:
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                audio.append((time.perf_counter(), samples.astype(np.int16)))

    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
    await pc.setLocalDescription(await pc.createOffer())
    answer = post_json(f"{server}/v1/sessions/{sid}/offer", {"sdp": pc.localDescription.sdp, "type": "offer"}, token)
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    while not video:  # the face is on before we speak
        await asyncio.sleep(0.02)

    figures: dict = {}
    ws_url = server.replace("http", "ws", 1) + f"/v1/sessions/{sid}/ws?token={token}"
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "want": ["events"]}))
        chunk = int(rate * CHUNK_SECONDS)
        loop = asyncio.get_running_loop()

        async def send() -> None:
            # Chunk k leaves at start + k * 20 ms: a clock, not a fixed sleep after each send
            # (that drifts by the send and wake-up time of every chunk).
            started = loop.time()
            figures["first_sent"] = time.perf_counter()
            for k, start in enumerate(range(0, len(pcm), chunk)):
                await asyncio.sleep(max(0.0, started + k * CHUNK_SECONDS - loop.time()))
                await ws.send(pcm[start: start + chunk].astype("<i2").tobytes())
            await ws.send(json.dumps({"type": "end_of_turn"}))
            figures["send_s"] = loop.time() - started + CHUNK_SECONDS  # the last chunk's 20 ms included

        sender = asyncio.create_task(send())
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "playback_started":
                figures["started"] = time.perf_counter()
            if event["type"] == "playback_finished":
                figures["finished_ms"] = event["position_ms"]
                break
        await sender
    await asyncio.sleep(0.5)  # the tail of the voice is still on its way
    await pc.close()
    for task in readers:
        task.cancel()

    # Voice in -> voice out: the first loud sample received, less where it was in what we sent
    # (TTS starts with a little silence).
    lead_s = int(np.argmax(np.abs(pcm) > VOICED)) / rate
    voiced = next((t for t, s in audio if t > figures["first_sent"] and np.abs(s).max() > VOICED), None)
    figures["to_started_ms"] = (figures["started"] - figures["first_sent"]) * 1000
    figures["to_voice_ms"] = (voiced - figures["first_sent"] - lead_s) * 1000 if voiced else float("nan")
    save_mp4(output, video, np.concatenate([s for _, s in audio]) if audio else np.zeros(0, np.int16))
    figures["frames"] = len(video)
    return figures


def save_mp4(path: Path, frames: list[np.ndarray], voice: np.ndarray) -> None:
    from emolive.engine.video import Mp4Writer

    if not frames:
        return
    height, width = frames[0].shape[:2]
    writer = Mp4Writer(path, width, height, fps=25.0, audio=voice.astype(np.float32) / 32768.0,
                       audio_rate=48000)
    for frame in frames:
        writer.write(frame)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", nargs="?", default="Hello! I am the face of your voice agent. "
                                                    "I speak what it says, with my lips in time.")
    parser.add_argument("--server", help="an emolive server URL (default: start one for this run)")
    parser.add_argument("--voice", default="flite:slt", help="local TTS voice (training.tts: flite:, espeak-ng:)")
    parser.add_argument("--motion", default="baseline", help="motion model of the server started here")
    parser.add_argument("-o", "--output", type=Path, default=Path("face.mp4"), help="where to save what came back")
    args = parser.parse_args()

    from emolive.training.tts import synthesize

    speech = synthesize(args.text, args.voice)
    pcm = np.clip(np.round(speech.audio * 32767.0), -32768, 32767).astype(np.int16)
    duration = len(pcm) / speech.rate
    with emolive_server(args.server, args.motion) as server:
        figures = asyncio.run(speak(server, pcm, speech.rate, args.output))
    print(f"sent {duration:.2f} s of TTS audio in {figures['send_s']:.2f} s (paced by a clock)")
    print(f"latency: first voice sent -> playback_started {figures['to_started_ms']:.0f} ms, "
          f"-> the same voice out over WebRTC {figures['to_voice_ms']:.0f} ms")
    print(f"played {figures['finished_ms'] / 1000:.2f} s; {figures['frames']} video frames -> {args.output}")


if __name__ == "__main__":
    main()
