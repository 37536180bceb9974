"""Rectified-flow sampling: noise (t = 1) -> motion (t = 0) by Euler steps of a velocity field.

Conventions: ``x_t = (1 - t) * x_0 + t * noise`` and the model predicts ``v = noise - x_0``, so a
step from ``t`` to ``t_next < t`` is ``x + (t_next - t) * v``. :func:`euler_step` is pure (no state,
no randomness): the whole sampler is that step applied on :func:`time_grid`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(steps: int) -> list[float]:
    """``steps + 1`` times from 1 to 0, uniform."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


def euler_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the flow from time ``t`` to ``t_next``."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return x + (t_next - t) * velocity(x, tt)


def sample(velocity: Velocity, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate from ``noise`` at t = 1 to t = 0 in ``steps`` Euler steps."""
    x = noise
    grid = time_grid(steps)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = euler_step(velocity, x, t, t_next)
    return x
