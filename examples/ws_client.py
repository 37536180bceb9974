"""Drive an emolive session over the WebSocket: stream a speech file in, get events and the
motion stream (ARKit blendshapes per frame) out, and save the motion as CSV.

    emolive serve &                                   # in another terminal
    python examples/ws_client.py speech.wav --server http://127.0.0.1:8000 -o motion.csv

This is the TTS-to-face path without video; a browser or an aiortc peer can attach to the
same session with POST /v1/sessions/{id}/offer to receive the face and voice over WebRTC.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import urllib.request

import numpy as np
import soundfile as sf
import websockets

CHUNK_SECONDS = 0.02


def create_session(server: str) -> dict:
    request = urllib.request.Request(
        f"{server}/v1/sessions", data=json.dumps({"mode": "tts"}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


async def stream(server: str, wav: str, output: str) -> None:
    session = create_session(server)
    ws_url = server.replace("http", "ws", 1) + f"/v1/sessions/{session['session_id']}/ws?token={session['token']}"
    audio, rate = sf.read(wav, dtype="int16", always_2d=True)
    pcm = audio[:, 0]  # mono: the first channel
    chunk = int(rate * CHUNK_SECONDS)
    rows: list[dict] = []
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "want": ["events", "motion"]}))

        async def send_audio() -> None:
            # A live source sends in real time: chunk k goes at start + k * 20 ms on the loop's
            # clock. Sleeping 20 ms after each send would add the send and wake-up time every
            # time (9.1 s of audio took 9.6 s).
            loop = asyncio.get_running_loop()
            started = loop.time()
            for k, start in enumerate(range(0, len(pcm), chunk)):
                await asyncio.sleep(max(0.0, started + k * CHUNK_SECONDS - loop.time()))
                await ws.send(pcm[start : start + chunk].astype("<i2").tobytes())
            await ws.send(json.dumps({"type": "end_of_turn"}))
            sent = loop.time() - started
            print(f"sent {len(pcm) / rate:.2f} s of audio in {sent:.2f} s")

        sender = asyncio.create_task(send_audio())
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "motion":
                rows.append({"time": event["t"], **event["values"]})
            else:
                print(event)
            if event["type"] == "playback_finished":
                break
        await sender
    with open(output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    jaw = np.array([row["jawOpen"] for row in rows])
    print(f"{len(rows)} motion rows -> {output}; jawOpen max {jaw.max():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", help="speech file (WAV/FLAC/OGG), any sample rate")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="emolive server URL")
    parser.add_argument("-o", "--output", default="motion.csv", help="where to save the motion rows")
    args = parser.parse_args()
    asyncio.run(stream(args.server, args.wav, args.output))


if __name__ == "__main__":
    main()
