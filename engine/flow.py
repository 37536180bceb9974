"""Dense flow from vertex displacements, and its inversion for backward warping.

The rig gives a forward map x -> x + F(x) (where each rest pixel goes). ``cv2.remap`` needs
the backward map (where each output pixel comes from): the solution p of p + F(p) = q.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse

_MIN_JACOBIAN = 0.04  # a lid squeezed to 4 % of its height still inverts stably
_MAX_STEP = 6.0  # grid units; keeps a Newton step inside the neighbourhood it was linearised in


def node_grid(rows: int, cols: int) -> np.ndarray:
    """(rows, cols, 2) float32 grid of (x, y) node indices."""
    gx, gy = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return np.stack([gx, gy], axis=-1)


def forward_flow(matrix: sparse.csr_matrix, disp: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Vertex displacements (V, 2) in pixels -> forward flow on the grid, in grid units."""
    flow = np.asarray(matrix @ disp, dtype=np.float32).reshape(shape[0], shape[1], 2)
    return flow / step


def _sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.remap(field, points[..., 0], points[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def invert_newton(forward: np.ndarray, nodes: np.ndarray, iterations: int) -> np.ndarray:
    """Backward flow (grid units) by Newton's method on p + F(p) = q.

    Plain fixed-point iteration crawls where the warp squeezes tissue (a closing eyelid
    compresses the eye to a few percent of its height); Newton, with the Jacobian of the
    piecewise-linear forward map, lands in one or two steps."""
    jacobian = np.empty(forward.shape[:2] + (4,), np.float32)
    jacobian[..., 0] = np.gradient(forward[..., 0], axis=1) + 1
    jacobian[..., 1] = np.gradient(forward[..., 0], axis=0)
    jacobian[..., 2] = np.gradient(forward[..., 1], axis=1)
    jacobian[..., 3] = np.gradient(forward[..., 1], axis=0) + 1
    qx, qy = nodes[..., 0], nodes[..., 1]
    sx = qx - forward[..., 0]
    sy = qy - forward[..., 1]
    for _ in range(iterations):
        f = cv2.remap(forward, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        j = cv2.remap(jacobian, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        rx = sx + f[..., 0] - qx
        ry = sy + f[..., 1] - qy
        a, b, c, d = j[..., 0], j[..., 1], j[..., 2], j[..., 3]
        det = a * d - b * c
        det = np.where(np.abs(det) < _MIN_JACOBIAN, np.copysign(_MIN_JACOBIAN, det), det)
        dx = (d * rx - b * ry) / det
        dy = (a * ry - c * rx) / det
        scale = np.minimum(1.0, _MAX_STEP / np.maximum(np.hypot(dx, dy), 1e-6))
        sx -= dx * scale
        sy -= dy * scale
    return np.stack([sx - qx, sy - qy], axis=-1)


def invert_fixed_point(forward: np.ndarray, nodes: np.ndarray, iterations: int) -> np.ndarray:
    """Backward flow (grid units) by iterating p <- q - F(p): slow but it never overshoots,
    which a one-off warp that collapses a region entirely (sealing parted lips) needs."""
    source = nodes - forward
    for _ in range(iterations):
        source = nodes - _sample(forward, source)
    return source - nodes


def upsample(backward: np.ndarray, step: int, size: tuple[int, int]) -> np.ndarray:
    """Grid-unit backward flow -> per-pixel backward flow in pixels over a (width, height) roi."""
    if step == 1:
        return backward
    return cv2.resize(backward * step, size, interpolation=cv2.INTER_LINEAR)
