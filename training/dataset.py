"""Training windows from a corpus: what the streaming model sees at one hop, sampled at random.

For a hop starting at frame ``t`` of a clip: the audio features of frames ``t - audio_past ..
t + H + L - 1`` (digital silence outside the clip), the ``K`` target frames before ``t`` (rest
frames before the clip: a stream starts with a buffer of rest frames), the ``H`` target frames
of the hop, and the clip's controls. A share of windows are "hop of 1" windows whose last audio
frame is marked missing (what a stream cut in odd chunks sees). With ``cfg.feature_norm``, each
window is normalised per band exactly as a stream would be at that hop (:mod:`emolive.engine.motion.featnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emolive.engine.audio import MELS_PER_FRAME, SILENCE_FEATURE
from emolive.engine.motion.diffusion import BLINK_INDEX, blink_clock, frames_since_blink_onset
from emolive.engine.motion.dit import DiTConfig
from emolive.engine.motion.featnorm import SILENT_MARGIN
from emolive.engine.motion.featnorm import offsets as band_offsets
from emolive.training.corpus import Corpus
from emolive.training.visemes import phone_classes


@dataclass
class Batch:
    audio: torch.Tensor  # (B, A, 4, 80)
    past: torch.Tensor  # (B, K, C) normalised
    target: torch.Tensor  # (B, H, C) normalised
    controls: torch.Tensor  # (B, 4): head_motion, speed, expressiveness, blink clock
    missing: torch.Tensor  # (B, A) bool
    hop_len: torch.Tensor  # (B,) 1 or 2
    phones: torch.Tensor | None = None  # (B, A, 4) PHONE_CLASSES index per mel frame, -1 where audio is missing


class WindowSampler:
    """Random windows over all clips of a corpus (frames uniformly)."""

    def __init__(self, corpus: Corpus, cfg: DiTConfig, mean: np.ndarray, std: np.ndarray, seed: int) -> None:
        self.cfg = cfg
        self.audio_prior = feature_prior(corpus.features) if cfg.feature_norm else None
        pre = max(cfg.past_frames, cfg.audio_past)
        post = cfg.hop_frames + cfg.lookahead
        feats, targs, starts, clip_of, clocks, labels, norm = [], [], [], [], [], [], []
        pos = 0
        rest = ((0.0 - mean) / std).astype(np.float32)
        offsets = corpus.offsets
        for i, n in enumerate(corpus.lengths):
            a, b = offsets[i], offsets[i + 1]
            feats.append(np.full((pre, 4, 80), SILENCE_FEATURE, np.float16))
            feats.append(corpus.features[a:b])
            feats.append(np.full((post, 4, 80), SILENCE_FEATURE, np.float16))
            if self.audio_prior is not None:  # a stream that starts `pre` frames before the clip
                norm.append(band_offsets(np.concatenate(feats[-3:]).astype(np.float32), self.audio_prior))
            labels.append(np.zeros((pre, MELS_PER_FRAME), np.int16))
            labels.append(phone_classes(corpus.phones[i], int(n) * MELS_PER_FRAME).reshape(int(n), MELS_PER_FRAME))
            labels.append(np.zeros((post, MELS_PER_FRAME), np.int16))
            t = ((corpus.targets[a:b] - mean) / std).astype(np.float32)
            targs.append(np.tile(rest, (pre, 1)))
            targs.append(t)
            targs.append(np.tile(rest, (post, 1)))
            since = frames_since_blink_onset(corpus.targets[a:b, BLINK_INDEX])
            clocks.append(np.concatenate([np.ones(pre), blink_clock(since), np.ones(post)]).astype(np.float32))
            first = pos + pre
            n_starts = max(1, int(n) - cfg.hop_frames + 1)
            starts.append(first + np.arange(n_starts))
            clip_of.append(np.full(n_starts, i))
            pos += pre + int(n) + post
        self.features = np.concatenate(feats)
        self.norm = np.concatenate(norm) if norm else None  # (N, 80): each hop start's offset
        self.phones = np.concatenate(labels)
        self.targets = np.concatenate(targs)
        self.clock = np.concatenate(clocks)
        self.starts = np.concatenate(starts)
        self.clip_of = np.concatenate(clip_of)
        self.controls = corpus.controls.astype(np.float32)
        self.rng = np.random.default_rng(seed)
        self.audio_offsets = np.arange(-cfg.audio_past, cfg.hop_frames + cfg.lookahead)
        self.past_offsets = np.arange(-cfg.past_frames, 0)
        self.hop_offsets = np.arange(cfg.hop_frames)

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, batch: int, hop1_share: float = 0.2) -> Batch:
        cfg = self.cfg
        pick = self.rng.integers(0, len(self.starts), batch)
        t = self.starts[pick]
        audio = self.features[t[:, None] + self.audio_offsets].astype(np.float32)
        past = self.targets[t[:, None] + self.past_offsets]
        target = self.targets[t[:, None] + self.hop_offsets]
        controls = np.concatenate([self.controls[self.clip_of[pick]], self.clock[t][:, None]], axis=1)
        # With one-frame hops there is no shorter hop: the last frame is lookahead, never missing.
        hop1 = (self.rng.random(batch) < hop1_share) & (cfg.hop_frames > 1)
        missing = np.zeros((batch, cfg.audio_frames), bool)
        missing[hop1, -1] = True
        audio[hop1, -1] = SILENCE_FEATURE
        if self.norm is not None:
            audio += self.norm[t][:, None, None, :]
        phones = self.phones[t[:, None] + self.audio_offsets].astype(np.int64)
        phones[missing] = -1
        return Batch(
            torch.from_numpy(audio), torch.from_numpy(past), torch.from_numpy(target),
            torch.from_numpy(controls), torch.from_numpy(missing),
            torch.from_numpy(np.where(hop1, 1, cfg.hop_frames)), torch.from_numpy(phones),
        )


def feature_prior(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Mean log-mel per band over the frames that are not digital silence: (80,) float32."""
    total, count = np.zeros(features.shape[-1]), 0
    for begin in range(0, len(features), chunk):
        frames = np.asarray(features[begin : begin + chunk], np.float32)
        keep = frames.max(axis=(1, 2)) >= SILENCE_FEATURE + SILENT_MARGIN
        total += frames[keep].sum(axis=(0, 1), dtype=np.float64)
        count += int(keep.sum()) * frames.shape[1]
    return (total / max(1, count)).astype(np.float32)


def channel_stats(targets: np.ndarray, floor: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the targets (std floored: constant channels stay finite)."""
    mean = targets.mean(axis=0).astype(np.float32)
    std = np.maximum(targets.std(axis=0), floor).astype(np.float32)
    return mean, std
