"""A small network of the motion model's audio window: one number per window.

The lip readers that check the diffusion model's mouth (:mod:`~emolive.engine.motion.seal`,
:mod:`~emolive.engine.motion.lipgap`) read exactly the window the denoiser reads: the 8 video
frames before the hop frame, the hop frame and its 1-frame lookahead, normalised per band as
a stream is. Two k=3 convs at the mel rate, a stride-4 conv to the video-frame rate, and an
MLP over the whole window: what the lips do is in the transitions on both sides of a frame,
not in the frame alone.

They are small (about 0.3 M parameters) and run once per hop, batched across streams, in ONNX
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


@dataclass(frozen=True)
class AudioWindowConfig:
    """The window (video frames around the hop frame) and width."""

    audio_past: int = 8
    lookahead: int = 1
    channels: int = 128

    @property
    def audio_frames(self) -> int:
        return self.audio_past + 1 + self.lookahead


class AudioWindowNet(nn.Module):
    """Log-mel window ``(B, A, 4, 80)`` -> ``(B,)``."""

    def __init__(self, cfg: AudioWindowConfig) -> None:
        super().__init__()
        self.cfg = cfg
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

    def freeze(self) -> AudioWindowNet:
        """Run inference in ONNX Runtime (one thread) from now on; the weights must not change after."""
        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(2, self.cfg.audio_frames, MELS_PER_FRAME, N_MELS)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(self.eval(), (example,), buffer, dynamo=False, opset_version=17, input_names=["audio"],
                              output_names=["out"], dynamic_axes={"audio": {0: "batch"}, "out": {0: "batch"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        return self

    def infer(self, audio: np.ndarray) -> np.ndarray:
        """``(B,)`` outputs of a batch of windows (inference, no grad)."""
        audio = np.ascontiguousarray(audio, np.float32)
        if self._session is not None:
            return self._session.run(None, {"audio": audio})[0]
        with self._lock, torch.inference_mode():
            return self(torch.from_numpy(audio)).numpy()


def save_window_net(net: AudioWindowNet, path: str | Path, file_format: str, meta: dict[str, str],
                    extra: dict | None = None) -> None:
    """Weights, config and ``meta`` (its calibrated settings) as one safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    meta = {"format": file_format, "config": json.dumps(asdict(net.cfg)), **meta}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def _metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})


def read_extra(path: str | Path) -> dict:
    """The ``extra`` record (e.g. training seed and steps) a file was saved with, ``{}`` if none."""
    return json.loads(_metadata(path).get("extra", "{}"))


def read_window_net(path: str | Path, file_format: str, what: str) -> tuple[AudioWindowConfig, dict, dict[str, str]]:
    """(config, state dict, metadata) of a file written by :func:`save_window_net` in ``file_format``."""
    from safetensors.torch import load_file

    meta = _metadata(path)
    if meta.get("format") != file_format:
        raise ValueError(f"{path}: not a {what} ({meta.get('format')!r})")
    return AudioWindowConfig(**json.loads(meta["config"])), load_file(str(path)), meta


def frozen(net: AudioWindowNet, state: dict) -> AudioWindowNet:
    """``net`` with ``state`` loaded, gradients off and inference in ONNX Runtime."""
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.freeze()
