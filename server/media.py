"""The voice encoder of the WebRTC audio track: 48 kHz mono -> Opus packets.

aiortc encodes raw audio frames itself, and for every 20 ms it computes the RFC 6464 audio
level in a per-sample Python loop. A track may instead return encoded ``av.Packet`` objects,
which aiortc only splits into RTP packets; ``server.webrtc`` does that with this encoder (and
with the VP8 packets the engine session makes, ``engine.video.Vp8Encoder``). Per 20 ms of
voice: aiortc 0.36 ms (Opus, stereo) + 0.1 ms (audio level) + a worker-thread round trip;
this one 0.13 ms.
"""

from __future__ import annotations

import fractions

import av
import numpy as np

AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
OPUS_FRAME = 960  # 20 ms, what browsers send and expect
# Opus's low-delay (CELT-only) mode: a third of the CPU of its default (SILK/hybrid) mode
# and 2.5 instead of 6.5 ms of lookahead; at this target it sends ~47 kb/s of mono voice,
# above the 28–40 kb/s the Opus project recommends for fullband speech.
OPUS_APPLICATION = "lowdelay"
OPUS_BITRATE = 40_000


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
