"""Speech for the live benches: TTS turns pushed in real time, 20 ms at a time.

Every turn is int16 at the session's voice-out rate with no zero sample, so that the voice a
session sends back can be matched to the voice pushed sample for sample (zero is what a
session inserts for silence; see ``emolive.bench.stream``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RATE = 48_000  # push rate: the session's voice-out rate, so voice out == voice in, bit for bit
CHUNK = RATE // 50  # 20 ms
TTS_VOICE = "flite:slt"
TEXTS = (
    "Hello, my name is emolive. I turn one portrait into a face that talks.",
    "Bob, my papa bought a big map of Panama.",
    "The quick brown fox jumps over the lazy dog, and then it sleeps for a while.",
    "Would you like to hear the weather for tomorrow morning?",
    "She sells sea shells by the sea shore.",
    "Thank you for waiting. Your order has shipped and should arrive on Friday.",
)


def speech_turns() -> tuple[list[np.ndarray], str]:
    """int16 turns at RATE with no zero sample, and where they came from."""
    turns: list[np.ndarray] = []
    source = ""
    try:
        from emolive.training.tts import available_voices, synthesize

        if TTS_VOICE in available_voices():
            turns = [synthesize(text, TTS_VOICE, rate=RATE).audio for text in TEXTS]
            source = f"TTS {TTS_VOICE}, {len(turns)} sentences"
    except Exception as error:  # a missing TTS engine is not the benchmark's problem
        print(f"TTS unavailable ({error}); using the bundled clip", file=sys.stderr)
    if not turns:
        import soxr

        from emolive.engine.audio import load_audio
        from emolive.engine.offline import DEFAULT_AUDIO

        clip = soxr.resample(load_audio(DEFAULT_AUDIO), 16000, RATE)
        piece = 3 * RATE
        turns = [clip[i : i + piece] for i in range(0, len(clip) - RATE, piece)]
        source = f"bundled demo_speech.wav in {len(turns)} pieces"
    out = []
    for audio in turns:
        pcm = np.clip(np.round(np.asarray(audio, np.float32) * 32767), -32768, 32767).astype(np.int16)
        pcm[pcm == 0] = 1  # zero is reserved for silence the session inserts
        out.append(pcm)
    return out, source


async def sleep_until(t: float) -> None:
    """Sleep until CLOCK_MONOTONIC reads ``t`` (at once if it is past)."""
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class Feeder:
    """Real-time turns: 20 ms chunks at absolute times, pauses between turns."""

    turns: list[np.ndarray]
    rng: np.random.Generator
    pause: tuple[float, float] = (0.4, 1.2)
    first_turn: int = 0

    async def run(self, start: float, end: float, push: Callable[[np.ndarray], None], end_turn: Callable[[], None],
                  align: Callable[[float], float] | None = None) -> int:
        """Push turns from ``start`` until none fits before ``end``; returns turns pushed.
        ``align(t)`` may move each turn's start (the soak aligns turns to the clock)."""
        t, k = start, self.first_turn
        count = 0
        while True:
            turn = self.turns[k % len(self.turns)]
            k += 1
            if align is not None:
                t = align(t)
            if t + len(turn) / RATE > end:
                return count
            for j in range(0, len(turn), CHUNK):
                await sleep_until(t + j / RATE)
                push(turn[j : j + CHUNK])
            end_turn()
            count += 1
            t += len(turn) / RATE + float(self.rng.uniform(*self.pause))

