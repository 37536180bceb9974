"""Training and calibration of the lip-gap regressor (:mod:`emolive.engine.motion.lipgap`).

The regressor sees exactly the motion model's audio window (``WindowSampler``) and learns,
with squared error, the lip gap (``jawOpen × (1 − mouthClose)``) of the training targets at
the hop frame, over windows drawn uniformly.

Its blend (how far each frame's jaw moves from the motion model's opening to the regressor's)
is calibrated on training voices saying unseen sentences (never on the held-out or real
recordings): the one of :data:`BLENDS` whose openness r against the phones is highest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from emolive.engine.audio import log_mel, video_frame_features
from emolive.engine.motion.lipgap import LipGapRegressor
from emolive.engine.motion.windownet import AudioWindowConfig
from emolive.training.dataset import WindowSampler
from emolive.training.tts import Phone
from emolive.training.windownet import TrainHistory, WindowNetTrainConfig, fit

if TYPE_CHECKING:
    from emolive.engine.motion.diffusion import DiffusionMotion

BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class LipGapTrainConfig(WindowNetTrainConfig):
    regressor: AudioWindowConfig = field(default_factory=AudioWindowConfig)


def lip_gap_targets(sampler: WindowSampler, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(windows,) the training targets' lip gap at the hop frame of each of ``sampler``'s windows
    (``mean``/``std``: the motion normalisation the sampler's targets are in)."""
    from emolive.training.evaluate import jaw_gap

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


def calibrate_blend(model: DiffusionMotion, regressor: LipGapRegressor,
                    clips: Sequence[tuple[np.ndarray, list[Phone], str]], seed: int = 0) -> list[tuple[float, float]]:
    """Set ``regressor.blend`` to the one of :data:`BLENDS` that gives ``model`` (without a
    lip-seal detector) the highest openness r on ``clips``; returns (blend, r) for each."""
    from emolive.training.evaluate import lip_scores

    features = [video_frame_features(log_mel(audio)) for audio, _, _ in clips]
    stream = model.new_stream()
    stream.seal_detector = None
    stream.lip_gap = regressor
    table = []
    for blend in BLENDS:
        regressor.blend = blend
        table.append((blend, lip_scores(stream, features, clips, seed)[0]))
    regressor.blend = max(table, key=lambda row: row[1])[0]
    return table
