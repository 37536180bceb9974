"""Lip sync as a viewer of the demo page sees it: real headless Chromium (Debian's, playwright's
Python API) on the demo page's TTS path against a real server on 127.0.0.1 — voice bursts
streamed over the session WebSocket, face and voice back over WebRTC — for 20 s so that the
jitter buffers and Chromium's A/V alignment (from the RTCP sender reports) settle.

The measurement is ``emolive.bench.avsync`` (also ``emolive bench avsync``): mouth darkness of every
presented frame at its display time against the voice at the time it is played, net of the
motion model's own lag measured on the frames and voice the server sent.
"""

from __future__ import annotations

import pytest

from emolive.bench.avsync import CHROMIUM, measure_avsync
from emolive.server.config import Settings
from emolive.bench.background_server import BackgroundServer

MAX_OFFSET_MS = 40.0  # about where viewers start to notice a mouth ahead of its voice

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


def test_mouth_and_voice_in_sync_in_chromium(tmp_path):
    pytest.importorskip("playwright.sync_api")
    settings = Settings(data_dir=tmp_path, ice_loopback=True, motion="baseline", workers=2, render_processes=0,
                        max_sessions=2, detach_grace_s=0.5)
    with BackgroundServer(settings) as server:
        result = measure_avsync(server, seconds=20.0)
    print(result)
    # The method itself: the mouth follows the bursts clearly, on the source and in the browser,
    # and the model's own response is short (the baseline opens the jaw within ~20 ms).
    assert result.details["source_correlation"] > 0.6 and result.correlation > 0.5, result
    assert abs(result.source_lag_ms) <= 25, result
    assert abs(result.offset_ms) <= MAX_OFFSET_MS, result
