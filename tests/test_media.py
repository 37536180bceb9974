"""The live encoders (engine.media): one contract, packets a standard decoder reads back."""

from __future__ import annotations

import av
import cv2
import numpy as np

from emolive.engine.formats import VOICE_RATE
from emolive.engine.media import (OPUS_FRAME, VP8_MAX_BITRATE, VP8_MIN_BITRATE, Encoder, OpusEncoder, Vp8Encoder,
                          clamp_vp8_bitrate)


def test_vp8_packets_decode_to_the_frames_and_keyframes_come_on_request() -> None:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (9, 9), 3)
    images = [np.roll(base, 2 * k, axis=1) for k in range(6)]
    encoder: Encoder = Vp8Encoder()
    packets = [p for k, image in enumerate(images) for p in encoder.encode(image, 3600 * k, force_keyframe=k == 4)]
    assert [p.keyframe for p in packets] == [True, False, False, False, True, False]
    assert [p.pts for p in packets] == [3600 * k for k in range(6)]
    decoder = av.CodecContext.create("libvpx", "r")
    decoded = [f.to_ndarray(format="rgb24") for p in packets for f in decoder.decode(av.Packet(p.data))]
    assert len(decoded) == 6
    for image, frame in zip(images, decoded):
        mse = np.mean((image.astype(np.float32) - frame) ** 2)
        assert 10 * np.log10(255**2 / mse) > 30
    assert clamp_vp8_bitrate(10**9) == VP8_MAX_BITRATE
    assert clamp_vp8_bitrate(1) == VP8_MIN_BITRATE


def test_vp8_target_bitrate_is_clamped_and_moves_the_stream() -> None:
    """A receiver's bandwidth estimate sets the target; far outside VP8's range it is clamped,
    and a large change rebuilds the encoder (which starts again with a keyframe)."""
    encoder = Vp8Encoder()
    encoder.target_bitrate = 10**9
    assert encoder.target_bitrate == VP8_MAX_BITRATE
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8), (5, 5), 2)
    first = encoder.encode(image, 0)
    again = encoder.encode(image, 3600)
    encoder.target_bitrate = VP8_MIN_BITRATE
    rebuilt = encoder.encode(image, 7200)
    assert first[0].keyframe and not again[0].keyframe and rebuilt[0].keyframe


def test_opus_packets_carry_the_voice_at_its_own_position() -> None:
    """20 ms chunks of 48 kHz voice -> one packet each, stamped with the chunk's first sample
    (not the encoder's lookahead), that decode back to the tone."""
    t = np.arange(10 * OPUS_FRAME) / VOICE_RATE
    voice = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    encoder: Encoder = OpusEncoder()
    packets = [p for k in range(10) for p in encoder.encode(voice[k * OPUS_FRAME:(k + 1) * OPUS_FRAME], k * OPUS_FRAME)]
    assert [p.pts for p in packets] == [k * OPUS_FRAME for k in range(len(packets))]
    assert len(packets) >= 9
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = VOICE_RATE, "mono"
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(av.Packet(p.data))])
    spectrum = np.abs(np.fft.rfft(decoded[-4 * OPUS_FRAME:].astype(np.float32)))
    peak_hz = np.argmax(spectrum) * VOICE_RATE / (4 * OPUS_FRAME)
    assert abs(peak_hz - 440) < 15
