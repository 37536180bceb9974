"""Latency of the voice-agent adapters with the engine in-process: how long the agent's
voice takes to come out with the face, and how fast an interruption silences it.

    python examples/integration_latency.py            # both adapters whose framework is installed
    python examples/integration_latency.py --runs 5 --size 512

For each turn, 3 s of TTS audio goes in at once (as a TTS service delivers it) and the figures are:

- voice in -> out: from the push to the frame that carries the first voiced sample, less
  where that sample is in the audio (the TTS's leading silence);
- interrupt -> silent: from the interruption (Pipecat ``InterruptionFrame``, LiveKit
  ``clear_buffer``) to the first frame out without turn voice.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from emolive.integrations.face import LocalFace  # noqa: E402
from emolive.training.tts import synthesize  # noqa: E402

RATE = 24000
VOICED = 1000  # PCM16 level that counts as voice


def speech() -> tuple[np.ndarray, float]:
    """3 s of TTS as int16 at RATE, and where its first voiced sample is (s)."""
    audio = synthesize("Bob, my papa bought a big map of Panama. Palm trees bob above the bay.", "flite:slt",
                       rate=RATE).audio
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)[: 3 * RATE]
    return pcm, int(np.argmax(np.abs(pcm) > VOICED)) / RATE


def voiced(audio: bytes | np.ndarray) -> bool:
    return bool(np.abs(np.frombuffer(audio, dtype=np.int16)).max() > VOICED)


async def livekit_turns(runs: int, size: int, motion: str) -> tuple[list[float], list[float]]:
    from livekit import rtc

    from emolive.integrations.livekit import EmoliveVideoGenerator

    pcm, lead = speech()
    generator = EmoliveVideoGenerator(LocalFace(size=size, motion=motion))
    await generator.start()
    out: list[tuple[float, bool]] = []  # (time, voiced) of each AudioFrame/VideoFrame out

    async def consume() -> None:
        async for item in generator:
            if isinstance(item, rtc.VideoFrame):
                out.append((time.perf_counter(), False))
            elif isinstance(item, rtc.AudioFrame):
                out[-1] = (out[-1][0], voiced(item.data))

    consumer = asyncio.create_task(consume())
    in_out, interrupt = [], []
    await warmed_up(out)
    for _ in range(runs):
        pushed = time.perf_counter()
        for start in range(0, len(pcm), RATE // 50):
            chunk = pcm[start: start + RATE // 50]
            await generator.push_audio(rtc.AudioFrame(chunk.tobytes(), RATE, 1, len(chunk)))
        await asyncio.sleep(1.5)
        in_out.append(first_voiced(out, pushed) - pushed - lead)
        cut = time.perf_counter()
        generator.clear_buffer()
        await asyncio.sleep(1.0)
        interrupt.append(first_silent(out, cut) - cut)
    consumer.cancel()
    await generator.aclose()
    return in_out, interrupt


async def pipecat_turns(runs: int, size: int, motion: str) -> tuple[list[float], list[float]]:
    from pipecat.frames.frames import EndFrame, InterruptionFrame, OutputAudioRawFrame, TTSAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from emolive.integrations.pipecat import EmoliveVideoService

    pcm, lead = speech()
    out: list[tuple[float, bool]] = []

    class Sink(FrameProcessor):
        async def process_frame(self, frame, direction) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                out.append((time.perf_counter(), isinstance(frame, TTSAudioRawFrame) and voiced(frame.audio)))
            await self.push_frame(frame, direction)

    worker = PipelineWorker(Pipeline([EmoliveVideoService(size=size, motion=motion), Sink()]),
                            params=PipelineParams(audio_out_sample_rate=48000))
    in_out, interrupt = [], []

    async def script() -> None:
        await warmed_up(out)
        for _ in range(runs):
            chunks = [TTSAudioRawFrame(pcm[s: s + RATE // 50].tobytes(), RATE, 1)
                      for s in range(0, len(pcm), RATE // 50)]
            pushed = time.perf_counter()
            await worker.queue_frames(chunks)
            await asyncio.sleep(1.5)
            in_out.append(first_voiced(out, pushed) - pushed - lead)
            cut = time.perf_counter()
            await worker.queue_frame(InterruptionFrame())
            await asyncio.sleep(1.0)
            interrupt.append(first_silent(out, cut) - cut)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    scripted = asyncio.create_task(script())
    await runner.run()
    await scripted
    return in_out, interrupt


async def warmed_up(out: list) -> None:
    """Wait until the face has run idle for a second: model loading and first steps are over."""
    while len(out) < 25:
        await asyncio.sleep(0.05)


def first_voiced(out: list[tuple[float, bool]], since: float) -> float:
    return next(t for t, v in out if t >= since and v)


def first_silent(out: list[tuple[float, bool]], since: float) -> float:
    return next(t for t, v in out if t >= since and not v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="turns per adapter")
    parser.add_argument("--size", type=int, default=512, help="face size in pixels")
    parser.add_argument("--motion", default="baseline", help="motion model (baseline, student, ...)")
    args = parser.parse_args()
    adapters = {"pipecat": ("pipecat", pipecat_turns), "livekit": ("livekit.agents", livekit_turns)}
    for name, (module, measure) in adapters.items():
        try:
            installed = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            installed = False
        if not installed:
            print(f"{name:8s} not installed (pip install 'emolive[{name}]')")
            continue
        in_out, interrupt = asyncio.run(measure(args.runs, args.size, args.motion))
        print(f"{name:8s} voice in -> out {statistics.median(in_out) * 1000:4.0f} ms "
              f"(max {max(in_out) * 1000:.0f}), interrupt -> silent {statistics.median(interrupt) * 1000:4.0f} ms "
              f"(max {max(interrupt) * 1000:.0f}); {args.runs} turns, {args.size} px, {args.motion}")


if __name__ == "__main__":
    main()
