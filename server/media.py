"""Encoders for the WebRTC tracks: rendered RGB frames -> VP8 packets, voice -> Opus packets.

aiortc encodes raw frames itself, with settings made for camera video: its VP8 encoder runs
libvpx's temporal denoiser at speed -6 on a frame it first converts from RGB with swscale,
and for every 20 ms of audio it computes the RFC 6464 audio level in a per-sample Python
loop. A track may instead return encoded ``av.Packet`` objects, which aiortc only splits into
RTP packets; ``server.webrtc`` does that with these encoders. Measured on the bundled
portrait's 512² renders (2-core CPU, CPU time per frame): aiortc's path 1.1 ms (RGB frame)
+ 1.3 ms (swscale) + 4.7 ms (VP8) ≈ 7 ms; this one 0.3 ms (OpenCV I420) + 2.3 ms (VP8), with
a higher PSNR (the renders carry no sensor noise for a denoiser to remove). Per 20 ms of
voice: aiortc 0.36 ms (Opus, stereo) + 0.1 ms (audio level) + a worker-thread round trip;
this one 0.13 ms.
"""

from __future__ import annotations

import fractions

import av
import cv2
import numpy as np

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
OPUS_FRAME = 960  # 20 ms, what browsers send and expect
# Opus's low-delay (CELT-only) mode: a third of the CPU of its default (SILK/hybrid) mode
# and 2.5 instead of 6.5 ms of lookahead; at this target it sends ~47 kb/s of mono voice,
# above the 28–40 kb/s the Opus project recommends for fullband speech.
OPUS_APPLICATION = "lowdelay"
OPUS_BITRATE = 40_000

# aiortc's start bitrate and floor; its 1.5 Mbps ceiling buys +0.4 dB PSNR over 1 Mbps on
# 512² renders for 1.5x the packets, and every packet costs the event loop.
VP8_START_BITRATE = 500_000
VP8_MIN_BITRATE = 250_000
VP8_MAX_BITRATE = 1_000_000
# A receiver's estimate must move the target by more than this before the encoder is rebuilt
# (libvpx through FFmpeg ignores bitrate changes on an open encoder; a rebuild starts with a
# keyframe), as aiortc does.
VP8_REBUILD_CHANGE = 0.1


def i420_frame(image: np.ndarray, pts: int) -> av.VideoFrame:
    """RGB uint8 (h, w, 3), even sides -> a yuv420p frame on the 90 kHz clock."""
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    frame.pts = pts
    frame.time_base = VIDEO_TIME_BASE
    return frame


class Vp8Encoder:
    """RGB frames -> one VP8 packet each: real-time CBR like aiortc's encoder, at a target the
    receiver's bandwidth estimate moves, tuned for rendered frames.

    ``encode`` runs in a worker thread, one call at a time; ``target_bitrate`` may be set from
    the event loop in between (the next frame picks it up).
    """

    def __init__(self) -> None:
        self._target = VP8_START_BITRATE
        self._codec: av.CodecContext | None = None

    @property
    def target_bitrate(self) -> int:
        return self._target

    @target_bitrate.setter
    def target_bitrate(self, bps: int) -> None:
        self._target = max(VP8_MIN_BITRATE, min(int(bps), VP8_MAX_BITRATE))

    def encode(self, image: np.ndarray, pts: int, keyframe: bool = False) -> av.Packet | None:
        """The packet of one frame (pts on the 90 kHz clock); ``keyframe`` forces an intra frame."""
        frame = i420_frame(image, pts)
        codec = self._codec
        target = self._target
        if codec is None or (codec.width, codec.height) != (frame.width, frame.height) or (
                abs(target - codec.bit_rate) > VP8_REBUILD_CHANGE * codec.bit_rate):
            codec = self._codec = _vp8_codec(frame.width, frame.height, target)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = codec.encode(frame)
        if not packets:
            return None
        packet = packets[0] if len(packets) == 1 else av.Packet(b"".join(bytes(p) for p in packets))
        packet.pts = pts
        packet.time_base = VIDEO_TIME_BASE
        return packet


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
    """48 kHz mono int16 -> one Opus packet per 20 ms, pts in samples. One thread at a time."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = AUDIO_RATE
        codec.time_base = AUDIO_TIME_BASE
        codec.bit_rate = OPUS_BITRATE
        codec.options = {"application": OPUS_APPLICATION, "frame_duration": "20"}
        self._codec = codec

    def encode(self, samples: np.ndarray, pts: int) -> av.Packet | None:
        """The packet of one 20 ms chunk (OPUS_FRAME samples) starting at sample ``pts``."""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        packets = self._codec.encode(frame)
        if not packets:
            return None
        # One packet per 20 ms frame, returned at once but stamped the encoder's lookahead
        # early; the chunk's own position is the timestamp the receiver's clock needs.
        packet = packets[0]
        packet.pts = pts
        packet.time_base = AUDIO_TIME_BASE
        return packet
