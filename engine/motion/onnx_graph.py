"""Export the motion denoiser (one sampler step of :class:`emolive.engine.motion.dit.MotionDiT`) to ONNX.

The graph computes ``MotionDiT.forward``: the rectified-flow velocity of one hop from its noisy
frames, the diffusion time and the hop's conditioning. It is traced from :class:`GraphDiT`, the
same function written for ONNX Runtime's CPU kernels; the torch module stays the reference and
the parity tests hold the two together. The sampler around it (seeded noise, Euler steps on a
uniform time grid, the rolling buffer, the blink guard) stays in :mod:`emolive.engine.motion.diffusion`,
the same for every runtime.

File: ``denoiser-<kind>-<weights sha256[:12]>-<build key[:12]>.onnx`` beside a JSON sidecar
of the same stem. The build key hashes the weights file, this exporter and the DiT code, the
opset and the torch version; an up-to-date file is not rebuilt (see :mod:`emolive.engine.motion.graph_files`).

Graph contract (also in the sidecar; K, H, A from the weights' config, 12, 2, 12 for the
shipped models; every axis but ``batch`` fixed; all float32):

* ``x_t`` (batch, H, 35): the hop's frames at time ``t``, in normalised motion units
  (``(frame - mean) / std`` per channel; ``mean``/``std`` in the sidecar);
* ``t`` (batch,): diffusion time, 1 = pure noise, 0 = clean;
* ``past`` (batch, K, 35): the last K generated frames, normalised (jaw and lip channels are
  ignored: the audio decides them);
* ``audio`` (batch, A, 4, 80): log-mel of the ``A - H - L`` frames before the hop, the hop
  and the L lookahead frames, 4 mel frames per video frame (``emolive.engine.audio``);
* ``controls`` (batch, 4): head-motion intensity, head speed, expressiveness, blink clock;
* ``audio_missing`` (batch, A): 1 where an audio frame is padding (a stream's last odd
  frame has no second hop frame), else 0;
* output ``velocity`` (batch, H, 35): ``noise - x_0`` in normalised units; a step from ``t``
  to ``t_next`` is ``x_t + (t_next - t) * velocity``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emolive.engine.audio import MELS_PER_FRAME, N_MELS, SILENCE_FEATURE
from emolive.engine.motion.backends import DenoiserInputs
from emolive.engine.motion.dit import Block, DiTConfig, MotionDiT, timestep_embedding
from emolive.engine.motion.graph_files import DEFAULT_OPSET, GraphFile, check_graph, sha256_file, sources_hash, up_to_date, write_build

EXPORTER = "torch.onnx.export, TorchScript-based (dynamo=False), of engine.motion.onnx_graph.GraphDiT"
BATCH_AXIS = "batch"
MIN_OPSET = 17
INPUT_NAMES = ("x_t", "t", "past", "audio", "controls", "audio_missing")
OUTPUT_NAME = "velocity"
CONTROLS = ("head_motion", "speed", "expressiveness", "blink_clock")
MAX_ABS_DIFF = 1e-4  # fp32 ONNX Runtime vs torch, velocity in normalised units
_SOURCES = ("motion/onnx_graph.py", "motion/dit.py")


def denoiser_io(cfg: DiTConfig) -> dict:
    """The graph's inputs and outputs as the sidecar documents them."""
    c, k, h, a = cfg.channels, cfg.past_frames, cfg.hop_frames, cfg.audio_frames

    def spec(name: str, shape: list, description: str) -> dict:
        return {"name": name, "dtype": "float32", "shape": [BATCH_AXIS, *shape], "description": description}

    return {
        "inputs": [
            spec("x_t", [h, c], "the hop's frames at time t, normalised ((frame - mean) / std per channel)"),
            spec("t", [], "diffusion time in [0, 1]: 1 pure noise, 0 clean"),
            spec("past", [k, c], "the last K generated frames, normalised, oldest first"),
            spec("audio", [a, MELS_PER_FRAME, N_MELS], f"log-mel of {cfg.audio_past} frames before the hop, the "
                                                      f"{h} hop frames and {cfg.lookahead} lookahead frames"),
            {**spec("controls", [cfg.n_controls], "conditioning scalars"), "order": list(CONTROLS)},
            spec("audio_missing", [a], "1 where an audio frame is padding, else 0"),
        ],
        "outputs": [spec(OUTPUT_NAME, [h, c], "rectified-flow velocity noise - x_0, normalised; "
                                               "x <- x + (t_next - t) * velocity")],
    }


