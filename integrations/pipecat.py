"""Pipecat: :class:`EmoliveVideoService`, the talking face after the TTS service, and
:class:`FliteTTSService`, a local TTS (CMU Flite / espeak-ng) for bots with no cloud key.

Pipeline: ``transport.input() -> ... -> tts -> EmoliveVideoService -> transport.output()``.
The service takes the ``TTSAudioRawFrame`` voice in, and pushes out, every 40 ms on the face's
clock, an ``OutputImageRawFrame`` and the 40 ms of voice that plays with it (the engine delays
the voice by its latency so that lips and voice stay in sync): ``TTSAudioRawFrame`` while a
turn plays, ``OutputAudioRawFrame`` silence when idle. An ``InterruptionFrame`` or
``UserStartedSpeakingFrame`` drops the queued voice and the face relaxes to rest; a
``TTSStoppedFrame`` ends the turn and is passed on when its voice has played out, so the
output transport's "bot stopped speaking" follows what the user hears.

Needs ``pip install emolive[pipecat]``; the output transport should run with
``video_out_enabled=True, video_out_is_live=True, video_out_framerate=25`` and
``audio_out_sample_rate=48000``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        ErrorFrame,
        Frame,
        InterruptionFrame,
        OutputAudioRawFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        UserStartedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.ai_service import AIService
    from pipecat.services.settings import ServiceSettings, TTSSettings
    from pipecat.services.tts_service import TTSService
except ModuleNotFoundError as error:  # pragma: no cover - depends on the extra
    raise ImportError(f"emolive.integrations.pipecat needs Pipecat: pip install 'emolive[pipecat]' ({error})") from error

from emolive.engine.formats import FRAME_SIZE
from emolive.integrations.face import VOICE_RATE, Face, FaceFrame, LocalFace, RemoteFace

__all__ = ["EmoliveVideoService", "FliteTTSService"]


class EmoliveVideoService(AIService):
    """The emolive face as a Pipecat video service (place it right after the TTS service).

    ``server`` set: a session on that ``emolive serve`` (its WebSocket API); otherwise the
    engine runs in this process (``portrait``, ``size``, ``motion``; it renders in a worker
    process it spawns, see :class:`~emolive.integrations.face.LocalFace`). ``face`` overrides both.
    """

    def __init__(self, *, server: str | None = None, portrait: str | Path | None = None, size: int = FRAME_SIZE,
                 motion: str = "baseline", face: Face | None = None, **kwargs: Any) -> None:
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        if face is None:
            face = RemoteFace(server, size=size, motion=motion) if server else LocalFace(portrait, size=size,
                                                                                         motion=motion)
        self.face = face
        self._started = False
        self._pump: asyncio.Task | None = None
        self._turn_open = False  # audio was pushed since the last end of turn
        # TTSStoppedFrames waiting for their turn's voice to finish playing, oldest first.
        self._stops: collections.deque[TTSStoppedFrame] = collections.deque()
        self._image: OutputImageRawFrame | None = None  # the newest picture, repeated when one is dropped

    def can_generate_metrics(self) -> bool:
        return True

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if not self._started:
            self._started = True
            await self.face.start()
            self._pump = self.create_task(self._forward())

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._shutdown()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._shutdown()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            # The voice is played by the face, delayed to match the lips: not passed on here.
            samples = np.frombuffer(frame.audio, dtype=np.int16).reshape(-1, frame.num_channels)
            try:
                self.face.push_audio(samples, frame.sample_rate)
                self._turn_open = True
            except ValueError as error:  # the engine refused it (queue full): say so, go on
                await self.push_error(error_msg=f"emolive refused audio: {error}", exception=error)
        elif isinstance(frame, TTSStoppedFrame):
            if self._turn_open:
                self.face.end_of_turn()
                self._turn_open = False
                self._stops.append(frame)
            else:
                await self.push_frame(frame, direction)
        elif isinstance(frame, (InterruptionFrame, UserStartedSpeakingFrame)):
            self.face.interrupt()
            self._turn_open = False
            self._stops.clear()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _forward(self) -> None:
        """The face's frames and turn ends, pushed downstream as they come (the face paces)."""
        try:
            async for item in self.face.stream():
                if isinstance(item, FaceFrame):
                    await self._push_face_frame(item)
                elif item.type == "playback_finished" and not item.interrupted and self._stops:
                    await self.push_frame(self._stops.popleft())
        except Exception as error:  # a lost server or engine: report it upstream as Pipecat does
            await self.push_error(error_msg=f"emolive face stream failed: {error}", exception=error)

    async def _push_face_frame(self, frame: FaceFrame) -> None:
        if frame.image is not None:
            height, width = frame.image.shape[:2]
            self._image = OutputImageRawFrame(image=frame.image.tobytes(), size=(width, height), format="RGB")
        if self._image is not None:
            await self.push_frame(OutputImageRawFrame(image=self._image.image, size=self._image.size, format="RGB"))
        cls = TTSAudioRawFrame if frame.speaking else OutputAudioRawFrame
        await self.push_frame(cls(audio=frame.audio.tobytes(), sample_rate=VOICE_RATE, num_channels=1))

    async def _shutdown(self) -> None:
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None
        if self._started:
            self._started = False
            await self.face.close()


class FliteTTSService(TTSService):
    """Text to speech on this machine with CMU Flite or espeak-ng (``emolive.training.tts``):
    ``voice`` is ``"flite:slt"``, ``"espeak-ng:en-us"``, ... No key, no network."""

    def __init__(self, *, voice: str = "flite:slt", **kwargs: Any) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self._voice = voice

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        from emolive.training.tts import synthesize

        if not text.strip():
            return
        try:
            speech = await asyncio.to_thread(synthesize, text, self._voice, rate=self.sample_rate)
        except Exception as error:  # a missing engine or voice: an ErrorFrame, as Pipecat's TTS services do
            yield ErrorFrame(error=f"flite TTS failed: {error}")
            return
        await self.stop_ttfb_metrics()
        pcm = np.clip(np.round(speech.audio * 32767.0), -32768, 32767).astype(np.int16)
        chunk = self.sample_rate // 50  # 20 ms, as a streaming TTS sends
        for start in range(0, len(pcm), chunk):
            yield TTSAudioRawFrame(audio=pcm[start:start + chunk].tobytes(), sample_rate=self.sample_rate,
                                   num_channels=1, context_id=context_id)
