"""Training loop shared by the lip readers (:mod:`emolive.engine.motion.windownet`): windows of
a :class:`~emolive.training.dataset.WindowSampler`, AdamW with a cosine learning rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from emolive.engine.motion.windownet import AudioWindowNet
from emolive.training.dataset import WindowSampler

N = TypeVar("N", bound=AudioWindowNet)


@dataclass
class WindowNetTrainConfig:
    steps: int = 6000
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_window(sampler: WindowSampler, net: AudioWindowNet) -> None:
    if (sampler.cfg.audio_past, sampler.cfg.lookahead, sampler.cfg.hop_frames) != (net.cfg.audio_past, net.cfg.lookahead, 1):
        raise ValueError("the lip readers train on one-frame hops with their own audio window")


def fit(make_net: Callable[[], N], sampler: WindowSampler, cfg: WindowNetTrainConfig,
        draw: Callable[[np.random.Generator], np.ndarray],
        loss_of: Callable[[torch.Tensor, np.ndarray], torch.Tensor], name: str,
        log: Callable[[str], None] = print) -> tuple[N, TrainHistory]:
    """A net from ``make_net()`` (initialised from ``cfg.seed``), trained: each step ``draw(rng)``
    picks window indices and ``loss_of(outputs, picks)`` scores its outputs. It ends in eval
    mode with gradients off."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = make_net()
    check_window(sampler, net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist = TrainHistory()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        pick = draw(rng)
        t = sampler.starts[pick]
        audio = sampler.features[t[:, None] + sampler.audio_offsets].astype(np.float32)
        if sampler.norm is not None:
            audio += sampler.norm[t][:, None, None, :]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        loss = loss_of(net(torch.from_numpy(audio)), pick)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.losses.append(float(loss.detach()))
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps:
            log(f"{name} step {step + 1}/{cfg.steps} loss {np.mean(hist.losses[-100:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    hist.seconds = time.perf_counter() - t0
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, hist


def history_metrics(net: AudioWindowNet, hist: TrainHistory, cfg: WindowNetTrainConfig) -> dict:
    return {"steps": cfg.steps, "seconds": hist.seconds, "loss_first": float(np.mean(hist.losses[:20])),
            "loss_last": float(np.mean(hist.losses[-20:])), "parameters": sum(p.numel() for p in net.parameters())}
