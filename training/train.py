"""Teacher training (rectified flow) and student distillation (reflow on teacher pairs).

Teacher: the velocity ``v = noise - x_0`` of straight paths ``x_t = (1 - t) x_0 + t noise`` is
regressed (logit-normal t), with the past-motion context slightly noised (so the model tolerates
its own imperfect history at run time) and the lip channels weighted up; alongside, the audio
encoder learns to name the phone of every mel frame (:class:`PhoneHead`). Sampling: 24 Euler steps.

Student: starts as a copy of the teacher and is trained on (noise, teacher sample) pairs drawn
for real training windows: the reflow loss on the straight line between each pair, plus the
error of its own 2-step Euler result against the teacher's sample. Reflow makes the paths
straight, so few Euler steps land where the teacher's 24 do.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from emolive.engine.audio import MELS_PER_FRAME
from emolive.engine.motion.dit import DiTConfig, MotionDiT
from emolive.engine.motion.sampler import time_grid
from emolive.engine.motion_space import INDEX
from emolive.training.dataset import Batch, WindowSampler
from emolive.training.visemes import PHONE_CLASSES

LIP_WEIGHT = 2.0
# The lip seal (mouthClose) weighs more still: it is on in few frames, and a bilabial the lips
# miss is the most visible lip-sync error.
SEAL_WEIGHT = 6.0
_LIPS = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthRollLower", "mouthRollUpper",
         "mouthPressLeft", "mouthPressRight", "mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft",
         "mouthLowerDownRight", "mouthStretchLeft", "mouthStretchRight")


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 256
    lr: float = 1.5e-3
    warmup: int = 150
    weight_decay: float = 0.01
    ema: float = 0.998
    context_noise: float = 0.08
    hop1_share: float = 0.2
    phone_weight: float = 1.0  # weight of the audio encoder's phone-recognition loss (0: none)
    seed: int = 0
    init_from: str | None = None  # a teacher checkpoint to start from (warm_start), else random
    time_limit_s: float | None = None


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    phone_losses: list[float] = field(default_factory=list)  # the teacher's phone recognition (PhoneHead)
    seconds: float = 0.0
    steps: int = 0


def channel_weights(channels: int) -> torch.Tensor:
    w = torch.ones(channels)
    for name in _LIPS:
        w[INDEX[name]] = LIP_WEIGHT
    w[INDEX["mouthClose"]] = SEAL_WEIGHT
    return w / w.mean()


def _lr(step: int, cfg: TrainConfig, total: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _hop_mask(b: Batch, hop: int) -> torch.Tensor:
    return (torch.arange(hop)[None, :] < b.hop_len[:, None]).float()[..., None]


def _noisy_past(b: Batch, scale: float, gen: torch.Generator) -> torch.Tensor:
    sigma = torch.rand(b.past.shape[0], 1, 1, generator=gen) * scale
    return b.past + sigma * torch.randn(b.past.shape, generator=gen)


class PhoneHead(torch.nn.Module):
    """Training-only readout: the phone at each mel frame from the audio encoder's frame embedding.

    Recognising phones is what the lips need from the audio, and a cross-entropy on labelled
    phones is a far denser signal for the encoder than the denoising loss alone (where a
    bilabial is a few noisy frames of one channel). Thrown away after training.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(d_model, MELS_PER_FRAME * len(PHONE_CLASSES))

    def loss(self, audio_tokens: torch.Tensor, phones: torch.Tensor) -> torch.Tensor:
        logits = self.linear(audio_tokens).reshape(*phones.shape, len(PHONE_CLASSES))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, len(PHONE_CLASSES)), phones.reshape(-1),
                                                 ignore_index=-1)


