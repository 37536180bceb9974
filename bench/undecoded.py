"""Counting VP8 frames in a bench client without decoding them.

The bench clients share the server's two cores, so every millisecond they spend is one the
server does not get. Decoding a 512² VP8 frame costs a client ~0.85 ms; checking that the
whole frame arrived (aiortc received, decrypted, depacketized and reassembled it) is enough
for most streams. aiortc 1.16 has no supported way to choose a receiver's decoder: its
decoder thread calls ``aiortc.rtcrtpreceiver.get_decoder`` by module-global name. So
:func:`count_vp8_undecoded` replaces that one function, in the bench's own client process
only (never in a server), and this module is the only place that does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CountedFrame:
    """A whole VP8 frame the bench client received but did not decode."""

    pts: int
    valid: bool  # the frame header parsed (and a keyframe names the expected size)


class CountingDecoder:
    """Stands in for aiortc's VP8 decoder: checks each frame's header and counts it."""

    def __init__(self, size: int) -> None:
        self._size = size

    def decode(self, encoded_frame: Any) -> list[CountedFrame]:
        data = encoded_frame.data
        valid = len(data) >= 3
        if valid and not data[0] & 1:  # keyframe: start code, then 14-bit width and height
            valid = (len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a"
                     and int.from_bytes(data[6:8], "little") & 0x3FFF == self._size
                     and int.from_bytes(data[8:10], "little") & 0x3FFF == self._size)
        return [CountedFrame(encoded_frame.timestamp, valid)]


def count_vp8_undecoded(size: int, decoded_streams: int = 0) -> None:
    """In this process, every VP8 stream after the first ``decoded_streams`` gets a
    :class:`CountingDecoder` for ``size``² frames; other codecs keep aiortc's decoders."""
    import aiortc.rtcrtpreceiver as receiver

    real = receiver.get_decoder
    made = itertools.count()

    def get_decoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "video/vp8" and next(made) >= decoded_streams:
            return CountingDecoder(size)
        return real(codec)

    receiver.get_decoder = get_decoder