def random_inputs(cfg: DiTConfig, batch: int, seed: int = 0) -> DenoiserInputs:
    """Denoiser inputs in the ranges the sampler feeds: normal noise and past frames, times in
    [0, 1], features with the statistics of speech (normalised log-mel, floored at digital
    silence), controls in their ranges, the last audio frame of every other row missing."""
    rng = np.random.default_rng(seed)
    h, k, a, c = cfg.hop_frames, cfg.past_frames, cfg.audio_frames, cfg.channels
    missing = np.zeros((batch, a), np.float32)
    missing[::2, -1] = 1.0
    controls = np.stack([rng.uniform(0, 2, batch), rng.uniform(0.5, 1.5, batch), rng.uniform(0, 2, batch),
                         rng.uniform(0, 1, batch)], axis=1)
    return DenoiserInputs(
        rng.standard_normal((batch, h, c)).astype(np.float32), rng.uniform(0, 1, batch).astype(np.float32),
        rng.standard_normal((batch, k, c)).astype(np.float32),
        np.maximum(rng.normal(-0.7, 1.4, (batch, a, MELS_PER_FRAME, N_MELS)), SILENCE_FEATURE).astype(np.float32),
        controls.astype(np.float32), missing,
    )


def _conv_matrix(conv: nn.Conv1d) -> torch.Tensor:
    """A Conv1d kernel (out, in, k) as a (k * in, out) matrix over k time steps' channels, tap-major."""
    weight = conv.weight.detach()
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous()


def _conv3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Kernel-3, padding-1 Conv1d of time-major (B, T, C) features as one MatMul over the whole
    batch (ONNX Runtime's Conv runs image by image)."""
    padded = F.pad(x, (0, 0, 1, 1))
    return torch.cat([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], dim=-1) @ weight + bias


class GraphDiT(nn.Module):
    """``MotionDiT.forward`` as exported: the same function, equal up to float rounding, with
    less work per batch row and fewer graph nodes:

    * every shape but the batch axis is a constant (no Shape/Gather chains);
    * the audio convs are MatMuls over the batch (:func:`_conv3`; ``down`` is a reshape);
    * constants are folded: the past-context mask into ``past_in``, position, type and the
      lookahead's motion placeholder into one token table, the attention scale into the
      queries, adaLN's ``1 + scale`` into its bias; all adaLN projections are one MatMul;
    * the last block computes queries, attention output and MLP for the hop tokens only (keys
      and values still for all tokens): nothing else reaches the output.

    The folded tensors are copies: build it after the weights are loaded.
    """

    def __init__(self, model: MotionDiT) -> None:
        super().__init__()
        if model.cfg.depth < 1:
            raise ValueError("GraphDiT needs at least one block")
        self.model = model
        cfg, d = model.cfg, model.cfg.d_model
        audio = model.audio
        for name in ("conv1", "conv2", "down", "context"):
            self.register_buffer(f"{name}_w", _conv_matrix(getattr(audio, name)), persistent=False)
        self.register_buffer("past_w", (model.past_in.weight * model.context_mask).t().detach(), persistent=False)
        fixed = (model.pos[0] + model.types[model.type_index]).detach().clone()
        fixed[cfg.past_frames + cfg.hop_frames:] += model.future[0].detach()
        self.register_buffer("fixed", fixed, persistent=False)
        scale = torch.ones(3 * d)
        scale[:d] = (d // cfg.heads) ** -0.5  # scaled_dot_product_attention's default scale
        self.register_buffer("qkv_w", torch.stack([b.qkv.weight.detach().t() * scale for b in model.blocks]),
                             persistent=False)
        self.register_buffer("qkv_b", torch.stack([b.qkv.bias.detach() * scale for b in model.blocks]),
                             persistent=False)
        one_plus = torch.zeros(6 * d)  # shift1, scale1, gate1, shift2, scale2, gate2; then shift, scale
        one_plus[d:2 * d] = one_plus[4 * d:5 * d] = 1.0
        ada = [(b.ada.weight, b.ada.bias + one_plus) for b in model.blocks]
        ada.append((model.out_ada.weight, model.out_ada.bias + one_plus[:2 * d]))
        self.register_buffer("ada_w", torch.cat([w for w, _ in ada]).t().detach(), persistent=False)
        self.register_buffer("ada_b", torch.cat([b for _, b in ada]).detach(), persistent=False)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``AudioEncoder.forward`` on time-major features."""
        cfg, enc = self.model.cfg, self.model.audio
        x = audio.reshape(-1, cfg.audio_frames * MELS_PER_FRAME, N_MELS)
        x = F.gelu(_conv3(x, self.conv1_w, enc.conv1.bias))
        x = x + F.gelu(_conv3(x, self.conv2_w, enc.conv2.bias))
        x = F.gelu(x.reshape(-1, cfg.audio_frames, MELS_PER_FRAME * cfg.audio_hidden) @ self.down_w + enc.down.bias)
        x = x + F.gelu(_conv3(x, self.context_w, enc.context.bias))
        return enc.norm(x)

    def block(self, index: int, x: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``Block.forward``; the last block's output is the hop tokens only."""
        cfg = self.model.cfg
        block: Block = self.model.blocks[index]
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        heads, d = cfg.heads, cfg.d_model
        h = block.norm1(x) * scale1 + shift1
        qkv = (h @ self.qkv_w[index] + self.qkv_b[index]).reshape(-1, cfg.tokens, 3 * heads, d // heads)
        q, k, v = qkv.transpose(1, 2).split(heads, dim=1)
        rows = cfg.tokens
        if index == cfg.depth - 1:
            hop = slice(cfg.past_frames, cfg.past_frames + cfg.hop_frames)
            q, x, rows = q[:, :, hop], x[:, hop], cfg.hop_frames
        h = (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).transpose(1, 2).reshape(-1, rows, d)
        x = x + gate1 * block.proj(h)
        h = block.norm2(x) * scale2 + shift2
        return x + gate2 * block.fc2(F.gelu(block.fc1(h)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, past: torch.Tensor, audio: torch.Tensor,
                controls: torch.Tensor, audio_missing: torch.Tensor) -> torch.Tensor:
        model = self.model
        cfg, d = model.cfg, model.cfg.d_model
        emb = self.encode_audio(audio) + audio_missing.unsqueeze(-1) * model.missing_audio
        emb = F.pad(emb, (0, 0, cfg.past_frames - cfg.audio_past, 0))
        motion = torch.cat([past @ self.past_w + model.past_in.bias, model.noisy_in(x_t)], dim=1)
        tokens = F.pad(motion, (0, 0, 0, cfg.lookahead)) + (emb + self.fixed)
        c = F.silu(model.time_mlp(timestep_embedding(t, d)) + model.control_mlp(controls))
        mods = (c @ self.ada_w + self.ada_b).unsqueeze(1).split(d, dim=-1)
        for index in range(cfg.depth):
            tokens = self.block(index, tokens, mods[6 * index:6 * index + 6])
        shift, scale = mods[-2:]
        return model.out(model.out_norm(tokens) * scale + shift)


def export_graph(model: MotionDiT, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model``'s :class:`GraphDiT` into ``path`` (not checked; see :func:`emolive.engine.motion.graph_files.check_graph`)."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    cfg = model.cfg
    batch = 2  # not 1: a traced size-1 axis may be specialised away
    example = (
        torch.zeros(batch, cfg.hop_frames, cfg.channels), torch.full((batch,), 0.5),
        torch.zeros(batch, cfg.past_frames, cfg.channels),
        torch.zeros(batch, cfg.audio_frames, MELS_PER_FRAME, N_MELS), torch.zeros(batch, cfg.n_controls),
        torch.zeros(batch, cfg.audio_frames),
    )
    names = [*INPUT_NAMES, OUTPUT_NAME]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # q, k, v unpacking: a static split
        # F.pad's pads become a reversed Slice of constants that torch does not fold; ONNX
        # Runtime folds them when it loads the graph
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            GraphDiT(model.eval()), example, str(path), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes={name: {0: BATCH_AXIS} for name in names}, do_constant_folding=True,
        )


def denoiser_files(out_dir: Path, kind: str, weights_sha: str, build_key: str) -> tuple[Path, Path]:
    stem = f"denoiser-{kind}-{weights_sha[:12]}-{build_key[:12]}"
    return out_dir / f"{stem}.onnx", out_dir / f"{stem}.json"


def export_denoiser_for_weights(weights: str | os.PathLike, out_dir: str | os.PathLike, *,
                                opset: int = DEFAULT_OPSET, force: bool = False) -> GraphFile:
    """Export (or find up to date) the denoiser of a weights file (``save_model``'s format)."""
    from emolive.engine.motion.diffusion import load_cached

    weights = Path(weights).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_cached(str(weights))
    kind = meta.get("kind", "diffusion")
    weights_sha = sha256_file(weights)
    code_key = sources_hash(f"opset{opset}:torch{torch.__version__}", _SOURCES)
    build_key = hashlib.sha256(f"{weights_sha}:{code_key}".encode()).hexdigest()
    path, sidecar = denoiser_files(out_dir, kind, weights_sha, build_key)
    if not force:
        info = up_to_date(path, sidecar, build_key)
        if info is not None:
            return GraphFile("denoiser", path, sidecar, cached=True, info=info)

    import onnx

    start = time.perf_counter()
    io = denoiser_io(model.cfg)

    def build(tmp: Path) -> None:
        export_graph(model, tmp, opset)
        check_graph(tmp, io)

    info = write_build(path, sidecar, build, {
        "model": "denoiser",
        "kind": kind,
        "opset": opset,
        "exporter": EXPORTER,
        **io,
        "normalisation": {"mean": model.mean.tolist(), "std": model.std.tolist()},
        "sampling": {
            "steps": int(meta.get("steps", 2)),
            "time_grid": "t_i = 1 - i / steps, i = 0 .. steps",
            "update": "x <- x + (t_next - t) * velocity, from seeded standard normal noise at t = 1",
            "frame": "frame = x_0 * std + mean, then clipped to the motion space's limits",
        },
        "config": json.loads(model.cfg.to_json()),
        "source": {
            "weights": str(weights),
            "weights_sha256": weights_sha,
            "code_sha256": code_key,
            "build_key": build_key,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
        "trt": {"precision": "fp16", "why": "normalised motion units: fp16 keeps about 3 significant digits, "
                                            "far below a visible difference"},
    })
    return GraphFile("denoiser", path, sidecar, cached=False, seconds=time.perf_counter() - start, info=info)

