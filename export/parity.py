"""Parity of an exported renderer with the CPU renderer over a motion sweep.

The sweep covers what the renderer does: rest, the jaw at several openings, lip shapes,
blinks, brows, head pose at ±15° on each axis, and everything at once. Differences are
reported as mean absolute difference in units of 1/255, over the whole frame and over the
mouth compositor's box (the inner-lip polygon's bounding box plus its 3 px margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.motion_space import INDEX, clip_frames, rest_frame

POSE = 0.26  # radians, about 15 degrees


def _row(**channels: float) -> np.ndarray:
    row = rest_frame()
    for name, value in channels.items():
        row[INDEX[name]] = value
    return row


SWEEP: dict[str, np.ndarray] = {
    "rest": _row(),
    "jawOpen 0.3": _row(jawOpen=0.3),
    "jawOpen 0.7": _row(jawOpen=0.7),
    "jawOpen 1.0": _row(jawOpen=1.0),
    "mouthClose": _row(jawOpen=0.6, mouthClose=1.0),
    "smile": _row(mouthSmileLeft=1.0, mouthSmileRight=1.0, jawOpen=0.2),
    "funnel": _row(mouthFunnel=1.0, jawOpen=0.3),
    "blink 0.5": _row(eyeBlinkLeft=0.5, eyeBlinkRight=0.5),
    "blink 1": _row(eyeBlinkLeft=1.0, eyeBlinkRight=1.0),
    "eyeWide": _row(eyeWideLeft=1.0, eyeWideRight=1.0),
    "brows": _row(browInnerUp=1.0, browOuterUpLeft=1.0, browDownRight=0.5),
    "yaw +": _row(headYaw=POSE, jawOpen=0.5),
    "yaw -": _row(headYaw=-POSE, jawOpen=0.5),
    "pitch +": _row(headPitch=POSE, jawOpen=0.5),
    "pitch -": _row(headPitch=-POSE, jawOpen=0.5),
    "roll +": _row(headRoll=POSE, jawOpen=0.5),
    "roll -": _row(headRoll=-POSE, jawOpen=0.5),
    "combined": _row(headYaw=0.2, headPitch=-0.15, headRoll=0.1, headTx=0.1, headTy=-0.05, headScale=0.08,
                     jawOpen=0.8, mouthSmileLeft=0.6, mouthFunnel=0.3, eyeBlinkRight=0.7, browInnerUp=0.5),
}


@dataclass
class ParityRow:
    name: str
    mad: float  # whole frame, 1/255 units
    mouth_mad: float  # mouth compositor box, 1/255 units
    max_abs: int  # largest single-channel difference, in levels

    def __str__(self) -> str:
        return f"{self.name:12s} frame MAD {self.mad:.5f}/255  mouth MAD {self.mouth_mad:.5f}/255  max {self.max_abs}"


def mouth_box(renderer, motion: np.ndarray) -> tuple[int, int, int, int]:
    """The CPU compositor's box (x0, y0, x1, y1) for one motion row (engine.render.Renderer)."""
    rig = renderer.rig
    positions = rig.vertices[:, :2] + renderer.vertex_displacement(clip_frames(motion))
    opening = np.concatenate([positions[rig.mouth.upper_inner], positions[rig.mouth.lower_inner]])
    height, width = rig.image.shape[:2]
    x0, y0 = np.maximum(np.floor(opening.min(0)).astype(int) - 3, 0)
    x1, y1 = np.minimum(np.ceil(opening.max(0)).astype(int) + 3, [width, height])
    return int(x0), int(y0), int(x1), int(y1)


def compare(reference, frames: np.ndarray, motion: np.ndarray, names: list[str]) -> list[ParityRow]:
    """``reference``: an engine.render.Renderer; ``frames`` (B, H, W, 3) rendered from ``motion``."""
    rows = []
    for name, row, frame in zip(names, motion, frames):
        expected = reference.render(row).astype(np.int16)
        diff = np.abs(expected - frame.astype(np.int16))
        x0, y0, x1, y1 = mouth_box(reference, row)
        rows.append(ParityRow(name, float(diff.mean()), float(diff[y0:y1, x0:x1].mean()), int(diff.max())))
    return rows


def sweep_parity(reference, render_batch) -> list[ParityRow]:
    """Render :data:`SWEEP` with ``render_batch`` ((B, C) -> (B, H, W, 3)) and compare."""
    names = list(SWEEP)
    motion = np.stack([SWEEP[name] for name in names])
    return compare(reference, render_batch(motion), motion, names)
