"""Training of the lip-seal detector (:mod:`emolive.engine.motion.seal`).

The detector sees exactly the motion model's audio window (``WindowSampler``: the 8 frames
before the hop frame, the hop frame and its 1-frame lookahead, normalised per band as a stream
is) and learns whether the hop frame lies in a bilabial (m, b, p; the labelled phone under at
least half of its four mel frames). Closures are a few per cent of frames; each batch draws
them as a quarter of its windows, so the rare class is learnt as well as the common one.

Its threshold and lip-gap gate are calibrated with the lip-gap regressor's blend
(:mod:`emolive.training.lipreaders`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from emolive.engine.audio import MELS_PER_FRAME
from emolive.engine.motion.seal import SealDetector
from emolive.engine.motion.windownet import AudioWindowConfig
from emolive.training.dataset import WindowSampler
from emolive.training.visemes import BILABIALS, PHONE_CLASSES
from emolive.training.windownet import TrainHistory, WindowNetTrainConfig, fit

BILABIAL_CLASSES = np.array([PHONE_CLASSES.index(s) for s in sorted(BILABIALS) if s in PHONE_CLASSES])


@dataclass
class SealTrainConfig(WindowNetTrainConfig):
    closure_share: float = 0.25
    detector: AudioWindowConfig = field(default_factory=AudioWindowConfig)


def closure_labels(sampler: WindowSampler) -> np.ndarray:
    """(windows,) bool: the hop frame of each of ``sampler``'s windows lies in a bilabial."""
    hop_phones = sampler.phones[sampler.starts]  # (windows, 4) class of each mel frame
    return np.isin(hop_phones, BILABIAL_CLASSES).sum(axis=1) * 2 >= MELS_PER_FRAME


def train_detector(sampler: WindowSampler, cfg: SealTrainConfig,
                   log: Callable[[str], None] = print) -> tuple[SealDetector, TrainHistory]:
    """A detector trained on ``sampler``'s windows (whose model config must match its window)."""
    labels = closure_labels(sampler)
    closed, open_ = np.flatnonzero(labels), np.flatnonzero(~labels)
    n_closed = max(1, round(cfg.batch * cfg.closure_share)) if len(closed) else 0
    log(f"seal detector: {len(closed)} closure windows of {len(labels)}")

    def draw(rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([rng.choice(closed, n_closed), rng.choice(open_, cfg.batch - n_closed)])

    def loss_of(logits: torch.Tensor, pick: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels[pick].astype(np.float32)))

    return fit(lambda: SealDetector(cfg.detector), sampler, cfg, draw, loss_of, "seal detector", log)
