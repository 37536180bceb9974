"""Offline rendering: portrait + audio file -> MP4, the same stages the live session runs.

registrar (``emolive.engine.avatar``) -> audio features (``emolive.engine.audio``) -> motion
(``emolive.engine.motion``) -> render (``emolive.engine.render``) -> encode (``emolive.engine.video``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from emolive.engine.audio import decode_audio, log_mel, to_mono_16k, video_frame_features
from emolive.engine.avatar import Avatar, register_avatar
from emolive.engine.formats import FRAME_SIZE
from emolive.engine.motion import generate
from emolive.engine.motion.backends import DEFAULT_BACKEND
from emolive.engine.motion.registry import DEFAULT_MOTION_MODEL, create_motion_model
from emolive.engine.motion_space import FPS, MotionControls, MotionTrack
from emolive.engine.render import Renderer
from emolive.engine.rig import Rig, build_rig
from emolive.engine.video import Mp4Writer

ASSETS = Path(__file__).parent / "assets"
DEFAULT_PORTRAIT = ASSETS / "astronaut.jpg"
DEFAULT_AUDIO = ASSETS / "demo_speech.wav"


@dataclass(frozen=True)
class RenderOptions:
    """Everything ``emolive render`` lets a user choose."""

    size: int = FRAME_SIZE
    fps: float = FPS
    keep_framing: bool = False
    motion: str = DEFAULT_MOTION_MODEL
    motion_backend: str = DEFAULT_BACKEND  # where a diffusion model's denoiser runs
    controls: MotionControls = MotionControls()


def audio_to_motion(samples16k: np.ndarray, options: RenderOptions) -> MotionTrack:
    """16 kHz mono audio -> a motion track at ``options.fps``, one row per video frame."""
    features = video_frame_features(log_mel(samples16k), fps=FPS)
    track = generate(create_motion_model(options.motion, options.motion_backend), features, options.controls)
    return track.resampled(options.fps)


def prepare_avatar(portrait: str | Path, options: RenderOptions) -> tuple[Avatar, Rig]:
    avatar = register_avatar(portrait, size=options.size, keep_framing=options.keep_framing)
    return avatar, build_rig(avatar.image, avatar.landmarks)


def render_frames(rig: Rig, track: MotionTrack) -> Iterator[np.ndarray]:
    renderer = Renderer(rig)
    for row in track.frames:
        yield renderer.render(row)


def render_video(
    portrait: str | Path,
    audio_path: str | Path,
    output: str | Path,
    options: RenderOptions = RenderOptions(),
    on_frame: Callable[[int, int], None] | None = None,
    keep_frames: Callable[[int], bool] | None = None,
) -> list[np.ndarray]:
    """Render ``portrait`` speaking ``audio_path`` into ``output`` (MP4).

    ``on_frame(done, total)`` reports progress; frames whose index ``keep_frames`` accepts
    are returned (for contact sheets)."""
    avatar, rig = prepare_avatar(portrait, options)
    decoded = decode_audio(audio_path)
    mono = decoded.samples.mean(axis=1)
    track = audio_to_motion(to_mono_16k(decoded.samples, decoded.rate), options)
    duration = len(mono) / decoded.rate
    frame_count = max(1, int(round(duration * options.fps)))
    frames = track.frames[:frame_count]
    if len(frames) < frame_count:
        frames = np.concatenate([frames, np.repeat(frames[-1:], frame_count - len(frames), axis=0)])
    height, width = avatar.image.shape[:2]
    kept = []
    with Mp4Writer(output, width, height, options.fps, audio=mono, audio_rate=decoded.rate) as writer:
        for index, frame in enumerate(render_frames(rig, MotionTrack(frames, options.fps))):
            writer.write(frame)
            if keep_frames is not None and keep_frames(index):
                kept.append(frame)
            if on_frame is not None:
                on_frame(index + 1, frame_count)
    return kept


def contact_sheet(frames: list[np.ndarray], columns: int = 4, tile: int = 256) -> np.ndarray:
    """Tile frames into one RGB image, ``columns`` across, each scaled to ``tile`` wide."""
    tiles = [cv2.resize(f, (tile, int(round(f.shape[0] * tile / f.shape[1]))), interpolation=cv2.INTER_AREA) for f in frames]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)
