"""MP4 files (H.264 + AAC, muxed by PyAV) of offline renders.

The writer encodes on a thread of its own, so rendering the next frame overlaps encoding this
one (OpenCV, x264 and the muxer release the GIL): on two cores that is most of the encode
cost. The live encoders (VP8, Opus) are in :mod:`emolive.engine.media`.

"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import soxr

from emolive.engine.formats import FEATURE_RATE, FPS, VOICE_RATE
from emolive.engine.media import yuv420p_frame

_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_AUDIO_CHUNK = 1024  # AAC frame size
_QUEUED_FRAMES = 8  # bounds memory when rendering outruns encoding
_END = None


class Mp4Writer:
    """Writes RGB frames at a fixed rate and interleaves the audio that belongs to them.

    ``audio`` is mono float32 in [-1, 1] at ``audio_rate``; it starts with frame 0."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float = FPS,
        audio: np.ndarray | None = None,
        audio_rate: int = FEATURE_RATE,
        crf: int = 20,
        preset: str = "ultrafast",
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self._container = av.open(str(self.path), mode="w")
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(crf), "preset": preset}
        self._frames = 0
        self._audio_stream = None
        if audio is not None:
            if audio_rate not in _AAC_RATES:
                audio = soxr.resample(audio, audio_rate, VOICE_RATE).astype(np.float32)
                audio_rate = VOICE_RATE
            self._audio = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
            self._audio_rate = audio_rate
            self._audio_written = 0
            self._audio_stream = self._container.add_stream("aac", rate=audio_rate)
            self._audio_stream.layout = "mono"
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(_QUEUED_FRAMES)
        self._error: BaseException | None = None
        self._encoder = threading.Thread(target=self._encode_loop, name="mp4-encoder", daemon=True)
        self._encoder.start()

    def write(self, frame: np.ndarray) -> None:
        """Queue one (H, W, 3) uint8 RGB frame for encoding (blocks while the queue is full)."""
        self._raise_encoder_error()
        self._queue.put(frame)

    def _raise_encoder_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _encode_loop(self) -> None:
        try:
            while (frame := self._queue.get()) is not _END:
                self._encode(frame)
        except BaseException as error:  # surfaced to the writer's thread on its next call
            self._error = error
            while self._queue.get() is not _END:  # unblock a writer waiting on a full queue
                pass

    def _encode(self, frame: np.ndarray) -> None:
        video_frame = yuv420p_frame(frame)
        video_frame.pts = self._frames
        video_frame.time_base = 1 / self.fps
        self._container.mux(self._video.encode(video_frame))
        self._frames += 1
        if self._audio_stream is not None:
            self._write_audio(until=int(self._frames / self.fps * self._audio_rate))

    def _write_audio(self, until: int) -> None:
        until = min(until, len(self._audio))
        while self._audio_written + _AUDIO_CHUNK <= until or (until == len(self._audio) and self._audio_written < until):
            chunk = self._audio[self._audio_written : self._audio_written + _AUDIO_CHUNK]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = self._audio_rate
            frame.pts = self._audio_written
            frame.time_base = Fraction(1, self._audio_rate)
            self._container.mux(self._audio_stream.encode(frame))
            self._audio_written += len(chunk)

    def close(self) -> None:
        """Encode what is queued, flush encoders; audio beyond the last frame is written too."""
        self._queue.put(_END)
        self._encoder.join()
        self._raise_encoder_error()
        if self._audio_stream is not None:
            self._write_audio(until=len(self._audio))
            self._container.mux(self._audio_stream.encode(None))
        self._container.mux(self._video.encode(None))
        self._container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._queue.put(_END)
            self._encoder.join()
            self._container.close()
