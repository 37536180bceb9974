"""Video encoding: MP4 files (H.264 + AAC, muxed by PyAV) and the VP8 stream of a live session.

The MP4 writer encodes on a thread of its own, so rendering the next frame overlaps encoding
this one (OpenCV, x264 and the muxer release the GIL): on two cores that is most of the encode
cost.

The VP8 encoder makes the packets a WebRTC video track sends. aiortc's own encoder is made for
camera video: it runs libvpx's temporal denoiser at speed -6 on a frame it first converts from
RGB with swscale. Measured on the bundled portrait's 512² renders (2-core CPU, CPU time per
frame): aiortc's path 1.1 ms (RGB frame) + 1.3 ms (swscale) + 4.7 ms (VP8) ≈ 7 ms; this one
0.3 ms (OpenCV I420) + 2.3 ms (VP8), with a higher PSNR (renders carry no sensor noise for a
denoiser to remove).
"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np
import soxr

from engine.motion_space import FPS

_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_AUDIO_CHUNK = 1024  # AAC frame size
_QUEUED_FRAMES = 8  # bounds memory when rendering outruns encoding
_END = None

VIDEO_CLOCK = 90_000  # RTP's video clock: VP8 packets carry pts in these ticks
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
# aiortc's start bitrate and floor; its 1.5 Mbps ceiling buys +0.4 dB PSNR over 1 Mbps on
# 512² renders for 1.5x the packets, and every packet costs the server's event loop.
VP8_START_BITRATE = 500_000
VP8_MIN_BITRATE = 250_000
VP8_MAX_BITRATE = 1_000_000
# A receiver's estimate must move the target by more than this before the encoder is rebuilt
# (libvpx through FFmpeg ignores bitrate changes on an open encoder; a rebuild starts with a
# keyframe), as aiortc does.
VP8_REBUILD_CHANGE = 0.1


def yuv420p_frame(image: np.ndarray) -> av.VideoFrame:
    """RGB uint8 (h, w, 3), even sides -> a yuv420p frame (OpenCV's BT.601 conversion is
    several times faster than swscale's here)."""
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


def video_pts(index: int) -> int:
    """The pts of a session's frame ``index`` on the 90 kHz video clock."""
    return index * (VIDEO_CLOCK // FPS)


def clamp_vp8_bitrate(bps: int) -> int:
    return max(VP8_MIN_BITRATE, min(int(bps), VP8_MAX_BITRATE))


class Vp8Encoder:
    """RGB frames -> one VP8 packet each: real-time CBR like aiortc's encoder, at a target the
    receiver's bandwidth estimate moves, tuned for rendered frames. One thread at a time."""

    def __init__(self) -> None:
        self._codec: av.CodecContext | None = None

    def encode(self, image: np.ndarray, pts: int, bitrate: int = VP8_START_BITRATE,
               keyframe: bool = False) -> tuple[bytes, bool] | None:
        """One frame's packet and whether it is a keyframe; ``pts`` on the 90 kHz clock,
        ``bitrate`` clamped to the VP8_MIN/MAX range, ``keyframe`` forces an intra frame."""
        frame = yuv420p_frame(image)
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        codec = self._codec
        bitrate = clamp_vp8_bitrate(bitrate)
        if codec is None or (codec.width, codec.height) != (frame.width, frame.height) or (
                abs(bitrate - codec.bit_rate) > VP8_REBUILD_CHANGE * codec.bit_rate):
            codec = self._codec = _vp8_codec(frame.width, frame.height, bitrate)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = codec.encode(frame)
        if not packets:
            return None
        return b"".join(bytes(p) for p in packets), packets[0].is_keyframe


def _vp8_codec(width: int, height: int, bitrate: int) -> av.CodecContext:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.bit_rate = bitrate
    codec.gop_size = 3000  # keyframes on request (PLI/FIR) and on rebuilds, as aiortc
    codec.qmin, codec.qmax = 2, 56
    codec.thread_count = 1  # sessions already encode in parallel, one frame each
    codec.options = {
        # aiortc's real-time CBR settings ...
        "deadline": "realtime",
        "lag-in-frames": "0",
        "bufsize": str(bitrate),
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "partitions": "0",
        "static-thresh": "1",
        # ... but faster (speed 12 of 16: 2.3 vs 4.7 ms per 512² frame) and without the
        # denoiser, which on noise-free renders costs 1.4 ms and loses ~0.5 dB PSNR.
        "cpu-used": "-12",
        "noise-sensitivity": "0",
    }
    return codec


class Mp4Writer:
    """Writes RGB frames at a fixed rate and interleaves the audio that belongs to them.

    ``audio`` is mono float32 in [-1, 1] at ``audio_rate``; it starts with frame 0."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float = 25.0,
        audio: np.ndarray | None = None,
        audio_rate: int = 16000,
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
                audio = soxr.resample(audio, audio_rate, 48000).astype(np.float32)
                audio_rate = 48000
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
