"""A Pipecat voice bot with the emolive face, in the browser over Pipecat's SmallWebRTC
transport; runs on this machine with no cloud key.

    pip install 'emolive[pipecat]'
    python examples/pipecat_bot.py            # then open http://127.0.0.1:7860 and press Talk

Pipeline: microphone -> Silero VAD -> user turns -> a scripted bot (a canned reply when you
stop talking: swap in an LLM and an STT service for a real agent) -> local TTS (Flite) ->
``EmoliveVideoService`` -> the browser (face + voice). Talk over the bot and it stops: the
VAD's user turn interrupts the pipeline, and the face drops its voice and relaxes at once.

``--server http://host:8000`` takes the face from a running ``emolive serve`` instead of the
engine in this process. ``GET /api/timeline`` lists what the bot did, with wall-clock times
(the browser test lines it up with what the page saw).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse  # noqa: E402
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.audio.vad_processor import VADProcessor  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest, SmallWebRTCRequestHandler  # noqa: E402
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402
from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy  # noqa: E402
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (  # noqa: E402
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_processor import UserTurnProcessor  # noqa: E402
from pipecat.turns.user_turn_strategies import UserTurnStrategies  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar  # noqa: E402
from emolive.engine.render_workers import RenderWorkers  # noqa: E402
from emolive.integrations.face import LocalFace, RemoteFace  # noqa: E402
from emolive.integrations.pipecat import EmoliveVideoService, FliteTTSService  # noqa: E402

PAGE = Path(__file__).with_name("pipecat_bot.html")
GREETING = ("Hello! I am a Pipecat bot, and emolive is my face. Everything I say is spoken by a "
            "local text to speech engine, and my lips move with my voice. You can talk over me at "
            "any time: I will stop and listen, and then I will answer you.")
REPLY = "I heard you. I cannot understand words yet, but my face follows my voice."


class ScriptedBot(FrameProcessor):
    """Stands in for STT + LLM: a canned reply whenever the user's turn ends; notes the times of
    what happened for ``/api/timeline``."""

    def __init__(self, timeline: list[dict]) -> None:
        super().__init__()
        self._timeline = timeline

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._timeline.append({"event": "interruption", "t": time.time()})
        elif isinstance(frame, TTSSpeakFrame):
            self._timeline.append({"event": "speak", "t": time.time(), "text": frame.text})
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame):
            self._timeline.append({"event": "user_stopped", "t": time.time()})
            self._timeline.append({"event": "speak", "t": time.time(), "text": REPLY})
            await self.push_frame(TTSSpeakFrame(REPLY))


class FaceTap(FrameProcessor):
    """Notes for ``/api/timeline`` when the face's voice goes silent (its first silent frame
    after a voiced one): what the face itself takes to stop, before the transport's share."""

    def __init__(self, timeline: list[dict]) -> None:
        super().__init__()
        self._timeline = timeline
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            speaking = isinstance(frame, TTSAudioRawFrame)
            if self._speaking and not speaking:
                self._timeline.append({"event": "face_silent", "t": time.time()})
            self._speaking = speaking
        await self.push_frame(frame, direction)


def create_app(face_server: str | None, size: int) -> FastAPI:
    handler = SmallWebRTCRequestHandler()
    timeline: list[dict] = []
    runners: list[WorkerRunner] = []  # made on the server's loop, which the runner needs
    # With the engine in this process: the avatar and the render processes, made once at
    # startup and shared by every call, so a call's face starts at once.
    shared: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if face_server is None:
            _, shared["rig"] = await asyncio.to_thread(prepare_avatar, DEFAULT_PORTRAIT, RenderOptions(size=size))
            shared["workers"] = await asyncio.to_thread(RenderWorkers, 1)
        runners.append(WorkerRunner(handle_sigint=False))
        task = asyncio.create_task(runners[0].run(auto_end=False))
        yield
        await handler.close()
        await runners[0].cancel()
        task.cancel()
        if "workers" in shared:
            await asyncio.to_thread(shared["workers"].close)

    app = FastAPI(title="emolive Pipecat bot", lifespan=lifespan)

    async def start_bot(connection: SmallWebRTCConnection) -> None:
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(
            # 20 ms output chunks (Pipecat's default is 40): less voice queued when interrupted.
            audio_in_enabled=True, audio_out_enabled=True, audio_out_sample_rate=48000, audio_out_10ms_chunks=2,
            video_out_enabled=True, video_out_is_live=True, video_out_width=size, video_out_height=size,
            video_out_framerate=25))
        face = (RemoteFace(face_server, size=size) if face_server
                else LocalFace(rig=shared["rig"], size=size, render_workers=shared["workers"]))
        turns = UserTurnProcessor(user_turn_strategies=UserTurnStrategies(
            start=[VADUserTurnStartStrategy()],
            # No STT here, so no transcript to wait for: the turn ends 0.6 s after speech does.
            stop=[SpeechTimeoutUserTurnStopStrategy(wait_for_transcript=False)]))
        pipeline = Pipeline([
            transport.input(), VADProcessor(vad_analyzer=SileroVADAnalyzer()), turns, ScriptedBot(timeline),
            FliteTTSService(), EmoliveVideoService(face=face), FaceTap(timeline), transport.output(),
        ])
        worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=48000))

        @transport.event_handler("on_client_connected")
        async def greet(_transport, _client) -> None:
            timeline.append({"event": "client_connected", "t": time.time()})
            await worker.queue_frames([TTSSpeakFrame(GREETING)])

        @transport.event_handler("on_client_disconnected")
        async def leave(_transport, _client) -> None:
            await worker.cancel()

        await runners[0].add_workers(worker)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(PAGE)

    @app.post("/api/offer")
    async def offer(request: Request) -> dict:
        body = await request.json()
        return await handler.handle_web_request(SmallWebRTCRequest(sdp=body["sdp"], type=body["type"],
                                                                   pc_id=body.get("pc_id")), start_bot)

    @app.get("/api/timeline")
    async def get_timeline() -> list[dict]:
        return timeline

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--server", help="take the face from this emolive server (default: the engine in-process)")
    parser.add_argument("--size", type=int, default=512, help="face size in pixels")
    args = parser.parse_args()
    if args.host in ("127.0.0.1", "localhost", "::1"):
        from emolive.server.webrtc import enable_loopback_candidates

        enable_loopback_candidates()  # a browser on this machine may have no other route to us
    uvicorn.run(create_app(args.server, args.size), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
