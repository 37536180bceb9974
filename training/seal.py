"""Training and calibration of the lip-seal detector (:mod:`emolive.engine.motion.seal`).

The detector sees exactly the motion model's audio window (``WindowSampler``: the 8 frames
before the hop frame, the hop frame and its 1-frame lookahead, normalised per band as a stream
is) and learns whether the hop frame lies in a bilabial (m, b, p; the labelled phone under at
least half of its four mel frames). Closures are a few per cent of frames; each batch draws
them as a quarter of its windows, so the rare class is learnt as well as the common one.

Its threshold is calibrated like the diffusion model's seal bias, on training voices saying
unseen sentences (never on the held-out or real recordings): the lowest threshold at which the
detector adds at most ``max_added_false`` (1.5 %) of clearly open frames shut to what the motion
model alone shuts. (A missed bilabial is the most visible lip-sync error; a one-frame extra
closure beside a consonant rarely shows.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from emolive.engine.audio import MELS_PER_FRAME, log_mel, video_frame_features
from emolive.engine.motion.seal import SealDetector, SealDetectorConfig
from emolive.training.dataset import WindowSampler
from emolive.training.tts import Phone
from emolive.training.visemes import BILABIALS, PHONE_CLASSES

if TYPE_CHECKING:
    from emolive.engine.motion.diffusion import DiffusionMotion

BILABIAL_CLASSES = np.array([PHONE_CLASSES.index(s) for s in sorted(BILABIALS) if s in PHONE_CLASSES])
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SealTrainConfig:
    steps: int = 6000
    batch: int = 256
    closure_share: float = 0.25
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    detector: SealDetectorConfig = field(default_factory=SealDetectorConfig)


@dataclass
class SealHistory:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def closure_labels(sampler: WindowSampler) -> np.ndarray:
    """(windows,) bool: the hop frame of each of ``sampler``'s windows lies in a bilabial."""
    hop_phones = sampler.phones[sampler.starts]  # (windows, 4) class of each mel frame
    return np.isin(hop_phones, BILABIAL_CLASSES).sum(axis=1) * 2 >= MELS_PER_FRAME


def train_detector(sampler: WindowSampler, cfg: SealTrainConfig,
                   log: Callable[[str], None] = print) -> tuple[SealDetector, SealHistory]:
    """A detector trained on ``sampler``'s windows (whose model config must match its window)."""
    dcfg = cfg.detector
    if (sampler.cfg.audio_past, sampler.cfg.lookahead, sampler.cfg.hop_frames) != (dcfg.audio_past, dcfg.lookahead, 1):
        raise ValueError("the lip-seal detector trains on one-frame hops with its own audio window")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    detector = SealDetector(dcfg)
    opt = torch.optim.AdamW(detector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    labels = closure_labels(sampler)
    closed, open_ = np.flatnonzero(labels), np.flatnonzero(~labels)
    n_closed = max(1, round(cfg.batch * cfg.closure_share)) if len(closed) else 0
    log(f"seal detector: {len(closed)} closure windows of {len(labels)}")
    hist = SealHistory()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        pick = np.concatenate([rng.choice(closed, n_closed), rng.choice(open_, cfg.batch - n_closed)])
        t = sampler.starts[pick]
        audio = sampler.features[t[:, None] + sampler.audio_offsets].astype(np.float32)
        if sampler.norm is not None:
            audio += sampler.norm[t][:, None, None, :]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            detector(torch.from_numpy(audio)), torch.from_numpy(labels[pick].astype(np.float32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.losses.append(float(loss.detach()))
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps:
            log(f"seal detector step {step + 1}/{cfg.steps} loss {np.mean(hist.losses[-100:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    hist.seconds = time.perf_counter() - t0
    detector.eval()
    for p in detector.parameters():
        p.requires_grad_(False)
    return detector, hist


def calibrate_threshold(model: DiffusionMotion, detector: SealDetector,
                        clips: Sequence[tuple[np.ndarray, list[Phone], str]], max_added_false: float = 0.015,
                        seed: int = 0) -> list[tuple[float | None, float, float]]:
    """Set ``detector.threshold``: the lowest of :data:`THRESHOLDS` at which ``model`` with the
    detector shuts at most ``max_added_false`` more of the clearly open frames of ``clips`` than
    ``model`` alone (the highest threshold if none does). Returns (threshold, closure recall,
    false-closure rate) for the model alone (threshold None) and each threshold tried."""
    from emolive.training.evaluate import closure_scores

    features = [video_frame_features(log_mel(audio)) for audio, _, _ in clips]
    alone = model.new_stream()
    alone.seal_detector = None
    table: list[tuple[float | None, float, float]] = [(None, *closure_scores(alone, features, clips, seed))]
    with_detector = model.new_stream()
    with_detector.seal_detector = detector
    for threshold in THRESHOLDS:
        detector.threshold = threshold
        table.append((threshold, *closure_scores(with_detector, features, clips, seed)))
        if table[-1][2] <= table[0][2] + max_added_false:
            break
    detector.threshold = table[-1][0]
    return table
