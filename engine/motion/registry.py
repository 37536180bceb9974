"""Motion models by name, as the CLI and the server choose them."""

from __future__ import annotations

from engine.motion import MotionModel
from engine.motion.baseline import BaselineMotion

MOTION_MODELS: tuple[str, ...] = ("baseline",)
DEFAULT_MOTION_MODEL = "baseline"


def create_motion_model(name: str) -> MotionModel:
    """A fresh model instance (models hold per-stream state: one per stream)."""
    if name == "baseline":
        return BaselineMotion()
    raise ValueError(f"unknown motion model {name!r}; choose one of {', '.join(MOTION_MODELS)}")
