"""``emolive bench render``: ms per frame of each offline stage, median of several runs."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from emolive.engine.audio import load_audio, log_mel, video_frame_features
from emolive.engine.motion import generate
from emolive.engine.motion.registry import create_motion_model
from emolive.engine.motion_space import FPS, MotionControls
from emolive.engine.offline import DEFAULT_AUDIO, DEFAULT_PORTRAIT, RenderOptions, prepare_avatar
from emolive.engine.render import Renderer
from emolive.engine.video import Mp4Writer


@dataclass(frozen=True)
class RenderConfig:
    """``emolive bench render``'s options (``emolive bench render --help`` explains each)."""

    size: int
    seconds: float
    runs: int
    motion: str


def _speech(seconds: float) -> np.ndarray:
    """The bundled clip, looped to ``seconds``."""
    clip = load_audio(DEFAULT_AUDIO)
    repeats = int(np.ceil(seconds * 16000 / len(clip)))
    return np.tile(clip, repeats)[: int(seconds * 16000)]


def run_render(config: RenderConfig) -> None:
    """Print each stage's ms per frame and the real-time factors."""
    console = Console()
    _, rig = prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=config.size))
    audio = _speech(config.seconds)
    timings: dict[str, list[float]] = {"features": [], "motion": [], "render": [], "encode": [], "pipelined": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(config.runs):
            t0 = time.perf_counter()
            features = video_frame_features(log_mel(audio))
            t1 = time.perf_counter()
            track = generate(create_motion_model(config.motion), features, MotionControls(seed=run))
            t2 = time.perf_counter()
            renderer = Renderer(rig)
            frames = [renderer.render(row) for row in track.frames]
            t3 = time.perf_counter()
            with Mp4Writer(Path(tmp) / "bench.mp4", config.size, config.size, FPS, audio=audio) as writer:
                for frame in frames:
                    writer.write(frame)
            t4 = time.perf_counter()
            # As `emolive render` runs: encoding on its own thread overlaps the next render.
            with Mp4Writer(Path(tmp) / "pipelined.mp4", config.size, config.size, FPS, audio=audio) as writer:
                for row in track.frames:
                    writer.write(renderer.render(row))
            t5 = time.perf_counter()
            n = len(frames)
            for stage, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                timings[stage].append(1000 * seconds / n)
            console.print(f"run {run + 1}/{config.runs}: {n} frames", style="dim")
    medians = {stage: statistics.median(values) for stage, values in timings.items()}
    frame_ms = 1000 / FPS
    table = Table(title=f"emolive bench render — {config.size}², {config.seconds:.0f} s of speech, median of {config.runs} runs, motion={config.motion}")
    table.add_column("stage")
    table.add_column("ms / frame", justify="right")
    pipelined = medians.pop("pipelined")
    for stage, value in medians.items():
        table.add_row(stage, f"{value:.2f}")
    render_encode = medians["render"] + medians["encode"]
    table.add_row("render + encode, one after the other", f"{render_encode:.2f}", style="bold")
    table.add_row("render + encode, pipelined (as emolive render runs)", f"{pipelined:.2f}", style="bold")
    console.print(table)
    console.print(f"real-time factor, render + encode pipelined:  {frame_ms / pipelined:.1f}x")
    console.print(f"real-time factor, render + encode sequential: {frame_ms / render_encode:.1f}x")
    console.print(f"real-time factor, all stages pipelined:       {frame_ms / (pipelined + medians['features'] + medians['motion']):.1f}x")

