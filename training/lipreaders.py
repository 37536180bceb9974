"""Calibration of the lip readers (:mod:`emolive.engine.motion.lipgap`,
:mod:`emolive.engine.motion.seal`) for a motion model, on training voices saying unseen
sentences (never on the held-out or real recordings).

The readers change only the frames a caller gets, never the model's own history, so the
model's tracks are generated once and every setting is tried on them:

1. the regressor's blend: the one of :data:`BLENDS` with the highest openness r;
2. the detector's threshold and lip-gap gate: for each gate of :data:`GAP_GATES`, the lowest
   of :data:`THRESHOLDS` that shuts at most ``max_added_false`` (1.5 %) more of the clearly
   open frames than the model and regressor alone (the highest if none does); of those, the
   one with the highest openness r. A missed bilabial is the most visible lip-sync error, so
   the detector closes all it can within that allowance; the gate spends the allowance where
   the lips are already near shut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emolive.engine.audio import log_mel, video_frame_features
from emolive.engine.motion.diffusion import DiffusionMotion, apply_lips
from emolive.engine.motion.lipgap import LipGapRegressor
from emolive.engine.motion.seal import SealDetector
from emolive.engine.motion_space import show_gap_once
from emolive.training.evaluate import false_closure_rate, generate_tracks, score_track
from emolive.training.tts import Phone

BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
GAP_GATES = (math.inf, 0.3, 0.2)


@dataclass(frozen=True)
class LipSetting:
    blend: float
    threshold: float | None  # None: no detector
    gap_gate: float
    r: float
    recall: float
    false_closures: float


def calibrate_lip_readers(model: DiffusionMotion, detector: SealDetector | None, regressor: LipGapRegressor | None,
                          clips: Sequence[tuple[np.ndarray, list[Phone], str]], max_added_false: float = 0.015,
                          seed: int = 0) -> list[LipSetting]:
    """Set the readers' blend, threshold and gap gate for ``model`` on ``clips`` (16 kHz audio,
    phones, group). Returns every setting tried; the chosen ones are the last of their kind."""
    features = [video_frame_features(log_mel(audio)) for audio, _, _ in clips]
    alone = model.new_stream()
    alone.seal_detector, alone.lip_gap, alone.shows_gap_once = None, None, False
    tracks = generate_tracks(alone, features, seed)
    windows = [alone.audio_windows(f) for f in features]
    gaps = [regressor.gap(w) for w in windows] if regressor is not None else None
    chances = [detector.probability(w) for w in windows] if detector is not None else None

    def score(blend: float, threshold: float | None, gate: float) -> LipSetting:
        rs, hits, total, false = [], 0, 0, []
        for i, (track, (_, phones, group)) in enumerate(zip(tracks, clips)):
            frames = track.copy()
            sealed = chances[i] > threshold if threshold is not None else np.zeros(len(frames), bool)
            apply_lips(frames, sealed, gaps[i] if gaps is not None else None, blend, gate)
            frames = show_gap_once(frames)
            clip_score = score_track(frames, phones, group)
            rs.append(clip_score.r)
            hits, total = hits + clip_score.closures_hit, total + clip_score.closures
            false.append(false_closure_rate(frames, phones))
        return LipSetting(blend, threshold, gate, float(np.mean(rs)), hits / max(1, total), float(np.mean(false)))

    table = [score(blend, None, math.inf) for blend in (BLENDS if regressor is not None else (0.0,))]
    base = max(table, key=lambda s: s.r)
    if regressor is not None:
        regressor.blend = base.blend
    table.append(base)
    if detector is None:
        return table
    chosen = []
    for gate in GAP_GATES:
        for threshold in THRESHOLDS:
            table.append(score(base.blend, threshold, gate))
            if table[-1].false_closures <= base.false_closures + max_added_false:
                break
        chosen.append(table[-1])
    best = max(chosen, key=lambda s: s.r)
    detector.threshold, detector.gap_gate = best.threshold, best.gap_gate
    table.append(best)
    return table
