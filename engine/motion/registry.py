"""Motion models by name, as the CLI and the server choose them.

A model spec is a name, optionally with a sampling step count: ``student`` (the distilled
diffusion model, 2 steps), ``student:1``, ``teacher`` (24 steps), ``teacher:8``, or
``baseline`` (the hand-built reference, no steps). Offline work (``emolive render``,
``emolive motion``) and live sessions (:data:`LIVE_MOTION_MODEL`) default to the student,
which lip-syncs far better (see engine/motion/weights/MODEL_CARD.md).
The diffusion models' denoiser runs on a backend (:mod:`emolive.engine.motion.backends`), ONNX
Runtime by default; ``baseline`` has no denoiser and ignores it.
"""

from __future__ import annotations

from emolive.engine.motion import MotionModel
from emolive.engine.motion.backends import DEFAULT_BACKEND, check_backend
from emolive.engine.motion.baseline import BaselineMotion

MOTION_MODELS: tuple[str, ...] = ("student", "teacher", "baseline")
DEFAULT_MOTION_MODEL = "student"
# Live sessions that name no model: the student steps one frame per tick with one frame
# (40 ms) of lookahead, the baseline's, so audio arrival -> frame stays where the baseline's
# is; "baseline" remains for the lowest CPU (no denoiser call per frame).
LIVE_MOTION_MODEL = "student"
DIFFUSION_MODELS = frozenset({"student", "teacher"})
MAX_STEPS = 64


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"student:4"`` -> ("student", 4); ``"teacher"`` -> ("teacher", None)."""
    name, _, steps = spec.partition(":")
    if name not in MOTION_MODELS:
        raise ValueError(f"unknown motion model {name!r}; choose one of {', '.join(MOTION_MODELS)}")
    if not steps:
        return name, None
    if name not in DIFFUSION_MODELS:
        raise ValueError(f"motion model {name!r} takes no sampling steps")
    if not steps.isdigit() or not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"sampling steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    return name, int(steps)


def create_motion_model(spec: str, backend: str = DEFAULT_BACKEND) -> MotionModel:
    """A fresh model instance (models hold per-stream state: one per stream); weights and the
    denoiser are shared. Raises ValueError for a bad spec or backend name and
    :class:`emolive.engine.motion.backends.BackendUnavailable` when the backend cannot run here."""
    name, steps = parse_spec(spec)
    check_backend(backend)
    if name == "baseline":
        return BaselineMotion()
    from emolive.engine.motion.diffusion import DiffusionMotion, default_weights

    return DiffusionMotion.from_file(default_weights(name), steps=steps, name=name, backend=backend)
