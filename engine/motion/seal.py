"""The lip-seal detector: does the hop frame fall in a bilabial closure (m, b, p)?

The diffusion model learns the lips from synthetic speech, where most closures (espeak-ng's
formant voices) sound like near-silence. On recorded voices an /m/ is a loud nasal murmur, and
the v8 student left the lips open on half of them (the msu_ru_nsh recordings: 26 of 54). A
small classifier of the denoiser's audio window (:mod:`~emolive.engine.motion.windownet`)
asked only this one question, trained on the same corpus with closures drawn as often as open
frames, hears them (51 of 54; docs/model.md). :class:`~emolive.engine.motion.diffusion.DiffusionMotion`
seals the lips of a frame where the detector is surer than its calibrated ``threshold`` and
the frame's lips are already within ``gap_gate`` of shut: most of its false closures fall in
frames the mouth holds wide open, and those are the ones a viewer sees.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emolive.engine.motion.windownet import AudioWindowConfig, AudioWindowNet, frozen, read_window_net, save_window_net

FORMAT = "emolive-seal-detector-1"
WEIGHTS_NAME = "seal.safetensors"


class SealDetector(AudioWindowNet):
    """Audio window ``(B, A, 4, 80)`` -> logit ``(B,)`` that the hop frame's lips are sealed."""

    def __init__(self, cfg: AudioWindowConfig, threshold: float = 0.5, gap_gate: float = math.inf) -> None:
        super().__init__(cfg)
        self.threshold = threshold
        self.gap_gate = gap_gate

    def probability(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` probability that each window's hop frame is sealed."""
        return 1.0 / (1.0 + np.exp(-self.infer(audio)))

    def sealed(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` bool: the detector is surer than its calibrated threshold."""
        return self.probability(audio) > self.threshold


def save_detector(detector: SealDetector, path: str | Path, extra: dict | None = None) -> None:
    """Weights, config, calibrated threshold and lip-gap gate as one safetensors file."""
    save_window_net(detector, path, FORMAT, {"threshold": repr(float(detector.threshold)),
                                             "gap_gate": repr(float(detector.gap_gate))}, extra)


def load_detector(path: str | Path) -> SealDetector:
    """The detector (frozen: ONNX Runtime inference) from a file written by :func:`save_detector`."""
    cfg, state, meta = read_window_net(path, FORMAT, "lip-seal detector")
    detector = SealDetector(cfg, float(meta["threshold"]), float(meta.get("gap_gate", "inf")))
    return frozen(detector, state)
