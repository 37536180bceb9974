"""The motion space: the contract between motion models, the renderer and clients.

One :class:`MotionTrack` row per video frame, float32, channels in the fixed order of
:data:`CHANNELS`. Head pose first (radians; translation as a fraction of face width; log
scale), then blendshapes in [0, 1] named as Apple's ARKit names them, so the same stream
can drive a 3D rig (VRM, Unity, Unreal Live Link) as well as emolive's 2D renderer.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emolive.engine.formats import FPS

HEAD_POSE: tuple[str, ...] = ("headPitch", "headYaw", "headRoll", "headTx", "headTy", "headScale")

BLENDSHAPES: tuple[str, ...] = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeWideLeft",
    "eyeWideRight",
    "browInnerUp",
    "browDownLeft",
    "browDownRight",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekSquintLeft",
    "cheekSquintRight",
)

CHANNELS: tuple[str, ...] = HEAD_POSE + BLENDSHAPES
NUM_CHANNELS = len(CHANNELS)
INDEX: dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}
HEAD_SLICE = slice(0, len(HEAD_POSE))
BLEND_SLICE = slice(len(HEAD_POSE), NUM_CHANNELS)
# A lip gap (jawOpen × (1 − mouthClose)) under this is shut lips: the lip readers keep the model's
# closures, and the lip-sync evaluation counts a bilabial closed.
SHUT_LIP_GAP = 0.05

# The renderer's geometry (engine.rig): how far each lip shape at 1 parts the lips, in units of
# the jaw's drop at jawOpen 1; rolled lips cover part of the jaw's gap.
LIP_PARTING = {"mouthUpperUp": 0.055 / 0.42, "mouthLowerDown": 0.065 / 0.42, "mouthFunnel": 0.11 / 0.42}
LIP_ROLL_COVER = 0.3
# The lips part fully from this jaw gap on; below it, in proportion (a quarter with the jaw shut).
LIP_PARTING_FULL_GAP = 0.1875
# The columns of each lip shape (the sided ones: left and right, which part the lips by their mean).
_LIP_COLUMNS = {name: [INDEX[name]] if name in INDEX else [INDEX[name + "Left"], INDEX[name + "Right"]]
                for name in LIP_PARTING}


def jaw_gap(frames: np.ndarray) -> np.ndarray:
    """``jawOpen × (1 − mouthClose)`` of motion rows: how far the jaw parts the lips, in jawOpen
    units (the lip gap a motion model means, which its frames show once: :func:`show_gap_once`)."""
    f = np.asarray(frames, np.float64)
    return f[..., INDEX["jawOpen"]] * (1.0 - np.clip(f[..., INDEX["mouthClose"]], 0.0, 1.0))


def _lip_terms(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(jaw gap, what the lip shapes part, share of the jaw's gap rolled lips cover) of motion rows."""
    f = np.asarray(frames, np.float64)
    lips = sum(k * f[..., _LIP_COLUMNS[name]].mean(axis=-1) for name, k in LIP_PARTING.items())
    roll = LIP_ROLL_COVER * (f[..., INDEX["mouthRollLower"]] + f[..., INDEX["mouthRollUpper"]])
    return jaw_gap(f), lips, roll


def mouth_gap(frames: np.ndarray) -> np.ndarray:
    """Lip gap of motion rows, in units of a fully open jaw: what a viewer sees of the mouth opening.

    ``jawOpen`` sealed by ``mouthClose`` (the renderer seals mouthClose × jawOpen, as ARKit) plus
    what the lips themselves part (upper lip raised, lower lip lowered, funnel), less what rolled
    lips cover.
    """
    jaw, lips, roll = _lip_terms(frames)
    return np.maximum(0.0, jaw + lips * np.minimum(1.0, jaw / LIP_PARTING_FULL_GAP * 0.75 + 0.25) - roll * jaw)


