"""The lip-gap regressor: how far apart are the hop frame's lips?

A second reading of the mouth, from the same audio window the denoiser sees
(:mod:`~emolive.engine.motion.windownet`), trained with squared error on the training
targets' lip gap (``jawOpen × (1 − mouthClose)``). Alone it follows the phones about as well
as the diffusion model; its errors are not the model's, so the mean of the two follows them
better than either, on recorded speech as on synthetic (docs/model.md).
:class:`~emolive.engine.motion.diffusion.DiffusionMotion` moves each frame's jaw ``blend`` of
the way from the model's own opening to the regressor's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emolive.engine.motion.windownet import AudioWindowConfig, AudioWindowNet, frozen, read_window_net, save_window_net

FORMAT = "emolive-lip-gap-1"
WEIGHTS_NAME = "lipgap.safetensors"


class LipGapRegressor(AudioWindowNet):
    """Audio window ``(B, A, 4, 80)`` -> the hop frame's lip gap ``(B,)`` in jawOpen units."""

    def __init__(self, cfg: AudioWindowConfig, blend: float = 0.5) -> None:
        super().__init__(cfg)
        self.blend = blend

    def gap(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` lip gap of each window's hop frame, at least 0."""
        return np.maximum(self.infer(audio), 0.0)


def save_regressor(regressor: LipGapRegressor, path: str | Path, extra: dict | None = None) -> None:
    """Weights, config and calibrated blend as one safetensors file."""
    save_window_net(regressor, path, FORMAT, {"blend": repr(float(regressor.blend))}, extra)


def load_regressor(path: str | Path) -> LipGapRegressor:
    """The regressor (frozen: ONNX Runtime inference) from a file written by :func:`save_regressor`."""
    cfg, state, meta = read_window_net(path, FORMAT, "lip-gap regressor")
    return frozen(LipGapRegressor(cfg, float(meta["blend"])), state)
