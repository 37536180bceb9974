"""The live encoders: rendered frames -> VP8 packets, voice -> Opus packets, one contract.

Both take a frame (an RGB image; 20 ms of 48 kHz mono int16 voice) with its pts and give the
packets it made (aiortc's encoder contract, with pts): a WebRTC track hands them to aiortc,
which only packetizes them.

The VP8 encoder replaces aiortc's, which is made for camera video: it runs libvpx's temporal
denoiser at speed -6 on a frame it first converts from RGB with swscale. Measured on the
bundled portrait's 512² renders (2-core CPU, CPU time per frame): aiortc's path 1.1 ms (RGB
frame) + 1.3 ms (swscale) + 4.7 ms (VP8) ≈ 7 ms; this one 0.3 ms (OpenCV I420) + 2.3 ms
(VP8), with a higher PSNR (renders carry no sensor noise for a denoiser to remove).

The Opus encoder replaces aiortc's raw-audio path, which also computes the RFC 6464 audio level
of every 20 ms in a per-sample Python loop: aiortc 0.36 ms (Opus, stereo) + 0.1 ms (audio
level) + a worker-thread round trip per 20 ms of voice; this one 0.13 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import cv2
import numpy as np

from emolive.engine.formats import FPS, VOICE_RATE

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


VOICE_TIME_BASE = Fraction(1, VOICE_RATE)
OPUS_FRAME = VOICE_RATE // 50  # 20 ms, what browsers send and expect
# Opus's low-delay (CELT-only) mode: a third of the CPU of its default (SILK/hybrid) mode
# and 2.5 instead of 6.5 ms of lookahead; at this target it sends ~47 kb/s of mono voice,
# above the 28–40 kb/s the Opus project recommends for fullband speech.
OPUS_APPLICATION = "lowdelay"
OPUS_BITRATE = 40_000


@dataclass(frozen=True)
class EncodedPacket:
    """One encoded packet: its payload, pts (in the encoder's time base) and whether it
    starts a decodable stream on its own."""

    data: bytes
    pts: int
    keyframe: bool


class Encoder(Protocol):
    """A live encoder. One thread at a time."""

    time_base: Fraction

    def encode(self, frame: np.ndarray, pts: int, force_keyframe: bool = False) -> list[EncodedPacket]:
        """The packets ``frame`` (at ``pts``) completes; ``force_keyframe`` asks for an intra
        frame where the codec has them."""
        ...


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
    receiver's bandwidth estimate moves (``target_bitrate``), tuned for rendered frames."""

    time_base = VIDEO_TIME_BASE

    def __init__(self, target_bitrate: int = VP8_START_BITRATE) -> None:
        self._codec: av.CodecContext | None = None
        self.target_bitrate = target_bitrate

    @property
    def target_bitrate(self) -> int:
        return self._target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bps: int) -> None:
        self._target_bitrate = clamp_vp8_bitrate(bps)

    def encode(self, frame: np.ndarray, pts: int, force_keyframe: bool = False) -> list[EncodedPacket]:
        """One RGB frame's packet (none while the encoder buffers); ``pts`` on the 90 kHz clock."""
        picture = yuv420p_frame(frame)
        picture.pts = pts
        picture.time_base = VIDEO_TIME_BASE
        codec = self._codec
        bitrate = self._target_bitrate
        if codec is None or (codec.width, codec.height) != (picture.width, picture.height) or (
                abs(bitrate - codec.bit_rate) > VP8_REBUILD_CHANGE * codec.bit_rate):
            codec = self._codec = _vp8_codec(picture.width, picture.height, bitrate)
        if force_keyframe:
            picture.pict_type = av.video.frame.PictureType.I
        packets = codec.encode(picture)
        if not packets:
            return []
        return [EncodedPacket(b"".join(bytes(p) for p in packets), pts, packets[0].is_keyframe)]


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


class OpusEncoder:
    """48 kHz mono int16 -> one Opus packet per 20 ms, pts in samples."""

    time_base = VOICE_TIME_BASE

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = VOICE_RATE
        codec.time_base = VOICE_TIME_BASE
        codec.bit_rate = OPUS_BITRATE
        codec.options = {"application": OPUS_APPLICATION, "frame_duration": "20"}
        self._codec = codec

    def encode(self, frame: np.ndarray, pts: int, force_keyframe: bool = False) -> list[EncodedPacket]:
        """The packet of one 20 ms chunk (OPUS_FRAME samples) starting at sample ``pts``;
        every Opus packet stands alone, so ``force_keyframe`` changes nothing."""
        audio = av.AudioFrame.from_ndarray(frame.reshape(1, -1), format="s16", layout="mono")
        audio.sample_rate = VOICE_RATE
        audio.pts = pts
        audio.time_base = VOICE_TIME_BASE
        packets = self._codec.encode(audio)
        # One packet per 20 ms frame, returned at once but stamped the encoder's lookahead
        # early; the chunk's own position is the timestamp the receiver's clock needs.
        return [EncodedPacket(bytes(packets[0]), pts, True)] if packets else []