def show_gap_once(frames: np.ndarray) -> np.ndarray:
    """Motion rows whose :func:`mouth_gap` is their jaw gap (``jawOpen × (1 − mouthClose)``): the
    jaw opened less by what the lip shapes part, and where even a shut jaw would show more, the
    lip shapes parting less. A model whose jaw follows how open a sound is, with lip shapes on
    top, would otherwise show the mouth opening twice over (a copy, float32)."""
    out = np.array(frames, dtype=np.float32, copy=True)
    gap, lips, roll = _lip_terms(out)
    wide = (gap - lips) / (1.0 - roll)  # the jaw gap if the lips part fully
    narrow = (gap - 0.25 * lips) / (1.0 - roll + 0.75 / LIP_PARTING_FULL_GAP * lips)
    wanted_jaw_gap = np.where(wide >= LIP_PARTING_FULL_GAP, wide, np.maximum(narrow, 0.0))
    lip_scale = np.where(gap < 0.25 * lips, gap / np.maximum(0.25 * lips, 1e-9), 1.0)
    for columns in _LIP_COLUMNS.values():
        out[..., columns] *= lip_scale[..., None].astype(np.float32)
    jaw = out[..., INDEX["jawOpen"]]
    out[..., INDEX["jawOpen"]] = np.minimum(np.where(gap > 1e-6, jaw * wanted_jaw_gap / np.maximum(gap, 1e-9), jaw), 1.0)
    return out


# Hard limits every producer is clipped to before rendering: ±0.35 rad (20°) of rotation,
# ±0.15 face widths of translation, ±0.1 log scale; blendshapes in [0, 1].
HEAD_LIMITS = np.array([0.35, 0.35, 0.35, 0.15, 0.15, 0.1], dtype=np.float32)


def rest_frame() -> np.ndarray:
    """The neutral pose: head centred, every blendshape at 0."""
    return np.zeros(NUM_CHANNELS, dtype=np.float32)


def clip_frames(frames: np.ndarray) -> np.ndarray:
    """Clip rows of motion to the valid range of each channel (a copy, float32)."""
    out = np.array(frames, dtype=np.float32, copy=True)
    out[..., HEAD_SLICE] = np.clip(out[..., HEAD_SLICE], -HEAD_LIMITS, HEAD_LIMITS)
    out[..., BLEND_SLICE] = np.clip(out[..., BLEND_SLICE], 0.0, 1.0)
    return out


@dataclass
class MotionTrack:
    """A sequence of motion frames at ``fps`` frames per second, starting at time 0."""

    frames: np.ndarray  # (T, NUM_CHANNELS) float32
    fps: float = FPS

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames, dtype=np.float32)
        if self.frames.ndim != 2 or self.frames.shape[1] != NUM_CHANNELS:
            raise ValueError(f"motion frames must be (T, {NUM_CHANNELS}), got {self.frames.shape}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.frames), dtype=np.float64) / self.fps

    def channel(self, name: str) -> np.ndarray:
        return self.frames[:, INDEX[name]]

    def resampled(self, fps: float) -> "MotionTrack":
        """The same motion at another frame rate, linearly interpolated per channel."""
        if fps == self.fps:
            return self
        duration = len(self.frames) / self.fps
        count = max(1, int(round(duration * fps)))
        new_times = np.arange(count) / fps
        columns = [np.interp(new_times, self.times, self.frames[:, c]) for c in range(NUM_CHANNELS)]
        return MotionTrack(np.stack(columns, axis=1), fps)

    def save(self, path: str | Path) -> None:
        """Write as CSV (``time`` then one column per channel) or JSON, chosen by extension."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            payload = {
                "fps": self.fps,
                "channels": list(CHANNELS),
                "frames": [
                    {"time": round(float(t), 4), **{n: round(float(v), 5) for n, v in zip(CHANNELS, row)}}
                    for t, row in zip(self.times, self.frames)
                ],
            }
            path.write_text(json.dumps(payload, indent=None, separators=(",", ":")))
        elif path.suffix.lower() == ".csv":
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(("time",) + CHANNELS)
                for t, row in zip(self.times, self.frames):
                    writer.writerow([f"{t:.4f}"] + [f"{v:.5f}" for v in row])
        else:
            raise ValueError(f"{path}: motion output must end in .csv or .json")

    @classmethod
    def load(cls, path: str | Path) -> "MotionTrack":
        path = Path(path)
        if path.suffix.lower() == ".json":
            payload = json.loads(path.read_text())
            rows = [[frame[name] for name in CHANNELS] for frame in payload["frames"]]
            return cls(np.array(rows, dtype=np.float32), payload["fps"])
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            records = list(reader)
        rows = [[float(record[name]) for name in CHANNELS] for record in records]
        fps = 1.0 / (float(records[1]["time"]) - float(records[0]["time"])) if len(records) > 1 else FPS
        return cls(np.array(rows, dtype=np.float32).reshape(-1, NUM_CHANNELS), round(fps, 3))


@dataclass(frozen=True)
class MotionControls:
    """User controls every motion model honours."""

    head_motion: float = 1.0  # 0 still … 1 default … 2 lively
    expressiveness: float = 1.0  # scales brows, cheeks, smiles; lips stay pinned to audio
    seed: int = 0
