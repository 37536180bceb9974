"""Training of the lip-gap regressor (:mod:`emolive.engine.motion.lipgap`).

The regressor sees exactly the motion model's audio window (``WindowSampler``) and learns,
with squared error, the lip gap (``jawOpen × (1 − mouthClose)``) of the training targets at
the hop frame, over windows drawn uniformly.

Its blend (how far each frame's lip gap moves from the motion model's to the regressor's) is
calibrated with the lip-seal detector's settings (:mod:`emolive.training.lipreaders`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from emolive.engine.motion.lipgap import LipGapRegressor
from emolive.engine.motion.windownet import AudioWindowConfig
from emolive.training.dataset import WindowSampler
from emolive.training.windownet import TrainHistory, WindowNetTrainConfig, fit


@dataclass
class LipGapTrainConfig(WindowNetTrainConfig):
    regressor: AudioWindowConfig = field(default_factory=AudioWindowConfig)


def lip_gap_targets(sampler: WindowSampler, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(windows,) the training targets' lip gap at the hop frame of each of ``sampler``'s windows
    (``mean``/``std``: the motion normalisation the sampler's targets are in)."""
    from emolive.engine.motion_space import jaw_gap

    return jaw_gap(sampler.targets[sampler.starts] * std + mean).astype(np.float32)


def train_regressor(sampler: WindowSampler, mean: np.ndarray, std: np.ndarray, cfg: LipGapTrainConfig,
                    log: Callable[[str], None] = print) -> tuple[LipGapRegressor, TrainHistory]:
    """A regressor trained on ``sampler``'s windows (whose model config must match its window)."""
    gaps = lip_gap_targets(sampler, mean, std)

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, len(gaps), cfg.batch)

    def loss_of(outputs: torch.Tensor, pick: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.mse_loss(outputs, torch.from_numpy(gaps[pick]))

    return fit(lambda: LipGapRegressor(cfg.regressor), sampler, cfg, draw, loss_of, "lip-gap regressor", log)