def train_teacher(sampler: WindowSampler, model_cfg: DiTConfig, mean: np.ndarray, std: np.ndarray,
                  cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[MotionDiT, History]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = MotionDiT(model_cfg)
    model.mean.copy_(torch.from_numpy(mean))
    model.std.copy_(torch.from_numpy(std))
    if cfg.init_from:
        warm_start(model, cfg.init_from)
        log(f"teacher: starting from {cfg.init_from}")
    if model_cfg.feature_norm:
        model.audio_prior.copy_(torch.from_numpy(sampler.audio_prior))
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    head = PhoneHead(model_cfg.d_model) if cfg.phone_weight > 0 else None
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    weights = channel_weights(model_cfg.channels)
    hist = History()
    start = time.perf_counter()
    total = cfg.steps
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, total)
        b = sampler.sample(cfg.batch, cfg.hop1_share)
        x0 = b.target
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        audio_tokens = model.encode_audio(b.audio, b.missing)
        fixed, parts = model.context(_noisy_past(b, cfg.context_noise, gen), audio_tokens, b.controls)
        v = model.velocity(x_t, t, fixed, parts)
        mask = _hop_mask(b, model_cfg.hop_frames)
        err = ((v - (noise - x0)) ** 2 * weights * mask).sum() / (mask.sum() * model_cfg.channels)
        loss = err
        if head is not None:
            phone_loss = head.loss(audio_tokens[:, model_cfg.past_frames - model_cfg.audio_past:], b.phones)
            loss = err + cfg.phone_weight * phone_loss
            hist.phone_losses.append(float(phone_loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema if step > cfg.warmup else 1.0)
        hist.losses.append(float(err.detach()))
        hist.steps = step + 1
        if (step + 1) % 100 == 0 or step == 0:
            elapsed = time.perf_counter() - start
            phone = f" phone loss {np.mean(hist.phone_losses[-100:]):.3f}" if hist.phone_losses else ""
            log(f"teacher step {step + 1}/{cfg.steps} loss {np.mean(hist.losses[-100:]):.4f}{phone} ({elapsed:.0f} s)")
        if cfg.time_limit_s is not None and time.perf_counter() - start > cfg.time_limit_s:
            log(f"teacher: time limit reached at step {step + 1}")
            break
    hist.seconds = time.perf_counter() - start
    ema.eval()
    return ema, hist


def warm_start(model: MotionDiT, path: str) -> None:
    """Copy a checkpoint's weights into ``model``, whose hop and lookahead may differ (v6 -> v7).

    Every tensor of the same shape is copied; the position table keeps the past frames', the
    first hop frames' and the first lookahead frames' rows, the lookahead placeholder its first
    rows. The motion normalisation (mean, std) stays the model's own."""
    from emolive.engine.motion.diffusion import load_model

    source, _ = load_model(path)
    src, dst = source.state_dict(), model.state_dict()
    k, h, la = model.cfg.past_frames, model.cfg.hop_frames, model.cfg.lookahead
    if source.cfg.past_frames != k or source.cfg.hop_frames < h or source.cfg.lookahead < la:
        raise ValueError(f"{path}: cannot warm-start a {model.cfg} from a {source.cfg}")
    sk, sh = source.cfg.past_frames, source.cfg.hop_frames
    rows = list(range(k + h)) + list(range(sk + sh, sk + sh + la))
    with torch.no_grad():
        for name, tensor in dst.items():
            if name in ("mean", "std") or name not in src:
                continue
            value = src[name]
            if name == "pos":
                value = value[:, rows]
            elif name == "future":
                value = value[:, :la]
            if value.shape != tensor.shape:
                raise ValueError(f"{path}: {name} is {tuple(value.shape)}, the model's {tuple(tensor.shape)}")
            tensor.copy_(value)


@torch.inference_mode()
def sample_batch(model: MotionDiT, b: Batch, noise: torch.Tensor, steps: int) -> torch.Tensor:
    fixed, parts = model.context(b.past, model.encode_audio(b.audio, b.missing), b.controls)
    x = noise
    grid = time_grid(steps)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = x + (t_next - t) * model.velocity(x, torch.full((x.shape[0],), t), fixed, parts)
    return x


@dataclass
class DistillConfig:
    pairs: int = 16384
    pair_batch: int = 512
    teacher_steps: int = 24
    student_steps: int = 2
    steps: int = 1200
    batch: int = 256
    lr: float = 4e-4
    warmup: int = 50
    output_weight: float = 1.0
    seed: int = 1
    time_limit_s: float | None = None


def distill_student(teacher: MotionDiT, sampler: WindowSampler, cfg: DistillConfig,
                    log: Callable[[str], None] = print) -> tuple[MotionDiT, History]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    pool: list[tuple[Batch, torch.Tensor, torch.Tensor]] = []
    made = 0
    while made < cfg.pairs:
        b = sampler.sample(cfg.pair_batch, hop1_share=0.2)
        z = torch.randn(b.target.shape, generator=gen)
        x_t = sample_batch(teacher, b, z, cfg.teacher_steps)
        pool.append((b, z, x_t))
        made += cfg.pair_batch
    log(f"student: {made} teacher pairs in {time.perf_counter() - start:.0f} s")
    audio = torch.cat([p[0].audio for p in pool]).half()
    past = torch.cat([p[0].past for p in pool])
    controls = torch.cat([p[0].controls for p in pool])
    missing = torch.cat([p[0].missing for p in pool])
    hop_len = torch.cat([p[0].hop_len for p in pool])
    zs = torch.cat([p[1] for p in pool])
    xs = torch.cat([p[2] for p in pool])
    del pool
    student = copy.deepcopy(teacher)
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    weights = channel_weights(teacher.cfg.channels)
    hop = teacher.cfg.hop_frames
    grid = time_grid(cfg.student_steps)
    hist = History()
    t0 = time.perf_counter()
    train_cfg = TrainConfig(lr=cfg.lr, warmup=cfg.warmup)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, train_cfg, cfg.steps)
        idx = torch.randint(0, len(zs), (cfg.batch,), generator=gen)
        b = Batch(audio[idx].float(), past[idx], xs[idx], controls[idx], missing[idx], hop_len[idx])
        z, x_target = zs[idx], xs[idx]
        mask = _hop_mask(b, hop)
        # Reflow: straight line between the pair, t from the student's own grid half the time.
        grid_t = torch.tensor(grid[:-1])[torch.randint(0, len(grid) - 1, (cfg.batch,), generator=gen)]
        t = torch.where(torch.rand(cfg.batch, generator=gen) < 0.5, grid_t, torch.rand(cfg.batch, generator=gen))
        x_t = (1 - t[:, None, None]) * x_target + t[:, None, None] * z
        fixed, parts = student.context(b.past, student.encode_audio(b.audio, b.missing), b.controls)
        v = student.velocity(x_t, t, fixed, parts)
        reflow = ((v - (z - x_target)) ** 2 * weights * mask).sum() / (mask.sum() * teacher.cfg.channels)
        # The few-step result itself.
        x = z
        for ta, tb in zip(grid[:-1], grid[1:]):
            x = x + (tb - ta) * student.velocity(x, torch.full((cfg.batch,), ta), fixed, parts)
        out = ((x - x_target) ** 2 * weights * mask).sum() / (mask.sum() * teacher.cfg.channels)
        loss = reflow + cfg.output_weight * out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        hist.losses.append(float(out.detach()))
        hist.steps = step + 1
        if (step + 1) % 100 == 0 or step == 0:
            log(f"student step {step + 1}/{cfg.steps} reflow {float(reflow.detach()):.4f} output {np.mean(hist.losses[-100:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
        if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
            log(f"student: time limit reached at step {step + 1}")
            break
    hist.seconds = time.perf_counter() - start
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student, hist
