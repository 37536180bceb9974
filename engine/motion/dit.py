"""The motion denoiser: a small DiT over a window of motion frames (runtime module, no training code).

Tokens are video frames on one time axis::

    [ K past motion frames | H hop frames being denoised | L lookahead frames ]
      clean (the rolling      x_t (noisy)                  audio only
      buffer, EMO's "motion
      frames")

Each token is its motion (projected; a learned placeholder for lookahead) + a type and position
embedding + the audio embedding of its frame where the audio window reaches it (the last
``audio_past`` past frames, the hop and the lookahead). The audio embedding comes from a small
1-D conv encoder over the window's log-mel (4 mel frames per video frame). Diffusion time and the
controls (head-motion intensity, head speed, expressiveness) condition every block through
adaLN-Zero, and so does one scalar of long-term memory the K-frame buffer cannot hold: the time
since the last blink onset (the "blink clock"), so blinks come at a natural rhythm. The output is the rectified-flow velocity of the hop frames, in normalised motion
units (``(frame - mean) / std`` per channel, with ``mean``/``std`` stored in the module).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emolive.engine.audio import MELS_PER_FRAME, N_MELS
from emolive.engine.motion_space import CHANNELS, NUM_CHANNELS

# Channels the audio decides (jaw and lips). They are left out of the past-motion context: a
# model that sees its last lip frames learns to extrapolate them instead of listening, and at
# run time, fed its own output, drifts off the audio (exposure bias). Lips come from the audio
# window alone; head, brows, eyes and cheeks continue from the buffer.
AUDIO_CHANNELS = tuple(i for i, name in enumerate(CHANNELS) if name.startswith(("jaw", "mouth")))


@dataclass(frozen=True)
class DiTConfig:
    channels: int = NUM_CHANNELS
    past_frames: int = 16  # K: motion frames of context (the rolling buffer)
    hop_frames: int = 2  # H: frames generated per call
    audio_past: int = 8  # audio frames before the hop
    lookahead: int = 2  # L: audio frames after the hop (80 ms)
    d_model: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    audio_hidden: int = 96
    n_controls: int = 4  # head_motion, speed, expressiveness, blink clock (see engine.motion.diffusion)
    context_lips: bool = False  # whether past jaw/lip frames are part of the context (see AUDIO_CHANNELS)
    # Streaming per-band normalisation of the audio window (engine.motion.featnorm); off in
    # checkpoints written before it existed, whose configs lack the key.
    feature_norm: bool = False

    def __post_init__(self) -> None:
        if self.past_frames < self.audio_past:
            raise ValueError(f"past_frames ({self.past_frames}) must be >= audio_past ({self.audio_past})")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")

    @property
    def audio_frames(self) -> int:
        return self.audio_past + self.hop_frames + self.lookahead

    @property
    def tokens(self) -> int:
        return self.past_frames + self.hop_frames + self.lookahead

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DiTConfig":
        return cls(**json.loads(text))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion time t in [0, 1] (scaled by 1000 as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AudioEncoder(nn.Module):
    """(B, A, 4, 80) log-mel -> (B, A, d) one embedding per video frame."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h = cfg.audio_hidden
        self.conv1 = nn.Conv1d(N_MELS, h, 3, padding=1)
        self.conv2 = nn.Conv1d(h, h, 3, padding=1)
        self.down = nn.Conv1d(h, cfg.d_model, MELS_PER_FRAME, stride=MELS_PER_FRAME)
        self.context = nn.Conv1d(cfg.d_model, cfg.d_model, 3, padding=1)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, a = audio.shape[:2]
        x = audio.reshape(b, a * MELS_PER_FRAME, N_MELS).transpose(1, 2)
        x = F.gelu(self.conv1(x))
        x = x + F.gelu(self.conv2(x))
        x = F.gelu(self.down(x))
        x = x + F.gelu(self.context(x))
        return self.norm(x.transpose(1, 2))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the condition vector."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        b, n, d = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate1 * self.proj(h)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h)))


class MotionDiT(nn.Module):
    """Velocity field v(x_t, t | past motion, audio window, controls) for the hop frames."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.channels
        self.audio = AudioEncoder(cfg)
        self.past_in = nn.Linear(c, d)
        self.noisy_in = nn.Linear(c, d)
        self.future = nn.Parameter(torch.zeros(1, cfg.lookahead, d))
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens, d) * 0.02)
        self.types = nn.Parameter(torch.randn(3, d) * 0.02)
        self.missing_audio = nn.Parameter(torch.zeros(d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.control_mlp = nn.Sequential(nn.Linear(cfg.n_controls, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, c)
        for layer in (self.out_ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        if cfg.feature_norm:
            # The training corpus's mean log-mel per band: where the running mean starts
            # (engine.motion.featnorm), and the level normalised windows are brought to.
            self.register_buffer("audio_prior", torch.zeros(N_MELS))
        context_mask = torch.ones(c)
        if not cfg.context_lips:
            context_mask[list(AUDIO_CHANNELS)] = 0.0
        self.register_buffer("context_mask", context_mask, persistent=False)
        type_index = [0] * cfg.past_frames + [1] * cfg.hop_frames + [2] * cfg.lookahead
        self.register_buffer("type_index", torch.tensor(type_index), persistent=False)

    # -- pieces the sampler reuses across steps --------------------------------------------
    def encode_audio(self, audio: torch.Tensor, audio_missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, A, 4, 80) -> (B, tokens, d) audio part of every token (zeros where it does not reach)."""
        cfg = self.cfg
        emb = self.audio(audio)
        if audio_missing is not None:
            emb = emb + audio_missing[..., None].float() * self.missing_audio
        pad = emb.new_zeros(emb.shape[0], cfg.past_frames - cfg.audio_past, cfg.d_model)
        return torch.cat([pad, emb], dim=1)

    def context(self, past: torch.Tensor, audio_tokens: torch.Tensor, controls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step-independent token parts and the control embedding."""
        b = past.shape[0]
        fixed = audio_tokens + self.pos + self.types[self.type_index]
        past_tok = self.past_in(past * self.context_mask)
        future = self.future.expand(b, -1, -1)
        return fixed, (past_tok, future, self.control_mlp(controls))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, fixed: torch.Tensor, parts: tuple) -> torch.Tensor:
        past_tok, future, ctrl = parts
        tokens = torch.cat([past_tok, self.noisy_in(x_t), future], dim=1) + fixed
        c = F.silu(self.time_mlp(timestep_embedding(t, self.cfg.d_model)) + ctrl)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.out_ada(c).unsqueeze(1).chunk(2, dim=-1)
        k, h = self.cfg.past_frames, self.cfg.hop_frames
        hop = self.out_norm(tokens[:, k : k + h]) * (1 + scale) + shift
        return self.out(hop)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, past: torch.Tensor, audio: torch.Tensor,
                controls: torch.Tensor, audio_missing: torch.Tensor | None = None) -> torch.Tensor:
        fixed, parts = self.context(past, self.encode_audio(audio, audio_missing), controls)
        return self.velocity(x_t, t, fixed, parts)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames - self.mean) / self.std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean
