"""The lip-seal detector: does the hop frame fall in a bilabial closure (m, b, p)?

The diffusion model learns the lips from synthetic speech, where most closures (espeak-ng's
formant voices) sound like near-silence. On recorded voices an /m/ is a loud nasal murmur, and
the v8 student left the lips open on half of them (the msu_ru_nsh recordings: 26 of 54). A
small classifier asked only this one question, trained on the same corpus with closures drawn
as often as open frames, hears them (51 of 54; docs/model.md). :class:`~emolive.engine.motion.diffusion.DiffusionMotion`
runs it on the audio window the denoiser sees (same frames, same per-band normalisation)
and seals the lips of a frame where it is sure.

It is small (about 0.3 M parameters) and runs once per hop, batched across streams, in ONNX
Runtime on one CPU thread whatever the denoiser's backend (exported from the weights in memory
when they load; torch's own conv kernels cost a live session several times more).
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emolive.engine.audio import MELS_PER_FRAME, N_MELS

FORMAT = "emolive-seal-detector-1"
WEIGHTS_NAME = "seal.safetensors"


@dataclass(frozen=True)
class SealDetectorConfig:
    """The detector's window (video frames around the hop frame) and width."""

    audio_past: int = 8
    lookahead: int = 1
    channels: int = 128

    @property
    def audio_frames(self) -> int:
        return self.audio_past + 1 + self.lookahead


class SealDetector(nn.Module):
    """Log-mel window ``(B, A, 4, 80)`` -> logit ``(B,)`` that the hop frame's lips are sealed.

    Two k=3 convs at the mel rate, a stride-4 conv to the video-frame rate, and an MLP over
    the whole window: place of articulation is in the formant transitions on both sides of
    the closure, not in the closure frames alone."""

    def __init__(self, cfg: SealDetectorConfig, threshold: float = 0.5) -> None:
        super().__init__()
        self.cfg = cfg
        self.threshold = threshold
        c = cfg.channels
        self.conv = nn.Sequential(
            nn.Conv1d(N_MELS, c, 3, padding=1), nn.GELU(),
            nn.Conv1d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv1d(c, c, MELS_PER_FRAME, stride=MELS_PER_FRAME), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * cfg.audio_frames, c), nn.GELU(), nn.Linear(c, 1))
        self._session = None  # ONNX Runtime session of the frozen weights (freeze())
        self._lock = threading.Lock()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mels = audio.reshape(audio.shape[0], -1, N_MELS).transpose(1, 2)
        return self.head(self.conv(mels)).squeeze(-1)

    def freeze(self) -> SealDetector:
        """Run inference in ONNX Runtime (one thread) from now on; the weights must not change after."""
        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(2, self.cfg.audio_frames, MELS_PER_FRAME, N_MELS)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(self.eval(), (example,), buffer, dynamo=False, opset_version=17, input_names=["audio"],
                              output_names=["logit"], dynamic_axes={"audio": {0: "batch"}, "logit": {0: "batch"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        return self

    def probability(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` probability that each window's hop frame is sealed (inference, no grad)."""
        audio = np.ascontiguousarray(audio, np.float32)
        if self._session is not None:
            logit = self._session.run(None, {"audio": audio})[0]
            return 1.0 / (1.0 + np.exp(-logit))
        with self._lock, torch.inference_mode():
            return torch.sigmoid(self(torch.from_numpy(audio))).numpy()

    def sealed(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` bool: the detector is surer than its calibrated threshold."""
        return self.probability(audio) > self.threshold


def save_detector(detector: SealDetector, path: str | Path, extra: dict | None = None) -> None:
    """Weights, config and calibrated threshold as one safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in detector.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(detector.cfg)), "threshold": repr(float(detector.threshold))}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_detector(path: str | Path) -> SealDetector:
    """The detector (frozen: ONNX Runtime inference) from a file written by :func:`save_detector`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a lip-seal detector ({meta.get('format')!r})")
    detector = SealDetector(SealDetectorConfig(**json.loads(meta["config"])), float(meta["threshold"]))
    detector.load_state_dict(load_file(str(path)))
    detector.eval()
    for p in detector.parameters():
        p.requires_grad_(False)
    return detector.freeze()
